//! Decode and prefill speed at batch 1, ours against llama.cpp (llama-cpp-python on the same GGUF)
//! in the same run, for prompts of 100, 1,000 and 7,800 tokens (issue #16 item 4,
//! `performance.md`), with the CPU's model name and flags. Ours runs each precision on the plain KV
//! cache (the model step alone) and the default precision also through the session memory (what
//! the server does).
//!
//! Run: `make bench-model` (or `cargo bench --bench model`). Environment:
//! `INFINI_BENCH_PRECISIONS` (default `f32,bf16,int4`), `INFINI_BENCH_DECODE` (tokens generated per
//! prompt, default 64), `INFINI_BENCH_PROMPTS` (prompt lengths, default `100,1000,7800`),
//! `INFINI_BENCH_THREADS` (default: libtorch's, the core count), `INFINI_BENCH_PEER=0` to skip the
//! peer, `INFINI_BENCH_PEER_BATCHED=0/1` to make the peer prefill token by token or in one batch
//! (default: in one batch, but token by token on CPUs with AMX, where its build crashes on
//! batches), `INFINI_BENCH_KEEPERS=memory` (or `kv`) for one of the two pasts,
//! `INFINI_BENCH_ROUNDS` (default 3: rounds of the peer then ours, each row the medians, the ratio
//! of each round in brackets). Both sides use the same number of threads and the same token ids.

mod common;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use common::{cpu_description, env_list, median, peer, prompt, Speed, GGUF};
use infini::engine::generate::{generate, GenerateOptions, Greedy};
use infini::memory::{MemoryConfig, MemoryLayout};
use infini::model::{Checkpoint, LayerCache, Llama, ModelOptions, Precision};
use infini::session::SessionMemory;
use tch::Device;

/// Where the past is kept while ours runs.
#[derive(Clone, Copy)]
enum Keeper {
    /// The plain KV cache: the model step alone.
    Plain,
    /// The session memory with its default layout, as the server runs.
    Memory,
}

fn ours(model: &Llama, keeper: Keeper, tokens: &[u32], decode: usize) -> Result<Speed> {
    match keeper {
        Keeper::Plain => ours_on(model, &mut model.new_cache(), tokens, decode),
        Keeper::Memory => {
            let context = model.config().max_position_embeddings as usize;
            let layout =
                MemoryLayout::new(MemoryConfig::default(), context, model.options().device)?;
            ours_on(
                model,
                SessionMemory::new(model, &layout).caches(),
                tokens,
                decode,
            )
        }
    }
}

fn ours_on<C: LayerCache>(
    model: &Llama,
    caches: &mut [C],
    tokens: &[u32],
    decode: usize,
) -> Result<Speed> {
    let options = GenerateOptions {
        max_tokens: decode,
        stop_tokens: vec![],
        prefill_chunk: 2048,
    };
    let out = generate(model, caches, tokens, &mut Greedy, &options, |_| true)?;
    Ok(Speed {
        prefill: tokens.len() as f64 / out.prefill.as_secs_f64(),
        decode: (decode - 1) as f64 / out.decode.as_secs_f64(),
    })
}

fn main() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let precisions: Vec<Precision> = std::env::var("INFINI_BENCH_PRECISIONS")
        .unwrap_or_else(|_| "f32,bf16,int4".into())
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let decode = env_list("INFINI_BENCH_DECODE", "64")?[0].max(2);
    if let Ok(threads) = std::env::var("INFINI_BENCH_THREADS") {
        tch::set_num_threads(threads.parse()?);
    }
    let threads = tch::get_num_threads();
    let rounds = env_list("INFINI_BENCH_ROUNDS", "3")?[0].max(1);
    let prompts: Vec<Vec<u32>> = env_list("INFINI_BENCH_PROMPTS", "100,1000,7800")?
        .into_iter()
        .map(prompt)
        .collect();
    // Ours loads the same GGUF as the peer (Q4_1 packed as is for int4).
    let checkpoint = Checkpoint::open(root.join(GGUF)).context("run ./scripts/setup.sh first")?;
    println!("{}", cpu_description());
    println!(
        "batch 1, {threads} threads, {decode} tokens decoded per prompt, medians of {rounds} rounds (peer, then ours, in each); the peer prefills {}",
        if common::peer_prefills_token_by_token() {
            "token by token (its build crashes on batches with AMX)"
        } else {
            "in one batch"
        }
    );

    let with_peer = std::env::var("INFINI_BENCH_PEER").as_deref() != Ok("0");
    let only = std::env::var("INFINI_BENCH_KEEPERS").unwrap_or_default();
    // Every precision's model, loaded once; each is measured on the rows of its keepers.
    let mut models = vec![];
    for precision in precisions {
        let started = Instant::now();
        let model = checkpoint.load(ModelOptions {
            device: Device::Cpu,
            precision,
        })?;
        let load = started.elapsed().as_secs_f64();
        println!(
            "{precision:?} loaded in {load:.1} s: {}",
            model.matmul_paths()
        );
        let keepers: Vec<(Keeper, &str)> =
            [(Keeper::Plain, "KV cache"), (Keeper::Memory, "memory")]
                .into_iter()
                .filter(|&(keeper, _)| match only.as_str() {
                    "kv" => matches!(keeper, Keeper::Plain),
                    "memory" => matches!(keeper, Keeper::Memory),
                    _ => precision == Precision::default() || matches!(keeper, Keeper::Plain),
                })
                .collect();
        let _ = ours(&model, Keeper::Plain, &prompts[0][..16], 4)?; // warm-up
        models.push((precision, model, keepers));
    }
    // Rounds alternate the peer and ours, so that a drift of the machine (±30% within minutes on
    // these VMs) falls on both sides; each row reports medians over the rounds.
    let mut peer_speeds: Vec<Vec<Speed>> = prompts.iter().map(|_| vec![]).collect();
    let mut our_speeds: Vec<Vec<Vec<Speed>>> = models
        .iter()
        .map(|(_, _, keepers)| vec![vec![]; prompts.len() * keepers.len()])
        .collect();
    for _ in 0..rounds {
        if with_peer {
            for (speeds, speed) in peer_speeds
                .iter_mut()
                .zip(peer(&root, &prompts, decode, threads)?)
            {
                speeds.push(speed);
            }
        }
        for ((_, model, keepers), speeds) in models.iter().zip(&mut our_speeds) {
            let rows = prompts
                .iter()
                .flat_map(|tokens| keepers.iter().map(move |&(keeper, _)| (tokens, keeper)));
            for ((tokens, keeper), speeds) in rows.zip(speeds.iter_mut()) {
                speeds.push(ours(model, keeper, tokens, decode)?);
            }
        }
    }
    let medians = |speeds: &[Speed]| {
        let prefill = median(speeds.iter().map(|s| s.prefill).collect());
        let decode = median(speeds.iter().map(|s| s.decode).collect());
        (prefill, decode)
    };
    for ((precision, _, keepers), speeds) in models.iter().zip(&our_speeds) {
        let rows = prompts
            .iter()
            .enumerate()
            .flat_map(|(i, tokens)| keepers.iter().map(move |&(_, name)| (i, tokens, name)));
        for ((i, tokens, name), speeds) in rows.zip(speeds) {
            let (prefill, decode) = medians(speeds);
            let mut line = format!(
                "{precision:?} {name:>8}, prompt {:>5}: prefill {prefill:>7.1} tok/s, decode {decode:>6.1} tok/s",
                tokens.len(),
            );
            if with_peer {
                let (peer_prefill, peer_decode) = medians(&peer_speeds[i]);
                let per_round: Vec<String> = speeds
                    .iter()
                    .zip(&peer_speeds[i])
                    .map(|(ours, peer)| format!("{:.2}", ours.decode / peer.decode))
                    .collect();
                line += &format!(
                    " | llama.cpp prefill {peer_prefill:>7.1}, decode {peer_decode:>6.1} | ratio ours/peer: prefill {:.2}, decode {:.2} (rounds: {})",
                    prefill / peer_prefill,
                    decode / peer_decode,
                    per_round.join(" ")
                );
            }
            println!("{line}");
        }
    }
    Ok(())
}

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
//! batches), `INFINI_BENCH_KEEPERS=memory` (or `kv`) for one of the two pasts. Both sides use the
//! same number of threads and the same token ids.

mod common;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use common::{cpu_description, peer, prompt, Speed, GGUF};
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
    let decode: usize = std::env::var("INFINI_BENCH_DECODE")
        .ok()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(64)
        .max(2);
    if let Ok(threads) = std::env::var("INFINI_BENCH_THREADS") {
        tch::set_num_threads(threads.parse()?);
    }
    let threads = tch::get_num_threads();
    let lengths = std::env::var("INFINI_BENCH_PROMPTS").unwrap_or_else(|_| "100,1000,7800".into());
    let prompts: Vec<Vec<u32>> = lengths
        .split(',')
        .map(|n| Ok(prompt(n.trim().parse()?)))
        .collect::<Result<_>>()?;
    // Ours loads the same GGUF as the peer (Q4_1 packed as is for int4).
    let checkpoint = Checkpoint::open(root.join(GGUF)).context("run ./scripts/setup.sh first")?;
    println!("{}", cpu_description());
    println!(
        "batch 1, {threads} threads, {decode} tokens decoded per prompt; the peer prefills {}",
        if common::peer_prefills_token_by_token() {
            "token by token (its build crashes on batches with AMX)"
        } else {
            "in one batch"
        }
    );

    let peer_speeds = if std::env::var("INFINI_BENCH_PEER").as_deref() == Ok("0") {
        None
    } else {
        Some(peer(&root, &prompts, decode, threads)?)
    };
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
        let only = std::env::var("INFINI_BENCH_KEEPERS").unwrap_or_default();
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
        for ((tokens, i), &(keeper, name)) in prompts
            .iter()
            .zip(0..)
            .flat_map(|prompt| keepers.iter().map(move |keeper| (prompt, keeper)))
        {
            let speed = ours(&model, keeper, tokens, decode)?;
            let mut line = format!(
                "{precision:?} {name:>8}, prompt {:>5}: prefill {:>7.1} tok/s, decode {:>6.1} tok/s",
                tokens.len(),
                speed.prefill,
                speed.decode
            );
            if let Some(peer) = peer_speeds.as_ref().and_then(|p| p.get(i)) {
                line += &format!(
                    " | llama.cpp prefill {:>7.1}, decode {:>6.1} | ratio ours/peer: prefill {:.2}, decode {:.2}",
                    peer.prefill,
                    peer.decode,
                    speed.prefill / peer.prefill,
                    speed.decode / peer.decode
                );
            }
            println!("{line}");
        }
    }
    Ok(())
}

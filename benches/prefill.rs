//! Prefill through the session memory against the plain KV cache (issue #17): tokens/s of one
//! prompt taken in, in the server's chunks of `PREFILL_CHUNK` tokens, by the default memory layout,
//! by our plain KV cache (which reads every past token) and by llama.cpp (llama-cpp-python on the
//! same GGUF, batched prefill), the last two only up to the model's context; in the same run,
//! rounds alternating the three, medians. Printed: each row's tokens/s, the memory's ratio to the
//! KV cache and to llama.cpp at the same length, and each memory row's time per token against the
//! first length's (a prompt 4× longer should cost 4× the time, not more).
//!
//! Run: `make bench-prefill` (or `cargo bench --bench prefill`). Environment:
//! `INFINI_BENCH_PROMPTS` (prompt lengths, default `8000,32000`), `INFINI_BENCH_ROUNDS` (default 3),
//! `INFINI_BENCH_PEER=0` to skip llama.cpp.

mod common;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use common::{cpu_description, env_list, median, peer, prompt, GGUF};
use infini::engine::generate::{prefill, PREFILL_CHUNK};
use infini::memory::{MemoryConfig, MemoryLayout};
use infini::model::{Checkpoint, LayerCache, Llama, ModelOptions};
use infini::session::SessionMemory;

/// Tokens/s of taking `tokens` into `caches` (empty), in the server's chunks.
fn tokens_per_second<C: LayerCache>(
    model: &Llama,
    caches: &mut [C],
    tokens: &[u32],
) -> Result<f64> {
    let started = Instant::now();
    let _ = prefill(model, caches, tokens, PREFILL_CHUNK)?;
    Ok(tokens.len() as f64 / started.elapsed().as_secs_f64())
}

fn main() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let _guard = tch::no_grad_guard();
    let lengths = env_list("INFINI_BENCH_PROMPTS", "8000,32000")?;
    let rounds = env_list("INFINI_BENCH_ROUNDS", "3")?[0].max(1);
    let checkpoint = Checkpoint::open(root.join(GGUF)).context("run ./scripts/setup.sh first")?;
    let model = checkpoint.load(ModelOptions::default())?;
    let context = model.config().max_position_embeddings as usize;
    let config = MemoryConfig::default();
    let layout = MemoryLayout::new(config.clone(), context, model.options().device)?;
    println!("{}", cpu_description());
    println!(
        "int4, {} threads, chunks of {PREFILL_CHUNK} tokens, default memory layout (L_stm {}, \
         top-{} blocks of {}); the KV cache up to the model's context ({context}); medians of \
         {rounds} rounds",
        tch::get_num_threads(),
        config.stm_len,
        config.top_k_blocks,
        config.block_len
    );
    let text = prompt(lengths.iter().copied().max().unwrap_or(0));
    let _ = tokens_per_second(&model, &mut model.new_cache(), &text[..64])?; // warm-up
    let with_peer = std::env::var("INFINI_BENCH_PEER").as_deref() != Ok("0");
    // The peer decodes 2 tokens after each prompt that leaves room for them in its context.
    let peer_lengths: Vec<usize> = lengths
        .iter()
        .copied()
        .filter(|&l| l + 2 < context)
        .collect();
    let peer_prompts: Vec<Vec<u32>> = peer_lengths.iter().map(|&l| text[..l].to_vec()).collect();
    let mut peers = vec![vec![]; peer_lengths.len()];
    let (mut plain, mut memory) = (vec![vec![]; lengths.len()], vec![vec![]; lengths.len()]);
    for round in 0..rounds {
        if with_peer && !peer_prompts.is_empty() {
            let threads = tch::get_num_threads();
            for (speeds, speed) in peers
                .iter_mut()
                .zip(peer(&root, &peer_prompts, 2, threads)?)
            {
                speeds.push(speed.prefill);
            }
        }
        for (i, &length) in lengths.iter().enumerate() {
            let tokens = &text[..length];
            if length <= context {
                plain[i].push(tokens_per_second(&model, &mut model.new_cache(), tokens)?);
            }
            let mut session = SessionMemory::new(&model, &layout);
            memory[i].push(tokens_per_second(&model, session.caches(), tokens)?);
            eprintln!(
                "round {}: prompt {length}: KV cache {:?}, memory {:.1} tok/s",
                round + 1,
                plain[i].last().map(|s| format!("{s:.1}")),
                memory[i].last().copied().unwrap_or(0.0)
            );
        }
    }
    let shortest = median(memory[0].clone());
    for (i, &length) in lengths.iter().enumerate() {
        let ours = median(memory[i].clone());
        let versus_plain = if plain[i].is_empty() {
            "KV cache: past the context".to_string()
        } else {
            let kv = median(plain[i].clone());
            format!("KV cache {kv:>7.1} tok/s, memory/KV cache {:.2}", ours / kv)
        };
        let versus_peer = match peer_lengths.iter().position(|&l| l == length) {
            Some(p) if !peers[p].is_empty() => {
                let theirs = median(peers[p].clone());
                format!(
                    "llama.cpp {theirs:>7.1} tok/s, memory/llama.cpp {:.2}",
                    ours / theirs
                )
            }
            _ => "llama.cpp: not run".to_string(),
        };
        println!(
            "prompt {length:>6}: memory {ours:>7.1} tok/s | {versus_plain} | {versus_peer} | \
             time per token against prompt {}: {:.2}",
            lengths[0],
            shortest / ours
        );
    }
    Ok(())
}

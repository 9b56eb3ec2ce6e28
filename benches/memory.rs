//! Constant compute per token (issue 4): decode time per token with the session memory after 1k,
//! 8k, 32k and 100k tokens of history (each within 15% of the 1k figure is the target), the memory's
//! bytes per tier at each point, and decode tokens/s at 100 and 7,800 tokens of history against
//! llama.cpp (llama-cpp-python, same GGUF, same threads, same token ids) in the same run.
//!
//! Run: `make bench-memory` (or `cargo bench --bench memory`). Environment: `INFINI_BENCH_THREADS`
//! (default: libtorch's, the core count), `INFINI_BENCH_DECODE` (tokens decoded at each point,
//! default 32), `INFINI_BENCH_HISTORY` (points, default `100,1000,7800,8000,32000,100000`),
//! `INFINI_BENCH_PEER=0` to skip the peer.

mod common;

use std::path::PathBuf;

use anyhow::{Context, Result};
use common::{peer, prompt, GGUF};
use infini::engine::generate::{generate, prefill, GenerateOptions, Greedy};
use infini::memory::{MemoryConfig, MemoryLayout};
use infini::model::{Checkpoint, LayerCache, Llama, ModelOptions};
use infini::session::SessionMemory;

fn env_list(name: &str, default: &str) -> Result<Vec<usize>> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().parse().with_context(|| format!("{name}: {s}")))
        .collect()
}

/// Decode tokens/s over `n` greedy steps after whatever `caches` hold, starting from `last`.
fn decode_speed<C: LayerCache>(
    model: &Llama,
    caches: &mut [C],
    last: u32,
    n: usize,
) -> Result<f64> {
    let options = GenerateOptions {
        max_tokens: n,
        stop_tokens: vec![],
        prefill_chunk: 1,
    };
    let out = generate(model, caches, &[last], &mut Greedy, &options, |_| true)?;
    Ok((n - 1) as f64 / out.decode.as_secs_f64())
}

fn main() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if let Ok(threads) = std::env::var("INFINI_BENCH_THREADS") {
        tch::set_num_threads(threads.parse()?);
    }
    let threads = tch::get_num_threads();
    let decode = env_list("INFINI_BENCH_DECODE", "32")?[0].max(2);
    let points = env_list("INFINI_BENCH_HISTORY", "100,1000,7800,8000,32000,100000")?;
    let checkpoint = Checkpoint::open(root.join(GGUF)).context("run ./scripts/setup.sh first")?;
    let model = checkpoint.load(ModelOptions::default())?;
    let context = model.config().max_position_embeddings as usize;
    let layout = MemoryLayout::new(MemoryConfig::default(), context, model.options().device)?;
    let text = prompt(*points.iter().max().unwrap_or(&100));
    println!(
        "batch 1, {threads} threads, int4, default memory layout, {decode} tokens decoded at each point"
    );

    // The peer at the points that fit its context.
    let peer_points: Vec<usize> = points
        .iter()
        .copied()
        .filter(|&p| p + decode < context)
        .collect();
    let peer_speeds = if std::env::var("INFINI_BENCH_PEER").as_deref() == Ok("0") {
        vec![]
    } else {
        let prompts: Vec<Vec<u32>> = peer_points.iter().map(|&p| text[..p].to_vec()).collect();
        peer(&root, &prompts, decode, threads)?
    };

    // Ours: one session that grows through every point (decoded tokens join the history too).
    let mut memory = SessionMemory::new(&model, &layout);
    let mut fed = 0;
    let mut first_point = None;
    println!("| history | ours tok/s | ms/token | vs 1k | plain KV cache tok/s | llama.cpp tok/s | ours/peer | sinks | STM | archive | LTM tokens | bytes: STM | archive | LTM | total |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &point in &points {
        let target = point.saturating_sub(1);
        if target > fed {
            let _ = prefill(&model, memory.caches(), &text[fed..target], 512)?;
            fed = target;
        }
        let speed = decode_speed(&model, memory.caches(), text[fed], decode)?;
        fed += decode; // the decoded tokens are history now (their ids differ from `text`)
        if point >= 1000 && first_point.is_none() {
            first_point = Some(speed);
        }
        let plain = if point + decode < context {
            let mut cache = model.new_cache();
            let _ = prefill(&model, &mut cache, &text[..target], 512)?;
            format!(
                "{:.1}",
                decode_speed(&model, &mut cache, text[target], decode)?
            )
        } else {
            "— (context full)".into()
        };
        let peer = peer_points
            .iter()
            .position(|&p| p == point)
            .and_then(|i| peer_speeds.get(i));
        let s = memory.stats();
        println!(
            "| {point} | {speed:.1} | {:.2} | {} | {plain} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            1000.0 / speed,
            first_point.map_or("—".into(), |f| format!("{:+.1}%", (f / speed - 1.0) * 100.0)),
            peer.map_or("—".into(), |p| format!("{:.1}", p.decode)),
            peer.map_or("—".into(), |p| format!("{:.2}", speed / p.decode)),
            s.tiers.sink_tokens,
            s.tiers.stm_tokens,
            s.tiers.archive_tokens,
            s.tiers.ltm_tokens,
            s.tiers.stm_bytes,
            s.tiers.archive_bytes,
            s.tiers.ltm_bytes,
            s.total_bytes
        );
    }
    Ok(())
}

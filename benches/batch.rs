//! Batched decode with the session memory (issue #17): tokens/s of one decode step for B rows at
//! once (`decode_rows`, what the server's continuous batching runs each step), for B = 1, 4, 16,
//! 64 by default, each row with a history of 100 or 1,000 tokens, and the time of one step. The
//! peer for many concurrent chats is llama.cpp's own server, in `make bench-load` (whole requests
//! over HTTP); this bench isolates the engine's step, which is what a kernel change moves, with
//! far less noise than a load test on a shared VM.
//!
//! One session is prefilled to each history and forked B times (copy on write: the rows share the
//! history's buffers until each writes its own tokens, as forks in the server do); then every
//! batch size decodes a few greedy steps in turn, round after round, so that a drift of the
//! machine's speed falls on every batch size alike. The figure is the median step.
//!
//! Run: `make bench-batch` (or `cargo bench --bench batch`). Environment: `INFINI_BENCH_BATCH`
//! (batch sizes, default `1,4,16,64`), `INFINI_BENCH_HISTORY` (tokens of history per row, default
//! `100,1000`), `INFINI_BENCH_DECODE` (steps per batch per round, default 8),
//! `INFINI_BENCH_ROUNDS` (default 3), `INFINI_BENCH_THREADS` (default: libtorch's, the core count).

mod common;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use common::{cpu_description, env_list, median, prompt, GGUF};
use infini::engine::batch::decode_rows;
use infini::engine::generate::prefill;
use infini::memory::{MemoryConfig, MemoryLayout};
use infini::model::{Checkpoint, ModelOptions};
use infini::session::SessionMemory;

/// B rows forked from one history, the tokens they feed next, and the seconds of each step.
struct Batch {
    history: usize,
    rows: Vec<SessionMemory>,
    next: Vec<u32>,
    times: Vec<f64>,
}

fn main() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let threads = match std::env::var("INFINI_BENCH_THREADS") {
        Ok(threads) => threads.parse()?,
        Err(_) => tch::get_num_threads(),
    };
    let _guard = tch::no_grad_guard();
    let sizes = env_list("INFINI_BENCH_BATCH", "1,4,16,64")?;
    let histories = env_list("INFINI_BENCH_HISTORY", "100,1000")?;
    let steps = env_list("INFINI_BENCH_DECODE", "8")?[0].max(1);
    let rounds = env_list("INFINI_BENCH_ROUNDS", "3")?[0].max(1);
    let checkpoint = Checkpoint::open(root.join(GGUF)).context("run ./scripts/setup.sh first")?;
    let model = checkpoint.load(ModelOptions::default())?;
    let context = model.config().max_position_embeddings as usize;
    let layout = MemoryLayout::new(MemoryConfig::default(), context, model.options().device)?;
    let text = prompt(*histories.iter().max().unwrap_or(&100));
    println!("{}", cpu_description());
    println!(
        "{threads} threads, int4, default memory layout; {}; {rounds} interleaved rounds of {steps} steps per batch, median step",
        model.matmul_paths()
    );

    let mut batches = Vec::new();
    for &history in &histories {
        let mut grown = SessionMemory::new(&model, &layout);
        let _ = prefill(&model, grown.caches(), &text[..history - 1], 512)?;
        for &size in &sizes {
            batches.push(Batch {
                history,
                rows: (0..size).map(|_| grown.fork()).collect(),
                next: vec![text[history - 1]; size],
                times: Vec::new(),
            });
        }
    }

    tch::set_num_threads(threads);
    for _ in 0..rounds {
        for batch in batches.iter_mut() {
            for _ in 0..steps {
                let start = Instant::now();
                let logits = decode_rows(
                    &model,
                    batch.rows.iter_mut().map(SessionMemory::caches),
                    &batch.next,
                )?
                .logits;
                batch.times.push(start.elapsed().as_secs_f64());
                batch.next = Vec::<i64>::try_from(logits.argmax(-1, false))?
                    .into_iter()
                    .map(|token| token as u32)
                    .collect();
            }
        }
    }

    println!("\n| history per row | rows | step (median) | tokens/s | tokens/s per row |");
    println!("|---|---|---|---|---|");
    for batch in &batches {
        let step = median(batch.times.clone());
        let rows = batch.rows.len() as f64;
        println!(
            "| {} | {} | {:.1} ms | {:.1} | {:.1} |",
            batch.history,
            batch.rows.len(),
            step * 1e3,
            rows / step,
            1.0 / step
        );
    }
    Ok(())
}

//! Constant compute per token (issue 4): decode time per token with the session memory after 1k,
//! 8k, 32k and 100k tokens of history (each within 15% of the 1k figure is the target), the memory's
//! bytes per tier at each point, and decode tokens/s at 100 and 7,800 tokens of history against
//! llama.cpp (llama-cpp-python, same GGUF, same threads, same token ids) in the same run.
//!
//! One session is prefilled through the points in turn and copied at each (through its exact
//! serialised form), and one plain KV cache is prefilled to each point that fits the context;
//! then every one of them decodes a few tokens in turn, round after round, so that a drift of the
//! machine's speed (a shared VM's is ±30% over minutes) falls on every point alike. The figure is
//! the median time per decoded token (steps that evict a block are the slow tail). Each point also
//! decodes from a second copy that does not count the archive's reads (`--no-read-counts`, the
//! memory map's heat strip), so the table gives what counting costs, measured in the same rounds.
//!
//! Run: `make bench-memory` (or `cargo bench --bench memory`). Environment: `INFINI_BENCH_THREADS`
//! (decode threads, default: libtorch's, the core count; prefill uses every core),
//! `INFINI_BENCH_DECODE` (tokens decoded per point per round, default 24), `INFINI_BENCH_ROUNDS`
//! (default 4), `INFINI_BENCH_HISTORY` (points, default `100,1000,7800,8000,32000,100000`),
//! `INFINI_BENCH_PEER=0` to skip the peer, `INFINI_BENCH_KEEP=<dir>` to keep each point's prefilled
//! memory there (serialised, named by history and layout) and read it back in later runs,
//! `INFINI_BENCH_RETENTION=sticky` for the archive's sticky retention (default `fifo`).

mod common;

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use common::{cpu_description, env_list, median, peer, prompt, GGUF};
use infini::engine::generate::{generate, prefill, GenerateOptions, Greedy};
use infini::memory::{MemoryConfig, MemoryLayout, Retention};
use infini::model::{Checkpoint, KvCache, LayerCache, Llama, ModelOptions};
use infini::session::SessionMemory;

/// Seconds of each of `n` greedy decode steps after whatever `caches` hold (the first feeds
/// `last`, each later one the token chosen before), and the last token chosen (not yet fed).
fn decode_steps<C: LayerCache>(
    model: &Llama,
    caches: &mut [C],
    last: u32,
    n: usize,
) -> Result<(Vec<f64>, u32)> {
    let options = GenerateOptions {
        max_tokens: n,
        stop_tokens: vec![],
        prefill_chunk: 1,
    };
    let mut times = Vec::with_capacity(n);
    let mut previous = Instant::now();
    let out = generate(model, caches, &[last], &mut Greedy, &options, |_| {
        times.push(previous.elapsed().as_secs_f64());
        previous = Instant::now();
        true
    })?;
    Ok((times, out.tokens.last().copied().unwrap_or(last)))
}

/// One memory decoding at a point: the memory, the next token it feeds (decoded tokens join the
/// history) and the seconds of each step so far.
struct Decoder {
    memory: SessionMemory,
    last: u32,
    times: Vec<f64>,
}

impl Decoder {
    fn new(memory: SessionMemory, last: u32) -> Self {
        Self {
            memory,
            last,
            times: Vec::new(),
        }
    }

    /// Decodes `n` tokens; the median step of this run.
    fn run(&mut self, model: &Llama, n: usize) -> Result<f64> {
        let (times, last) = decode_steps(model, self.memory.caches(), self.last, n)?;
        self.last = last;
        let middle = median(times.clone());
        self.times.extend(times);
        Ok(middle)
    }
}

/// One point's past: the session memory counting its archive's reads and a copy that does not
/// (`--no-read-counts`), and the plain KV cache when the point fits the context.
struct Point {
    history: usize,
    /// Counting, then not counting.
    ours: [Decoder; 2],
    /// Per round: the median step counting over the median step not counting (paired, so that
    /// the machine's drift between rounds cancels).
    counting_ratios: Vec<f64>,
    plain: Option<Vec<KvCache>>,
    plain_last: u32,
    plain_times: Vec<f64>,
}

fn main() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let all_cores = tch::get_num_threads();
    let threads = match std::env::var("INFINI_BENCH_THREADS") {
        Ok(threads) => threads.parse()?,
        Err(_) => all_cores,
    };
    let _guard = tch::no_grad_guard();
    let decode = env_list("INFINI_BENCH_DECODE", "24")?[0].max(2);
    let rounds = env_list("INFINI_BENCH_ROUNDS", "4")?[0].max(1);
    let mut points = env_list("INFINI_BENCH_HISTORY", "100,1000,7800,8000,32000,100000")?;
    points.sort_unstable();
    let checkpoint = Checkpoint::open(root.join(GGUF)).context("run ./scripts/setup.sh first")?;
    let model = checkpoint.load(ModelOptions::default())?;
    let context = model.config().max_position_embeddings as usize;
    let config = MemoryConfig {
        archive_retention: match std::env::var("INFINI_BENCH_RETENTION").as_deref() {
            Ok("sticky") => Retention::Sticky,
            Ok("fifo") | Err(_) => Retention::Fifo,
            Ok(other) => bail!("INFINI_BENCH_RETENTION is fifo or sticky, not `{other}`"),
        },
        ..MemoryConfig::default()
    };
    let layout = MemoryLayout::new(config.clone(), context, model.options().device)?;
    let uncounted_layout = MemoryLayout::new(
        MemoryConfig {
            count_reads: false,
            ..config.clone()
        },
        context,
        model.options().device,
    )?;
    let text = prompt(*points.iter().max().unwrap_or(&100));
    let decoded = decode * rounds;
    println!("{}", cpu_description());
    println!(
        "batch 1, {threads} decode threads, int4, default memory layout (L_stm {}, top-{} blocks of {}, \
         {:?} retention), {rounds} interleaved rounds of {decode} tokens at each point, median time \
         per token",
        config.stm_len, config.top_k_blocks, config.block_len, config.archive_retention
    );

    // The peer at the points that fit its context.
    let peer_points: Vec<usize> = points
        .iter()
        .copied()
        .filter(|&p| p + decoded < context)
        .collect();
    let peer_speeds = if std::env::var("INFINI_BENCH_PEER").as_deref() == Ok("0") {
        vec![]
    } else {
        let prompts: Vec<Vec<u32>> = peer_points.iter().map(|&p| text[..p].to_vec()).collect();
        let speeds = peer(&root, &prompts, decoded, threads)?;
        eprintln!("memory: the peer measured");
        speeds
    };

    // Every point's past, prefilled with every core: one session grows through the points in
    // turn and each point gets a copy of it read back from its exact serialised form (as a
    // server restores a session), so the longest history is prefilled once.
    tch::set_num_threads(all_cores);
    let mut growing = SessionMemory::new(&model, &layout);
    let mut seen = 0;
    let mut pasts = Vec::new();
    let kept = std::env::var_os("INFINI_BENCH_KEEP").map(PathBuf::from);
    for &history in &points {
        let target = history.saturating_sub(1);
        // A point kept by an earlier run (same model, layout and text) is read back instead of
        // prefilled again: 100k tokens take minutes.
        let kept_file = kept.as_ref().map(|dir| {
            let mut layout_hash = DefaultHasher::new();
            format!("{config:?}").hash(&mut layout_hash);
            dir.join(format!(
                "memory-{history}-{:016x}.bin",
                layout_hash.finish()
            ))
        });
        if let Some(file) = kept_file.as_ref().filter(|f| f.exists() && target > seen) {
            growing = SessionMemory::from_bytes(&std::fs::read(file)?, &model, &layout)?;
            seen = target;
        }
        if target > seen {
            let _ = prefill(&model, growing.caches(), &text[seen..target], 512)?;
            seen = target;
        }
        let bytes = growing.to_bytes();
        if let Some(file) = kept_file.filter(|f| !f.exists()) {
            std::fs::create_dir_all(file.parent().expect("a file in a directory"))?;
            std::fs::write(&file, &bytes)?;
        }
        let memory = SessionMemory::from_bytes(&bytes, &model, &layout)?;
        let uncounted = SessionMemory::from_bytes(&bytes, &model, &uncounted_layout)?;
        eprintln!("memory: prefilled {history} tokens of history");
        let plain = (history + decoded < context)
            .then(|| -> Result<Vec<KvCache>> {
                let mut cache = model.new_cache();
                let _ = prefill(&model, &mut cache, &text[..target], 512)?;
                Ok(cache)
            })
            .transpose()?;
        pasts.push(Point {
            history,
            ours: [
                Decoder::new(memory, text[target]),
                Decoder::new(uncounted, text[target]),
            ],
            counting_ratios: Vec::new(),
            plain,
            plain_last: text[target],
            plain_times: Vec::new(),
        });
    }
    drop(growing);

    // A warm-up, then the rounds.
    tch::set_num_threads(threads);
    let _ = decode_steps(&model, &mut model.new_cache(), text[0], 16)?;
    for round in 0..rounds {
        for point in pasts.iter_mut() {
            // Counting and not counting take turns going first, so that whatever the first of
            // the two pays (caches cold after the other points) falls on both alike.
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            let mut medians = [0.0; 2];
            for i in order {
                medians[i] = point.ours[i].run(&model, decode)?;
            }
            point.counting_ratios.push(medians[0] / medians[1]);
            if let Some(cache) = point.plain.as_mut() {
                let (plain, last) = decode_steps(&model, cache, point.plain_last, decode)?;
                point.plain_times.extend(plain);
                point.plain_last = last;
            }
        }
    }

    println!("| history | ours tok/s | ms/token | vs 1k | ms/token, reads not counted | counting's cost (median of paired rounds) | plain KV cache tok/s | llama.cpp tok/s | ours/peer | sinks | STM | archive | LTM tokens | bytes: STM | archive | LTM | total |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let seconds = |p: &Point| median(p.ours[0].times.clone());
    let first = pasts.iter().find(|p| p.history >= 1000).map(seconds);
    for point in &pasts {
        let ours = seconds(point);
        let plain = if point.plain_times.is_empty() {
            "— (context full)".into()
        } else {
            format!("{:.1}", 1.0 / median(point.plain_times.clone()))
        };
        let peer = peer_points
            .iter()
            .position(|&p| p == point.history)
            .and_then(|i| peer_speeds.get(i));
        let s = point.ours[0].memory.stats();
        let uncounted = median(point.ours[1].times.clone());
        println!(
            "| {} | {:.1} | {:.2} | {} | {:.2} | {:+.1}% | {plain} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            point.history,
            1.0 / ours,
            1000.0 * ours,
            first.map_or("—".into(), |f| format!("{:+.1}%", (ours / f - 1.0) * 100.0)),
            1000.0 * uncounted,
            (median(point.counting_ratios.clone()) - 1.0) * 100.0,
            peer.map_or("—".into(), |p| format!("{:.1}", p.decode)),
            peer.map_or("—".into(), |p| format!("{:.2}", 1.0 / ours / p.decode)),
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

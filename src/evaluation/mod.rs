//! `infini eval memory`: what each tier of the session memory buys (issue 4, `docs/EVALUATION.md`).
//! Perplexity of a long public-domain text at tokens 4k–8k and 12k–16k, and pass-key retrieval at
//! several lengths, for full attention (within the trained context), the STM alone, then each tier
//! added in turn, and, with the archive's budget below the text's length, what the continuous signal
//! adds over dropping what leaves the archive.

pub mod passkey;
pub mod perplexity;
pub mod recurring;
mod report;
pub mod retention;

pub use retention::{run_retention_eval, RetentionEvalArgs};

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use crate::memory::{MemoryConfig, MemoryLayout};
use crate::model::Llama;
use crate::model::ModelArgs;
use crate::session::Past;
use crate::tokenizer::Tokenizer;

/// Flags of `infini eval memory`.
#[derive(Args, Debug)]
pub struct MemoryEvalArgs {
    /// A long plain-text file (beyond 16k tokens); `make evaluate` fetches the King James Bible.
    #[arg(long)]
    pub text: PathBuf,
    /// Where the Markdown report goes (a JSON copy of the numbers goes beside it).
    #[arg(long, default_value = "docs/EVALUATION.md")]
    pub out: PathBuf,
    /// The model, its precision and device, and libtorch's CPU threads.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Pass-key prompt lengths in tokens.
    #[arg(long, value_delimiter = ',', default_values_t = [1_200, 4_800, 16_000, 32_000, 100_000])]
    pub lengths: Vec<usize>,
    /// Keys per length.
    #[arg(long, default_value_t = 5)]
    pub keys: usize,
    /// Only the readings whose names contain this text (repeat the flag for several; names hold
    /// commas, so one flag is one piece of text); all by default.
    #[arg(long)]
    pub only: Vec<String>,
    /// Tokens per forward pass while reading a prompt.
    #[arg(long, default_value_t = crate::engine::generate::PREFILL_CHUNK)]
    pub chunk: usize,
    /// L_stm of every memory reading (default: the memory's default).
    #[arg(long)]
    pub stm_len: Option<usize>,
    /// Archive budget of the two readings that show what the continuous signal adds.
    #[arg(long, default_value_t = 8_192)]
    pub small_budget: usize,
    /// Keep the numbers of an earlier run (the JSON beside `--out`) and measure only what it lacks:
    /// readings, perplexities or pass-key lengths. The report is rewritten after every reading.
    #[arg(long)]
    pub resume: bool,
}

impl MemoryEvalArgs {
    /// L_stm of every memory reading: `--stm-len`, else the memory's default.
    pub fn stm_len(&self) -> usize {
        self.stm_len.unwrap_or(MemoryConfig::default().stm_len)
    }
}

/// One way of reading the past: the plain KV cache (full attention) or a memory layout.
#[derive(Debug, Clone)]
struct Reading {
    name: String,
    memory: Option<MemoryConfig>,
    /// Longest pass-key prompt worth running (the others are known to fail or cannot run).
    max_passkey: usize,
}

fn readings(args: &MemoryEvalArgs, context: usize) -> Vec<Reading> {
    let default = MemoryConfig {
        stm_len: args.stm_len(),
        ..MemoryConfig::default()
    };
    let stm = default.stm_len;
    let sinks_stm = MemoryConfig {
        sinks: default.sinks,
        ..MemoryConfig::stm_only(stm)
    };
    let small = |ltm| MemoryConfig {
        archive_budget: args.small_budget,
        ltm,
        ..default.clone()
    };
    let all = vec![
        Reading {
            name: format!("full attention (KV cache, ≤ {context})"),
            memory: None,
            max_passkey: context,
        },
        Reading {
            name: format!("STM only (sliding window {stm})"),
            memory: Some(MemoryConfig::stm_only(stm)),
            max_passkey: 16_000,
        },
        Reading {
            name: format!("+ {} attention sinks", default.sinks),
            memory: Some(sinks_stm),
            max_passkey: 16_000,
        },
        Reading {
            name: format!(
                "+ exact archive, top-{} blocks of {} (default; budget {})",
                default.top_k_blocks, default.block_len, default.archive_budget
            ),
            memory: Some(default.clone()),
            max_passkey: usize::MAX,
        },
        Reading {
            name: format!(
                "+ exact archive, int8 K/V, top-{} blocks of {} (budget {})",
                default.top_k_blocks, default.block_len, default.archive_budget
            ),
            memory: Some(MemoryConfig {
                archive_int8: true,
                ..default.clone()
            }),
            max_passkey: usize::MAX,
        },
        Reading {
            name: format!("archive budget {}, overflow dropped", args.small_budget),
            memory: Some(small(None)),
            max_passkey: 16_000,
        },
        Reading {
            name: format!(
                "archive budget {}, overflow into the continuous signal",
                args.small_budget
            ),
            memory: Some(small(default.ltm.clone())),
            max_passkey: 16_000,
        },
    ];
    all.into_iter()
        .filter(|r| args.only.is_empty() || args.only.iter().any(|o| r.name.contains(o.as_str())))
        .collect()
}

/// The numbers of one reading.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct ReadingResult {
    name: String,
    ppl_4k_8k: Option<f64>,
    ppl_12k_16k: Option<f64>,
    /// (length, passed, tried)
    passkey: Vec<(usize, usize, usize)>,
    seconds: f64,
}

/// The per-token losses of `text` read through a fresh `past`.
fn losses(past: Past, model: &Llama, text: &[u32], chunk: usize) -> Result<Vec<f64>> {
    Ok(match past {
        Past::Plain(mut c) => perplexity::token_losses(model, &mut c, text, chunk)?,
        Past::Memory(mut m) => perplexity::token_losses(model, m.caches(), text, chunk)?,
    })
}

/// Whether a fresh `past` recalls the pass key of `trial`.
fn passes(
    past: Past,
    model: &Llama,
    tokenizer: &Tokenizer,
    trial: &passkey::Trial,
    chunk: usize,
) -> Result<bool> {
    Ok(match past {
        Past::Plain(mut c) => passkey::passes(model, tokenizer, &mut c, trial, chunk)?,
        Past::Memory(mut m) => passkey::passes(model, tokenizer, m.caches(), trial, chunk)?,
    })
}

fn run_reading(
    model: &Llama,
    tokenizer: &Tokenizer,
    text: &[u32],
    reading: &Reading,
    args: &MemoryEvalArgs,
    previous: Option<&ReadingResult>,
) -> Result<ReadingResult> {
    let started = Instant::now();
    let context = model.config().max_position_embeddings as usize;
    let layout = reading
        .memory
        .clone()
        .map(|c| MemoryLayout::new(c, context, model.options().device))
        .transpose()?;
    let (ppl_4k_8k, ppl_12k_16k) = match previous {
        Some(p) => (p.ppl_4k_8k, p.ppl_12k_16k),
        None => {
            let limit = if layout.is_some() { 16_384 } else { context };
            let text = &text[..text.len().min(limit)];
            let losses = losses(Past::new(model, layout.as_ref()), model, text, args.chunk)?;
            (
                perplexity::perplexity(&losses, 4_096..8_192),
                perplexity::perplexity(&losses, 12_288..16_384),
            )
        }
    };
    eprintln!(
        "{}: ppl 4k–8k {ppl_4k_8k:?}, 12k–16k {ppl_12k_16k:?}",
        reading.name
    );
    let mut passkey = previous.map_or_else(Vec::new, |p| p.passkey.clone());
    for &length in args.lengths.iter().filter(|&&l| l <= reading.max_passkey) {
        if passkey.iter().any(|p| p.0 == length) {
            continue;
        }
        let mut passed = 0;
        for (key, depth) in passkey::keys_and_depths(args.keys, length) {
            let trial = passkey::trial(tokenizer, length, key, depth)?;
            let ok = passes(
                Past::new(model, layout.as_ref()),
                model,
                tokenizer,
                &trial,
                args.chunk,
            )?;
            passed += usize::from(ok);
        }
        eprintln!(
            "{}: pass key at {length}: {passed}/{}",
            reading.name, args.keys
        );
        passkey.push((length, passed, args.keys));
    }
    passkey.sort_unstable();
    Ok(ReadingResult {
        name: reading.name.clone(),
        ppl_4k_8k,
        ppl_12k_16k,
        passkey,
        seconds: previous.map_or(0.0, |p| p.seconds) + started.elapsed().as_secs_f64(),
    })
}

fn write_report(args: &MemoryEvalArgs, results: &[ReadingResult]) -> Result<()> {
    write_results(&args.out, &report::markdown(args, results), results)
}

/// The report `markdown` to `out`, and the numbers `results` as JSON beside it (what
/// [`earlier_results`] reads back).
fn write_results<T: Serialize>(out: &std::path::Path, markdown: &str, results: &[T]) -> Result<()> {
    std::fs::write(out, markdown).with_context(|| format!("writing {}", out.display()))?;
    std::fs::write(
        out.with_extension("json"),
        serde_json::to_string_pretty(results)?,
    )?;
    Ok(())
}

/// `text` (read from `path`) as tokens, when it has more than `needed`.
fn long_text_tokens(
    tokenizer: &Tokenizer,
    text: &str,
    path: &std::path::Path,
    needed: usize,
) -> Result<Vec<u32>> {
    let tokens = tokenizer.encode(text)?;
    if tokens.len() <= needed {
        bail!(
            "{} has {} tokens; the evaluation needs more than {needed}",
            path.display(),
            tokens.len()
        );
    }
    Ok(tokens)
}

/// With `resume`, the results of an earlier run (the JSON beside the report `out`; none when it
/// does not exist yet); otherwise none.
fn earlier_results<T: serde::de::DeserializeOwned>(
    out: &std::path::Path,
    resume: bool,
) -> Result<Vec<T>> {
    let json = out.with_extension("json");
    match std::fs::read_to_string(&json) {
        Ok(text) if resume => serde_json::from_str(&text)
            .with_context(|| format!("{} is not an earlier run's results", json.display())),
        _ => Ok(Vec::new()),
    }
}

/// Runs every reading and writes the report.
pub fn run_memory_eval(args: &MemoryEvalArgs) -> Result<()> {
    let _inference = tch::no_grad_guard();
    let text = std::fs::read_to_string(&args.text)
        .with_context(|| format!("reading the evaluation text {}", args.text.display()))?;
    let (model, tokenizer) = args.model.load()?;
    let tokens = long_text_tokens(&tokenizer, &text, &args.text, 16_384)?;
    let context = model.config().max_position_embeddings as usize;
    let mut results: Vec<ReadingResult> = earlier_results(&args.out, args.resume)?;
    for reading in readings(args, context) {
        let index = results.iter().position(|r| r.name == reading.name);
        let previous = index.map(|i| results[i].clone());
        let result = run_reading(
            &model,
            &tokenizer,
            &tokens,
            &reading,
            args,
            previous.as_ref(),
        )?;
        match index {
            Some(i) => results[i] = result,
            None => results.push(result),
        }
        write_report(args, &results)?;
    }
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

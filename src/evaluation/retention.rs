//! `infini eval retention` (issue 19): what a bounded archive keeps, by retention policy. For each
//! reading (archive budget × `fifo`/`sticky` × signal on/off, and the unbounded archive): the
//! recurring fact recalled after k uses ([`super::recurring`]; k = 0 is a pass key stated once and
//! never used), perplexity of the text at 12k–16k and 28k–32k, and the bytes of a session's memory
//! at the longest length. Written as Markdown and JSON after every cell, so a long run can be
//! resumed (`--resume`) and read while it runs.

use std::fmt::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};

use super::{perplexity, recurring, report};
use crate::memory::{MemoryConfig, MemoryLayout, Retention};
use crate::model::{Llama, ModelArgs};
use crate::session::SessionMemory;
use crate::tokenizer::Tokenizer;

/// Flags of `infini eval retention`.
#[derive(Args, Debug)]
pub struct RetentionEvalArgs {
    /// A long plain-text file (beyond 32k tokens) for the perplexity; `make evaluate` fetches the
    /// King James Bible.
    #[arg(long)]
    pub text: PathBuf,
    /// Where the Markdown report goes (a JSON copy of the numbers goes beside it).
    #[arg(long, default_value = "docs/RETENTION.md")]
    pub out: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Conversation lengths in tokens.
    #[arg(long, value_delimiter = ',', default_values_t = [32_000, 100_000])]
    pub lengths: Vec<usize>,
    /// How often the fact is used before the long stretch of text (k).
    #[arg(long, value_delimiter = ',', default_values_t = [0, 1, 3])]
    pub uses: Vec<usize>,
    /// Trials per cell.
    #[arg(long, default_value_t = 5)]
    pub trials: usize,
    /// Archive budgets (tokens) of the bounded readings.
    #[arg(long, value_delimiter = ',', default_values_t = [8_192, 32_768])]
    pub budgets: Vec<usize>,
    /// Only the readings whose names contain this text (repeat the flag for several; names hold
    /// commas, so one flag is one piece of text); all by default.
    #[arg(long)]
    pub only: Vec<String>,
    /// Skip the perplexity (two 32k-token passes per reading).
    #[arg(long)]
    pub no_perplexity: bool,
    /// Tokens per forward pass while reading text.
    #[arg(long, default_value_t = crate::engine::generate::PREFILL_CHUNK)]
    pub chunk: usize,
    /// Keep the numbers of an earlier run (the JSON beside `--out`) and measure only what it lacks.
    #[arg(long)]
    pub resume: bool,
}

/// One reading: a name and its memory layout.
struct Reading {
    name: String,
    config: MemoryConfig,
}

fn readings(args: &RetentionEvalArgs) -> Vec<Reading> {
    let default = MemoryConfig::default();
    let mut all = vec![];
    for &budget in &args.budgets {
        for retention in [Retention::Fifo, Retention::Sticky] {
            for signal in [true, false] {
                let name = format!(
                    "budget {budget}, {}, signal {}",
                    retention_name(retention),
                    if signal { "on" } else { "off" }
                );
                let config = MemoryConfig {
                    archive_budget: budget,
                    archive_retention: retention,
                    ltm: signal.then(|| default.ltm.clone()).flatten(),
                    ..default.clone()
                };
                all.push(Reading { name, config });
            }
        }
    }
    all.push(Reading {
        name: format!(
            "unbounded archive (budget {}, the default)",
            default.archive_budget
        ),
        config: default,
    });
    all.into_iter()
        .filter(|r| args.only.is_empty() || args.only.iter().any(|o| r.name.contains(o.as_str())))
        .collect()
}

fn retention_name(retention: Retention) -> &'static str {
    match retention {
        Retention::Fifo => "fifo",
        Retention::Sticky => "sticky",
    }
}

/// The numbers of one reading.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ReadingResult {
    name: String,
    /// (length, k, recalled at the end, trials, uses answered, uses asked)
    recall: Vec<(usize, usize, usize, usize, usize, usize)>,
    ppl_12k_16k: Option<f64>,
    ppl_28k_32k: Option<f64>,
    /// (length, bytes of the memory at the end of the last trial)
    bytes: Vec<(usize, usize)>,
    seconds: f64,
}

/// Trial `i` of a cell: its key (5 digits, fixed per length, k and trial, so every reading faces
/// the same prompts) and how much later than [`recurring::FACT_AT`] the fact comes (0–800 tokens,
/// so that it falls at different places in its archive block).
fn key_and_delay(length: usize, uses: usize, trial: usize) -> (u32, usize) {
    let seed = length as u64 * 7_919 + uses as u64 * 1_009 + trial as u64 * 104_729;
    (10_000 + (seed % 90_000) as u32, trial * 200 % 1_000)
}

fn run_reading(
    model: &Llama,
    tokenizer: &Tokenizer,
    text: &[u32],
    reading: &Reading,
    args: &RetentionEvalArgs,
    mut result: ReadingResult,
    write: &mut dyn FnMut(&ReadingResult) -> Result<()>,
) -> Result<ReadingResult> {
    let started = Instant::now();
    let layout = MemoryLayout::for_model(reading.config.clone(), model)?;
    result.name = reading.name.clone();
    if !args.no_perplexity && result.ppl_12k_16k.is_none() {
        let mut memory = SessionMemory::new(model, &layout);
        let text = &text[..32_768];
        let losses = perplexity::token_losses(model, memory.caches(), text, args.chunk)?;
        result.ppl_12k_16k = perplexity::perplexity(&losses, 12_288..16_384);
        result.ppl_28k_32k = perplexity::perplexity(&losses, 28_672..32_768);
        eprintln!(
            "{}: ppl 12k–16k {:?}, 28k–32k {:?}",
            reading.name, result.ppl_12k_16k, result.ppl_28k_32k
        );
        write(&result)?;
    }
    for &length in &args.lengths {
        for &uses in &args.uses {
            if result.recall.iter().any(|r| (r.0, r.1) == (length, uses)) {
                continue;
            }
            let (mut recalled, mut answered) = (0, 0);
            let mut bytes = 0;
            for trial in 0..args.trials {
                let (key, delay) = key_and_delay(length, uses, trial);
                let conversation = recurring::trial(tokenizer, delay, length, key, uses)?;
                let mut memory = SessionMemory::new(model, &layout);
                let answers = recurring::answers(
                    model,
                    tokenizer,
                    memory.caches(),
                    &conversation,
                    args.chunk,
                )?;
                recalled += usize::from(answers.at_end);
                answered += answers.at_uses.iter().filter(|&&a| a).count();
                bytes = memory.stats().total_bytes;
                eprintln!(
                    "{}: {length} tokens, k = {uses}, trial {trial}: uses {:?}, end {}",
                    reading.name, answers.at_uses, answers.at_end
                );
            }
            result.recall.push((
                length,
                uses,
                recalled,
                args.trials,
                answered,
                uses * args.trials,
            ));
            result.recall.sort_unstable();
            if !result.bytes.iter().any(|b| b.0 == length) {
                result.bytes.push((length, bytes));
                result.bytes.sort_unstable();
            }
            result.seconds += started.elapsed().as_secs_f64();
            write(&result)?;
        }
    }
    Ok(result)
}

/// Runs every reading and writes the report.
pub fn run_retention_eval(args: &RetentionEvalArgs) -> Result<()> {
    let _inference = tch::no_grad_guard();
    let text = std::fs::read_to_string(&args.text)
        .with_context(|| format!("reading the evaluation text {}", args.text.display()))?;
    let (model, tokenizer) = args.model.load()?;
    let tokens = super::long_text_tokens(&tokenizer, &text, &args.text, 32_768)?;
    let mut results: Vec<ReadingResult> = super::earlier_results(&args.out, args.resume)?;
    for reading in readings(args) {
        let index = results.iter().position(|r| r.name == reading.name);
        let index = index.unwrap_or_else(|| {
            results.push(ReadingResult::default());
            results.len() - 1
        });
        let previous = std::mem::take(&mut results[index]);
        let mut write = |result: &ReadingResult| -> Result<()> {
            let mut all = results.clone();
            all[index] = result.clone();
            write_report(args, &all, model.options().device)
        };
        let result = run_reading(
            &model, &tokenizer, &tokens, &reading, args, previous, &mut write,
        )?;
        results[index] = result;
        write_report(args, &results, model.options().device)?;
    }
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

fn write_report(
    args: &RetentionEvalArgs,
    results: &[ReadingResult],
    device: tch::Device,
) -> Result<()> {
    super::write_results(&args.out, &markdown(args, results, device), results)
}

fn markdown(args: &RetentionEvalArgs, results: &[ReadingResult], device: tch::Device) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Archive retention: what a bounded archive keeps\n");
    let _ = writeln!(
        md,
        "Written by `infini eval retention` ({}), on {}. Each cell: the recurring fact recalled at \
         the end of the conversation, of {} trials (in brackets: the uses the model answered \
         right, of those asked). k = 0 is a pass key stated once and never used.\n",
        args.text.display(),
        report::machine(device),
        args.trials
    );
    // Every cell measured, in this run or an earlier one (`--resume`), by length then k.
    let mut columns: Vec<(usize, usize)> = results
        .iter()
        .flat_map(|r| r.recall.iter().map(|cell| (cell.0, cell.1)))
        .collect();
    columns.sort_unstable();
    columns.dedup();
    let mut header = String::from("| reading |");
    let mut rule = String::from("|---|");
    for (length, uses) in &columns {
        let _ = write!(header, " {}k, k = {uses} |", length / 1_000);
        rule.push_str("---|");
    }
    header.push_str(" ppl 12k–16k | ppl 28k–32k | bytes at the longest |");
    rule.push_str("---|---|---|");
    let _ = writeln!(md, "{header}\n{rule}");
    for result in results {
        let mut row = format!("| {} |", result.name);
        for &(length, uses) in &columns {
            let cell = result.recall.iter().find(|r| (r.0, r.1) == (length, uses));
            let _ = match cell {
                Some(&(_, _, recalled, trials, answered, asked)) if asked > 0 => {
                    write!(row, " {recalled}/{trials} ({answered}/{asked}) |")
                }
                Some(&(_, _, recalled, trials, ..)) => write!(row, " {recalled}/{trials} |"),
                None => write!(row, " — |"),
            };
        }
        let ppl = |v: Option<f64>| v.map_or_else(|| "—".into(), |v| format!("{v:.2}"));
        let bytes = result
            .bytes
            .last()
            .map_or_else(|| "—".into(), |&(_, b)| format!("{:.1} MB", b as f64 / 1e6));
        let _ = writeln!(
            row,
            " {} | {} | {bytes} |",
            ppl(result.ppl_12k_16k),
            ppl(result.ppl_28k_32k)
        );
        md.push_str(&row);
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        args: RetentionEvalArgs,
    }

    fn parse(flags: &[&str]) -> RetentionEvalArgs {
        let argv = ["retention", "--text", "text.txt"]
            .into_iter()
            .chain(flags.iter().copied());
        Command::try_parse_from(argv).expect("the flags parse").args
    }

    fn names(flags: &[&str]) -> Vec<String> {
        readings(&parse(flags))
            .into_iter()
            .map(|r| r.name)
            .collect()
    }

    /// The report shows every cell measured, whichever run measured it (`--resume` with other
    /// `--lengths` or `--uses`), by length then k, and a dash where a reading lacks one.
    #[test]
    fn the_report_shows_every_cell_measured_by_any_run() {
        let result = |name: &str, recall| ReadingResult {
            name: name.into(),
            recall,
            ..ReadingResult::default()
        };
        let results = [
            result(
                "fifo",
                vec![(32_000, 3, 0, 5, 15, 15), (100_000, 3, 0, 5, 15, 15)],
            ),
            result(
                "sticky",
                vec![(32_000, 0, 1, 5, 0, 0), (32_000, 3, 5, 5, 15, 15)],
            ),
        ];
        let md = markdown(
            &parse(&["--lengths", "32000", "--uses", "0"]),
            &results,
            tch::Device::Cpu,
        );
        let row = |start: &str| {
            md.lines()
                .find(|l| l.starts_with(start))
                .expect(start)
                .to_string()
        };
        assert!(
            row("| reading |").starts_with("| reading | 32k, k = 0 | 32k, k = 3 | 100k, k = 3 |"),
            "{md}"
        );
        assert!(
            row("| fifo |").starts_with("| fifo | — | 0/5 (15/15) | 0/5 (15/15) |"),
            "{md}"
        );
        assert!(
            row("| sticky |").starts_with("| sticky | 1/5 | 5/5 (15/15) | — |"),
            "{md}"
        );
    }

    /// A reading's name holds commas, so `--only` takes each piece of text whole (repeated for
    /// several): one reading named in full is that reading alone.
    #[test]
    fn only_picks_readings_by_a_piece_of_their_name_commas_included() {
        let budget = ["--budgets", "8192"];
        let one = [&budget[..], &["--only", "budget 8192, sticky, signal on"]].concat();
        assert_eq!(names(&one), ["budget 8192, sticky, signal on"]);
        let two = [
            &budget[..],
            &["--only", "fifo, signal off", "--only", "unbounded"],
        ]
        .concat();
        assert_eq!(names(&two).len(), 2, "{:?}", names(&two));
        assert_eq!(
            names(&["--budgets", "8192,32768"]).len(),
            9,
            "every reading by default"
        );
    }
}

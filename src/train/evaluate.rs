//! Held-out evaluation of a sorting checkpoint (`infinity-former.md` §5.1, §7.2): token accuracy
//! of teacher-forced argmax predictions over the 20 target positions, on sequences freshly drawn
//! from the evaluation RNG stream (never a training batch).

use super::checkpoint;
use super::native_model::SortingModel;
use super::sorting_data::{batch_rng, generate_batch, EVAL_STREAM};
use anyhow::{bail, Result};
use serde::Serialize;
use std::path::Path;
use tch::{nn, Device, Tensor};

/// The accuracy at one sequence length.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LengthResult {
    pub length: usize,
    pub sequences: usize,
    /// Correct target tokens / (20 × sequences).
    pub accuracy: f64,
    /// Mean cross-entropy over the target tokens.
    pub loss: f64,
}

/// Evaluates `model` on `sequences` held-out sequences of each length, drawn with `seed` in
/// batches of `batch_size` (the held-out set is a function of seed, length and batch size).
pub fn evaluate(
    model: &SortingModel,
    lengths: &[usize],
    sequences: usize,
    batch_size: usize,
    seed: u64,
) -> Vec<LengthResult> {
    lengths
        .iter()
        .map(|&length| {
            let (mut correct, mut total, mut loss_sum) = (0i64, 0i64, 0.0);
            let mut done = 0;
            let mut index = 0u64;
            while done < sequences {
                let rows = batch_size.min(sequences - done);
                let mut rng = batch_rng(seed, EVAL_STREAM + (length as u64) * 1_000_000, index);
                let lines = Tensor::from_slice(&generate_batch(&mut rng, rows, length))
                    .view([rows as i64, -1])
                    .to_device(model.device());
                let score = tch::no_grad(|| model.score_targets(&lines, length, false));
                correct += score.correct;
                total += score.total;
                loss_sum += score.loss.double_value(&[]) * score.total as f64;
                done += rows;
                index += 1;
            }
            LengthResult {
                length,
                sequences,
                accuracy: correct as f64 / total as f64,
                loss: loss_sum / total as f64,
            }
        })
        .collect()
}

/// Loads the checkpoint in `dir` onto `device` and evaluates it.
pub fn evaluate_checkpoint(
    dir: &Path,
    device: Device,
    lengths: &[usize],
    sequences: usize,
    batch_size: usize,
    seed: u64,
) -> Result<(checkpoint::RunState, Vec<LengthResult>)> {
    if lengths.is_empty() || lengths.contains(&0) || sequences == 0 || batch_size == 0 {
        bail!(
            "--lengths must list positive lengths, and --sequences and --batch-size be at least 1"
        );
    }
    let state = checkpoint::load_state(dir)?;
    let mut vs = nn::VarStore::new(device);
    let model = SortingModel::new(&vs.root(), &state.config);
    checkpoint::load_weights(dir, &mut vs)?;
    let results = evaluate(&model, lengths, sequences, batch_size, seed);
    Ok((state, results))
}

/// The results as a Markdown table.
pub fn markdown_table(results: &[LengthResult]) -> String {
    let mut table = String::from(
        "| length | held-out sequences | token accuracy | target loss |\n|---|---|---|---|\n",
    );
    for r in results {
        table += &format!(
            "| {} | {} | {:.4} | {:.4} |\n",
            r.length, r.sequences, r.accuracy, r.loss
        );
    }
    table
}

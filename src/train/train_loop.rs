//! The sorting training loop (`infinity-former.md` §5.1, with the fixes of §7.3.8 and §7.4): one
//! optimiser step per batch of whole sequences, gradients only through the last segment, one
//! global clip per step, the schedule stepped every step; progress lines and resumable
//! checkpoints.

use super::checkpoint::{self, RunState};
use super::config::SortingConfig;
use super::native_model::SortingModel;
use super::optimizer::Adam;
use super::sorting_data::{batch_rng, generate_batch, TRAIN_STREAM};
use anyhow::{bail, Result};
use rand::Rng;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;
use tch::{nn, Device, Tensor};

/// How a run is driven (not part of the model's config).
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Checkpoint directory: written during the run, read on `resume`.
    pub out: PathBuf,
    /// Continue the run saved in `out` instead of starting a new one.
    pub resume: bool,
    pub device: Device,
    /// A progress line every this many steps.
    pub log_every: usize,
    /// A checkpoint every this many steps (and always at the end).
    pub checkpoint_every: usize,
    /// Stop (with a checkpoint) once this many steps are done in total, to `resume` later.
    pub stop_after: Option<usize>,
}

/// The length and the token lines `[B, length + 21]` of training batch `step`.
pub fn training_batch(config: &SortingConfig, step: usize, device: Device) -> (usize, Tensor) {
    let mut rng = batch_rng(config.seed, TRAIN_STREAM, step as u64);
    let length = config.train_lengths[rng.gen_range(0..config.train_lengths.len())];
    let lines = generate_batch(&mut rng, config.batch_size, length);
    let tensor = Tensor::from_slice(&lines)
        .view([config.batch_size as i64, -1])
        .to_device(device);
    (length, tensor)
}

/// Statistics of the steps since the last progress line.
#[derive(Default)]
struct Window {
    loss: f64,
    correct: i64,
    total: i64,
    steps: usize,
    tokens: u64,
    started: Option<Instant>,
}

fn format_duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    format!("{}h{:02}m{:02}s", s / 3600, (s / 60) % 60, s % 60)
}

/// One optimiser step on training batch `step`; returns (loss, correct, total, tokens).
fn train_step(model: &SortingModel, adam: &mut Adam, step: usize) -> (f64, i64, i64, u64) {
    let config = model.config();
    let (length, lines) = training_batch(config, step, model.device());
    let score = model.score_targets(&lines, length, true);
    let objective = &score.loss + &score.kl;
    objective.backward();
    let lr = Adam::schedule(
        config.learning_rate,
        step,
        config.warmup_steps,
        config.steps,
    );
    adam.step(lr, config.grad_clip);
    let tokens = lines.numel() as u64;
    (
        score.loss.double_value(&[]),
        score.correct,
        score.total,
        tokens,
    )
}

/// Trains a new run with `config`, or resumes the one in `options.out`; writes progress lines to
/// `log`; returns the final state (also saved in `options.out`).
pub fn train(
    config: Option<SortingConfig>,
    options: &RunOptions,
    log: &mut dyn Write,
) -> Result<RunState> {
    let mut state = match (options.resume, config) {
        (true, None) => checkpoint::load_state(&options.out)?,
        (false, Some(config)) => {
            if checkpoint::exists(&options.out) {
                bail!("{} already holds a checkpoint: pass --resume to continue it, or choose another --out", options.out.display());
            }
            config.validate().map_err(anyhow::Error::msg)?;
            RunState {
                config,
                step: 0,
                elapsed_s: 0.0,
                tokens: 0,
            }
        }
        (true, Some(_)) => {
            bail!("--resume continues the saved config; drop the hyper-parameter flags")
        }
        (false, None) => bail!("a new run needs a config"),
    };
    let config = state.config.clone();
    tch::manual_seed(config.seed as i64);
    let mut vs = nn::VarStore::new(options.device);
    let model = SortingModel::new(&vs.root(), &config);
    let mut adam = Adam::new(&vs);
    if options.resume {
        checkpoint::load_weights(&options.out, &mut vs)?;
        checkpoint::load_optimizer(&options.out, &mut adam, state.step)?;
        writeln!(
            log,
            "resuming {} at step {}/{}",
            options.out.display(),
            state.step,
            config.steps
        )?;
    }
    let parameters: i64 = vs
        .trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum();
    writeln!(
        log,
        "sorting: {} layers, d_model {}, {} parameters, LTM {}, lengths {:?}, {} steps of batch {}",
        config.layers,
        config.d_model,
        parameters,
        if config.use_ltm {
            "on"
        } else {
            "off (baseline)"
        },
        config.train_lengths,
        config.steps,
        config.batch_size
    )?;

    let run_start = Instant::now();
    let elapsed_before = state.elapsed_s;
    let steps_before = state.step;
    let mut window = Window::default();
    let stop = options
        .stop_after
        .map_or(config.steps, |n| n.min(config.steps));
    while state.step < stop {
        window.started.get_or_insert_with(Instant::now);
        let (loss, correct, total, tokens) = train_step(&model, &mut adam, state.step);
        if !loss.is_finite() {
            bail!(
                "loss became {loss} at step {}; lower --lr or raise --grad-clip's strictness",
                state.step
            );
        }
        state.step += 1;
        state.tokens += tokens;
        state.elapsed_s = elapsed_before + run_start.elapsed().as_secs_f64();
        window.loss += loss;
        window.correct += correct;
        window.total += total;
        window.steps += 1;
        window.tokens += tokens;
        let last = state.step == stop;
        if state.step % options.log_every == 0 || last {
            let seconds = window
                .started
                .map_or(0.0, |t| t.elapsed().as_secs_f64())
                .max(1e-9);
            let per_step = run_start.elapsed().as_secs_f64() / (state.step - steps_before) as f64;
            writeln!(
                log,
                "step {}/{}  loss {:.4}  acc {:.3}  tok/s {:.0}  elapsed {}  eta {}",
                state.step,
                config.steps,
                window.loss / window.steps as f64,
                window.correct as f64 / window.total.max(1) as f64,
                window.tokens as f64 / seconds,
                format_duration(state.elapsed_s),
                format_duration(per_step * (config.steps - state.step) as f64),
            )?;
            log.flush()?;
            window = Window::default();
        }
        if state.step % options.checkpoint_every == 0 || last {
            checkpoint::save(&options.out, &vs, &adam, &state)?;
        }
    }
    Ok(state)
}

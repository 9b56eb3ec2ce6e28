//! Checkpoints of a sorting run: a directory holding the weights (`model.safetensors`, written by
//! `VarStore::save`), the Adam moments (`optimizer.safetensors`) and the run's state (`run.json`:
//! the config, the step reached, the time and tokens spent). Each file is written beside its
//! final name and renamed, so an interrupted save leaves the previous checkpoint whole.

use super::config::SortingConfig;
use super::optimizer::Adam;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{nn, Tensor};

const MODEL_FILE: &str = "model.safetensors";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const RUN_FILE: &str = "run.json";

/// Where a run stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub config: SortingConfig,
    /// Optimiser steps completed.
    pub step: usize,
    /// Wall-clock seconds of training so far (over every resumption).
    pub elapsed_s: f64,
    /// Tokens processed so far.
    pub tokens: u64,
}

/// The path of the weights file inside a checkpoint directory.
pub fn model_path(dir: &Path) -> PathBuf {
    dir.join(MODEL_FILE)
}

/// Whether `dir` holds a checkpoint.
pub fn exists(dir: &Path) -> bool {
    dir.join(RUN_FILE).is_file() && model_path(dir).is_file()
}

/// `dir/name` is written as `dir/tmp.name` by `write`, then renamed.
fn write_atomically(dir: &Path, name: &str, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let temporary = dir.join(format!("tmp.{name}"));
    write(&temporary)?;
    std::fs::rename(&temporary, dir.join(name))
        .with_context(|| format!("renaming into {}", dir.display()))
}

/// Saves the weights, the optimiser moments and the run state into `dir` (created if needed).
pub fn save(dir: &Path, vs: &nn::VarStore, adam: &Adam, state: &RunState) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating checkpoint directory {}", dir.display()))?;
    write_atomically(dir, MODEL_FILE, |p| {
        vs.save(p)
            .with_context(|| format!("writing {}", p.display()))
    })?;
    write_atomically(dir, OPTIMIZER_FILE, |p| {
        Tensor::write_safetensors(&adam.named_moments(), p)
            .with_context(|| format!("writing {}", p.display()))
    })?;
    write_atomically(dir, RUN_FILE, |p| {
        std::fs::write(p, serde_json::to_string_pretty(state)?)
            .with_context(|| format!("writing {}", p.display()))
    })
}

/// Reads the run state of the checkpoint in `dir`.
pub fn load_state(dir: &Path) -> Result<RunState> {
    let path = dir.join(RUN_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{} is not a sorting checkpoint (no readable {RUN_FILE})",
            dir.display()
        )
    })?;
    let state: RunState =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if let Err(e) = state.config.validate() {
        bail!("{} holds an invalid config: {e}", path.display());
    }
    Ok(state)
}

/// Loads the weights of `dir` into `vs` (whose variables the model already created).
pub fn load_weights(dir: &Path, vs: &mut nn::VarStore) -> Result<()> {
    let path = model_path(dir);
    vs.load(&path)
        .with_context(|| format!("loading weights from {}", path.display()))
}

/// Loads the Adam moments of `dir` into `adam`, which continues from `step`.
pub fn load_optimizer(dir: &Path, adam: &mut Adam, step: usize) -> Result<()> {
    let path = dir.join(OPTIMIZER_FILE);
    let named =
        Tensor::read_safetensors(&path).with_context(|| format!("reading {}", path.display()))?;
    adam.load_moments(named, step as i64)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

//! A seconds-long version of `infini train sorting` / `infini eval sorting` (`infinity-former.md`
//! §5.1): a tiny ∞-former decoder with its LTM active trains a few steps, the held-out loss
//! falls, a checkpoint reloads to the same evaluation, and a stopped-and-resumed run ends where an
//! uninterrupted one does.

use infini::train::checkpoint;
use infini::train::config::SortingConfig;
use infini::train::evaluate::{evaluate, evaluate_checkpoint, LengthResult};
use infini::train::native_model::SortingModel;
use infini::train::train_loop::{train, RunOptions};
use std::path::{Path, PathBuf};
use tch::{nn, Device};

/// Segments of 8 tokens and lengths 16 and 24, so the last segment of a 24-symbol sequence reads
/// an LTM that absorbed the first segment (it left the STM), and the gate gets gradients.
fn tiny() -> SortingConfig {
    SortingConfig {
        layers: 1,
        d_model: 16,
        heads: 2,
        d_inner: 32,
        segment_len: 8,
        num_basis: 8,
        num_samples: 8,
        train_lengths: vec![16, 24],
        batch_size: 8,
        steps: 40,
        learning_rate: 1e-2,
        warmup_steps: 0,
        grad_clip: 1.0,
        seed: 5,
        ..SortingConfig::cpu()
    }
}

const LENGTHS: [usize; 2] = [16, 24];
const SEQUENCES: usize = 32;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("infini-sorting-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn options(out: &Path, resume: bool, stop_after: Option<usize>) -> RunOptions {
    RunOptions {
        out: out.to_path_buf(),
        resume,
        device: Device::Cpu,
        log_every: 10,
        checkpoint_every: 15,
        stop_after,
    }
}

fn evaluate_dir(dir: &Path) -> Vec<LengthResult> {
    evaluate_checkpoint(dir, Device::Cpu, &LENGTHS, SEQUENCES, 16, 9)
        .expect("evaluate")
        .1
}

#[test]
fn a_few_steps_lower_the_loss_and_checkpoints_reload_and_resume_exactly() {
    tch::set_num_threads(1);
    let config = tiny();

    // The held-out loss of the initial weights (same seed as the run, so the same weights).
    tch::manual_seed(config.seed as i64);
    let vs = nn::VarStore::new(Device::Cpu);
    let initial = SortingModel::new(&vs.root(), &config);
    let before = evaluate(&initial, &LENGTHS, SEQUENCES, 16, 9);

    let straight = scratch("straight");
    let mut log = Vec::new();
    let state = train(
        Some(config.clone()),
        &options(&straight, false, None),
        &mut log,
    )
    .expect("train");
    assert_eq!(state.step, config.steps);
    let text = String::from_utf8(log).unwrap();
    assert!(
        text.contains("step 40/40") && text.contains("tok/s") && text.contains("eta"),
        "{text}"
    );

    // The loss falls at both lengths, by more than 0.05 nats (ln 22 − ln 20 ≈ 0.095 is what
    // learning to predict only symbols is worth).
    let after = evaluate_dir(&straight);
    for (b, a) in before.iter().zip(&after) {
        assert!(
            a.loss < b.loss - 0.05,
            "length {}: loss {} → {}",
            a.length,
            b.loss,
            a.loss
        );
    }

    // Reloading the weights gives the same evaluation (loss to 1e-6, accuracy exactly).
    let state = checkpoint::load_state(&straight).unwrap();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let reloaded = SortingModel::new(&vs.root(), &state.config);
    checkpoint::load_weights(&straight, &mut vs).unwrap();
    let again = evaluate(&reloaded, &LENGTHS, SEQUENCES, 16, 9);
    for (a, b) in after.iter().zip(&again) {
        assert_eq!(a.accuracy, b.accuracy);
        assert!((a.loss - b.loss).abs() < 1e-6, "{} vs {}", a.loss, b.loss);
    }

    // Stopping at step 15 and resuming reaches the same weights' evaluation as going straight
    // through (the data, the weights and Adam's moments all come back), to 1e-4 in loss.
    let split = scratch("split");
    train(
        Some(config.clone()),
        &options(&split, false, Some(15)),
        &mut Vec::new(),
    )
    .expect("first half");
    assert_eq!(checkpoint::load_state(&split).unwrap().step, 15);
    train(None, &options(&split, true, None), &mut Vec::new()).expect("resume");
    let resumed = evaluate_dir(&split);
    for (a, b) in after.iter().zip(&resumed) {
        assert!(
            (a.loss - b.loss).abs() < 1e-4,
            "straight {} vs resumed {}",
            a.loss,
            b.loss
        );
    }

    // A second fresh run into an existing checkpoint is refused with a clear message.
    let err = train(
        Some(config),
        &options(&straight, false, None),
        &mut Vec::new(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("--resume"), "{err}");
    let _ = std::fs::remove_dir_all(&straight);
    let _ = std::fs::remove_dir_all(&split);
}

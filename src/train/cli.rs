//! `infini train sorting` and `infini eval sorting`: every hyper-parameter of [`SortingConfig`]
//! is a flag over a preset (`cpu` or `paper`).

use super::config::SortingConfig;
use super::evaluate::{evaluate_checkpoint, markdown_table};
use super::train_loop::{train, RunOptions};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;
use tch::Device;

/// Tasks of `infini train`.
#[derive(Subcommand, Debug)]
pub enum TrainTask {
    /// Train the ∞-former (or, with --no-ltm, the memoryless baseline) on the sorting task of
    /// the paper (§5.1).
    Sorting(Box<TrainSortingArgs>),
}

/// The starting point of the hyper-parameters.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Preset {
    /// Scaled down for a 2-core CPU (d_model 64, 2 layers, STM 64, N 64, lengths 64/256/512).
    Cpu,
    /// The released sorting script (§5.1): 3 layers, d_model 300, STM 1024, N 512, length 8000.
    Paper,
}

/// Hyper-parameter flags; each one given overrides the preset.
#[derive(Args, Debug, Default, PartialEq)]
pub struct HyperParameters {
    #[arg(long)]
    pub layers: Option<usize>,
    #[arg(long)]
    pub d_model: Option<usize>,
    #[arg(long)]
    pub heads: Option<usize>,
    #[arg(long)]
    pub d_inner: Option<usize>,
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Tokens per segment; also the STM size and the LTM chunk length.
    #[arg(long)]
    pub segment_len: Option<usize>,
    /// N, RBFs of the memory signal.
    #[arg(long)]
    pub num_basis: Option<usize>,
    /// M, points resampled per memory update.
    #[arg(long)]
    pub num_samples: Option<usize>,
    /// τ, the contraction factor.
    #[arg(long)]
    pub contraction: Option<f64>,
    /// λ, the ridge penalty.
    #[arg(long)]
    pub ridge_penalty: Option<f64>,
    /// RBF widths, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub widths: Option<Vec<f64>>,
    /// Lower clamp of σ².
    #[arg(long)]
    pub min_variance: Option<f64>,
    #[arg(long)]
    pub kl_weight: Option<f64>,
    #[arg(long)]
    pub kl_prior_std: Option<f64>,
    /// Training sequence lengths, comma-separated; each batch draws one.
    #[arg(long, value_delimiter = ',')]
    pub train_lengths: Option<Vec<usize>>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub steps: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    #[arg(long)]
    pub grad_clip: Option<f64>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Switch the long-term memory off: the baseline.
    #[arg(long)]
    pub no_ltm: bool,
}

impl HyperParameters {
    /// Whether any flag was given.
    fn any(&self) -> bool {
        *self != HyperParameters::default()
    }

    /// The preset with every given flag applied.
    pub fn apply(&self, mut c: SortingConfig) -> SortingConfig {
        macro_rules! set {
            ($($flag:ident => $field:ident),*) => { $(if let Some(v) = &self.$flag { c.$field = v.clone(); })* };
        }
        set!(layers => layers, d_model => d_model, heads => heads, d_inner => d_inner, dropout => dropout,
            segment_len => segment_len, num_basis => num_basis, num_samples => num_samples,
            contraction => contraction, ridge_penalty => ridge_penalty, widths => widths,
            min_variance => min_variance, kl_weight => kl_weight, kl_prior_std => kl_prior_std,
            train_lengths => train_lengths, batch_size => batch_size, steps => steps, lr => learning_rate,
            warmup_steps => warmup_steps, grad_clip => grad_clip, seed => seed);
        if self.no_ltm {
            c.use_ltm = false;
        }
        c
    }
}

/// Arguments of `infini train sorting`.
#[derive(Args, Debug)]
pub struct TrainSortingArgs {
    /// Checkpoint directory (model.safetensors, optimizer.safetensors, run.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run saved in --out (its config is kept; give no hyper-parameter flag).
    #[arg(long)]
    pub resume: bool,
    #[arg(long, value_enum, default_value_t = Preset::Cpu)]
    pub preset: Preset,
    #[command(flatten)]
    pub hyper: HyperParameters,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// CPU threads for torch (1 keeps a shared machine usable).
    #[arg(long, default_value_t = 1)]
    pub threads: i32,
    /// A progress line every this many steps.
    #[arg(long, default_value_t = 10)]
    pub log_every: usize,
    /// A checkpoint every this many steps (and at the end).
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: usize,
    /// Stop after this many steps in total (with a checkpoint); continue later with --resume.
    #[arg(long)]
    pub stop_after: Option<usize>,
}

/// Arguments of `infini eval sorting`.
#[derive(Args, Debug)]
pub struct EvalSortingArgs {
    /// A checkpoint directory written by `infini train sorting`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Sequence lengths to evaluate, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "128,512,1024,2048")]
    pub lengths: Vec<usize>,
    /// Held-out sequences per length.
    #[arg(long, default_value_t = 256)]
    pub sequences: usize,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Seed of the held-out sequences (drawn from a stream training never uses).
    #[arg(long, default_value_t = 2024)]
    pub seed: u64,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value_t = 1)]
    pub threads: i32,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// `--device` of the sorting commands (`crate::model::parse_device`, as every other command).
fn device(text: &str) -> Result<Device> {
    crate::model::parse_device(text).map_err(|e| anyhow::anyhow!("--device: {e}"))
}

fn check_threads(threads: i32) -> Result<()> {
    if threads < 1 {
        bail!("--threads {threads} must be at least 1");
    }
    tch::set_num_threads(threads);
    Ok(())
}

/// Runs `infini train <task>`.
pub fn run_train(task: &TrainTask) -> Result<()> {
    let TrainTask::Sorting(args) = task;
    check_threads(args.threads)?;
    if args.log_every == 0 || args.checkpoint_every == 0 {
        bail!("--log-every and --checkpoint-every must be at least 1");
    }
    let options = RunOptions {
        out: args.out.clone(),
        resume: args.resume,
        device: device(&args.device)?,
        log_every: args.log_every,
        checkpoint_every: args.checkpoint_every,
        stop_after: args.stop_after,
    };
    let config = match (args.resume, args.hyper.any()) {
        (true, true) => bail!(
            "--resume continues the config saved in {}; drop the hyper-parameter flags",
            args.out.display()
        ),
        (true, false) => None,
        (false, _) => {
            let preset = match args.preset {
                Preset::Cpu => SortingConfig::cpu(),
                Preset::Paper => SortingConfig::paper(),
            };
            Some(args.hyper.apply(preset))
        }
    };
    let state = train(config, &options, &mut std::io::stderr())?;
    println!(
        "trained {} steps; checkpoint in {}",
        state.step,
        args.out.display()
    );
    Ok(())
}

/// Runs `infini eval sorting`.
pub fn run_eval_sorting(args: &EvalSortingArgs) -> Result<()> {
    check_threads(args.threads)?;
    let device = device(&args.device)?;
    let (state, results) = evaluate_checkpoint(
        &args.checkpoint,
        device,
        &args.lengths,
        args.sequences,
        args.batch_size,
        args.seed,
    )?;
    println!(
        "checkpoint {} (LTM {}, step {}/{}), seed {}",
        args.checkpoint.display(),
        if state.config.use_ltm { "on" } else { "off" },
        state.step,
        state.config.steps,
        args.seed
    );
    print!("{}", markdown_table(&results));
    if let Some(path) = &args.json {
        let report = serde_json::json!({
            "checkpoint": args.checkpoint, "use_ltm": state.config.use_ltm, "step": state.step,
            "seed": args.seed, "config": state.config, "results": results,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

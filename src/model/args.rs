//! The model flags shared by every command that loads the model (`generate`, `chat`, `serve`):
//! which checkpoint, in what precision, on which device, with how many CPU threads; each also an
//! `INFINI_*` environment variable.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use tch::Device;

use super::{Checkpoint, Llama, ModelOptions, Precision, DEFAULT_MODEL};
use crate::tokenizer::Tokenizer;

/// Which model to run, and where.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// GGUF file or Hugging Face model folder.
    #[arg(long, env = "INFINI_MODEL", default_value = DEFAULT_MODEL)]
    pub model: PathBuf,
    /// f32, bf16 or int4 (default: int4 on the CPU, bf16 on a GPU, where int4 does not run).
    #[arg(long, env = "INFINI_PRECISION")]
    pub precision: Option<Precision>,
    /// cpu, cuda or cuda:N.
    #[arg(long, env = "INFINI_DEVICE", default_value = "cpu", value_parser = parse_device)]
    pub device: Device,
    /// CPU threads for libtorch (0: libtorch's default).
    #[arg(long, env = "INFINI_THREADS", default_value_t = 0)]
    pub threads: usize,
}

impl ModelArgs {
    /// The precision asked for, else the device's default.
    pub fn precision(&self) -> Precision {
        self.precision.unwrap_or(match self.device {
            Device::Cpu => Precision::Int4,
            _ => Precision::Bf16,
        })
    }

    /// Sets libtorch's thread count, checks the device, and loads the decoder and its tokenizer.
    pub fn load(&self) -> Result<(Llama, Tokenizer)> {
        if let Device::Cuda(n) = self.device {
            if !tch::Cuda::is_available() || n >= tch::Cuda::device_count() as usize {
                bail!("device cuda:{n} is not available on this machine");
            }
        }
        if self.threads > 0 {
            tch::set_num_threads(self.threads as i32);
        }
        let checkpoint = Checkpoint::open(&self.model)?;
        let tokenizer = checkpoint
            .tokenizer()
            .with_context(|| format!("tokenizer of {}", self.model.display()))?;
        let model = checkpoint.load(ModelOptions {
            device: self.device,
            precision: self.precision(),
        })?;
        tracing::info!(
            precision = self.precision().name(),
            native_bf16 = super::linear::cpu_has_native_bf16(),
            paths = %model.matmul_paths(),
            "model loaded"
        );
        Ok((model, tokenizer))
    }
}

/// `cpu`, `cuda` or `cuda:N` as a libtorch device (clap value parser of every `--device`).
pub fn parse_device(text: &str) -> Result<Device, String> {
    match text {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .map(Device::Cuda)
            .ok_or_else(|| format!("unknown device `{other}` (expected cpu, cuda or cuda:N)")),
    }
}

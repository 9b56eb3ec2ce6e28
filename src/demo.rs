//! `infini demo-memory`: the ∞-former memory on its own, before any model is attached.
//!
//! A smooth random signal of `features` dimensions arrives in chunks; each chunk is absorbed by
//! the unbounded update (`infinity-former.md` §3). The demo prints, at growing token counts, the
//! memory's bytes (constant), the time of one update (constant) and how well the newest chunk
//! is read back from [τ, 1] (the oldest content blurs geometrically, by design).

use crate::ltm::ridge::{midpoint_positions, update_positions};
use crate::ltm::{LongTermMemory, LtmConfig, MemoryOperators};
use anyhow::{ensure, Result};
use std::io::Write;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Arguments of `infini demo-memory`.
#[derive(clap::Args, Debug, Clone)]
pub struct MemoryDemo {
    /// Chunks to absorb.
    #[arg(long, default_value_t = 256, env = "INFINI_DEMO_CHUNKS")]
    pub chunks: usize,
    /// Vectors per chunk (L).
    #[arg(long, default_value_t = 512, env = "INFINI_DEMO_CHUNK_LEN")]
    pub chunk_len: usize,
    /// Dimensions per vector (e); 576 is SmolLM2-135M's hidden size.
    #[arg(long, default_value_t = 576, env = "INFINI_DEMO_FEATURES")]
    pub features: usize,
    /// Random seed of the synthetic signal.
    #[arg(long, default_value_t = 0, env = "INFINI_DEMO_SEED")]
    pub seed: i64,
}

/// A smooth random chunk `[1, L, e]`: a few random sinusoids per feature, sampled at `positions`.
fn smooth_chunk(positions: &[f64], features: usize) -> Tensor {
    let t = Tensor::from_slice(positions).view([-1, 1, 1]); // [L, 1, 1]
    let options = (Kind::Double, Device::Cpu);
    let frequency = Tensor::rand([1, features as i64, 4], options) * 6.0 + 0.5;
    let phase = Tensor::rand([1, features as i64, 4], options) * std::f64::consts::TAU;
    let amplitude = Tensor::randn([1, features as i64, 4], options) * 0.5;
    ((t * frequency * std::f64::consts::TAU + phase).sin() * amplitude)
        .sum_dim_intlist(-1, false, Kind::Double)
        .unsqueeze(0)
        .to_kind(Kind::Float)
}

/// Runs the demo and writes its table to `out`.
pub fn run_memory_demo(args: &MemoryDemo, out: &mut impl Write) -> Result<()> {
    ensure!(args.chunks > 0, "--chunks must be at least 1");
    ensure!(args.chunk_len > 0, "--chunk-len must be at least 1");
    ensure!(args.features > 0, "--features must be at least 1");
    tch::manual_seed(args.seed);
    let config = LtmConfig::default();
    let ops = MemoryOperators::new(&config, args.chunk_len, Kind::Float, Device::Cpu);
    let mut memory = LongTermMemory::new(&ops, 1, args.features);
    let positions = update_positions(0, args.chunk_len, config.contraction);
    let first_positions = midpoint_positions(args.chunk_len);
    writeln!(
        out,
        "∞-former memory: N = {}, M = {}, τ = {}, λ = {}, chunk L = {}, e = {}",
        config.num_basis,
        config.num_samples,
        config.contraction,
        config.ridge_penalty,
        args.chunk_len,
        args.features
    )?;
    writeln!(
        out,
        "{:>12} {:>8} {:>14} {:>12} {:>22}",
        "tokens", "updates", "memory bytes", "update ms", "newest chunk rel. err"
    )?;
    let mut report_at = 1;
    for chunk_index in 1..=args.chunks {
        let chunk = smooth_chunk(&positions, args.features);
        let started = Instant::now();
        memory.absorb(&ops, &chunk);
        let update_ms = started.elapsed().as_secs_f64() * 1e3;
        if chunk_index == report_at || chunk_index == args.chunks {
            // The first chunk is fitted at the midpoints of [0, 1]; later ones sit in [τ, 1].
            let at = if chunk_index == 1 {
                &first_positions
            } else {
                &positions
            };
            let back = memory.evaluate(&ops, &Tensor::from_slice(at).to_kind(Kind::Float));
            let error = (back - &chunk).norm().double_value(&[]) / chunk.norm().double_value(&[]);
            writeln!(
                out,
                "{:>12} {:>8} {:>14} {:>12.2} {:>22.4}",
                memory.tokens_absorbed()[0],
                memory.updates()[0],
                memory.bytes(),
                update_ms,
                error
            )?;
            report_at *= 4;
        }
    }
    Ok(())
}

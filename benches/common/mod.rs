//! What the benchmarks share: the deterministic prompts and the peer, llama-cpp-python (llama.cpp)
//! on the same GGUF, run by `scripts/reference/bench_llama_cpp.py` in the same run.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The default model's file, relative to the repository.
pub const GGUF: &str = infini::model::DEFAULT_MODEL;

/// Tokens per second of one prompt.
#[derive(Clone, Copy)]
#[allow(dead_code)] // each bench target compiles this module; memory reads decode, prefill prefill
pub struct Speed {
    pub prefill: f64,
    pub decode: f64,
}

/// The comma-separated numbers of the environment variable `name`, or of `default` when it is
/// unset; an entry that is not a number is an error that names the variable.
pub fn env_list(name: &str, default: &str) -> Result<Vec<usize>> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().parse().with_context(|| format!("{name}: {s}")))
        .collect()
}

/// The middle value (the upper one of an even count); `values` must not be empty.
#[allow(dead_code)] // each bench target compiles this module; not every one takes medians
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A field of the first processor in /proc/cpuinfo (empty when absent).
fn cpu_field(name: &str) -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find(|line| line.starts_with(name))
        .and_then(|line| line.split_once(':'))
        .map(|(_, value)| value.trim().to_string())
        .unwrap_or_default()
}

/// Whether the CPU has `flag` (as /proc/cpuinfo spells it).
fn cpu_has(flag: &str) -> bool {
    cpu_field("flags").split_whitespace().any(|f| f == flag)
}

/// The CPU's model name and the flags that decide its matmul paths (from /proc/cpuinfo), so that
/// every figure printed names the machine it was measured on.
pub fn cpu_description() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let wanted = [
        "avx2",
        "fma",
        "avx512f",
        "avx512_vnni",
        "avx512_bf16",
        "amx_bf16",
        "amx_int8",
    ];
    let present: Vec<&str> = wanted.into_iter().filter(|flag| cpu_has(flag)).collect();
    format!(
        "CPU: {} ({} logical cores; {})",
        cpu_field("model name"),
        info.lines().filter(|l| l.starts_with("processor")).count(),
        present.join(" ")
    )
}

/// Deterministic, varied token ids (ordinary vocabulary range, no special tokens).
pub fn prompt(length: usize) -> Vec<u32> {
    (0..length as u64)
        .map(|i| (100 + (i * 7919 + 13) % 48_000) as u32)
        .collect()
}

/// Whether the peer prefills one token per call: on CPUs with AMX, where the llama-cpp-python
/// build crashes on batches of two or more tokens (its prefill figures are then not its best), or
/// when `INFINI_BENCH_PEER_BATCHED=0`; `=1` forces batches.
#[allow(dead_code)] // each bench target compiles this module; the batch bench has no peer of its own
pub fn peer_prefills_token_by_token() -> bool {
    match std::env::var("INFINI_BENCH_PEER_BATCHED").as_deref() {
        Ok("1") => false,
        Ok("0") => true,
        _ => cpu_has("amx_int8"),
    }
}

#[allow(dead_code)] // each bench target compiles this module; the batch bench has no peer of its own
pub fn peer(root: &Path, prompts: &[Vec<u32>], decode: usize, threads: i32) -> Result<Vec<Speed>> {
    let file =
        std::env::temp_dir().join(format!("infini-bench-prompts-{}.json", std::process::id()));
    std::fs::write(&file, serde_json::json!({ "prompts": prompts }).to_string())?;
    let output = Command::new(root.join(".venv/bin/python"))
        .arg(root.join("scripts/reference/bench_llama_cpp.py"))
        .arg(root.join(GGUF))
        .arg(&file)
        .args([
            "--decode",
            &decode.to_string(),
            "--threads",
            &threads.to_string(),
        ])
        .args(peer_prefills_token_by_token().then_some("--token-by-token"))
        .output()
        .context("running scripts/reference/bench_llama_cpp.py")?;
    let _ = std::fs::remove_file(&file);
    if !output.status.success() {
        bail!(
            "llama-cpp-python bench failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8(output.stdout)?
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line)?;
            let get = |k: &str| {
                v[k].as_f64()
                    .with_context(|| format!("{k} missing in {line}"))
            };
            Ok(Speed {
                prefill: get("prefill_tokens_per_s")?,
                decode: get("decode_tokens_per_s")?,
            })
        })
        .collect()
}

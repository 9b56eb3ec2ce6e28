//! What the benchmarks share: the deterministic prompts and the peer, llama-cpp-python (llama.cpp)
//! on the same GGUF, run by `scripts/reference/bench_llama_cpp.py` in the same run.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The default model's file, relative to the repository.
pub const GGUF: &str = infini::model::DEFAULT_MODEL;

/// Tokens per second of one prompt.
pub struct Speed {
    #[allow(dead_code)]
    // each bench target compiles this module; the memory bench reads decode only
    pub prefill: f64,
    pub decode: f64,
}

/// The CPU's model name and the flags that decide its matmul paths (from /proc/cpuinfo), so that
/// every figure printed names the machine it was measured on.
pub fn cpu_description() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_once(':'))
            .map(|(_, value)| value.trim().to_string())
            .unwrap_or_default()
    };
    let flags = field("flags");
    let wanted = [
        "avx2",
        "fma",
        "avx512f",
        "avx512_vnni",
        "avx512_bf16",
        "amx_bf16",
        "amx_int8",
    ];
    let present: Vec<&str> = wanted
        .into_iter()
        .filter(|flag| flags.split_whitespace().any(|f| f == *flag))
        .collect();
    format!(
        "CPU: {} ({} logical cores; {})",
        field("model name"),
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
        // INFINI_BENCH_PEER_BATCHED=1 prefills in one batch where the peer's build allows it.
        .args(
            (std::env::var("INFINI_BENCH_PEER_BATCHED").as_deref() != Ok("1"))
                .then_some("--token-by-token"),
        )
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

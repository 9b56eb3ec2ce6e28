//! The `infini` binary end to end: `generate` reproduces the reference's greedy continuation,
//! `chat` keeps the conversation across two stdin lines, and bad flags fail with a clear message.
//! Skips (with a message) when `models/` is absent.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use infini::model::{Checkpoint, DEFAULT_MODEL};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Panics, saying how to provide it, when the default model is missing.
fn require_model() {
    assert!(
        root().join(DEFAULT_MODEL).is_file(),
        "{DEFAULT_MODEL} is missing: run ./scripts/setup.sh (or make setup) first"
    );
}

/// Runs `infini args…` in the crate root with `stdin`, no INFINI_* variables inherited.
fn infini(args: &[&str], stdin: &str) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_infini"));
    command.current_dir(root()).args(args);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("INFINI_")) {
        command.env_remove(key);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn generate_reproduces_the_reference_greedy_continuation() {
    require_model();
    let text =
        std::fs::read_to_string(root().join("tests/fixtures/reference_logits.json")).unwrap();
    let fixtures: Value = serde_json::from_str(&text).unwrap();
    let case = &fixtures["cases"][0];
    let ids = |key: &str| -> Vec<u32> {
        case[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect()
    };
    let prompt = case["text"].as_str().unwrap();
    let tokenizer = Checkpoint::open(root().join(DEFAULT_MODEL))
        .unwrap()
        .tokenizer()
        .unwrap();
    assert_eq!(tokenizer.encode(prompt).unwrap(), ids("prompt_ids"));
    let expected = tokenizer.decode(&ids("greedy")[..16], true).unwrap();

    let output = infini(
        &[
            "generate",
            "--prompt",
            prompt,
            "--temperature",
            "0",
            "--max-tokens",
            "16",
            "--precision",
            "f32",
        ],
        "",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout.strip_suffix('\n').unwrap(), expected);
    assert!(stderr.contains("16 tokens in"), "timing line: {stderr}");
}

/// The prompt-token counts of each turn's timing line, and the memory's `tokens_seen` after each
/// turn (`--memory-stats`).
fn turn_counts(stderr: &str) -> (Vec<usize>, Vec<u64>) {
    let prompts = stderr
        .lines()
        .filter_map(|line| line.strip_prefix('['))
        .filter_map(|line| line.split(' ').next()?.parse().ok())
        .collect();
    let seen = stderr
        .lines()
        .filter_map(|line| line.strip_prefix("[memory ")?.strip_suffix(']'))
        .map(|json| {
            serde_json::from_str::<serde_json::Value>(json).unwrap()["tokens_seen"]
                .as_u64()
                .unwrap()
        })
        .collect();
    (prompts, seen)
}

#[test]
fn chat_answers_two_lines_and_keeps_the_conversation() {
    require_model();
    // Two greedy turns with one extra flag; returns stdout, stderr.
    let chat = |flag: &str| {
        let output = infini(
            &["chat", "--temperature", "0", "--max-tokens", "8", flag],
            "Hello! What is your name?\nAnd what can you do?\n",
        );
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        assert!(output.status.success(), "{stderr}");
        (String::from_utf8(output.stdout).unwrap(), stderr)
    };
    // The session memory (default): the second turn feeds only its new text, and the memory has
    // taken in both turns and the replies.
    let (stdout, stderr) = chat("--memory-stats");
    let (prompts, seen) = turn_counts(&stderr);
    assert_eq!((prompts.len(), seen.len()), (2, 2), "{stderr}");
    assert!(prompts[1] < prompts[0], "{prompts:?}");
    assert!(
        seen[0] >= prompts[0] as u64 && seen[1] >= seen[0] + prompts[1] as u64,
        "{seen:?}"
    );
    assert!(!stdout.trim().is_empty());
    // The plain KV cache: the conversation is re-run, so the second prompt holds the first turn.
    let (_, stderr) = chat("--kv-cache");
    let (prompts, _) = turn_counts(&stderr);
    assert_eq!(prompts.len(), 2, "{stderr}");
    assert!(prompts[1] > prompts[0] + 8, "{prompts:?}");
}

#[test]
fn bad_flags_give_clear_errors() {
    let cases: [(&[&str], &str); 4] = [
        (
            &["generate", "--prompt", "x", "--precision", "fp8"],
            "unknown precision `fp8`",
        ),
        (
            &["generate", "--prompt", "x", "--device", "tpu"],
            "unknown device `tpu`",
        ),
        (
            &["generate", "--prompt", "x", "--model", "no/such.gguf"],
            "no/such.gguf",
        ),
        (&["generate", "--prompt", "x", "--top-p", "0"], "top_p"),
    ];
    for (args, message) in cases {
        let output = infini(args, "");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

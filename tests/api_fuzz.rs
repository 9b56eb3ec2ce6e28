//! schemathesis (pinned, installed into `.venv` by `scripts/fuzz_tools.sh`, which `make test` runs)
//! against the real server, once open and once with API keys: every phase (the schema's examples,
//! coverage of each constraint's edges, random fuzzing, and stateful sequences that create,
//! fork, export, import and delete sessions by following the links it infers). The run fails on any
//! 5xx, any status the OpenAPI document does not list for the route, and any response whose
//! body or content type breaks the document. `INFINI_FUZZ_EXAMPLES` (default 25 per operation and
//! phase) and `INFINI_FUZZ_SEED` (default 20) size and seed it; a failure prints schemathesis's
//! report, whose seed reproduces it.

mod common;

use std::process::Command;

use common::{require_model, root, Server, TempDir};

/// Runs schemathesis against `server`, sending `key` when given; panics with its report on failure.
fn fuzz(server: &Server, key: Option<&str>, dir: &TempDir) {
    let schemathesis = root().join(".venv/bin/schemathesis");
    assert!(
        schemathesis.is_file(),
        "{} is missing: run ./scripts/fuzz_tools.sh (make test does)",
        schemathesis.display()
    );
    let examples = std::env::var("INFINI_FUZZ_EXAMPLES").unwrap_or_else(|_| "25".into());
    let seed = std::env::var("INFINI_FUZZ_SEED").unwrap_or_else(|_| "20".into());
    let mut command = Command::new(&schemathesis);
    command
        .current_dir(&dir.0)
        .env("NO_COLOR", "1")
        .arg("run")
        .arg(format!("http://{}/openapi.json", server.addr))
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--workers",
            "1",
            "--request-timeout",
            "120",
        ])
        .args(["--max-examples", &examples, "--seed", &seed]);
    if let Some(key) = key {
        command.args(["--header", &format!("Authorization: Bearer {key}")]);
    }
    let output = command.output().expect("schemathesis runs");
    let report = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis found failures ({}):\n{report}\nserver log:\n{}",
        output.status,
        server.log_text()
    );
    // The summary's "N generated, N passed".
    let tested = report
        .lines()
        .find_map(|line| {
            let (_, passed) = line.trim().split_once(" generated, ")?;
            passed.strip_suffix(" passed")?.parse::<u64>().ok()
        })
        .unwrap_or(0);
    assert!(tested > 100, "schemathesis ran too few cases:\n{report}");
    println!(
        "schemathesis ({}): {tested} cases passed",
        if key.is_some() { "keys" } else { "open" }
    );
}

fn serve(dir: &TempDir, keys: Option<&str>) -> Server {
    let mut env = vec![
        ("INFINI_DATA_DIR", dir.0.display().to_string()),
        ("INFINI_MAX_TOKENS", "4".to_string()),
        ("INFINI_MAX_PROMPT_TOKENS", "256".to_string()),
    ];
    if let Some(keys) = keys {
        env.push(("INFINI_API_KEYS", keys.to_string()));
    }
    Server::start(&env, &dir.0)
}

#[test]
fn schemathesis_finds_nothing_on_an_open_server() {
    require_model();
    let dir = TempDir::new("fuzz-open");
    let server = serve(&dir, None);
    fuzz(&server, None, &dir);
}

#[test]
fn schemathesis_finds_nothing_on_a_server_with_keys() {
    require_model();
    let dir = TempDir::new("fuzz-keys");
    let server = serve(&dir, Some("fuzzer:fuzz-key,other:other-key"));
    fuzz(&server, Some("fuzz-key"), &dir);
}

//! `openapi/openapi.json` is what `infini openapi` prints: a route or schema changed in the code
//! without regenerating the committed file fails here (regenerate with
//! `./target/debug/infini openapi > openapi/openapi.json`).

use std::process::Command;

#[test]
fn committed_openapi_matches_the_code() {
    let output = Command::new(env!("CARGO_BIN_EXE_infini"))
        .arg("openapi")
        .output()
        .unwrap();
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        printed == committed,
        "openapi/openapi.json is out of date: run `infini openapi > openapi/openapi.json`"
    );
    let spec: serde_json::Value = serde_json::from_str(&printed).unwrap();
    for path in [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/v1/sessions",
        "/v1/sessions/{id}",
        "/v1/sessions/{id}/fork",
        "/v1/sessions/{id}/export",
        "/v1/sessions/import",
        "/v1/sessions/{id}/memory",
        "/playground",
        "/health",
        "/ready",
        "/metrics",
    ] {
        assert!(
            spec["paths"][path].is_object(),
            "{path} is missing from the spec"
        );
    }
}

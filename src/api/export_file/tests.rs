use axum::http::StatusCode;

use super::*;
use crate::api::error::ApiError;
use crate::memory::codec::Writer;
use crate::session::parts;

const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
const FINGERPRINT: &str = "llama-00000000000000aa";
const LAYOUT: &str = r#"{"sinks":4,"stm_len":512}"#;

fn template() -> ChatTemplate {
    ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap()
}

fn server(template: &ChatTemplate) -> ThisServer<'_> {
    ThisServer {
        fingerprint: FINGERPRINT,
        layout: LAYOUT,
        template: Some(template),
    }
}

/// A memory whose core header names `fingerprint` and `layout` (the layers are not read here).
fn memory(fingerprint: &str, layout: &str) -> MemoryParts {
    let mut w = Writer::new();
    w.u64(u64::from_le_bytes(*b"INFMEM\0\0"));
    w.u32(crate::session::FORMAT_VERSION);
    w.str(fingerprint);
    w.str(layout);
    w.u32(30);
    w.u64(0);
    w.u64(0);
    w.bytes(b"the layers");
    MemoryParts::split(&parts::join(&w.into_bytes(), [])).unwrap()
}

/// A file of one turn, as a server with [`FINGERPRINT`] and [`LAYOUT`] exports it.
fn one_turn() -> SessionExport {
    let template = template();
    let asked = [ChatMessage::new("user", "My name is Ada.")];
    let fed = template.render(&asked, true).unwrap() + "Hello Ada!";
    let transcript = Transcript {
        messages: vec![
            asked[0].clone(),
            ChatMessage::new("assistant", "Hello Ada!"),
        ],
        fed,
        turns: Vec::new(),
    };
    SessionExport::new(
        FINGERPRINT.into(),
        1,
        transcript,
        &memory(FINGERPRINT, LAYOUT),
        17,
        serde_json::json!({}),
    )
}

/// The (param, code) of a refused file.
fn refused(file: SessionExport) -> (String, Option<&'static str>) {
    let template = template();
    let error = ApiError::from(file.check(server(&template)).unwrap_err());
    assert_eq!(error.status, StatusCode::BAD_REQUEST, "{error:?}");
    (error.detail.param.unwrap(), error.detail.code)
}

#[test]
fn an_exported_file_passes_and_an_empty_session_too() {
    let template = template();
    let checked = one_turn().check(server(&template)).unwrap();
    assert_eq!(checked.transcript.messages.len(), 2);
    assert_eq!(checked.tokens_seen, 17);
    assert!(checked.check_counted(17).is_ok());
    assert_eq!(
        ApiError::from(checked.check_counted(18).unwrap_err())
            .detail
            .param
            .as_deref(),
        Some("tokens_seen")
    );
    let empty = SessionExport::new(
        FINGERPRINT.into(),
        1,
        Transcript::new(),
        &MemoryParts::default(),
        0,
        serde_json::json!({}),
    );
    assert!(empty
        .check(server(&template))
        .unwrap()
        .memory
        .core
        .is_empty());
}

#[test]
fn framing_version_and_checksum() {
    let mut file = one_turn();
    file.format = "other".into();
    assert_eq!(refused(file).0, "format");
    for version in [0, 3] {
        let mut file = one_turn();
        file.format_version = version;
        assert_eq!(refused(file).0, "format_version");
    }
    let mut file = one_turn();
    file.memory = "not base64!".into();
    assert_eq!(refused(file), ("memory".into(), Some("invalid_memory")));
    // A flipped byte anywhere in the memory breaks the checksum.
    let mut file = one_turn();
    let mut bytes = BASE64.decode(&file.memory).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    file.memory = BASE64.encode(&bytes);
    assert_eq!(
        refused(file),
        ("memory_sha256".into(), Some("checksum_mismatch"))
    );
    // Version 2 needs the checksum; version 1 files never had one and still load.
    let mut file = one_turn();
    file.memory_sha256 = None;
    assert_eq!(refused(file.clone()).0, "memory_sha256");
    file.format_version = 1;
    let template = template();
    assert!(file.check(server(&template)).is_ok());
}

#[test]
fn another_model_or_layout_is_named_both_ways() {
    let mut file = one_turn();
    file.model_fingerprint = "llama-00000000000000bb".into();
    assert_eq!(
        refused(file),
        ("model_fingerprint".into(), Some("model_mismatch"))
    );
    let template = template();
    let with_memory = |memory: MemoryParts| {
        let mut file = one_turn();
        let bytes = memory.join();
        file.memory = BASE64.encode(&bytes);
        file.memory_sha256 = Some(sha256_hex(&bytes));
        ApiError::from(file.check(server(&template)).unwrap_err())
    };
    let error = with_memory(memory("llama-00000000000000bb", LAYOUT));
    assert_eq!(error.detail.code, Some("model_mismatch"));
    let other = r#"{"sinks":4,"stm_len":256}"#;
    let error = with_memory(memory(FINGERPRINT, other));
    assert_eq!(error.detail.code, Some("memory_layout_mismatch"));
    assert!(
        error.detail.message.contains(other) && error.detail.message.contains(LAYOUT),
        "{}",
        error.detail.message
    );
    // A header carrying a line break is quoted escaped.
    let error = with_memory(memory(FINGERPRINT, "x\nFORGED-LOG-LINE"));
    assert!(error.detail.message.contains("x\\nFORGED-LOG-LINE"));
}

#[test]
fn the_transcript_must_describe_the_memory() {
    let mut file = one_turn();
    file.transcript[0].role = "tool".into();
    assert_eq!(refused(file).0, "transcript[0].role");
    let mut file = one_turn();
    file.transcript[1].content = "Hello Bob!".into();
    assert_eq!(refused(file), ("fed".into(), Some("transcript_mismatch")));
    let mut file = one_turn();
    file.fed.push_str(" and more");
    assert_eq!(refused(file).0, "fed");
    let mut file = one_turn();
    file.transcript.pop();
    assert_eq!(refused(file).0, "fed");
    let mut file = one_turn();
    file.transcript.clear();
    assert_eq!(refused(file).0, "fed");
    let mut file = one_turn();
    file.tokens_seen = -5;
    assert_eq!(refused(file).0, "tokens_seen");
    let mut file = one_turn();
    file.tokens_seen = 0;
    assert_eq!(refused(file).0, "fed");
}

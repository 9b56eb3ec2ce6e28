//! The session export file: what `GET /v1/sessions/{id}/export` writes and everything
//! `POST /v1/sessions/import` checks before it stores anything. An import is a client's bytes
//! becoming a session that later turns read, so nothing in it is trusted: the framing and the
//! checksum, the model and memory layout the memory was made for (named both ways when they
//! differ), the transcript against the memory it claims to describe, and every counter. The last
//! check, reading the memory on the model thread, is [`crate::engine::channel::TurnEngine::check_memory`].

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::types::MessageView;
use crate::engine::channel::ModelInfo;
use crate::log_text::Escaped;
use crate::session::{CoreHeader, MemoryParts, SessionFormatError};
use crate::tokenizer::{ChatMessage, ChatTemplate, Transcript};

/// The export file's `format`.
pub const EXPORT_FORMAT: &str = "infini.session";
/// The version this server writes: 2 adds `memory_sha256`. Version 1 files (no checksum) still load.
pub const EXPORT_VERSION: u32 = 2;
const OLDEST_READABLE_VERSION: u32 = 1;

/// The export file.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "format": "infini.session", "format_version": 2,
    "model_fingerprint": "llama-4b0c1e2f8a9d3c57", "created_at": 1764600000,
    "transcript": [{"role": "user", "content": "My name is Zorblax."},
                   {"role": "assistant", "content": "Nice to meet you, Zorblax!"}],
    "fed": "<|im_start|>system\n…<|im_start|>assistant\nNice to meet you, Zorblax!",
    "memory": "SU5GTUVNAAA…", "memory_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "tokens_seen": 41, "stats": {"tokens_seen": 41}
}))]
pub struct SessionExport {
    /// `infini.session`.
    pub format: String,
    /// 1 or 2 (this server writes 2).
    #[schema(minimum = 1, maximum = 2)]
    pub format_version: u32,
    /// The model the memory belongs to; import refuses another.
    pub model_fingerprint: String,
    pub created_at: i64,
    /// The conversation: `system`, `user` and `assistant` messages, ending with the assistant's
    /// reply (empty for a session that has not taken a turn).
    pub transcript: Vec<MessageView>,
    /// The rendered conversation the memory holds (chat template text), from which the next
    /// turn's new text is cut; import checks it against `transcript`.
    pub fed: String,
    /// The memory's exact bytes, base64 (empty: nothing absorbed yet).
    pub memory: String,
    /// SHA-256 of the memory's bytes (lowercase hex); required from format version 2 on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_sha256: Option<String>,
    /// Tokens the memory has absorbed; must agree with the memory.
    #[schema(minimum = 0)]
    pub tokens_seen: i64,
    /// The memory's statistics when exported (recomputed from the memory on import).
    #[schema(value_type = Object)]
    pub stats: serde_json::Value,
}

/// What an imported file must match: this server's model, memory layout and chat template.
#[derive(Clone, Copy)]
pub struct ThisServer<'a> {
    pub fingerprint: &'a str,
    pub layout: &'a str,
    pub template: Option<&'a ChatTemplate>,
}

impl<'a> ThisServer<'a> {
    pub fn of(info: &'a ModelInfo) -> Self {
        Self {
            fingerprint: &info.fingerprint,
            layout: &info.layout,
            template: info.tokenizer.chat_template(),
        }
    }
}

/// What an import may store once the model thread has read its memory.
#[derive(Debug)]
pub struct CheckedImport {
    pub transcript: Transcript,
    pub memory: MemoryParts,
    pub tokens_seen: i64,
}

impl SessionExport {
    /// The file for a session's transcript and stored memory.
    pub fn new(
        model_fingerprint: String,
        created_at: i64,
        transcript: Transcript,
        memory: &MemoryParts,
        tokens_seen: i64,
        stats: serde_json::Value,
    ) -> Self {
        let bytes = memory.join();
        Self {
            format: EXPORT_FORMAT.into(),
            format_version: EXPORT_VERSION,
            model_fingerprint,
            created_at,
            transcript: transcript
                .messages
                .into_iter()
                .map(|m| MessageView {
                    role: m.role,
                    content: m.content,
                })
                .collect(),
            fed: transcript.fed,
            memory: BASE64.encode(&bytes),
            memory_sha256: Some(sha256_hex(&bytes)),
            tokens_seen,
            stats,
        }
    }

    /// Every check that needs no model thread: framing, checksum, identity, layout, transcript,
    /// counters. The memory itself is read afterwards ([`CheckedImport::check_counted`] closes
    /// the loop).
    pub fn check(self, info: ThisServer<'_>) -> Result<CheckedImport, ImportError> {
        if self.format != EXPORT_FORMAT {
            return Err(ImportError::Format(shown(&self.format)));
        }
        if !(OLDEST_READABLE_VERSION..=EXPORT_VERSION).contains(&self.format_version) {
            return Err(ImportError::Version(self.format_version));
        }
        if self.model_fingerprint != info.fingerprint {
            return Err(ImportError::model_mismatch(
                "model_fingerprint",
                &self.model_fingerprint,
                info.fingerprint,
            ));
        }
        if self.tokens_seen < 0 {
            return Err(ImportError::NegativeTokens(self.tokens_seen));
        }
        let bytes = BASE64
            .decode(self.memory.as_bytes())
            .map_err(|e| ImportError::NotBase64(e.to_string()))?;
        let memory = MemoryParts::split(&bytes).map_err(ImportError::Unreadable)?;
        self.check_sum(&bytes)?;
        check_header(&memory, info)?;
        let transcript = self.check_transcript(info, memory.core.is_empty())?;
        Ok(CheckedImport {
            transcript,
            memory,
            tokens_seen: self.tokens_seen,
        })
    }

    fn check_sum(&self, bytes: &[u8]) -> Result<(), ImportError> {
        let given = match (&self.memory_sha256, self.format_version) {
            (Some(given), _) => given,
            (None, 1) => return Ok(()),
            (None, version) => return Err(ImportError::ChecksumMissing(version)),
        };
        let actual = sha256_hex(bytes);
        if !given.eq_ignore_ascii_case(&actual) {
            return Err(ImportError::ChecksumMismatch {
                given: shown(given),
                actual,
            });
        }
        Ok(())
    }

    /// Roles this server writes, and `fed` exactly what the chat template makes of the messages:
    /// the rendering (with the generation prompt) of all but the last, then the assistant's reply.
    fn check_transcript(
        &self,
        info: ThisServer<'_>,
        memory_empty: bool,
    ) -> Result<Transcript, ImportError> {
        let messages: Vec<ChatMessage> = self
            .transcript
            .iter()
            .map(|m| ChatMessage::new(m.role.clone(), m.content.clone()))
            .collect();
        for (index, message) in messages.iter().enumerate() {
            if !["system", "user", "assistant"].contains(&message.role.as_str()) {
                return Err(ImportError::Role {
                    index,
                    role: shown(&message.role),
                });
            }
        }
        let mismatch = |why: &str| ImportError::Transcript(why.to_string());
        let Some((reply, asked)) = messages.split_last() else {
            if !self.fed.is_empty() || !memory_empty || self.tokens_seen != 0 {
                return Err(mismatch(
                    "an empty transcript comes with an empty fed, memory and tokens_seen",
                ));
            }
            return Ok(Transcript::new());
        };
        if reply.role != "assistant" {
            return Err(mismatch("a stored turn ends with the assistant's reply"));
        }
        let rendered = info
            .template
            .ok_or_else(|| mismatch("this server's model has no chat template"))?
            .render(asked, true)
            .map_err(|e| mismatch(&e.to_string()))?;
        if self.fed != format!("{rendered}{}", reply.content) {
            return Err(mismatch(
                "fed is not the chat template's rendering of the messages",
            ));
        }
        if memory_empty || self.tokens_seen == 0 {
            return Err(mismatch(
                "a conversation with turns has a memory that has taken them in",
            ));
        }
        Ok(Transcript {
            messages,
            fed: self.fed.clone(),
            turns: Vec::new(),
        })
    }
}

impl CheckedImport {
    /// The memory, read on the model thread, holds as many tokens as the file says.
    pub fn check_counted(&self, memory_tokens: u64) -> Result<(), ImportError> {
        if u64::try_from(self.tokens_seen).ok() != Some(memory_tokens) {
            return Err(ImportError::TokensMismatch {
                file: self.tokens_seen,
                memory: memory_tokens,
            });
        }
        Ok(())
    }
}

/// The core's own header names this server's model and memory layout.
fn check_header(memory: &MemoryParts, info: ThisServer<'_>) -> Result<(), ImportError> {
    if memory.core.is_empty() {
        return Ok(());
    }
    let header = CoreHeader::of(&memory.core).map_err(ImportError::Unreadable)?;
    match header.made_for(info.fingerprint, info.layout) {
        Err(SessionFormatError::OtherModel { found, expected }) => {
            Err(ImportError::model_mismatch("memory", &found, &expected))
        }
        Err(SessionFormatError::OtherLayout { found, expected }) => {
            Err(ImportError::LayoutMismatch {
                found: shown(&found),
                ours: expected,
            })
        }
        Err(other) => Err(ImportError::Unreadable(other)),
        Ok(()) => Ok(()),
    }
}

/// An export file that cannot be imported (status and body: `error.rs`). Text from the file is
/// quoted escaped and cut to 200 characters.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("format must be `{EXPORT_FORMAT}`, got `{0}`")]
    Format(String),
    #[error(
        "this server reads session format versions {OLDEST_READABLE_VERSION} to {EXPORT_VERSION}, \
         the file has {0}"
    )]
    Version(u32),
    #[error(
        "the session was made with model {found}, but this server runs model {ours}; its memory \
         cannot be used here"
    )]
    ModelMismatch {
        param: &'static str,
        found: String,
        ours: String,
    },
    #[error("tokens_seen must not be negative, got {0}")]
    NegativeTokens(i64),
    #[error("memory is not base64: {0}")]
    NotBase64(String),
    #[error("memory cannot be read: {0}")]
    Unreadable(SessionFormatError),
    #[error("format version {0} files carry memory_sha256 (the memory's SHA-256)")]
    ChecksumMissing(u32),
    #[error(
        "the memory does not match its checksum (memory_sha256 {given}, the bytes hash to \
         {actual}): the file was changed or damaged after export"
    )]
    ChecksumMismatch { given: String, actual: String },
    #[error(
        "the memory was made with the memory layout {found}, but this server uses {ours}; import \
         it into a server started with the memory flags it was made with"
    )]
    LayoutMismatch { found: String, ours: String },
    #[error("unknown role `{role}` (a transcript holds system, user and assistant messages)")]
    Role { index: usize, role: String },
    #[error("the transcript does not match its memory: {0}")]
    Transcript(String),
    #[error("tokens_seen is {file}, but the memory has taken in {memory} tokens")]
    TokensMismatch { file: i64, memory: u64 },
    #[error("memory cannot be used: {0}")]
    Unusable(SessionFormatError),
}

impl ImportError {
    pub(crate) fn model_mismatch(param: &'static str, found: &str, ours: &str) -> Self {
        Self::ModelMismatch {
            param,
            found: shown(found),
            ours: ours.to_string(),
        }
    }
}

/// A client's text quoted back in a message: control characters escaped, at most 200 characters.
fn shown(text: &str) -> String {
    let escaped = Escaped(text).to_string();
    match escaped.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &escaped[..cut]),
        None => escaped,
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests;

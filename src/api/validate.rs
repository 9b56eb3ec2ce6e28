//! Request → trusted parameters (`style.md`: validation before any 200). Each rule is one
//! [`ValidationError`] variant, its message the text the client reads, naming the field it checks;
//! `error.rs` maps every one to its status and OpenAI body. The engine only ever sees
//! [`GenParams`] that passed.

use thiserror::Error;

use crate::engine::sampler::{SamplingError, SamplingParams, ValidSampling};
use crate::engine::stop::{StopError, StopRules};
use crate::tokenizer::ChatMessage;

use super::types::{InputMessage, MessageContent, SamplingFields};

/// A generation request that breaks one rule (all are 400 `invalid_request_error`).
#[derive(Debug, PartialEq, Error)]
pub enum ValidationError {
    #[error("only n = 1 is supported, got {0}")]
    N(u64),
    #[error(transparent)]
    Sampling(SamplingError),
    #[error("{field} must be between 1 and {limit} (this server's limit), got {got}")]
    Budget {
        field: &'static str,
        limit: usize,
        got: u64,
    },
    #[error("give max_tokens or max_completion_tokens, not both")]
    TwoBudgets,
    #[error(transparent)]
    Stop(StopError),
    #[error("stream_options is only allowed when stream is true")]
    StreamOptionsWithoutStream,
    #[error("top_logprobs must be between 0 and {MAX_TOP_LOGPROBS_CHAT}, got {0}")]
    TopLogprobs(u64),
    #[error("top_logprobs needs logprobs: true")]
    TopLogprobsWithoutLogprobs,
    #[error("logprobs must be between 0 and {MAX_LOGPROBS_COMPLETIONS}, got {0}")]
    Logprobs(u64),
    #[error("echo is not supported: the reply never repeats the prompt (leave echo out or false)")]
    Echo,
    #[error("only best_of = 1 is supported, got {0}")]
    BestOf(u64),
    #[error("suffix (text after the completion) is not supported: leave it out")]
    Suffix,
    #[error(
        "the body's session_id `{body}` and the X-Session-Id header `{header}` name different \
         sessions; give one of them"
    )]
    ConflictingSessionIds { body: String, header: String },
    #[error("messages must not be empty")]
    NoMessages,
    #[error("unsupported role `{role}` (expected system, developer, user or assistant)")]
    Role { message: usize, role: String },
    #[error("only text content parts with a `text` field are supported, got `{kind}`")]
    ContentPart {
        message: usize,
        part: usize,
        kind: String,
    },
    #[error("prompt must be one string (or a list of one), got {0}")]
    PromptCount(usize),
    #[error(
        "the prompt has {tokens} tokens, more than this server's limit of {limit} per request"
    )]
    PromptTooLong {
        field: &'static str,
        tokens: usize,
        limit: usize,
    },
    #[error("the prompt has no tokens")]
    EmptyPrompt { field: &'static str },
}

impl ValidationError {
    /// The request field at fault (OpenAI's `param`).
    pub fn param(&self) -> String {
        match self {
            Self::N(_) => "n".into(),
            Self::Sampling(e) => sampling_param(e).into(),
            Self::Budget { field, .. } => (*field).into(),
            Self::TwoBudgets => "max_completion_tokens".into(),
            Self::Stop(_) => "stop".into(),
            Self::StreamOptionsWithoutStream => "stream_options".into(),
            Self::TopLogprobs(_) | Self::TopLogprobsWithoutLogprobs => "top_logprobs".into(),
            Self::Logprobs(_) => "logprobs".into(),
            Self::Echo => "echo".into(),
            Self::BestOf(_) => "best_of".into(),
            Self::Suffix => "suffix".into(),
            Self::ConflictingSessionIds { .. } => "session_id".into(),
            Self::NoMessages => "messages".into(),
            Self::Role { message, .. } => format!("messages[{message}].role"),
            Self::ContentPart { message, part, .. } => {
                format!("messages[{message}].content[{part}]")
            }
            Self::PromptCount(_) => "prompt".into(),
            Self::PromptTooLong { field, .. } | Self::EmptyPrompt { field } => (*field).into(),
        }
    }

    /// OpenAI's `code`, where the rule has one.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            Self::Echo | Self::BestOf(_) | Self::Suffix => Some("unsupported_parameter"),
            Self::ConflictingSessionIds { .. } => Some("conflicting_session_ids"),
            Self::PromptTooLong { .. } => Some("context_length_exceeded"),
            _ => None,
        }
    }

    /// One instance of every rule, in the order of docs/SERVER.md's table.
    pub fn every_rule() -> Vec<Self> {
        vec![
            Self::NoMessages,
            Self::Role {
                message: 0,
                role: "tool".into(),
            },
            Self::ContentPart {
                message: 0,
                part: 0,
                kind: "image_url".into(),
            },
            Self::PromptCount(2),
            Self::PromptTooLong {
                field: "messages",
                tokens: 9000,
                limit: 8192,
            },
            Self::EmptyPrompt { field: "prompt" },
            Self::N(2),
            Self::Sampling(SamplingError::Temperature(3.0)),
            Self::Sampling(SamplingError::TopP(0.0)),
            Self::Sampling(SamplingError::MinP(1.5)),
            Self::Sampling(SamplingError::RepetitionPenalty(0.0)),
            Self::Sampling(SamplingError::FrequencyPenalty(3.0)),
            Self::Sampling(SamplingError::PresencePenalty(-3.0)),
            Self::Budget {
                field: "max_tokens",
                limit: 512,
                got: 0,
            },
            Self::TwoBudgets,
            Self::Stop(StopError::TooManyStrings(5)),
            Self::Stop(StopError::EmptyString),
            Self::StreamOptionsWithoutStream,
            Self::TopLogprobs(21),
            Self::TopLogprobsWithoutLogprobs,
            Self::Logprobs(6),
            Self::Echo,
            Self::BestOf(2),
            Self::Suffix,
            Self::ConflictingSessionIds {
                body: "sess_a".into(),
                header: "sess_b".into(),
            },
        ]
    }
}

/// Most alternatives per token (OpenAI's limits: 20 for chat, 5 for completions).
pub const MAX_TOP_LOGPROBS_CHAT: u64 = 20;
pub const MAX_LOGPROBS_COMPLETIONS: u64 = 5;

/// The server's limits on one request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_tokens: usize,
    pub max_prompt_tokens: usize,
}

/// Validated generation parameters.
#[derive(Debug, Clone)]
pub struct GenParams {
    pub sampling: ValidSampling,
    pub stop: StopRules,
    pub max_tokens: usize,
    pub logprobs: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
}

fn sampling_param(error: &SamplingError) -> &'static str {
    match error {
        SamplingError::Temperature(_) => "temperature",
        SamplingError::TopP(_) => "top_p",
        SamplingError::MinP(_) => "min_p",
        SamplingError::RepetitionPenalty(_) => "repetition_penalty",
        SamplingError::FrequencyPenalty(_) => "frequency_penalty",
        SamplingError::PresencePenalty(_) => "presence_penalty",
        _ => "sampling",
    }
}

/// Checks the shared sampling fields; `max_tokens` is the request's budget field (chat's
/// `max_tokens` or `max_completion_tokens`, named by `budget_field`).
pub fn gen_params(
    fields: SamplingFields,
    max_tokens: Option<(u64, &'static str)>,
    logprobs: Option<usize>,
    limits: Limits,
) -> Result<GenParams, ValidationError> {
    if let Some(n) = fields.n.filter(|&n| n != 1) {
        return Err(ValidationError::N(n));
    }
    let defaults = SamplingParams::default();
    let sampling = SamplingParams {
        temperature: fields.temperature.unwrap_or(defaults.temperature),
        top_k: fields.top_k.unwrap_or(defaults.top_k),
        top_p: fields.top_p.unwrap_or(defaults.top_p),
        min_p: fields.min_p.unwrap_or(defaults.min_p),
        repetition_penalty: fields
            .repetition_penalty
            .unwrap_or(defaults.repetition_penalty),
        frequency_penalty: fields
            .frequency_penalty
            .unwrap_or(defaults.frequency_penalty),
        presence_penalty: fields.presence_penalty.unwrap_or(defaults.presence_penalty),
        seed: fields.seed,
    }
    .validate()
    .map_err(ValidationError::Sampling)?;
    let max_tokens = match max_tokens {
        None => limits.max_tokens,
        Some((n, field)) if n == 0 || n > limits.max_tokens as u64 => {
            return Err(ValidationError::Budget {
                field,
                limit: limits.max_tokens,
                got: n,
            })
        }
        Some((n, _)) => n as usize,
    };
    let strings = fields.stop.map(|s| s.into_vec()).unwrap_or_default();
    let stop = StopRules::new(strings).map_err(ValidationError::Stop)?;
    let include_usage = fields
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    if fields.stream_options.is_some() && !fields.stream {
        return Err(ValidationError::StreamOptionsWithoutStream);
    }
    Ok(GenParams {
        sampling,
        stop,
        max_tokens,
        logprobs,
        stream: fields.stream,
        include_usage,
    })
}

/// The one budget field of a chat request (`max_tokens` or `max_completion_tokens`).
pub fn chat_budget(
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
) -> Result<Option<(u64, &'static str)>, ValidationError> {
    match (max_tokens, max_completion_tokens) {
        (Some(_), Some(_)) => Err(ValidationError::TwoBudgets),
        (Some(n), None) => Ok(Some((n, "max_tokens"))),
        (None, Some(n)) => Ok(Some((n, "max_completion_tokens"))),
        (None, None) => Ok(None),
    }
}

/// Chat `logprobs` / `top_logprobs` → alternatives per token.
pub fn chat_logprobs(logprobs: bool, top: Option<u64>) -> Result<Option<usize>, ValidationError> {
    match (logprobs, top) {
        (_, Some(k)) if k > MAX_TOP_LOGPROBS_CHAT => Err(ValidationError::TopLogprobs(k)),
        (false, Some(_)) => Err(ValidationError::TopLogprobsWithoutLogprobs),
        (true, top) => Ok(Some(top.unwrap_or(0) as usize)),
        (false, None) => Ok(None),
    }
}

/// Completions `logprobs` (0..=5).
pub fn completion_logprobs(logprobs: Option<u64>) -> Result<Option<usize>, ValidationError> {
    match logprobs {
        Some(k) if k > MAX_LOGPROBS_COMPLETIONS => Err(ValidationError::Logprobs(k)),
        other => Ok(other.map(|k| k as usize)),
    }
}

/// `/v1/completions`' `echo`, `best_of` and `suffix`: accepted only where they change nothing,
/// refused (400 `unsupported_parameter`) where a client would expect an effect.
pub fn completion_extras(
    echo: Option<bool>,
    best_of: Option<u64>,
    suffix: Option<&str>,
) -> Result<(), ValidationError> {
    if echo == Some(true) {
        return Err(ValidationError::Echo);
    }
    if let Some(n) = best_of.filter(|&n| n != 1) {
        return Err(ValidationError::BestOf(n));
    }
    if suffix.is_some_and(|s| !s.is_empty()) {
        return Err(ValidationError::Suffix);
    }
    Ok(())
}

/// The session a chat request continues: `session_id` in the body or the `X-Session-Id` header
/// (the same id in both is fine; two different ones are refused rather than one silently winning).
pub fn session_id(
    body: Option<String>,
    header: Option<String>,
) -> Result<Option<String>, ValidationError> {
    match (body, header) {
        (Some(body), Some(header)) if body != header => {
            Err(ValidationError::ConflictingSessionIds { body, header })
        }
        (body, header) => Ok(body.or(header)),
    }
}

/// The request's messages as the chat template takes them.
pub fn messages(input: Vec<InputMessage>) -> Result<Vec<ChatMessage>, ValidationError> {
    if input.is_empty() {
        return Err(ValidationError::NoMessages);
    }
    input
        .into_iter()
        .enumerate()
        .map(|(i, message)| {
            let role = match message.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    return Err(ValidationError::Role {
                        message: i,
                        role: other.to_string(),
                    })
                }
            };
            let content = match message.content {
                MessageContent::Text(text) => text,
                MessageContent::Parts(parts) => {
                    let mut text = String::new();
                    for (j, part) in parts.into_iter().enumerate() {
                        match (part.kind.as_str(), part.text) {
                            ("text", Some(t)) => text.push_str(&t),
                            (kind, _) => {
                                return Err(ValidationError::ContentPart {
                                    message: i,
                                    part: j,
                                    kind: kind.to_string(),
                                })
                            }
                        }
                    }
                    text
                }
            };
            Ok(ChatMessage::new(role, content))
        })
        .collect()
}

/// The prompt limit, for the tokens of `field` (`prompt` or `messages`).
pub fn check_prompt_len(
    tokens: usize,
    field: &'static str,
    limits: Limits,
) -> Result<(), ValidationError> {
    if tokens > limits.max_prompt_tokens {
        return Err(ValidationError::PromptTooLong {
            field,
            tokens,
            limit: limits.max_prompt_tokens,
        });
    }
    if tokens == 0 {
        return Err(ValidationError::EmptyPrompt { field });
    }
    Ok(())
}

/// `/v1/completions`' prompt: one string, or a list of exactly one.
pub fn one_prompt(mut prompts: Vec<String>) -> Result<String, ValidationError> {
    match prompts.len() {
        1 => Ok(prompts.remove(0)),
        n => Err(ValidationError::PromptCount(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::error::ApiError;
    use crate::api::types::{ContentPart, StopField, StreamOptions};

    const LIMITS: Limits = Limits {
        max_tokens: 100,
        max_prompt_tokens: 50,
    };

    fn param_of(result: Result<GenParams, ValidationError>) -> String {
        result.unwrap_err().param()
    }

    #[test]
    fn each_out_of_range_field_is_named() {
        let with = |f: fn(&mut SamplingFields)| {
            let mut fields = SamplingFields::default();
            f(&mut fields);
            gen_params(fields, None, None, LIMITS)
        };
        assert_eq!(param_of(with(|f| f.temperature = Some(2.5))), "temperature");
        assert_eq!(param_of(with(|f| f.top_p = Some(0.0))), "top_p");
        assert_eq!(param_of(with(|f| f.min_p = Some(1.5))), "min_p");
        assert_eq!(
            param_of(with(|f| f.presence_penalty = Some(-3.0))),
            "presence_penalty"
        );
        assert_eq!(param_of(with(|f| f.n = Some(2))), "n");
        assert_eq!(
            param_of(with(|f| f.stop = Some(StopField::Many(vec!["a".into(); 5])))),
            "stop"
        );
        assert_eq!(
            param_of(with(|f| f.stop = Some(StopField::One(String::new())))),
            "stop"
        );
        assert_eq!(
            param_of(with(|f| f.stream_options = Some(StreamOptions {
                include_usage: true
            }))),
            "stream_options"
        );
        let budget = |n| {
            gen_params(
                SamplingFields::default(),
                Some((n, "max_tokens")),
                None,
                LIMITS,
            )
        };
        assert_eq!(param_of(budget(0)), "max_tokens");
        assert_eq!(param_of(budget(101)), "max_tokens");
        assert_eq!(budget(100).unwrap().max_tokens, 100);
        assert_eq!(
            gen_params(SamplingFields::default(), None, None, LIMITS)
                .unwrap()
                .max_tokens,
            100
        );
    }

    #[test]
    fn budget_and_logprob_fields() {
        assert!(chat_budget(Some(1), Some(2)).is_err());
        assert_eq!(
            chat_budget(None, Some(3)).unwrap(),
            Some((3, "max_completion_tokens"))
        );
        assert_eq!(chat_logprobs(true, Some(3)).unwrap(), Some(3));
        assert_eq!(chat_logprobs(true, None).unwrap(), Some(0));
        assert!(chat_logprobs(false, Some(1)).is_err());
        assert!(chat_logprobs(true, Some(21)).is_err());
        assert!(completion_logprobs(Some(6)).is_err());
        assert_eq!(completion_logprobs(Some(5)).unwrap(), Some(5));
    }

    #[test]
    fn unsupported_completion_fields_are_refused_where_they_would_matter() {
        let code = |r: Result<(), ValidationError>| {
            let e = ApiError::from(r.unwrap_err());
            (e.detail.param.unwrap(), e.detail.code.unwrap())
        };
        assert!(completion_extras(None, None, None).is_ok());
        assert!(completion_extras(Some(false), Some(1), Some("")).is_ok());
        assert_eq!(
            code(completion_extras(Some(true), None, None)),
            ("echo".into(), "unsupported_parameter")
        );
        assert_eq!(
            code(completion_extras(None, Some(3), None)),
            ("best_of".into(), "unsupported_parameter")
        );
        assert_eq!(
            code(completion_extras(None, None, Some("end"))),
            ("suffix".into(), "unsupported_parameter")
        );
    }

    #[test]
    fn two_different_session_ids_are_refused() {
        let id = |s: &str| Some(s.to_string());
        assert_eq!(session_id(id("a"), None).unwrap(), id("a"));
        assert_eq!(session_id(None, id("b")).unwrap(), id("b"));
        assert_eq!(session_id(id("a"), id("a")).unwrap(), id("a"));
        assert_eq!(session_id(None, None).unwrap(), None);
        let error = ApiError::from(session_id(id("a"), id("b")).unwrap_err());
        assert_eq!(error.detail.param.as_deref(), Some("session_id"));
        assert!(error.detail.message.contains("`a`") && error.detail.message.contains("`b`"));
    }

    #[test]
    fn messages_are_checked_and_flattened() {
        let message = |role: &str, content: MessageContent| InputMessage {
            role: role.into(),
            content,
        };
        let parts = MessageContent::Parts(vec![
            ContentPart {
                kind: "text".into(),
                text: Some("a".into()),
            },
            ContentPart {
                kind: "text".into(),
                text: Some("b".into()),
            },
        ]);
        let out = messages(vec![
            message("developer", MessageContent::Text("s".into())),
            message("user", parts),
        ])
        .unwrap();
        assert_eq!(
            out,
            vec![
                ChatMessage::new("system", "s"),
                ChatMessage::new("user", "ab")
            ]
        );
        let error = ApiError::from(
            messages(vec![message("tool", MessageContent::Text("x".into()))]).unwrap_err(),
        );
        assert_eq!(error.detail.param.as_deref(), Some("messages[0].role"));
        let image = MessageContent::Parts(vec![ContentPart {
            kind: "image_url".into(),
            text: None,
        }]);
        let error = ApiError::from(messages(vec![message("user", image)]).unwrap_err());
        assert_eq!(
            error.detail.param.as_deref(),
            Some("messages[0].content[0]")
        );
        assert!(messages(vec![]).is_err());
        assert!(check_prompt_len(0, "messages", LIMITS).is_err());
        assert!(check_prompt_len(51, "messages", LIMITS).is_err());
        assert!(check_prompt_len(50, "messages", LIMITS).is_ok());
    }
}

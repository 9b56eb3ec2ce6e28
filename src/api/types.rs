//! The OpenAI request and response bodies (chat completions, completions, models), plus the
//! `session_id` extension. Unknown request fields are ignored, as OpenAI's own server does for
//! fields it has retired; every known field is typed, so a wrong type is a 400 naming it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `stop`: one string or up to four.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

impl StopField {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// A message's content: a string, or a list of parts of which only `text` parts are supported.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

/// One input message.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct InputMessage {
    /// `system`, `developer` (read as system), `user` or `assistant`.
    pub role: String,
    pub content: MessageContent,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` and no choices.
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling and length fields shared by chat and text completions.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct SamplingFields {
    /// 0 to 2 (default 1); 0 is greedy.
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f64>,
    /// (0, 1] (default 1).
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f64>,
    /// Keep the k most likely tokens (0: all).
    pub top_k: Option<usize>,
    /// [0, 1] (default 0).
    #[schema(minimum = 0, maximum = 1)]
    pub min_p: Option<f64>,
    /// > 0 (default 1).
    #[schema(exclusive_minimum = 0)]
    pub repetition_penalty: Option<f64>,
    /// −2 to 2.
    #[schema(minimum = -2, maximum = 2)]
    pub frequency_penalty: Option<f64>,
    /// −2 to 2.
    #[schema(minimum = -2, maximum = 2)]
    pub presence_penalty: Option<f64>,
    /// Makes sampling reproducible.
    pub seed: Option<u64>,
    /// Up to four strings that end the reply (not included).
    pub stop: Option<StopField>,
    /// Most tokens to generate, at least 1 (default and limit: the server's `--max-tokens`).
    #[schema(minimum = 1)]
    pub max_tokens: Option<u64>,
    /// Only 1 is supported.
    #[schema(minimum = 1, maximum = 1)]
    pub n: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[schema(example = json!({
    "model": "SmolLM2-135M-Instruct.Q4_1", "temperature": 0, "max_tokens": 16,
    "messages": [{"role": "user", "content": "What is the capital of France?"}]
}))]
pub struct ChatCompletionRequest {
    /// The served model's name (see `/v1/models`).
    pub model: Option<String>,
    /// The conversation (at least one message); with a session, only the new messages.
    #[schema(min_items = 1)]
    pub messages: Vec<InputMessage>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
    /// Same as `max_tokens` (OpenAI's newer name); give at most one of them.
    #[schema(minimum = 1)]
    pub max_completion_tokens: Option<u64>,
    /// Return each token's log-probability.
    #[serde(default)]
    pub logprobs: bool,
    /// 0 to 20 most likely alternatives per token (needs `logprobs: true`).
    #[schema(minimum = 0, maximum = 20)]
    pub top_logprobs: Option<u64>,
    /// Continue this session (its memory holds the earlier turns); also `X-Session-Id`.
    pub session_id: Option<String>,
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[schema(example = json!({
    "model": "SmolLM2-135M-Instruct.Q4_1", "prompt": "The capital of France is",
    "temperature": 0, "max_tokens": 16
}))]
pub struct CompletionRequest {
    pub model: Option<String>,
    /// The text to continue (one string, or a list of exactly one).
    pub prompt: StopField,
    #[serde(flatten)]
    pub sampling: SamplingFields,
    /// 0 to 5: log-probabilities of each token and this many alternatives.
    #[schema(minimum = 0, maximum = 5)]
    pub logprobs: Option<u64>,
    /// Not supported: only `false` (the prompt is never repeated in the reply).
    pub echo: Option<bool>,
    /// Only 1 is supported.
    #[schema(minimum = 1, maximum = 1)]
    pub best_of: Option<u64>,
    /// Not supported: only an empty suffix (no text is inserted after the completion).
    pub suffix: Option<String>,
}

/// One stored message.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MessageView {
    pub role: String,
    pub content: String,
}

/// Token counts of one request.
#[derive(Debug, Clone, Copy, Serialize, ToSchema, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// An output message.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OutputMessage {
    pub role: &'static str,
    pub content: String,
}

/// One alternative token.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// One generated token's log-probability (chat format).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TokenLogprobEntry {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatLogprobs {
    pub content: Vec<TokenLogprobEntry>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatChoice {
    pub index: u32,
    pub message: OutputMessage,
    pub logprobs: Option<ChatLogprobs>,
    /// `stop` or `length`.
    pub finish_reason: &'static str,
}

/// The non-streaming chat reply.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({
    "id": "chatcmpl-2f1c0d9e8b7a6c5d4e3f2a1b", "object": "chat.completion", "created": 1764600000,
    "model": "SmolLM2-135M-Instruct.Q4_1",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."},
                 "logprobs": null, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 36, "completion_tokens": 3, "total_tokens": 39}
}))]
pub struct ChatCompletion {
    pub id: String,
    /// `chat.completion`.
    pub object: &'static str,
    pub created: i64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
    /// The session this turn extended, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// One SSE event of a streaming chat reply.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    /// `chat.completion.chunk`.
    pub object: &'static str,
    pub created: i64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

/// Legacy completions log-probabilities.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    #[schema(value_type = Vec<Object>)]
    pub top_logprobs: Vec<serde_json::Map<String, serde_json::Value>>,
    pub text_offset: Vec<usize>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// The text completion reply (also each streamed chunk, with `text` the new part).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({
    "id": "cmpl-2f1c0d9e8b7a6c5d4e3f2a1b", "object": "text_completion", "created": 1764600000,
    "model": "SmolLM2-135M-Instruct.Q4_1",
    "choices": [{"index": 0, "text": " Paris.", "logprobs": null, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
}))]
pub struct Completion {
    pub id: String,
    /// `text_completion`.
    pub object: &'static str,
    pub created: i64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelCard {
    pub id: String,
    /// `model`.
    pub object: &'static str,
    pub created: i64,
    pub owned_by: &'static str,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({
    "object": "list",
    "data": [{"id": "SmolLM2-135M-Instruct.Q4_1", "object": "model", "created": 1764600000,
              "owned_by": "infini"}]
}))]
pub struct ModelList {
    /// `list`.
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

//! `POST /v1/chat/completions` and `POST /v1/completions`: validate, run the turn, and answer with
//! one JSON body or an SSE stream.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody, RequestError};
use super::json::ApiJson;
use super::stream::{sse, ChunkFormat};
use super::turn::{begin, TurnEvent, TurnInput};
use super::types::*;
use super::validate::{
    chat_budget, chat_logprobs, completion_extras, completion_logprobs, gen_params, messages,
    one_prompt, session_id,
};
use super::AppState;
use crate::engine::channel::TokenLogprob;

/// The header that may carry the session id instead of the body.
pub const SESSION_HEADER: &str = "x-session-id";

/// The fields every reply and chunk of one request share.
#[derive(Debug, Clone)]
struct ReplyMeta {
    id: String,
    created: i64,
    model: String,
    session_id: Option<String>,
}

impl ReplyMeta {
    fn new(prefix: &str, state: &AppState, session_id: Option<String>) -> Self {
        Self {
            id: format!("{prefix}-{:024x}", rand::thread_rng().gen::<u128>() >> 32),
            created: now(),
            model: state.model_name.to_string(),
            session_id,
        }
    }
}

fn check_model(state: &AppState, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        Some(name) if name != &*state.model_name => Err(RequestError::UnknownModel {
            name: name.to_string(),
            ours: state.model_name.to_string(),
        }
        .into()),
        _ => Ok(()),
    }
}

/// A turn's whole output, for the non-streaming replies.
struct Collected {
    text: String,
    logprobs: Vec<TokenLogprob>,
    finish_reason: &'static str,
    usage: Usage,
}

async fn collect(mut events: mpsc::Receiver<TurnEvent>) -> Result<Collected, ApiError> {
    let (mut text, mut logprobs) = (String::new(), Vec::new());
    while let Some(event) = events.recv().await {
        match event {
            TurnEvent::Text {
                text: part,
                logprobs: more,
            } => {
                text.push_str(&part);
                logprobs.extend(more);
            }
            TurnEvent::Done {
                finish_reason,
                usage,
            } => {
                return Ok(Collected {
                    text,
                    logprobs,
                    finish_reason,
                    usage,
                })
            }
            TurnEvent::Failed(error) => return Err(error),
        }
    }
    Err(RequestError::Internal("the turn ended without a result".into()).into())
}

fn chat_logprob_entries(logprobs: Vec<TokenLogprob>) -> Vec<TokenLogprobEntry> {
    logprobs
        .into_iter()
        .map(|entry| TokenLogprobEntry {
            bytes: entry.token.as_bytes().to_vec(),
            top_logprobs: entry
                .top
                .into_iter()
                .map(|(token, logprob)| TopLogprob {
                    bytes: token.as_bytes().to_vec(),
                    token,
                    logprob,
                })
                .collect(),
            token: entry.token,
            logprob: entry.logprob,
        })
        .collect()
}

/// Chat's chunks.
struct ChatChunks {
    meta: ReplyMeta,
    logprobs: bool,
}

impl ChatChunks {
    fn chunk(&self, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> Value {
        json!(ChatCompletionChunk {
            id: self.meta.id.clone(),
            object: "chat.completion.chunk",
            created: self.meta.created,
            model: self.meta.model.clone(),
            choices,
            usage,
            session_id: self.meta.session_id.clone(),
        })
    }

    fn choice(
        delta: Delta,
        logprobs: Option<ChatLogprobs>,
        finish: Option<&'static str>,
    ) -> ChunkChoice {
        ChunkChoice {
            index: 0,
            delta,
            logprobs,
            finish_reason: finish,
        }
    }
}

impl ChunkFormat for ChatChunks {
    fn opening(&self) -> Option<Value> {
        let delta = Delta {
            role: Some("assistant"),
            content: Some(String::new()),
        };
        Some(self.chunk(vec![Self::choice(delta, None, None)], None))
    }

    fn text(&mut self, text: String, logprobs: Vec<TokenLogprob>) -> Value {
        let logprobs = self.logprobs.then(|| ChatLogprobs {
            content: chat_logprob_entries(logprobs),
        });
        let delta = Delta {
            role: None,
            content: Some(text),
        };
        self.chunk(vec![Self::choice(delta, logprobs, None)], None)
    }

    fn finish(&self, finish_reason: &'static str) -> Value {
        self.chunk(
            vec![Self::choice(Delta::default(), None, Some(finish_reason))],
            None,
        )
    }

    fn usage(&self, usage: Usage) -> Value {
        self.chunk(Vec::new(), Some(usage))
    }
}

/// Chat completion (OpenAI-compatible). With `session_id` (or `X-Session-Id`), the server's
/// memory of that session holds the earlier turns and `messages` are only the new ones.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "openai",
    request_body = ChatCompletionRequest,
    params(("X-Session-Id" = Option<String>, Header, description = "Session to continue (instead of `session_id`)")),
    responses(
        (status = 200, description = "The reply; with `stream: true`, `text/event-stream` of `ChatCompletionChunk`s ending in `data: [DONE]`", body = ChatCompletion),
        (status = 400, description = "Invalid request (the field is named in `param`)", body = ErrorBody),
        (status = 404, description = "Unknown model or session", body = ErrorBody),
        (status = 409, description = "The session is already running a turn", body = ErrorBody),
        (status = 429, description = "The server is at capacity (running plus waiting turns); retry after `Retry-After` seconds", body = ErrorBody),
        (status = 503, description = "Loading or shutting down", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn chat_completions(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(request): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    check_model(&state, request.model.as_deref())?;
    let budget = chat_budget(request.sampling.max_tokens, request.max_completion_tokens)?;
    let logprobs = chat_logprobs(request.logprobs, request.top_logprobs)?;
    let params = gen_params(request.sampling, budget, logprobs, state.limits)?;
    let messages = messages(request.messages)?;
    let header = headers
        .get(SESSION_HEADER)
        .map(|v| v.to_str().map(str::to_string))
        .transpose()
        .map_err(|_| RequestError::SessionHeaderNotText)?;
    let session = session_id(request.session_id, header)?;
    let (stream, include_usage) = (params.stream, params.include_usage);
    let events = begin(
        &state,
        &caller.0,
        TurnInput::Chat {
            messages,
            session: session.clone(),
        },
        params,
    )
    .await?;
    let meta = ReplyMeta::new("chatcmpl", &state, session);
    if stream {
        let format = ChatChunks {
            meta,
            logprobs: logprobs.is_some(),
        };
        return Ok(sse(format, events, include_usage, state.keep_alive));
    }
    let out = collect(events).await?;
    Ok(Json(ChatCompletion {
        id: meta.id,
        object: "chat.completion",
        created: meta.created,
        model: meta.model,
        choices: vec![ChatChoice {
            index: 0,
            message: OutputMessage {
                role: "assistant",
                content: out.text,
            },
            logprobs: logprobs.map(|_| ChatLogprobs {
                content: chat_logprob_entries(out.logprobs),
            }),
            finish_reason: out.finish_reason,
        }],
        usage: out.usage,
        session_id: meta.session_id,
    })
    .into_response())
}

/// Legacy completions' log-probabilities, with text offsets counted from `offset`.
fn completion_logprob_block(logprobs: Vec<TokenLogprob>, offset: &mut usize) -> CompletionLogprobs {
    let mut block = CompletionLogprobs::default();
    for entry in logprobs {
        block.text_offset.push(*offset);
        *offset += entry.token.len();
        block.top_logprobs.push(
            entry
                .top
                .into_iter()
                .map(|(token, logprob)| (token, json!(logprob)))
                .collect(),
        );
        block.token_logprobs.push(entry.logprob);
        block.tokens.push(entry.token);
    }
    block
}

/// Text completion's chunks.
struct TextChunks {
    meta: ReplyMeta,
    logprobs: bool,
    offset: usize,
}

impl TextChunks {
    fn chunk(
        &self,
        text: String,
        logprobs: Option<CompletionLogprobs>,
        finish: Option<&'static str>,
        usage: Option<Usage>,
    ) -> Value {
        let choices = if usage.is_some() {
            Vec::new()
        } else {
            vec![CompletionChoice {
                index: 0,
                text,
                logprobs,
                finish_reason: finish,
            }]
        };
        json!(Completion {
            id: self.meta.id.clone(),
            object: "text_completion",
            created: self.meta.created,
            model: self.meta.model.clone(),
            choices,
            usage,
        })
    }
}

impl ChunkFormat for TextChunks {
    fn opening(&self) -> Option<Value> {
        None
    }

    fn text(&mut self, text: String, logprobs: Vec<TokenLogprob>) -> Value {
        let block = self
            .logprobs
            .then(|| completion_logprob_block(logprobs, &mut self.offset));
        self.chunk(text, block, None, None)
    }

    fn finish(&self, finish_reason: &'static str) -> Value {
        self.chunk(String::new(), None, Some(finish_reason), None)
    }

    fn usage(&self, usage: Usage) -> Value {
        self.chunk(String::new(), None, None, Some(usage))
    }
}

/// Text completion (OpenAI's legacy endpoint): continues `prompt` as is, no chat template.
#[utoipa::path(
    post,
    path = "/v1/completions",
    tag = "openai",
    request_body = CompletionRequest,
    responses(
        (status = 200, description = "The continuation; with `stream: true`, `text/event-stream` of `Completion` chunks ending in `data: [DONE]`", body = Completion),
        (status = 400, description = "Invalid request (the field is named in `param`)", body = ErrorBody),
        (status = 404, description = "Unknown model", body = ErrorBody),
        (status = 429, description = "The server is at capacity (running plus waiting turns); retry after `Retry-After` seconds", body = ErrorBody),
        (status = 503, description = "Loading or shutting down", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn completions(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    check_model(&state, request.model.as_deref())?;
    let logprobs = completion_logprobs(request.logprobs)?;
    completion_extras(request.echo, request.best_of, request.suffix.as_deref())?;
    let budget = request.sampling.max_tokens.map(|n| (n, "max_tokens"));
    let params = gen_params(request.sampling, budget, logprobs, state.limits)?;
    let prompt = one_prompt(request.prompt.into_vec())?;
    let (stream, include_usage) = (params.stream, params.include_usage);
    let events = begin(&state, &caller.0, TurnInput::Text(prompt), params).await?;
    let meta = ReplyMeta::new("cmpl", &state, None);
    let mut format = TextChunks {
        meta,
        logprobs: logprobs.is_some(),
        offset: 0,
    };
    if stream {
        return Ok(sse(format, events, include_usage, state.keep_alive));
    }
    let out = collect(events).await?;
    let block = format
        .logprobs
        .then(|| completion_logprob_block(out.logprobs, &mut format.offset));
    let mut body = format.chunk(out.text, block, Some(out.finish_reason), None);
    body["usage"] = json!(out.usage);
    Ok(Json(body).into_response())
}

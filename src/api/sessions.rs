//! `/v1/sessions`: create, list (paginated), get (with memory statistics), delete, fork, export
//! (one JSON file: memory, transcript, model fingerprint, format version) and import. A session is
//! visible only to the key that created it; to any other it does not exist (404).

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rand::Rng;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::error::{ApiError, ErrorBody, RequestError};
use super::export_file::{ImportError, SessionExport, ThisServer};
use super::json::{parse, ApiJson, JsonBody};
use super::types::{now, MessageView};
use super::AppState;
use crate::engine::channel::SubmitError;
use crate::session::{MemoryParts, TurnReading};
use crate::store::hot::{LiveMemory, SlotGuard};
use crate::store::{ForkOf, SessionHead, SessionRecord};
use crate::tokenizer::Transcript;

/// A session as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({
    "id": "sess_019ad1f2c3b4a5968778695a4b3c2d1e", "object": "session", "created_at": 1764600000,
    "updated_at": 1764600042, "model_fingerprint": "llama-4b0c1e2f8a9d3c57", "version": 1,
    "tokens_seen": 41, "message_count": 2, "memory": {"tokens_seen": 41, "total_bytes": 1410048}
}))]
pub struct SessionObject {
    pub id: String,
    /// `session`.
    pub object: &'static str,
    pub created_at: i64,
    pub updated_at: i64,
    pub model_fingerprint: String,
    /// Bumped by every stored turn.
    pub version: i64,
    /// Tokens the memory has absorbed.
    pub tokens_seen: i64,
    pub message_count: usize,
    /// Memory statistics: tokens absorbed, LTM updates, bytes per tier.
    #[schema(value_type = Object)]
    pub memory: serde_json::Value,
    /// The conversation so far (only on `GET /v1/sessions/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<MessageView>>,
}

impl SessionObject {
    fn of(head: SessionHead, with_messages: bool) -> Self {
        // What the last turn read is the memory map's (`GET /v1/sessions/{id}/memory`).
        let mut memory = head.stats;
        if let Some(fields) = memory.as_object_mut() {
            fields.remove(TurnReading::STATS_KEY);
        }
        Self {
            object: "session",
            created_at: head.created_at,
            updated_at: head.updated_at,
            model_fingerprint: head.model_fingerprint,
            version: head.version,
            tokens_seen: head.tokens_seen,
            message_count: head.transcript.messages.len(),
            memory,
            messages: with_messages.then(|| {
                head.transcript
                    .messages
                    .into_iter()
                    .map(|m| MessageView {
                        role: m.role,
                        content: m.content,
                    })
                    .collect()
            }),
            id: head.id,
        }
    }
}

/// A page of sessions.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({
    "object": "list", "data": [], "last_id": null, "has_more": false
}))]
pub struct SessionList {
    /// `list`.
    pub object: &'static str,
    pub data: Vec<SessionObject>,
    /// Pass as `after` for the next page.
    pub last_id: Option<String>,
    pub has_more: bool,
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// The `last_id` of the previous page.
    pub after: Option<String>,
}

/// `DELETE` reply.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({
    "id": "sess_019ad1f2c3b4a5968778695a4b3c2d1e", "object": "session.deleted", "deleted": true
}))]
pub struct Deleted {
    pub id: String,
    /// `session.deleted`.
    pub object: &'static str,
    pub deleted: bool,
}

/// The `{id}` of a session route; one that is not text once percent-decoded is a 400 in OpenAI's
/// shape (axum's own rejection is plain text).
pub struct SessionId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for SessionId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(id)| Self(id))
            .map_err(|e| RequestError::BadPathId(e.to_string()).into())
    }
}

/// Ids sort by creation time (list order), then 64 random bits.
fn new_id() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("sess_{millis:012x}{:016x}", rand::thread_rng().gen::<u64>())
}

fn fingerprint(state: &AppState) -> Result<String, ApiError> {
    state
        .engine
        .info()
        .map(|info| info.fingerprint.clone())
        .ok_or_else(|| RequestError::Loading.into())
}

/// The caller's session, or 404.
pub(super) async fn owned(
    state: &AppState,
    id: &str,
    caller: &Caller,
) -> Result<SessionHead, ApiError> {
    state
        .store
        .head(id)
        .await?
        .filter(|head| head.owner == caller.0)
        .ok_or_else(|| RequestError::UnknownSession(id.to_string()).into())
}

/// The caller's session with its memory bytes, or 404.
async fn owned_with_memory(
    state: &AppState,
    id: &str,
    caller: &Caller,
) -> Result<(SessionHead, MemoryParts), ApiError> {
    let head = owned(state, id, caller).await?;
    let memory = state
        .store
        .memory(id)
        .await?
        .ok_or_else(|| RequestError::UnknownSession(id.to_string()))?;
    Ok((head, memory))
}

/// Stores a new session for `caller` and answers 201 with it.
async fn insert(
    state: &AppState,
    caller: &Caller,
    transcript: Transcript,
    memory: MemoryParts,
    tokens_seen: i64,
    stats: serde_json::Value,
) -> Result<Response, ApiError> {
    let time = now();
    let head = SessionHead {
        id: new_id(),
        owner: caller.0.clone(),
        created_at: time,
        updated_at: time,
        model_fingerprint: fingerprint(state)?,
        version: 0,
        transcript,
        stats,
        tokens_seen,
    };
    state
        .store
        .insert(&SessionRecord {
            head: head.clone(),
            memory,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(SessionObject::of(head, false))).into_response())
}

/// Creates an empty session (the body, if any, must be a JSON object; its fields are ignored).
#[utoipa::path(post, path = "/v1/sessions", tag = "sessions",
    responses((status = 201, body = SessionObject), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    if !body.iter().all(u8::is_ascii_whitespace) {
        parse::<serde_json::Map<String, serde_json::Value>>(&body)?;
    }
    insert(
        &state,
        &caller,
        Transcript::new(),
        MemoryParts::default(),
        0,
        serde_json::json!({}),
    )
    .await
}

/// Lists the caller's sessions, oldest first.
#[utoipa::path(get, path = "/v1/sessions", tag = "sessions", params(ListQuery),
    responses((status = 200, body = SessionList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SessionList>, ApiError> {
    let Query(query) = query.map_err(|e| RequestError::BadQuery(e.to_string()))?;
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(RequestError::ListLimit(limit).into());
    }
    let mut heads = state
        .store
        .list(&caller.0, query.after.as_deref(), limit + 1)
        .await?;
    let has_more = heads.len() as i64 > limit;
    heads.truncate(limit as usize);
    let data: Vec<SessionObject> = heads
        .into_iter()
        .map(|h| SessionObject::of(h, false))
        .collect();
    Ok(Json(SessionList {
        object: "list",
        last_id: data.last().map(|s| s.id.clone()),
        data,
        has_more,
    }))
}

/// One session with its messages and memory statistics.
#[utoipa::path(get, path = "/v1/sessions/{id}", tag = "sessions", params(("id" = String, Path)),
    responses((status = 200, body = SessionObject), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    SessionId(id): SessionId,
) -> Result<Json<SessionObject>, ApiError> {
    Ok(Json(SessionObject::of(
        owned(&state, &id, &caller).await?,
        true,
    )))
}

/// Deletes a session and its memory.
#[utoipa::path(delete, path = "/v1/sessions/{id}", tag = "sessions", params(("id" = String, Path)),
    responses((status = 200, body = Deleted), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    SessionId(id): SessionId,
) -> Result<Json<Deleted>, ApiError> {
    if !state.store.delete(&id, &caller.0).await? {
        return Err(RequestError::UnknownSession(id).into());
    }
    state.hot.forget(&id);
    Ok(Json(Deleted {
        id,
        object: "session.deleted",
        deleted: true,
    }))
}

/// A new session that starts from this one's last stored turn (memory and transcript copied).
/// Where this replica keeps the source's memory of that turn in RAM, the fork's memory shares its
/// buffers until either session writes (copy on write), so forking a long session costs no copy
/// of its past in RAM.
#[utoipa::path(post, path = "/v1/sessions/{id}/fork", tag = "sessions", params(("id" = String, Path)),
    responses((status = 201, body = SessionObject), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn fork(
    State(state): State<AppState>,
    caller: Caller,
    SessionId(id): SessionId,
) -> Result<Response, ApiError> {
    // Holding the source's slot keeps this replica's turns of it from committing meanwhile.
    let source = state.hot.try_claim_existing(&id);
    let fork = ForkOf {
        source: &id,
        owner: &caller.0,
        id: &new_id(),
        created_at: now(),
    };
    let head = state
        .store
        .fork(fork)
        .await?
        .ok_or_else(|| RequestError::UnknownSession(id.clone()))?;
    if let Some(source) = source {
        share_kept_memory(&state, &id, source, &head).await?;
    }
    Ok((StatusCode::CREATED, Json(SessionObject::of(head, false))).into_response())
}

/// Keeps a fork of the source's kept memory as `fork`'s, when it is the memory of the turn the
/// store copied: the source's stored version is still the kept one's (versions only grow, so no
/// turn committed on any replica since that memory was kept, and the fork copied that turn).
async fn share_kept_memory(
    state: &AppState,
    source_id: &str,
    source: SlotGuard,
    fork: &SessionHead,
) -> Result<(), ApiError> {
    let Some(kept_version) = source.live.as_ref().map(|live| live.version) else {
        return Ok(());
    };
    let stored = state.store.head(source_id).await?;
    if stored.is_none_or(|head| head.version != kept_version) {
        return Ok(());
    }
    let Some(memory) = source.live.as_ref().map(|live| live.memory.fork()) else {
        return Ok(());
    };
    drop(source);
    if let Some(mut slot) = state.hot.try_claim(&fork.id) {
        state.keep_memory(&mut slot, LiveMemory::new(fork.version, memory));
    }
    Ok(())
}

/// The session as one file: memory bytes, transcript, model fingerprint, format version.
#[utoipa::path(get, path = "/v1/sessions/{id}/export", tag = "sessions", params(("id" = String, Path)),
    responses((status = 200, body = SessionExport), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn export(
    State(state): State<AppState>,
    caller: Caller,
    SessionId(id): SessionId,
) -> Result<Json<SessionExport>, ApiError> {
    let (head, memory) = owned_with_memory(&state, &id, &caller).await?;
    Ok(Json(SessionExport::new(
        head.model_fingerprint,
        head.created_at,
        head.transcript,
        &memory,
        head.tokens_seen,
        head.stats,
    )))
}

/// A new session from an export file. Everything is checked before anything is stored: the
/// format, the checksum, the model and memory layout (named both ways when they differ), the
/// transcript against the memory, the counters, and the memory itself, read by the model.
#[utoipa::path(post, path = "/v1/sessions/import", tag = "sessions", request_body = SessionExport,
    responses((status = 201, body = SessionObject), (status = 400, description = "Not an export file, another format version, a damaged memory, another model (`model_mismatch`) or memory layout (`memory_layout_mismatch`), or a transcript or counter that does not match the memory", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn import(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(file): ApiJson<SessionExport>,
) -> Result<Response, ApiError> {
    let info = state.engine.info().ok_or(RequestError::Loading)?;
    let mut checked = file.check(ThisServer::of(info))?;
    let stats = if checked.memory.core.is_empty() {
        serde_json::json!({})
    } else {
        let verdict = state
            .engine
            .check_memory(std::mem::take(&mut checked.memory))?;
        let (memory, read) = verdict.await.map_err(|_| SubmitError::Stopped)?;
        checked.memory = memory;
        let stats = read.map_err(ImportError::Unusable)?;
        checked.check_counted(stats.tokens_seen)?;
        serde_json::to_value(stats).unwrap_or_default()
    };
    insert(
        &state,
        &caller,
        checked.transcript,
        checked.memory,
        checked.tokens_seen,
        stats,
    )
    .await
}

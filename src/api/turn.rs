//! One generation request from validated input to a stream of [`TurnEvent`]s: builds the prompt
//! (a session's new part only: [`Transcript::next_prompt`]), claims the session (409 if a turn holds it), submits to the
//! engine, and — in a task of its own, so it happens even when the client leaves — writes a
//! session's turn through to the store before the last event is sent.

use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::mpsc;

use super::error::{ApiError, RequestError};
use super::types::{now, Usage};
use super::validate::{check_prompt_len, GenParams};
use super::AppState;
use crate::engine::channel::{
    Event, Finished, MemorySource, ModelInfo, Submission, TokenLogprob, Turn, TurnFailure,
};
use crate::log_text::Escaped;
use crate::session::{CoreHeader, MemoryParts, SessionFormatError, TurnReading};
use crate::store::hot::{LiveMemory, SlotGuard};
use crate::store::{SessionHead, TurnCommit};
use crate::tokenizer::{ChatMessage, Transcript};

/// What a handler receives.
#[derive(Debug)]
pub enum TurnEvent {
    Text {
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    Done {
        finish_reason: &'static str,
        usage: Usage,
    },
    /// A failure after the response began (stream: an error event, then `[DONE]`).
    Failed(ApiError),
}

/// The prompt of a request.
#[derive(Debug)]
pub enum TurnInput {
    /// Plain text, continued as is (`/v1/completions`).
    Text(String),
    /// A conversation; with a session id, only its new messages.
    Chat {
        messages: Vec<ChatMessage>,
        session: Option<String>,
    },
}

/// A session turn in progress: its slot (held until the turn is stored), the row it read, and
/// the transcript with the new messages.
struct SessionTurn {
    slot: SlotGuard,
    head: SessionHead,
    transcript: Transcript,
}

/// Validates what depends on the model and the session, submits, and returns the event stream.
/// Every error here comes before any byte of the response.
pub async fn begin(
    state: &AppState,
    owner: &str,
    input: TurnInput,
    params: GenParams,
) -> Result<mpsc::Receiver<TurnEvent>, ApiError> {
    if state.draining.load(Ordering::SeqCst) {
        return Err(RequestError::ShuttingDown.into());
    }
    let info = state.engine.info().ok_or(RequestError::Loading)?;
    let tokenizer = &info.tokenizer;
    let encode_error = |e: crate::tokenizer::TokenizerError| RequestError::Internal(e.to_string());
    let template = || {
        tokenizer
            .chat_template()
            .ok_or_else(|| RequestError::Internal("the model has no chat template".into()))
    };
    // The prompt's tokens, the field they came from, and a session's row and new transcript.
    let (prompt, field, continued) = match input {
        TurnInput::Text(text) => (
            tokenizer.encode(&text).map_err(encode_error)?,
            "prompt",
            None,
        ),
        TurnInput::Chat {
            messages,
            session: None,
        } => {
            let text = template()?
                .render(&messages, true)
                .map_err(|e| RequestError::Template(e.to_string()))?;
            let prompt = tokenizer.encode(&text).map_err(encode_error)?;
            (prompt, "messages", None)
        }
        TurnInput::Chat {
            messages,
            session: Some(id),
        } => {
            let head = state
                .store
                .head(&id)
                .await?
                .filter(|head| head.owner == owner)
                .ok_or_else(|| RequestError::UnknownSession(id.clone()))?;
            let mut transcript = head.transcript.clone();
            let text = transcript
                .next_prompt(template()?, &messages)
                .map_err(|e| RequestError::Template(e.to_string()))?;
            let prompt = if head.transcript.messages.is_empty() {
                tokenizer.encode(&text)
            } else {
                tokenizer.encode_continuation(&text)
            }
            .map_err(encode_error)?;
            (prompt, "messages", Some((head, transcript)))
        }
    };
    check_prompt_len(prompt.len(), field, state.limits)?;
    let (memory, session) = match continued {
        None => (MemorySource::Fresh, None),
        Some((head, transcript)) => {
            let id = head.id.clone();
            let mut slot = state
                .hot
                .try_claim(&id)
                .ok_or_else(|| RequestError::SessionBusy(id.clone()))?;
            let memory = match slot.live.take() {
                Some(live) if live.version == head.version => MemorySource::Live(live.memory),
                _ => {
                    let parts = state
                        .store
                        .memory(&id)
                        .await?
                        .ok_or_else(|| RequestError::UnknownSession(id.clone()))?;
                    readable_here(&parts, info).map_err(|reason| RequestError::Unreadable {
                        id: id.clone(),
                        reason: reason.to_string(),
                    })?;
                    MemorySource::Stored(parts)
                }
            };
            let turn = SessionTurn {
                slot,
                head,
                transcript,
            };
            (memory, Some(turn))
        }
    };
    let submission = state.engine.submit(Turn {
        prompt,
        memory,
        keep_memory: session.is_some(),
        sampling: params.sampling,
        stop: params.stop,
        max_tokens: params.max_tokens,
        logprobs: params.logprobs,
    })?;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(drive(state.clone(), submission, session, tx));
    Ok(rx)
}

/// Whether a stored memory was made for this server's model and memory layout (its header
/// says so without the model thread reading it): a session that cannot be read here is refused
/// before its turn is queued, saying why.
fn readable_here(parts: &MemoryParts, info: &ModelInfo) -> Result<(), SessionFormatError> {
    if parts.core.is_empty() {
        return Ok(());
    }
    CoreHeader::of(&parts.core)?.made_for(&info.fingerprint, &info.layout)
}

/// Forwards the engine's events to the client, then stores a session's turn, then ends the
/// stream. A client that leaves closes `tx` (whether or not a token has come yet); dropping the
/// engine's receiver then stops the turn: before its first token (queued or in its prompt) it
/// ends at once, after it at the next token.
async fn drive(
    state: AppState,
    submission: Submission,
    session: Option<SessionTurn>,
    tx: mpsc::Sender<TurnEvent>,
) {
    let started = Instant::now();
    let Submission { events, finished } = submission;
    let mut events = Some(events);
    while let Some(receiver) = events.as_mut() {
        tokio::select! {
            event = receiver.recv() => match event {
                Some(Event::Text { text, logprobs }) => {
                    if tx.send(TurnEvent::Text { text, logprobs }).await.is_err() {
                        events = None; // the client left: stop the generation
                    }
                }
                None => break,
            },
            () = tx.closed() => events = None,
        }
    }
    drop(events);
    let last = match finished.await {
        Ok(finished) => finish(&state, finished, session, started).await,
        Err(_) => TurnEvent::Failed(
            RequestError::Internal("the engine stopped during the turn".into()).into(),
        ),
    };
    let _ = tx.send(last).await;
}

/// Records metrics, stores a session's turn, and says how the turn ended.
async fn finish(
    state: &AppState,
    finished: Finished,
    session: Option<SessionTurn>,
    started: Instant,
) -> TurnEvent {
    let metrics = &state.metrics;
    metrics
        .prompt_tokens
        .fetch_add(finished.prompt_tokens as u64, Ordering::Relaxed);
    metrics
        .completion_tokens
        .fetch_add(finished.completion_tokens as u64, Ordering::Relaxed);
    metrics
        .request_duration
        .observe(started.elapsed().as_secs_f64());
    if finished.cancelled {
        tracing::info!(
            generated = finished.completion_tokens,
            "generation stopped early (client disconnected or shutdown)"
        );
    }
    match (finished.error, &session) {
        (None, _) => {}
        (Some(TurnFailure::Memory(reason)), Some(turn)) => {
            tracing::warn!(session = %Escaped(&turn.head.id), reason = %Escaped(&reason), "session memory unreadable");
            return TurnEvent::Failed(
                RequestError::Unreadable {
                    id: turn.head.id.clone(),
                    reason: reason.to_string(),
                }
                .into(),
            );
        }
        (Some(error), _) => {
            tracing::error!(error = %Escaped(&error), "turn failed");
            return TurnEvent::Failed(
                RequestError::Internal(format!("generation failed: {error}")).into(),
            );
        }
    }
    let usage = Usage::new(finished.prompt_tokens, finished.completion_tokens);
    let done = TurnEvent::Done {
        finish_reason: finished.finish_reason,
        usage,
    };
    let (Some(mut turn), Some(kept)) = (session, finished.memory) else {
        return done;
    };
    let mut transcript = turn.transcript;
    transcript.record_reply(&finished.text, kept.stats.tokens_seen);
    let mut stats = serde_json::to_value(kept.stats).unwrap_or_default();
    stats[TurnReading::STATS_KEY] = serde_json::to_value(&kept.reading).unwrap_or_default();
    if state.log_memory_stats {
        tracing::info!(session = %Escaped(&turn.head.id), %stats, "session memory");
    }
    let commit = TurnCommit {
        id: &turn.head.id,
        read_version: turn.head.version,
        transcript: &transcript,
        core: &kept.core,
        blocks: kept.blocks.clone(),
        new_blocks: &kept.new_blocks,
        stats: &stats,
        tokens_seen: kept.stats.tokens_seen as i64,
        updated_at: now(),
    };
    match state.store.commit_turn(commit).await {
        Ok(Some(committed)) => {
            metrics.turns_committed.fetch_add(1, Ordering::Relaxed);
            metrics
                .block_writes
                .fetch_add(committed.blocks_written, Ordering::Relaxed);
            metrics
                .block_deletes
                .fetch_add(committed.blocks_deleted, Ordering::Relaxed);
            state.keep_memory(
                &mut turn.slot,
                LiveMemory::new(committed.version, kept.memory),
            );
            done
        }
        Ok(None) => {
            metrics.turn_conflicts.fetch_add(1, Ordering::Relaxed);
            TurnEvent::Failed(RequestError::VersionConflict(turn.head.id.clone()).into())
        }
        Err(error) => TurnEvent::Failed(error.into()),
    }
}

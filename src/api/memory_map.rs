//! `GET /v1/sessions/{id}/memory`: what a session's memory holds, drawn on its token timeline.
//! The tiers keep tokens in session order (`infinity-former.md` §9.7): the sinks are the first
//! tokens, the STM the last, the archive's blocks the ones before the STM, and what left the
//! archive's budget went to the continuous signal (or was dropped, with the signal off). So the
//! memory's statistics and the last turn's [`TurnReading`] place every token, and the transcript
//! gives each span its text.

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody, RequestError};
use super::sessions::{owned, SessionId};
use super::AppState;
use crate::session::{MemoryStats, TurnReading};

/// A session's memory, tier by tier, and what its last turn read.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemoryMap {
    /// Always `session.memory`.
    pub object: &'static str,
    pub session_id: String,
    /// Every token the session has taken in (prompts and replies).
    pub tokens_seen: u64,
    /// Tokens and bytes of each tier (bytes summed over layers), in timeline order.
    pub tiers: Vec<TierSize>,
    pub total_bytes: u64,
    /// The timeline, oldest first: consecutive spans that cover tokens `0..tokens_seen` exactly
    /// once, one per archive block and one per other tier.
    pub spans: Vec<MemorySpan>,
    /// What the last turn read; null before the first turn (and after an import).
    pub last_turn: Option<LastTurn>,
}

/// Where a token lives now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// The session's first tokens, kept exact for good.
    Sinks,
    /// Absorbed into the ∞-former continuous signal (§1–4).
    Signal,
    /// Let go: past the archive's budget with the signal off.
    Dropped,
    /// An exact archive block, read when it is among a query segment's top k.
    Archive,
    /// The short-term memory: the last tokens, exact.
    Stm,
}

/// One tier's size.
#[derive(Debug, Serialize, ToSchema)]
pub struct TierSize {
    pub tier: Tier,
    pub tokens: u64,
    pub bytes: u64,
}

/// Tokens `start..end` of the session, in one tier.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemorySpan {
    pub tier: Tier,
    pub start: u64,
    /// One past the last token.
    pub end: u64,
    /// The transcript's text of these tokens (at token granularity within a turn; see
    /// `docs/SERVER.md`).
    pub text: String,
    /// The session-wide number of an archive block (null: not a block, or blocks waiting for the
    /// signal with the archive off).
    pub block: Option<u64>,
    /// How often the last turn selected this block, summed over layers, KV heads and query
    /// segments (null when not a block).
    pub selected: Option<u64>,
}

/// What the last turn read.
#[derive(Debug, Serialize, ToSchema)]
pub struct LastTurn {
    /// Blocks picked in all: Σ over layers and query segments of KV heads × k. Equals the sum of
    /// the spans' `selected` plus `selected_then_left`.
    pub picks: u64,
    /// Picks of blocks that left the archive later in the same turn.
    pub selected_then_left: u64,
    /// Query segments that read the archive (each layer reads the same ones).
    pub segments: u64,
    /// Mean softmax mass the turn's queries put on the signal's points (null: not measured).
    pub signal_mass: Option<f64>,
}

/// A session's memory map: tiers, spans with their text, and the last turn's reads.
#[utoipa::path(get, path = "/v1/sessions/{id}/memory", tag = "sessions", params(("id" = String, Path)),
    responses((status = 200, body = MemoryMap), (status = 404, body = ErrorBody),
        (status = 503, description = "The model is still loading", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn memory_map(
    State(state): State<AppState>,
    caller: Caller,
    SessionId(id): SessionId,
) -> Result<Json<MemoryMap>, ApiError> {
    let head = owned(&state, &id, &caller).await?;
    let info = state.engine.info().ok_or(RequestError::Loading)?;
    let stats: MemoryStats = serde_json::from_value(head.stats.clone()).unwrap_or_default();
    let reading: Option<TurnReading> = head
        .stats
        .get(TurnReading::STATS_KEY)
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    let starts = head
        .transcript
        .token_starts(&info.tokenizer, stats.tokens_seen)
        .map_err(|e| RequestError::Internal(format!("session {id}'s transcript: {e}")))?;
    let text = |start: u64, end: u64| {
        let fed = &head.transcript.fed;
        let at = |token: u64| char_floor(fed, starts[token as usize]);
        fed[at(start)..at(end).max(at(start))].to_string()
    };
    let spans = timeline(&stats, reading.as_ref())
        .into_iter()
        .map(|(tier, start, end, block)| MemorySpan {
            tier,
            start,
            end,
            text: text(start, end),
            block: block.map(|(number, _)| number),
            selected: block.map(|(_, selected)| selected),
        })
        .collect();
    let t = stats.tiers;
    let size = |tier, tokens: u64, bytes: usize| TierSize {
        tier,
        tokens,
        bytes: bytes as u64,
    };
    Ok(Json(MemoryMap {
        object: "session.memory",
        session_id: id,
        tokens_seen: stats.tokens_seen,
        tiers: vec![
            size(Tier::Sinks, t.sink_tokens as u64, t.sink_bytes),
            size(Tier::Signal, t.ltm_tokens, t.ltm_bytes),
            size(Tier::Dropped, t.dropped_tokens, 0),
            size(Tier::Archive, t.archive_tokens as u64, t.archive_bytes),
            size(Tier::Stm, t.stm_tokens as u64, t.stm_bytes),
        ],
        total_bytes: stats.total_bytes as u64,
        spans,
        last_turn: reading.map(|r| LastTurn {
            picks: r.picks,
            selected_then_left: r.selected_then_left,
            segments: r.segments,
            signal_mass: r.signal_mass,
        }),
    }))
}

/// A span of the timeline: tier, first token, one past the last, and (block number, selections)
/// for an archive block.
type Span = (Tier, u64, u64, Option<(u64, u64)>);

/// The timeline's spans in token order, empty tiers left out: sinks, signal, dropped, each held
/// archive block (then any archive tokens that are not held blocks: blocks staged for the signal
/// with the archive off), STM. Together they cover `0..tokens_seen` once.
fn timeline(stats: &MemoryStats, reading: Option<&TurnReading>) -> Vec<Span> {
    let t = stats.tiers;
    let mut spans = Vec::new();
    let mut at = 0u64;
    let mut push = |tier, tokens: u64, block| {
        if tokens > 0 {
            spans.push((tier, at, at + tokens, block));
            at += tokens;
        }
    };
    push(Tier::Sinks, t.sink_tokens as u64, None);
    push(Tier::Signal, t.ltm_tokens, None);
    push(Tier::Dropped, t.dropped_tokens, None);
    let mut archive = t.archive_tokens as u64;
    if let Some(r) = reading.filter(|r| r.block_len > 0) {
        let blocks = r.blocks.min(archive / r.block_len);
        for i in 0..blocks {
            let selected = r.selected.get(i as usize).copied().unwrap_or(0);
            push(
                Tier::Archive,
                r.block_len,
                Some((r.first_block + i, selected)),
            );
        }
        archive -= blocks * r.block_len;
    }
    push(Tier::Archive, archive, None);
    push(Tier::Stm, t.stm_tokens as u64, None);
    spans
}

/// The largest char boundary of `text` at or before `byte`.
fn char_floor(text: &str, byte: usize) -> usize {
    let mut at = byte.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::TierStats;

    #[test]
    fn the_timeline_covers_every_token_once_in_tier_order() {
        let stats = MemoryStats {
            tokens_seen: 4 + 512 + 64 * 3 + 10 + 100,
            tiers: TierStats {
                sink_tokens: 4,
                ltm_tokens: 512,
                archive_tokens: 64 * 3 + 10,
                stm_tokens: 100,
                ..TierStats::default()
            },
            total_bytes: 0,
        };
        let reading = TurnReading {
            block_len: 64,
            first_block: 8,
            blocks: 3,
            selected: vec![5, 0],
            ..TurnReading::default()
        };
        let spans = timeline(&stats, Some(&reading));
        let mut at = 0;
        for &(_, start, end, _) in &spans {
            assert_eq!(start, at);
            assert!(end > start);
            at = end;
        }
        assert_eq!(at, stats.tokens_seen);
        let tiers: Vec<Tier> = spans.iter().map(|s| s.0).collect();
        use Tier::*;
        assert_eq!(
            tiers,
            [Sinks, Signal, Archive, Archive, Archive, Archive, Stm]
        );
        let blocks: Vec<_> = spans.iter().map(|s| s.3).collect();
        assert_eq!(
            blocks[2..6],
            [Some((8, 5)), Some((9, 0)), Some((10, 0)), None]
        );
    }

    #[test]
    fn char_floor_never_splits_a_character() {
        let text = "aé€";
        assert_eq!(char_floor(text, 2), 1);
        assert_eq!(char_floor(text, 4), 3);
        assert_eq!(char_floor(text, 99), text.len());
    }
}

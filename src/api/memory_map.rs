//! `GET /v1/sessions/{id}/memory`: what a session's memory holds, drawn on its token timeline.
//! The tiers keep tokens in session order (`infinity-former.md` §9.7): the sinks are the first
//! tokens, the STM the last, archive block n the n-th block of 64 tokens after the sinks, and what
//! left the archive (the oldest blocks, or with sticky retention those read least, wherever they
//! lie) went to the continuous signal (or was dropped, with the signal off). So the memory's
//! statistics and the last turn's [`TurnReading`] place every token, and the transcript gives each
//! span its text.

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
    /// With sticky retention, the block's stickiness: the attention mass it received while
    /// selected, summed over layers, heads and queries, fading by half per 65,536 tokens; the
    /// least sticky blocks leave first (null when not a block or not kept).
    pub stickiness: Option<f32>,
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
            block: block.map(|b| b.number),
            selected: block.map(|b| b.selected),
            stickiness: block.and_then(|b| b.stickiness),
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

/// An archive block on the timeline: its number, the last turn's selections, its stickiness.
#[derive(Clone, Copy, Debug, PartialEq)]
struct BlockSpan {
    number: u64,
    selected: u64,
    stickiness: Option<f32>,
}

/// A span of the timeline: tier, first token, one past the last, and the block it is, if one.
type Span = (Tier, u64, u64, Option<BlockSpan>);

/// The timeline's spans in token order, empty tiers left out: sinks; then each held archive block
/// at its place, the tokens before and between them that left the archive given to the signal
/// first and then to the dropped, in that order (with `fifo` retention: the signal, the dropped,
/// then the blocks); any archive tokens that are not held blocks (blocks staged for the signal
/// with the archive off); the STM. Together they cover `0..tokens_seen` once.
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
    // What left the archive, in timeline order: the signal's tokens, then the dropped.
    let mut left = [
        (Tier::Signal, t.ltm_tokens),
        (Tier::Dropped, t.dropped_tokens),
    ];
    let mut give_left = |push: &mut dyn FnMut(Tier, u64, Option<BlockSpan>), mut tokens: u64| {
        for (tier, remaining) in left.iter_mut() {
            let n = tokens.min(*remaining);
            push(*tier, n, None);
            (*remaining, tokens) = (*remaining - n, tokens - n);
        }
    };
    let mut archive = t.archive_tokens as u64;
    if let Some(r) = reading.filter(|r| r.block_len > 0) {
        let blocks = r.blocks.min(archive / r.block_len);
        let mut next = 0;
        for (i, number) in r.held().iter().take(blocks as usize).enumerate() {
            give_left(&mut push, number.saturating_sub(next) * r.block_len);
            let block = BlockSpan {
                number,
                selected: r.selected.get(i).copied().unwrap_or(0),
                stickiness: r.stickiness.get(i).copied(),
            };
            push(Tier::Archive, r.block_len, Some(block));
            next = number + 1;
        }
        archive -= blocks * r.block_len;
    }
    give_left(&mut push, u64::MAX);
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
        let blocks: Vec<_> = spans
            .iter()
            .map(|s| s.3.map(|b| (b.number, b.selected)))
            .collect();
        assert_eq!(
            blocks[2..6],
            [Some((8, 5)), Some((9, 0)), Some((10, 0)), None]
        );
    }

    /// Blocks that left out of order (sticky retention) leave gaps at their places, filled by
    /// the signal's tokens, then the dropped ones.
    #[test]
    fn blocks_held_out_of_order_sit_at_their_places() {
        let stats = MemoryStats {
            tokens_seen: 4 + 64 * 8 + 50,
            tiers: TierStats {
                sink_tokens: 4,
                ltm_tokens: 64 * 4,
                dropped_tokens: 64,
                archive_tokens: 64 * 3,
                stm_tokens: 50,
                ..TierStats::default()
            },
            total_bytes: 0,
        };
        let reading = TurnReading {
            block_len: 64,
            first_block: 1,
            blocks: 3,
            held_runs: crate::session::HeldBlocks::of_numbers(&[1, 6, 7]),
            selected: vec![2, 0, 1],
            stickiness: vec![0.5, 0.0, 0.25],
            ..TurnReading::default()
        };
        let spans = timeline(&stats, Some(&reading));
        let summary: Vec<_> = spans
            .iter()
            .map(|&(tier, start, end, block)| (tier, start, end, block.map(|b| b.number)))
            .collect();
        use Tier::*;
        assert_eq!(
            summary,
            [
                (Sinks, 0, 4, None),
                (Signal, 4, 68, None),
                (Archive, 68, 132, Some(1)),
                (Signal, 132, 324, None),
                (Dropped, 324, 388, None),
                (Archive, 388, 452, Some(6)),
                (Archive, 452, 516, Some(7)),
                (Stm, 516, 566, None),
            ]
        );
        assert_eq!(spans[5].3.unwrap().stickiness, Some(0.0));
    }

    #[test]
    fn char_floor_never_splits_a_character() {
        let text = "aé€";
        assert_eq!(char_floor(text, 2), 1);
        assert_eq!(char_floor(text, 4), 3);
        assert_eq!(char_floor(text, 99), text.len());
    }
}

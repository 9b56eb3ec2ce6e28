//! One turn inside the continuous batch (`scheduler.rs`): its memory, the prompt still to take in,
//! its sampler, and what it has streamed. The scheduler moves it through [`Phase`]s; each token is
//! chosen, shown and ended by the same [`Decoding`] rules as a single generation's (`decode.rs`),
//! and a session's memory is left holding the prompt and the whole reply.

use std::time::Instant;

use tch::{Kind, Tensor};
use tokio::sync::{mpsc, oneshot};

use super::channel::{Event, Finished, TokenLogprob, Turn, TurnFailure};
use super::decode::{Decoding, FinishReason};
use super::generate::token_row;
use super::sampler::Sampler;
use super::stats::EngineStats;
use crate::model::{Llama, LogitsAt, ModelError};
use crate::session::{HeldBlocks, KeptMemory, SessionFormatError, SessionMemory};
use crate::tokenizer::Tokenizer;

/// Where a sequence stands between two steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Prompt tokens from `fed` on, but the last, are still to be taken in (in chunks); the last
    /// is fed by a decode step, as `generate` does.
    Prefill {
        fed: usize,
    },
    /// The next decode step feeds `pending` (the prompt's last token, or the token last chosen
    /// and shown) and chooses after it.
    Decode {
        pending: u32,
    },
    /// The turn is over, but a session's memory must still take in the reply's last token
    /// (`pending`); the step's logits are not used.
    Flush {
        pending: u32,
    },
    Done,
}

/// What every sequence's choices depend on besides itself.
pub struct StepContext<'a> {
    pub tokenizer: &'a Tokenizer,
    /// The server's shutdown deadline passed: end every turn at its next token.
    pub cut_all: bool,
    pub stats: &'a EngineStats,
}

/// A turn in the batch.
pub struct Sequence {
    pub memory: SessionMemory,
    phase: Phase,
    turn: Turn,
    sampler: Sampler,
    /// The prompt, the reply so far and the per-token rules.
    decoding: Decoding,
    outcome: Finished,
    events: mpsc::UnboundedSender<Event>,
    finished: oneshot::Sender<Finished>,
    admitted: Instant,
    last_token_at: Option<Instant>,
    /// The archive blocks the memory held when the turn began (a store has them already).
    blocks_before: HeldBlocks,
}

impl Sequence {
    /// A turn ready to take in its prompt after what `memory` holds.
    pub fn new(
        mut turn: Turn,
        memory: SessionMemory,
        stop_tokens: &[u32],
        events: mpsc::UnboundedSender<Event>,
        finished: oneshot::Sender<Finished>,
        admitted: Instant,
    ) -> Self {
        let mut outcome = Finished::empty(turn.prompt.len());
        let prompt = std::mem::take(&mut turn.prompt);
        let phase = match prompt.as_slice() {
            [] => {
                outcome.error = Some(TurnFailure::Model("the prompt has no tokens".into()));
                Phase::Done
            }
            [only] => Phase::Decode { pending: *only },
            _ => Phase::Prefill { fed: 0 },
        };
        Self {
            blocks_before: memory.archive_blocks(),
            memory,
            phase,
            sampler: Sampler::new(turn.sampling.clone()),
            decoding: Decoding::new(&prompt, turn.max_tokens, stop_tokens.to_vec())
                .with_text(turn.stop.clone()),
            outcome,
            events,
            finished,
            admitted,
            last_token_at: None,
            turn,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Prompt tokens not yet taken in.
    pub fn prompt_left(&self) -> usize {
        match self.phase {
            Phase::Prefill { fed } => self.outcome.prompt_tokens - 1 - fed,
            _ => 0,
        }
    }

    /// The token the next decode step feeds, if this sequence takes part in it.
    pub fn pending(&self) -> Option<u32> {
        match self.phase {
            Phase::Decode { pending } | Phase::Flush { pending } => Some(pending),
            Phase::Prefill { .. } | Phase::Done => None,
        }
    }

    /// Takes in the next `count` prompt tokens in one forward pass; after them all but the last,
    /// the sequence joins the decode steps with that last token.
    pub fn prefill(&mut self, model: &Llama, count: usize) {
        let Phase::Prefill { fed } = self.phase else {
            return;
        };
        let body = self.outcome.prompt_tokens - 1;
        let end = (fed + count).min(body);
        let prompt = self.decoding.history();
        let row = token_row(&prompt[fed..end]); // [1, T]
        let last = prompt[body];
        match model.forward(&row, self.memory.caches(), LogitsAt::Last) {
            Ok(_) if end == body => self.phase = Phase::Decode { pending: last },
            Ok(_) => self.phase = Phase::Prefill { fed: end },
            Err(e) => self.fail(TurnFailure::Model(e.to_string())),
        }
    }

    /// After a decode step fed [`Self::pending`]: its logits `[V]` choose the next token.
    pub fn decoded(&mut self, logits: &Tensor, context: &StepContext) {
        match self.phase {
            Phase::Decode { .. } => self.choose(logits, context),
            Phase::Flush { .. } => self.phase = Phase::Done,
            Phase::Prefill { .. } | Phase::Done => {}
        }
    }

    /// Ends the turn with an error (its memory is not returned: it may hold half a step).
    pub fn fail(&mut self, error: TurnFailure) {
        self.outcome.error = Some(error);
        self.phase = Phase::Done;
    }

    /// Whether the turn's client has gone (its event receiver was dropped).
    pub fn client_left(&self) -> bool {
        self.events.is_closed()
    }

    /// Ends a turn whose client left before its first token. Its memory holds part of the prompt
    /// and no reply, which no transcript describes, so it is not returned: a session keeps what
    /// its store holds, as if the turn had never been asked for.
    pub fn abandon(&mut self) {
        self.decoding.cancel();
        self.outcome.cancelled = true;
        self.phase = Phase::Done;
    }

    /// Cancelled before a single token was chosen: only [`Sequence::abandon`] ends a turn so (a
    /// chosen token is taken before any cancel, and a first stop token ends it as `Stop`).
    fn abandoned(&self) -> bool {
        self.decoding.finish() == Some(FinishReason::Cancelled)
            && self.decoding.generated().is_empty()
    }

    /// Chooses and shows one token by the [`Decoding`] rules; ends the turn when they, the client
    /// or the server's shutdown say so.
    fn choose(&mut self, logits: &Tensor, context: &StepContext) {
        let before = self.decoding.generated().len();
        let tokenizer = Some(context.tokenizer);
        let (token, text) = match self.decoding.choose(&mut self.sampler, logits, tokenizer) {
            Ok(chosen) => chosen,
            Err(e) => return self.fail(self.blame(e, logits)),
        };
        let now = Instant::now();
        if self.outcome.time_to_first_token.is_none() {
            let seconds = (now - self.admitted).as_secs_f64();
            self.outcome.time_to_first_token = Some(seconds);
            context.stats.time_to_first_token.observe(seconds);
        }
        if let Some(previous) = self.last_token_at.replace(now) {
            context
                .stats
                .inter_token
                .observe((now - previous).as_secs_f64());
        }
        let generated = self.decoding.generated().len() > before;
        let logprobs = match self.turn.logprobs.filter(|_| generated) {
            Some(k) => vec![Self::logprob(logits, token, k, context.tokenizer)],
            None => Vec::new(),
        };
        self.outcome.text.push_str(&text);
        let client_gone = (!text.is_empty() || !logprobs.is_empty())
            && self.events.send(Event::Text { text, logprobs }).is_err();
        if client_gone || self.events.is_closed() || context.cut_all {
            self.decoding.cancel();
        }
        match self.decoding.finish() {
            None => self.phase = Phase::Decode { pending: token },
            Some(finish) => self.end(finish),
        }
    }

    /// Settles the outcome; a session's memory then still takes in the last shown token.
    fn end(&mut self, finish: FinishReason) {
        self.outcome.completion_tokens = self.decoding.generated().len();
        self.outcome.finish_reason = finish.openai();
        self.outcome.cancelled = finish == FinishReason::Cancelled;
        self.phase = match self.decoding.unfed().filter(|_| self.turn.keep_memory) {
            Some(pending) => Phase::Flush { pending },
            None => Phase::Done,
        };
    }

    /// Why no token could be chosen. The weights are fixed and the prompt's tokens checked, so
    /// logits that are not numbers in a session's turn come from what its memory holds: the
    /// session's fault (a 422 saying so), not the server's.
    fn blame(&self, error: ModelError, logits: &Tensor) -> TurnFailure {
        let finite = logits.isfinite().all().int64_value(&[]) == 1;
        if self.turn.keep_memory && !finite {
            TurnFailure::Memory(SessionFormatError::Corrupt(
                "reading it gives values that are not numbers".into(),
            ))
        } else {
            TurnFailure::Model(error.to_string())
        }
    }

    /// The chosen token's log-probability under the model's raw distribution (before sampling
    /// filters) and its `k` most likely alternatives.
    fn logprob(logits: &Tensor, token: u32, k: usize, tokenizer: &Tokenizer) -> TokenLogprob {
        let logprobs = logits.to_kind(Kind::Float).log_softmax(-1, Kind::Float);
        let text = |id: i64| tokenizer.decode(&[id as u32], false).unwrap_or_default();
        let (values, ids) = logprobs.topk(k.max(1) as i64, -1, true, true);
        let top = (0..k as i64)
            .map(|i| {
                (
                    text(ids.int64_value(&[i])),
                    values.double_value(&[i]) as f32,
                )
            })
            .collect();
        TokenLogprob {
            token: text(i64::from(token)),
            logprob: logprobs.double_value(&[i64::from(token)]) as f32,
            top,
        }
    }

    /// Hands the outcome (and a session's memory) back to the turn's handler. Returns whether
    /// the client left (not counting the server's own cut).
    pub fn deliver(self) -> bool {
        let keep = self.turn.keep_memory && !self.abandoned();
        let mut outcome = self.outcome;
        if outcome.error.is_none() && keep {
            outcome.memory = Some(KeptMemory::of(self.memory, &self.blocks_before));
        }
        let left = outcome.cancelled;
        let _ = self.finished.send(outcome);
        left
    }
}

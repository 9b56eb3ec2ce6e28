//! Continuous batching on the model thread. Each step:
//! 1. takes the turns submitted since the last step into the waiting queue, and admits them (in
//!    order) while fewer than `max_running` sequences run; a session's stored memory is rebuilt here;
//!    a turn whose client has already left is dropped instead, at no cost (memory checks asked for
//!    by imports are answered here too, between steps);
//! 2. takes in prompt tokens, oldest sequence first, up to the step's token budget
//!    (`max_batch_tokens` less one token per decoding row) and at most [`PREFILL_CHUNK`] per forward
//!    pass, so a long prompt is spread over steps instead of stalling everyone; a sequence whose
//!    client has left stops before its next chunk;
//! 3. decodes one token for every sequence that has one pending, in a single forward pass over the
//!    batch (`batch.rs`: shared matmuls, each row reading its own memory);
//! 4. hands finished turns back; their places go to the queue at the next step.
//!
//! A memory update (a chunk leaving the STM for the archive or the ∞-former signal) happens inside
//! the row's own attention in the step that causes it, so it delays the others by at most that step.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{mpsc as std_mpsc, Arc};

use super::batch::decode_rows;
use super::channel::{Finished, Job, MemoryCheck, MemorySource, Request, TurnFailure};
use super::generate::{token_row, PREFILL_CHUNK};
use super::heap;
use super::sequence::{Phase, Sequence, StepContext};
use super::stats::EngineStats;
use crate::memory::{MemoryConfig, MemoryLayout};
use crate::model::ModelArgs;
use crate::model::{Llama, LogitsAt};
use crate::session::{self, MemoryParts, MemoryStats, SessionFormatError, SessionMemory};
use crate::tokenizer::Tokenizer;

/// How much one step may do; checked once, where it is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    max_running: usize,
    max_batch_tokens: usize,
}

impl BatchLimits {
    /// `max_running` sequences in the batch at once (each holds its memory in RAM while it runs),
    /// `max_batch_tokens` fed per step (one per decoding sequence plus prompt chunks): both
    /// positive, and room for at least one prompt token beside a full decode batch (so a waiting
    /// prompt always progresses).
    pub fn new(max_running: usize, max_batch_tokens: usize) -> Result<Self, String> {
        if max_running == 0 {
            return Err("max_running must be at least 1".into());
        }
        if max_batch_tokens <= max_running {
            return Err(format!(
                "max_batch_tokens ({max_batch_tokens}) must exceed max_running ({max_running}): \
                 each step feeds one token per running sequence and needs room for prompt tokens"
            ));
        }
        Ok(Self {
            max_running,
            max_batch_tokens,
        })
    }

    pub fn max_running(&self) -> usize {
        self.max_running
    }

    pub fn max_batch_tokens(&self) -> usize {
        self.max_batch_tokens
    }
}

/// What the engine loads and how it admits turns.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub load: ModelArgs,
    /// The layout of every session's memory.
    pub memory: MemoryConfig,
    /// How many sequences run together and how many tokens one step may take in.
    pub batch: BatchLimits,
    /// Turns that may wait for a place in the batch; past running + waiting, `submit` refuses.
    pub max_waiting: usize,
}

/// The model thread's state.
pub struct Scheduler {
    model: Llama,
    tokenizer: Arc<Tokenizer>,
    layout: MemoryLayout,
    limits: BatchLimits,
    stop_tokens: Vec<u32>,
}

impl Scheduler {
    pub fn load(options: &EngineOptions) -> anyhow::Result<Self> {
        let (model, tokenizer) = options.load.load()?;
        let layout = MemoryLayout::for_model(options.memory.clone(), &model)?;
        let stop_tokens = tokenizer.special_tokens().eos.into_iter().collect();
        Ok(Self {
            model,
            tokenizer: Arc::new(tokenizer),
            layout,
            limits: options.batch,
            stop_tokens,
        })
    }

    pub fn model(&self) -> &Llama {
        &self.model
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// The memory layout every session has here, as a memory's core names it.
    pub fn layout_text(&self) -> String {
        session::layout_text(&self.layout)
    }

    /// Serves turns until every handle is gone.
    pub(super) fn run(self, stats: &EngineStats, queue: std_mpsc::Receiver<Request>) {
        let _guard = tch::no_grad_guard();
        let mut waiting: VecDeque<Job> = VecDeque::new();
        let mut running: Vec<Sequence> = Vec::new();
        loop {
            if running.is_empty() && waiting.is_empty() {
                heap::release_free_memory();
                match queue.recv() {
                    Ok(request) => self.take(request, &mut waiting),
                    Err(_) => return,
                }
            }
            for request in queue.try_iter() {
                self.take(request, &mut waiting);
            }
            while running.len() < self.limits.max_running() {
                let Some(job) = waiting.pop_front() else {
                    break;
                };
                if job.events.is_closed() {
                    Self::drop_unstarted(stats, job);
                    continue;
                }
                running.push(self.admit(job));
            }
            stats.waiting.store(waiting.len(), Ordering::Relaxed);
            stats.running.store(running.len(), Ordering::Relaxed);
            self.step(stats, &mut running);
            let (done, live): (Vec<_>, Vec<_>) = running
                .into_iter()
                .partition(|sequence| sequence.phase() == Phase::Done);
            running = live;
            stats.running.store(running.len(), Ordering::Relaxed);
            for sequence in done {
                // Out of the count before the handler hears of it, so its client's next request
                // finds the place free.
                stats.in_system.fetch_sub(1, Ordering::SeqCst);
                let client_left = sequence.deliver();
                if client_left && !stats.cut_all.load(Ordering::SeqCst) {
                    stats.cancelled.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }

    /// A turn joins the queue; a memory check is answered at once.
    fn take(&self, request: Request, waiting: &mut VecDeque<Job>) {
        match request {
            Request::Turn(job) => waiting.push_back(*job),
            Request::Check(MemoryCheck { parts, verdict }) => {
                let result = self.check(&parts);
                let _ = verdict.send((parts, result));
            }
        }
    }

    /// A waiting turn whose client has left: it ends without its memory being rebuilt or a
    /// single prompt token read (a session keeps what it had; nothing is stored).
    fn drop_unstarted(stats: &EngineStats, job: Job) {
        stats.in_system.fetch_sub(1, Ordering::SeqCst);
        stats.cancelled.fetch_add(1, Ordering::SeqCst);
        let mut outcome = Finished::empty(job.turn.prompt.len());
        outcome.cancelled = true;
        let _ = job.finished.send(outcome);
    }

    /// Reads `parts` as a session memory here and feeds it one token, so that every tier it
    /// holds is read once by the model: its statistics, or why a turn on it would fail. A memory
    /// crafted to make libtorch or the arithmetic fail (a panic) is refused like any other.
    fn check(&self, parts: &MemoryParts) -> Result<MemoryStats, SessionFormatError> {
        let unreadable = |why: &str| {
            SessionFormatError::Corrupt(format!("the model cannot read the memory: {why}"))
        };
        let probe = self.stop_tokens.first().copied().unwrap_or(0);
        let read = catch_unwind(AssertUnwindSafe(|| {
            let mut memory = self.rebuild(parts)?;
            let stats = memory.stats();
            let logits = self
                .model
                .forward(&token_row(&[probe]), memory.caches(), LogitsAt::Last)
                .map_err(|e| unreadable(&e.to_string()))?;
            if logits.isfinite().all().int64_value(&[]) != 1 {
                return Err(unreadable("reading it gives values that are not numbers"));
            }
            Ok(stats)
        }));
        read.unwrap_or_else(|_| Err(unreadable("its tensors do not fit the model")))
    }

    /// A waiting turn joins the batch with its memory (a failed rebuild ends it at once).
    fn admit(&self, job: Job) -> Sequence {
        let Job {
            mut turn,
            events,
            finished,
            admitted,
        } = job;
        let source = std::mem::replace(&mut turn.memory, MemorySource::Fresh);
        let (memory, failure) = match self.memory(source) {
            Ok(memory) => (memory, None),
            Err(e) => (SessionMemory::new(&self.model, &self.layout), Some(e)),
        };
        let mut sequence =
            Sequence::new(turn, memory, &self.stop_tokens, events, finished, admitted);
        if let Some(error) = failure {
            sequence.fail(TurnFailure::Memory(error));
        }
        sequence
    }

    /// The memory a turn starts from.
    fn memory(&self, source: MemorySource) -> Result<SessionMemory, SessionFormatError> {
        match source {
            MemorySource::Live(memory) => Ok(memory),
            MemorySource::Stored(parts) => self.rebuild(&parts),
            MemorySource::Fresh => Ok(SessionMemory::new(&self.model, &self.layout)),
        }
    }

    /// A memory from its stored core and blocks (an empty core: a fresh memory).
    fn rebuild(&self, parts: &MemoryParts) -> Result<SessionMemory, SessionFormatError> {
        if parts.core.is_empty() {
            return Ok(SessionMemory::new(&self.model, &self.layout));
        }
        let blocks: Vec<&[u8]> = parts.blocks.iter().map(Vec::as_slice).collect();
        SessionMemory::from_parts(&parts.core, &blocks, &self.model, &self.layout)
    }

    /// One step: prompt chunks within the token budget, then one batched decode.
    fn step(&self, stats: &EngineStats, running: &mut [Sequence]) {
        let context = StepContext {
            tokenizer: &self.tokenizer,
            cut_all: stats.cut_all.load(Ordering::SeqCst),
            stats,
        };
        let decoding = running.iter().filter(|s| s.pending().is_some()).count();
        let mut budget = self.limits.max_batch_tokens().saturating_sub(decoding);
        for sequence in running.iter_mut() {
            if sequence.prompt_left() > 0 && sequence.client_left() {
                sequence.abandon();
                continue;
            }
            let take = sequence.prompt_left().min(budget).min(PREFILL_CHUNK);
            if take > 0 {
                sequence.prefill(&self.model, take);
                budget -= take;
                stats
                    .prefill_tokens
                    .fetch_add(take as u64, Ordering::Relaxed);
            }
        }
        let mut rows: Vec<&mut Sequence> = running
            .iter_mut()
            .filter(|s| s.pending().is_some())
            .collect();
        if rows.is_empty() {
            return;
        }
        let tokens: Vec<u32> = rows.iter().filter_map(|s| s.pending()).collect();
        stats.decode_rows.observe(rows.len() as f64);
        let result = decode_rows(
            &self.model,
            rows.iter_mut().map(|s| s.memory.caches()),
            &tokens,
        );
        match result {
            Ok(step) => {
                stats
                    .decode_attention_calls
                    .observe(step.attention_calls as f64);
                for (b, sequence) in rows.into_iter().enumerate() {
                    sequence.decoded(&step.logits.get(b as i64), &context);
                }
            }
            Err(e) => {
                for sequence in rows {
                    sequence.fail(TurnFailure::Model(e.to_string()));
                }
            }
        }
    }
}

//! The model thread's handle (`architecture.md`, "Engine"): one OS thread owns the model and every
//! live memory while it runs turns, many at once by continuous batching (`scheduler.rs`); async
//! handlers talk to it only through [`Engine::submit`], which returns a stream of [`Event`]s and,
//! separately, the turn's [`Finished`] outcome. Past capacity (running plus waiting), `submit`
//! refuses at once ([`SubmitError::Busy`], a 429 with `Retry-After`).
//!
//! A dropped event receiver is the cancellation signal: the engine checks it before admitting a
//! waiting turn, before each prompt chunk and after each token, and ends that sequence (the outcome
//! is still delivered, so a session's memory is kept).
//!
//! [`Engine::check_memory`] reads a memory on the model thread without running a turn (a session
//! import proves its memory usable before anything is stored).

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::sampler::ValidSampling;
use super::scheduler::{BatchLimits, Scheduler};
use super::stats::EngineStats;
use super::stop::StopRules;
use crate::cli::ModelArgs;
use crate::memory::MemoryConfig;
use crate::session::{
    model_fingerprint, MemoryParts, MemoryStats, SessionFormatError, SessionMemory,
};
use crate::tokenizer::Tokenizer;

/// Where a turn's memory comes from.
#[derive(Debug)]
pub enum MemorySource {
    /// A new, empty memory (a request without a session, or a session's first turn).
    Fresh,
    /// A live memory from the hot cache.
    Live(SessionMemory),
    /// The stored core and blocks, rebuilt on the model thread (an empty core: a fresh memory).
    Stored(MemoryParts),
}

/// One turn to run: feed `prompt` after what the memory holds and generate; a session's memory
/// then holds the prompt and the whole reply.
#[derive(Debug)]
pub struct Turn {
    pub prompt: Vec<u32>,
    pub memory: MemorySource,
    /// Keep the memory afterwards (a session) and return it with its bytes.
    pub keep_memory: bool,
    pub sampling: ValidSampling,
    pub stop: StopRules,
    pub max_tokens: usize,
    /// `Some(k)`: report each token's log-probability and its k most likely alternatives.
    pub logprobs: Option<usize>,
}

/// A token's log-probability under the model (before sampling filters).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub top: Vec<(String, f32)>,
}

/// What streams back while a turn runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Text that is safe to show (never part of a stop string), and the log-probabilities of the
    /// tokens it came from when they were asked for.
    Text {
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
}

/// How a turn ended.
#[derive(Debug)]
pub struct Finished {
    /// `stop` or `length` (OpenAI's names); a cut turn (client gone, shutdown) reports `stop`.
    pub finish_reason: &'static str,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// The client left or the server cut the turn.
    pub cancelled: bool,
    /// The reply as shown (stop strings removed).
    pub text: String,
    /// A failure after the turn began (the memory is then not returned).
    pub error: Option<TurnFailure>,
    /// With `keep_memory`: the memory after the turn, what a store writes of it, and statistics.
    pub memory: Option<KeptMemory>,
    /// Seconds from admission to the first token.
    pub time_to_first_token: Option<f64>,
}

impl Finished {
    /// A turn of `prompt_tokens` that has generated nothing yet.
    pub(super) fn empty(prompt_tokens: usize) -> Self {
        Self {
            finish_reason: "stop",
            prompt_tokens,
            completion_tokens: 0,
            cancelled: false,
            text: String::new(),
            error: None,
            memory: None,
            time_to_first_token: None,
        }
    }
}

/// Why a turn failed on the model thread.
#[derive(Debug, thiserror::Error)]
pub enum TurnFailure {
    /// The turn's stored memory cannot be read here (another model or memory layout, or damaged):
    /// the session's fault, not the server's.
    #[error(transparent)]
    Memory(#[from] SessionFormatError),
    /// The model failed while running the turn.
    #[error("{0}")]
    Model(String),
}

/// A session's memory after a turn, ready to store: its core and the archive blocks the turn
/// added (the store has those the memory held before the turn).
#[derive(Debug)]
pub struct KeptMemory {
    pub memory: SessionMemory,
    pub core: Vec<u8>,
    /// The blocks held after the turn.
    pub blocks: Range<u64>,
    /// The blocks held now that were not held when the turn began, numbered.
    pub new_blocks: Vec<(u64, Vec<u8>)>,
    pub stats: MemoryStats,
}

impl KeptMemory {
    /// What to store of `memory`, which held the blocks `before` when the turn began.
    pub(super) fn of(memory: SessionMemory, before: Range<u64>) -> Self {
        let blocks = memory.archive_blocks();
        let new_blocks = (before.end.max(blocks.start)..blocks.end)
            .map(|n| (n, memory.block_bytes(n).expect("the block is held")))
            .collect();
        Self {
            core: memory.core_bytes(),
            stats: memory.stats(),
            blocks,
            new_blocks,
            memory,
        }
    }
}

/// The two ends a handler holds for one submitted turn.
#[derive(Debug)]
pub struct Submission {
    pub events: mpsc::UnboundedReceiver<Event>,
    pub finished: oneshot::Receiver<Finished>,
}

/// Why a turn was not admitted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("the server is busy: {0} requests are already queued or running; retry shortly")]
    Busy(usize),
    #[error("the model is not loaded yet")]
    NotReady,
    #[error("the engine has stopped")]
    Stopped,
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

/// What the engine knows once the model is loaded.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub fingerprint: String,
    /// Every session memory's layout on this server, as a memory's core names it.
    pub layout: String,
    pub tokenizer: Arc<Tokenizer>,
}

/// A submitted turn on its way to the model thread.
pub(super) struct Job {
    pub turn: Turn,
    pub events: mpsc::UnboundedSender<Event>,
    pub finished: oneshot::Sender<Finished>,
    pub admitted: Instant,
}

/// A memory to read and try on the model thread, and where its verdict goes.
pub(super) struct MemoryCheck {
    pub parts: MemoryParts,
    pub verdict: oneshot::Sender<Result<MemoryStats, SessionFormatError>>,
}

/// What the model thread receives.
pub(super) enum Request {
    Turn(Box<Job>),
    Check(MemoryCheck),
}

/// The handle handlers share.
#[derive(Clone)]
pub struct Engine {
    jobs: std_mpsc::Sender<Request>,
    /// Turns submitted and not yet finished (waiting or running).
    pub(super) in_system: Arc<AtomicUsize>,
    pub(super) cut_all: Arc<AtomicBool>,
    /// Most turns in the system: running plus waiting.
    capacity: usize,
    info: Arc<std::sync::OnceLock<ModelInfo>>,
    /// Turns ended early because their client left.
    pub cancelled: Arc<AtomicUsize>,
    /// Queue depth, batch sizes and latencies, kept by the model thread.
    pub stats: Arc<EngineStats>,
}

impl Engine {
    /// Starts the model thread, which loads the model and tokenizer and then serves turns.
    /// `loaded` gets the model's identity, or the load error.
    pub fn start(options: EngineOptions) -> (Self, oneshot::Receiver<Result<ModelInfo, String>>) {
        let (jobs, queue) = std_mpsc::channel::<Request>();
        let (loaded_tx, loaded_rx) = oneshot::channel();
        let engine = Self {
            jobs,
            in_system: Arc::new(AtomicUsize::new(0)),
            cut_all: Arc::new(AtomicBool::new(false)),
            capacity: options.batch.max_running + options.max_waiting,
            info: Arc::new(std::sync::OnceLock::new()),
            cancelled: Arc::new(AtomicUsize::new(0)),
            stats: Arc::new(EngineStats::default()),
        };
        let worker = engine.clone();
        std::thread::Builder::new()
            .name("infini-engine".into())
            .spawn(move || match Scheduler::load(&options) {
                Ok(scheduler) => {
                    let info = ModelInfo {
                        fingerprint: model_fingerprint(scheduler.model()),
                        layout: scheduler.layout_text(),
                        tokenizer: scheduler.tokenizer().clone(),
                    };
                    let _ = worker.info.set(info.clone());
                    let _ = loaded_tx.send(Ok(info));
                    scheduler.run(&worker, queue);
                }
                Err(e) => {
                    let _ = loaded_tx.send(Err(format!("{e:#}")));
                }
            })
            .expect("the engine thread starts");
        (engine, loaded_rx)
    }

    /// The loaded model's identity (None until loaded).
    pub fn info(&self) -> Option<&ModelInfo> {
        self.info.get()
    }

    /// Queues one turn. The returned events end when the turn does; `finished` always arrives.
    pub fn submit(&self, turn: Turn) -> Result<Submission, SubmitError> {
        if self.info.get().is_none() {
            return Err(SubmitError::NotReady);
        }
        let ahead = self.in_system.fetch_add(1, Ordering::SeqCst);
        if ahead >= self.capacity {
            self.in_system.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::Busy(ahead));
        }
        let (events_tx, events) = mpsc::unbounded_channel();
        let (finished_tx, finished) = oneshot::channel();
        let job = Job {
            turn,
            events: events_tx,
            finished: finished_tx,
            admitted: Instant::now(),
        };
        self.jobs.send(Request::Turn(Box::new(job))).map_err(|_| {
            self.in_system.fetch_sub(1, Ordering::SeqCst);
            SubmitError::Stopped
        })?;
        Ok(Submission { events, finished })
    }

    /// Reads `parts` as a session memory of this server's model and layout, and feeds it one
    /// token to prove every tier readable, on the model thread between two batch steps; the
    /// memory's statistics, or why it cannot be used.
    pub async fn check_memory(
        &self,
        parts: MemoryParts,
    ) -> Result<Result<MemoryStats, SessionFormatError>, SubmitError> {
        if self.info.get().is_none() {
            return Err(SubmitError::NotReady);
        }
        let (verdict, answer) = oneshot::channel();
        self.jobs
            .send(Request::Check(MemoryCheck { parts, verdict }))
            .map_err(|_| SubmitError::Stopped)?;
        answer.await.map_err(|_| SubmitError::Stopped)
    }

    /// Turns queued or running.
    pub fn load(&self) -> usize {
        self.in_system.load(Ordering::SeqCst)
    }

    /// Ends every running and queued turn at its next token (graceful shutdown's deadline).
    pub fn cut_all(&self) {
        self.cut_all.store(true, Ordering::SeqCst);
    }
}

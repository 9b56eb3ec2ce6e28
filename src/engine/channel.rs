//! What passes between the request handlers and the model thread: the [`TurnEngine`] the API
//! talks to, the [`Turn`] a handler submits (with where its memory comes from), the [`Event`]s that
//! stream back while it runs, and the [`Finished`] outcome (or [`TurnFailure`]) at its end; and, on
//! the way in, the `Request`s the model thread takes (a turn, or a memory to check).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::stats::EngineStats;
use crate::tokenizer::Tokenizer;

/// What the API needs of the engine: the model's identity, submitting a turn (a stream of
/// [`Event`]s, then the [`Finished`] outcome), checking a memory, and the counters that `/metrics`
/// and the shutdown read. [`super::worker::Engine`] is the model thread; the API's tests script
/// one, so that validation, error bodies, SSE framing and cancellation run without the model.
pub trait TurnEngine: Send + Sync + 'static {
    /// The loaded model's identity (None until loaded).
    fn info(&self) -> Option<&ModelInfo>;

    /// Queues one turn, or refuses it at once (past capacity, not loaded, stopped).
    fn submit(&self, turn: Turn) -> Result<Submission, SubmitError>;

    /// Reads `parts` as a session memory of this server's model and layout and tries it; the
    /// verdict (its statistics, or why a turn on it would fail) arrives on the receiver with
    /// `parts` handed back.
    fn check_memory(&self, parts: MemoryParts) -> Result<MemoryVerdict, SubmitError>;

    /// Turns in the system, cancellations, queue depth, batch sizes and latencies.
    fn stats(&self) -> &EngineStats;

    /// Turns queued or running.
    fn load(&self) -> usize {
        self.stats().in_system.load(Ordering::SeqCst)
    }

    /// Turns ended early because their client left.
    fn cancelled(&self) -> usize {
        self.stats().cancelled.load(Ordering::SeqCst)
    }

    /// Ends every running and queued turn at its next token (graceful shutdown's deadline).
    fn cut_all(&self) {
        self.stats().cut_all.store(true, Ordering::SeqCst);
    }
}

/// Where a memory check's verdict arrives, with the checked memory handed back (an import then
/// stores it without having copied it).
pub type MemoryVerdict = oneshot::Receiver<(MemoryParts, Result<MemoryStats, SessionFormatError>)>;

/// What the engine knows once the model is loaded.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub fingerprint: String,
    /// Every session memory's layout on this server, as a memory's core names it.
    pub layout: String,
    pub tokenizer: Arc<Tokenizer>,
}

use super::sampler::ValidSampling;
use super::stop::StopRules;
use crate::session::{KeptMemory, MemoryParts, MemoryStats, SessionFormatError, SessionMemory};

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
    pub(crate) fn empty(prompt_tokens: usize) -> Self {
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

/// A submitted turn on its way to the model thread.
pub(crate) struct Job {
    pub turn: Turn,
    pub events: mpsc::UnboundedSender<Event>,
    pub finished: oneshot::Sender<Finished>,
    pub admitted: Instant,
}

/// A memory to read and try on the model thread, and where its verdict goes.
pub(crate) struct MemoryCheck {
    pub parts: MemoryParts,
    pub verdict: oneshot::Sender<(MemoryParts, Result<MemoryStats, SessionFormatError>)>,
}

/// What the model thread receives.
pub(crate) enum Request {
    Turn(Box<Job>),
    Check(MemoryCheck),
}

//! The model thread (`architecture.md`, "Engine"): one OS thread owns the model and every live
//! memory while it runs a turn; async handlers talk to it only through [`Engine::submit`], which
//! returns a stream of [`Event`]s and, separately, the turn's [`Finished`] outcome.
//!
//! A dropped event receiver is the cancellation signal: the engine checks it before each decode
//! step and ends that sequence (the outcome is still delivered, so a session's memory is kept).
//! Issue #6 turns the one-at-a-time loop of [`run`] into continuous batching behind the same
//! `submit` boundary.

use std::cell::RefCell;
use std::ops::Range;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::Instant;

use tch::{Kind, Tensor};
use tokio::sync::{mpsc, oneshot};

use super::generate::{generate, prefill, FinishReason as LoopFinish, GenerateOptions, NextToken};
use super::sampler::{Sampler, ValidSampling};
use super::stop::{FinishReason, StopChecker, StopRules};
use crate::cli::ModelArgs;
use crate::memory::{MemoryConfig, MemoryLayout};
use crate::model::{Llama, ModelError};
use crate::session::{model_fingerprint, MemoryParts, MemoryStats, SessionMemory};
use crate::tokenizer::{IncrementalDecoder, Tokenizer};

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
    pub error: Option<String>,
    /// With `keep_memory`: the memory after the turn, what a store writes of it, and statistics.
    pub memory: Option<KeptMemory>,
    /// Seconds from admission to the first token.
    pub time_to_first_token: Option<f64>,
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
    fn of(memory: SessionMemory, before: Range<u64>) -> Self {
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
    pub max_waiting: usize,
}

/// What the engine knows once the model is loaded.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub fingerprint: String,
    pub tokenizer: Arc<Tokenizer>,
}

struct Job {
    turn: Turn,
    events: mpsc::UnboundedSender<Event>,
    finished: oneshot::Sender<Finished>,
    admitted: Instant,
}

/// The handle handlers share.
#[derive(Clone)]
pub struct Engine {
    jobs: std_mpsc::Sender<Job>,
    waiting: Arc<AtomicUsize>,
    cut_all: Arc<AtomicBool>,
    max_waiting: usize,
    info: Arc<std::sync::OnceLock<ModelInfo>>,
    /// Turns ended early because their client left.
    pub cancelled: Arc<AtomicUsize>,
}

impl Engine {
    /// Starts the model thread, which loads the model and tokenizer and then serves turns.
    /// `loaded` gets the model's identity, or the load error.
    pub fn start(options: EngineOptions) -> (Self, oneshot::Receiver<Result<ModelInfo, String>>) {
        let (jobs, queue) = std_mpsc::channel::<Job>();
        let (loaded_tx, loaded_rx) = oneshot::channel();
        let engine = Self {
            jobs,
            waiting: Arc::new(AtomicUsize::new(0)),
            cut_all: Arc::new(AtomicBool::new(false)),
            max_waiting: options.max_waiting,
            info: Arc::new(std::sync::OnceLock::new()),
            cancelled: Arc::new(AtomicUsize::new(0)),
        };
        let worker = engine.clone();
        std::thread::Builder::new()
            .name("infini-engine".into())
            .spawn(move || match Worker::load(&options) {
                Ok(model) => {
                    let info = ModelInfo {
                        fingerprint: model_fingerprint(&model.model),
                        tokenizer: model.tokenizer.clone(),
                    };
                    let _ = worker.info.set(info.clone());
                    let _ = loaded_tx.send(Ok(info));
                    model.run(&worker, queue);
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
        // Queued or running: one runs, up to `max_waiting` wait behind it.
        let ahead = self.waiting.fetch_add(1, Ordering::SeqCst);
        if ahead > self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
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
        self.jobs.send(job).map_err(|_| {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            SubmitError::Stopped
        })?;
        Ok(Submission { events, finished })
    }

    /// Turns queued or running.
    pub fn load(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Ends every running and queued turn at its next token (graceful shutdown's deadline).
    pub fn cut_all(&self) {
        self.cut_all.store(true, Ordering::SeqCst);
    }
}

/// The model thread's state.
struct Worker {
    model: Llama,
    tokenizer: Arc<Tokenizer>,
    layout: MemoryLayout,
}

impl Worker {
    fn load(options: &EngineOptions) -> anyhow::Result<Self> {
        let (model, tokenizer) = options.load.load()?;
        let tokenizer = Arc::new(tokenizer);
        let layout = MemoryLayout::new(
            options.memory.clone(),
            model.config().max_position_embeddings as usize,
            options.load.device,
        )?;
        Ok(Self {
            model,
            tokenizer,
            layout,
        })
    }

    fn run(self, engine: &Engine, queue: std_mpsc::Receiver<Job>) {
        let _guard = tch::no_grad_guard();
        for job in queue {
            let Job {
                turn,
                events,
                finished,
                admitted,
            } = job;
            let started = Started { events, admitted };
            let outcome = self.turn(engine, turn, &started);
            engine.waiting.fetch_sub(1, Ordering::SeqCst);
            if outcome.cancelled && !engine.cut_all.load(Ordering::SeqCst) {
                engine.cancelled.fetch_add(1, Ordering::SeqCst);
            }
            let _ = finished.send(outcome);
        }
    }

    /// The memory a turn starts from.
    fn memory(&self, source: MemorySource) -> Result<SessionMemory, String> {
        match source {
            MemorySource::Live(memory) => Ok(memory),
            MemorySource::Stored(parts) if !parts.core.is_empty() => {
                let blocks: Vec<&[u8]> = parts.blocks.iter().map(Vec::as_slice).collect();
                SessionMemory::from_parts(&parts.core, &blocks, &self.model, &self.layout)
                    .map_err(|e| e.to_string())
            }
            MemorySource::Fresh | MemorySource::Stored(_) => {
                Ok(SessionMemory::new(&self.model, &self.layout))
            }
        }
    }

    fn turn(&self, engine: &Engine, mut turn: Turn, started: &Started) -> Finished {
        let mut outcome = Finished {
            finish_reason: "stop",
            prompt_tokens: turn.prompt.len(),
            completion_tokens: 0,
            cancelled: false,
            text: String::new(),
            error: None,
            memory: None,
            time_to_first_token: None,
        };
        let source = std::mem::replace(&mut turn.memory, MemorySource::Fresh);
        let mut memory = match self.memory(source) {
            Ok(memory) => memory,
            Err(e) => {
                outcome.error = Some(e);
                return outcome;
            }
        };
        let before = memory.archive_blocks();
        match self.generate(engine, &turn, started, &mut memory, &mut outcome) {
            Ok(()) if turn.keep_memory => outcome.memory = Some(KeptMemory::of(memory, before)),
            Ok(()) => {}
            Err(e) => outcome.error = Some(e.to_string()),
        }
        outcome
    }

    fn generate(
        &self,
        engine: &Engine,
        turn: &Turn,
        job: &Started,
        memory: &mut SessionMemory,
        outcome: &mut Finished,
    ) -> Result<(), ModelError> {
        let logged = Rc::new(RefCell::new(Vec::new()));
        let mut sampler = LoggingSampler {
            inner: Sampler::new(turn.sampling.clone()),
            top: turn.logprobs,
            tokenizer: &self.tokenizer,
            log: logged.clone(),
        };
        let mut stops = StopChecker::new(turn.stop.clone());
        let mut decoder = IncrementalDecoder::new(true);
        let mut stopped: Option<FinishReason> = None;
        let mut failure = None;
        let mut reply = Vec::new();
        let generation = generate(
            &self.model,
            memory.caches(),
            &turn.prompt,
            &mut sampler,
            &GenerateOptions {
                max_tokens: turn.max_tokens,
                stop_tokens: self.tokenizer.special_tokens().eos.into_iter().collect(),
                prefill_chunk: 512,
            },
            |token| {
                outcome
                    .time_to_first_token
                    .get_or_insert_with(|| job.admitted.elapsed().as_secs_f64());
                reply.push(token);
                let piece = match decoder.push(&self.tokenizer, token) {
                    Ok(piece) => piece,
                    Err(e) => {
                        failure = Some(e.to_string());
                        return false;
                    }
                };
                let step = stops.push(token, &piece);
                outcome.text.push_str(&step.text);
                let logprobs = std::mem::take(&mut *logged.borrow_mut());
                if (!step.text.is_empty() || !logprobs.is_empty())
                    && job
                        .events
                        .send(Event::Text {
                            text: step.text,
                            logprobs,
                        })
                        .is_err()
                {
                    return false;
                }
                if step.finish.is_some() {
                    stopped = step.finish;
                    return false;
                }
                !(job.events.is_closed() || engine.cut_all.load(Ordering::SeqCst))
            },
        )?;
        if let Some(e) = failure {
            return Err(ModelError::BadInput(e));
        }
        outcome.completion_tokens = generation.tokens.len();
        outcome.finish_reason = match (&generation.finish, &stopped) {
            (LoopFinish::Length, _) | (_, Some(FinishReason::Length)) => "length",
            _ => "stop",
        };
        outcome.cancelled = generation.finish == LoopFinish::Cancelled && stopped.is_none();
        if stopped.is_none() && generation.finish != LoopFinish::Cancelled {
            let rest = stops.flush();
            if !rest.is_empty() {
                outcome.text.push_str(&rest);
                let _ = job.events.send(Event::Text {
                    text: rest,
                    logprobs: Vec::new(),
                });
            }
        }
        // The loop feeds every token but the last it was handed (none is left over after a stop
        // token); the memory must hold the whole reply.
        if let (true, Some(&last), false) = (
            turn.keep_memory,
            reply.last(),
            generation.finish == LoopFinish::Stop,
        ) {
            let _ = prefill(&self.model, memory.caches(), &[last], 1)?;
        }
        Ok(())
    }
}

/// A running turn's way back to its handler.
struct Started {
    events: mpsc::UnboundedSender<Event>,
    admitted: Instant,
}

/// The request's sampler, noting each chosen token's log-probability (and the top alternatives)
/// from the model's raw distribution when the request asked for them.
struct LoggingSampler<'a> {
    inner: Sampler,
    top: Option<usize>,
    tokenizer: &'a Tokenizer,
    log: Rc<RefCell<Vec<TokenLogprob>>>,
}

impl NextToken for LoggingSampler<'_> {
    fn next(&mut self, logits: &Tensor, history: &[u32]) -> Result<u32, ModelError> {
        let token = self.inner.next(logits, history)?;
        if let Some(k) = self.top {
            let logprobs = logits.to_kind(Kind::Float).log_softmax(-1, Kind::Float);
            let text = |id: i64| {
                self.tokenizer
                    .decode(&[id as u32], false)
                    .unwrap_or_default()
            };
            let (values, ids) = logprobs.topk(k.max(1) as i64, -1, true, true);
            let top = (0..k as i64)
                .map(|i| {
                    (
                        text(ids.int64_value(&[i])),
                        values.double_value(&[i]) as f32,
                    )
                })
                .collect();
            self.log.borrow_mut().push(TokenLogprob {
                token: text(i64::from(token)),
                logprob: logprobs.double_value(&[i64::from(token)]) as f32,
                top,
            });
        }
        Ok(token)
    }
}

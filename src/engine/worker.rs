//! The model thread's handle (`architecture.md`, "Engine"): one OS thread owns the model and every
//! live memory while it runs turns, many at once by continuous batching (`scheduler.rs`); async
//! handlers talk to it only through its [`TurnEngine`] face: `submit` returns a stream of events
//! and, separately, the turn's outcome (`channel.rs`). Past capacity (running plus waiting),
//! `submit` refuses at once (`SubmitError::Busy`, a 429 with `Retry-After`).
//!
//! A dropped event receiver is the cancellation signal: the engine checks it before admitting a
//! waiting turn, before each prompt chunk and after each token, and ends that sequence (the outcome
//! is still delivered, so a session's memory is kept).
//!
//! `check_memory` reads a memory on the model thread without running a turn (a session
//! import proves its memory usable before anything is stored).

use std::sync::atomic::Ordering;
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::channel::{
    Job, MemoryCheck, MemoryVerdict, ModelInfo, Request, Submission, SubmitError, Turn, TurnEngine,
};
use super::scheduler::Scheduler;
use super::stats::EngineStats;
use crate::session::{model_fingerprint, MemoryParts};

pub use super::scheduler::EngineOptions;

/// The handle handlers share.
#[derive(Clone)]
pub struct Engine {
    jobs: std_mpsc::Sender<Request>,
    /// Most turns in the system: running plus waiting.
    capacity: usize,
    info: Arc<std::sync::OnceLock<ModelInfo>>,
    /// Turns in the system, cancellations, queue depth, batch sizes and latencies: counted by the
    /// handle and the model thread, read through [`TurnEngine::stats`].
    stats: Arc<EngineStats>,
}

impl Engine {
    /// Starts the model thread, which loads the model and tokenizer and then serves turns.
    /// `loaded` gets the model's identity, or the load error.
    pub fn start(options: EngineOptions) -> (Self, oneshot::Receiver<Result<ModelInfo, String>>) {
        let (jobs, queue) = std_mpsc::channel::<Request>();
        let (loaded_tx, loaded_rx) = oneshot::channel();
        let engine = Self {
            jobs,
            capacity: options.batch.max_running() + options.max_waiting,
            info: Arc::new(std::sync::OnceLock::new()),
            stats: Arc::new(EngineStats::default()),
        };
        let (info_cell, stats) = (engine.info.clone(), engine.stats.clone());
        std::thread::Builder::new()
            .name("infini-engine".into())
            .spawn(move || match Scheduler::load(&options) {
                Ok(scheduler) => {
                    let info = ModelInfo {
                        fingerprint: model_fingerprint(scheduler.model()),
                        layout: scheduler.layout_text(),
                        tokenizer: scheduler.tokenizer().clone(),
                    };
                    let _ = info_cell.set(info.clone());
                    let _ = loaded_tx.send(Ok(info));
                    scheduler.run(&stats, queue);
                }
                Err(e) => {
                    let _ = loaded_tx.send(Err(format!("{e:#}")));
                }
            })
            .expect("the engine thread starts");
        (engine, loaded_rx)
    }
}

impl TurnEngine for Engine {
    fn info(&self) -> Option<&ModelInfo> {
        self.info.get()
    }

    /// Queues one turn. The returned events end when the turn does; `finished` always arrives.
    fn submit(&self, turn: Turn) -> Result<Submission, SubmitError> {
        if self.info.get().is_none() {
            return Err(SubmitError::NotReady);
        }
        let in_system = &self.stats.in_system;
        let ahead = in_system.fetch_add(1, Ordering::SeqCst);
        if ahead >= self.capacity {
            in_system.fetch_sub(1, Ordering::SeqCst);
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
            in_system.fetch_sub(1, Ordering::SeqCst);
            SubmitError::Stopped
        })?;
        Ok(Submission { events, finished })
    }

    /// Reads `parts` as a session memory of this server's model and layout, and feeds it one
    /// token to prove every tier readable, on the model thread between two batch steps.
    fn check_memory(&self, parts: MemoryParts) -> Result<MemoryVerdict, SubmitError> {
        if self.info.get().is_none() {
            return Err(SubmitError::NotReady);
        }
        let (verdict, answer) = oneshot::channel();
        self.jobs
            .send(Request::Check(MemoryCheck { parts, verdict }))
            .map_err(|_| SubmitError::Stopped)?;
        Ok(answer)
    }

    fn stats(&self) -> &EngineStats {
        &self.stats
    }
}

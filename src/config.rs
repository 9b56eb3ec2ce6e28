//! `infini serve`'s one typed configuration (`architecture.md`, "config.rs"): every flag is also an
//! `INFINI_*` environment variable (and `DATABASE_URL` for the store), parsed and checked once at
//! start-up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::cli::MemoryArgs;
use crate::engine::scheduler::BatchLimits;
use crate::model::ModelArgs;
use crate::store::budget;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Everything `infini serve` reads.
#[derive(Args, Debug, Clone)]
pub struct ServeConfig {
    /// Address to listen on (port 0 picks a free port; the chosen address is logged).
    #[arg(long, env = "INFINI_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    #[command(flatten)]
    pub load: ModelArgs,
    #[command(flatten)]
    pub memory: MemoryArgs,
    /// The model name clients send and `/v1/models` lists (default: the file's stem).
    #[arg(long, env = "INFINI_MODEL_NAME")]
    pub model_name: Option<String>,
    /// Folder of the embedded SQLite database (used when DATABASE_URL is not set).
    #[arg(long, env = "INFINI_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// `sqlite://FILE` or `postgres://…`; default: `sqlite://DATA_DIR/infini.db`.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Bearer API keys, comma-separated; each `NAME:KEY` or just `KEY`. With no key at all the
    /// API is open and every session belongs to `anonymous`.
    #[arg(
        long,
        env = "INFINI_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,
    /// A file of API keys, one per line (`NAME:KEY` or `KEY`; `#` starts a comment).
    #[arg(long, env = "INFINI_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// Do not serve the playground page at `/` and `/playground` (the API is unchanged).
    #[arg(long, env = "INFINI_NO_PLAYGROUND")]
    pub no_playground: bool,
    /// Largest request body in bytes (413 past it).
    #[arg(long, env = "INFINI_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Largest session import in bytes (an export carries the whole memory).
    #[arg(long, env = "INFINI_MAX_IMPORT_BYTES", default_value_t = 1024 * 1024 * 1024)]
    pub max_import_bytes: usize,
    /// Most prompt tokens one request may feed (400 `context_length_exceeded` past it). The
    /// session memory takes a prompt longer than the model's context at a constant cost per token
    /// (`make bench-prefill`), so the default admits a long document in one request.
    #[arg(long, env = "INFINI_MAX_PROMPT_TOKENS", default_value_t = 32_768)]
    pub max_prompt_tokens: usize,
    /// Most tokens one request may generate, and the default when it names none.
    #[arg(long, env = "INFINI_MAX_TOKENS", default_value_t = 512)]
    pub max_tokens: usize,
    /// Sequences decoded together in one batch (continuous batching); each holds its session
    /// memory in RAM while it runs.
    #[arg(long, env = "INFINI_MAX_RUNNING", default_value_t = 16)]
    pub max_running: usize,
    /// Tokens one engine step feeds: one per running sequence plus prompt chunks (a long prompt
    /// is spread over steps so it cannot stall the others). Must exceed --max-running.
    #[arg(long, env = "INFINI_MAX_BATCH_TOKENS", default_value_t = 512)]
    pub max_batch_tokens: usize,
    /// Requests that may wait for a place in the batch; past running + waiting, 429 at once.
    #[arg(long, env = "INFINI_MAX_WAITING", default_value_t = 64)]
    pub max_waiting: usize,
    /// Bytes of RAM the session memories kept between turns may hold together (e.g. 2GiB): past
    /// it the least recently used idle ones leave RAM, for the database to give back on their next
    /// turn. Default: half the memory this process may use (its cgroup limit, else the RAM).
    #[arg(long, env = "INFINI_MEMORY_POOL_BYTES", value_parser = budget::parse_size)]
    pub memory_pool_bytes: Option<u64>,
    /// Seconds an idle session stays in RAM before only the database holds it.
    #[arg(long, env = "INFINI_SESSION_IDLE_SECS", default_value_t = 600)]
    pub session_idle_secs: u64,
    /// Seconds a SIGTERM waits for in-flight turns before cutting them (then persists and exits).
    #[arg(long, env = "INFINI_SHUTDOWN_TIMEOUT_SECS", default_value_t = 30)]
    pub shutdown_timeout_secs: u64,
    /// Seconds between SSE keep-alive comments.
    #[arg(long, env = "INFINI_KEEP_ALIVE_SECS", default_value_t = 15)]
    pub keep_alive_secs: u64,
    /// Log format.
    #[arg(long, env = "INFINI_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log filter (tracing's EnvFilter syntax).
    #[arg(long, env = "INFINI_LOG", default_value = "info")]
    pub log: String,
}

impl ServeConfig {
    /// The database to open: `DATABASE_URL`, else the SQLite file under the data folder.
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("infini.db").display()
            )
        })
    }

    /// The name the API reports for the model.
    pub fn model_name(&self) -> String {
        self.model_name.clone().unwrap_or_else(|| {
            self.load
                .model
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "infini".into())
        })
    }

    /// The engine's batching limits.
    /// `--max-running` and `--max-batch-tokens`, checked.
    pub fn batch(&self) -> Result<BatchLimits, String> {
        BatchLimits::new(self.max_running, self.max_batch_tokens)
            .map_err(|e| format!("--max-running / --max-batch-tokens: {e}"))
    }

    /// `--memory-pool-bytes`, or its default for this machine.
    pub fn memory_pool_budget(&self) -> usize {
        let bytes = self
            .memory_pool_bytes
            .unwrap_or_else(budget::default_budget);
        usize::try_from(bytes).unwrap_or(usize::MAX)
    }

    pub fn session_idle(&self) -> Duration {
        Duration::from_secs(self.session_idle_secs)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }
}

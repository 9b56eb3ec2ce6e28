//! The HTTP server (`architecture.md`, "API surface"): one typed [`AppState`], the axum router,
//! and `infini serve`'s start-up and graceful shutdown. Handlers live one module per concern:
//! [`completions`] (OpenAI), [`sessions`], [`ops`] (health, readiness, metrics, OpenAPI);
//! [`turn`] runs a generation for them; [`stream`] owns SSE framing; [`error`] maps every failure.

pub mod auth;
pub mod body;
pub mod completions;
pub mod error;
pub mod export_file;
pub mod json;
pub mod memory_map;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub mod playground;
pub mod sessions;
pub mod stream;
pub mod turn;
pub mod types;
pub mod validate;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use crate::config::{LogFormat, ServeConfig};
use crate::engine::channel::TurnEngine;
use crate::engine::worker::{Engine, EngineOptions};
use crate::store::hot::{HotSessions, LiveMemory, SlotGuard};
use crate::store::sql::SqlStore;
use crate::store::SessionStore;
use auth::ApiKeys;
use metrics::Metrics;
use validate::Limits;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The model thread (a scripted one in the API's tests).
    pub engine: Arc<dyn TurnEngine>,
    pub store: Arc<dyn SessionStore>,
    pub hot: Arc<HotSessions>,
    pub keys: Arc<ApiKeys>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub model_name: Arc<str>,
    pub draining: Arc<AtomicBool>,
    pub keep_alive: Duration,
    /// Unix seconds at start-up.
    pub started_at: i64,
    /// Log each session's memory statistics after its turn (`--memory-stats`).
    pub log_memory_stats: bool,
    /// Serve the playground page (off with `--no-playground`).
    pub playground: bool,
}

impl AppState {
    /// Keeps a session's memory in its slot within the pool's budget ([`HotSessions::keep`]),
    /// counting the memories that left RAM for it.
    fn keep_memory(&self, slot: &mut SlotGuard, live: LiveMemory) {
        let evicted = self.hot.keep(slot, live);
        self.metrics
            .pool_evictions
            .fetch_add(evicted as u64, Ordering::Relaxed);
    }
}

/// Request body limits: every route's, and the session import's (which carries a whole memory).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub any: usize,
    pub import: usize,
}

/// Every route.
pub fn router(state: AppState, limits: BodyLimits) -> Router {
    let pages = if state.playground {
        Router::new()
            .route("/", get(playground::page))
            .route("/playground", get(playground::page))
            .route("/playground/app.js", get(playground::script))
            .route("/playground/app.css", get(playground::style))
    } else {
        Router::new()
    };
    Router::new()
        .merge(pages)
        .route("/v1/chat/completions", post(completions::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/models", get(ops::models))
        .route("/v1/sessions", post(sessions::create).get(sessions::list))
        .route(
            "/v1/sessions/import",
            post(sessions::import).layer(DefaultBodyLimit::max(limits.import)),
        )
        .route(
            "/v1/sessions/{id}",
            get(sessions::get).delete(sessions::delete),
        )
        .route("/v1/sessions/{id}/fork", post(sessions::fork))
        .route("/v1/sessions/{id}/export", get(sessions::export))
        .route("/v1/sessions/{id}/memory", get(memory_map::memory_map))
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(openapi::openapi))
        .route("/docs", get(openapi::docs))
        .fallback(|| async { error::ApiError::from(error::RequestError::NoRoute) })
        .layer(middleware::from_fn_with_state(limits.any, body::settle))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(DefaultBodyLimit::max(limits.any))
        .with_state(state)
}

/// Counts and logs each request with its route, status and duration.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    state.metrics.count_request(&route, status);
    tracing::info!(%method, route, status, ms = started.elapsed().as_millis() as u64, "request");
    response
}

fn init_logging(config: &ServeConfig) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match config.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// `infini serve`: load the model, open the store, listen; on SIGTERM or Ctrl-C stop admitting,
/// let in-flight turns finish (cut them at the timeout; either way they are stored), and exit.
pub fn serve(config: ServeConfig) -> Result<()> {
    init_logging(&config);
    let keys = ApiKeys::load(&config.api_keys, config.api_keys_file.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(config, keys))
}

async fn run(config: ServeConfig, keys: ApiKeys) -> Result<()> {
    if config.memory.kv_cache {
        anyhow::bail!(
            "--kv-cache is for generate and chat: the server's sessions need the session memory"
        );
    }
    let batch = config.batch().map_err(anyhow::Error::msg)?;
    let store = SqlStore::connect(&config.database_url())
        .await
        .context("opening the session store")?;
    tracing::info!(backend = ?store.backend(), "session store ready");
    let pool_budget = config.memory_pool_budget();
    tracing::info!(
        budget_bytes = pool_budget,
        "session memories kept between turns share this budget (--memory-pool-bytes)"
    );
    let (engine, loaded) = Engine::start(EngineOptions {
        load: config.load.clone(),
        memory: config.memory.config(),
        batch,
        max_waiting: config.max_waiting,
    });
    let state = AppState {
        engine: Arc::new(engine),
        store: Arc::new(store),
        hot: Arc::new(HotSessions::with_budget(pool_budget)),
        keys: Arc::new(keys),
        metrics: Arc::new(Metrics::default()),
        limits: Limits {
            max_tokens: config.max_tokens,
            max_prompt_tokens: config.max_prompt_tokens,
        },
        model_name: config.model_name().into(),
        draining: Arc::new(AtomicBool::new(false)),
        keep_alive: Duration::from_secs(config.keep_alive_secs.max(1)),
        started_at: types::now(),
        log_memory_stats: config.memory.memory_stats,
        playground: !config.no_playground,
    };
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("binding {}", config.addr))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, model = %config.load.model.display(), keys = ?state.keys, "listening");
    // The test harness and scripts read this line to find a port chosen by the OS.
    println!("infini listening on http://{address}");
    let load_started = Instant::now();
    tokio::spawn(async move {
        match loaded.await {
            Ok(Ok(info)) => tracing::info!(
                fingerprint = %info.fingerprint,
                seconds = load_started.elapsed().as_secs_f64(),
                "model loaded"
            ),
            Ok(Err(error)) => {
                tracing::error!(error = %crate::log_text::Escaped(&error), "the model failed to load");
                std::process::exit(1);
            }
            Err(_) => {
                tracing::error!("the engine thread ended while loading the model");
                std::process::exit(1);
            }
        }
    });
    spawn_idle_eviction(&state, config.session_idle());
    let limits = BodyLimits {
        any: config.max_body_bytes,
        import: config.max_import_bytes,
    };
    let app = router(state.clone(), limits);
    axum::serve(listener, app)
        .with_graceful_shutdown(drain(state, config.shutdown_timeout()))
        .await?;
    tracing::info!("stopped");
    Ok(())
}

/// Drops the memories of idle sessions from RAM now and then.
fn spawn_idle_eviction(state: &AppState, ttl: Duration) {
    let (hot, metrics) = (state.hot.clone(), state.metrics.clone());
    let period = (ttl / 2).clamp(Duration::from_millis(100), Duration::from_secs(30));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            let evicted = hot.evict_idle(ttl);
            if evicted > 0 {
                metrics
                    .sessions_evicted
                    .fetch_add(evicted as u64, Ordering::Relaxed);
                tracing::debug!(evicted, "idle sessions left RAM");
            }
        }
    });
}

/// Resolves when the server should stop: after SIGTERM (or Ctrl-C), once in-flight turns have
/// finished or, past `timeout`, been cut (a cut turn is still stored).
async fn drain(state: AppState, timeout: Duration) {
    shutdown_signal().await;
    state.draining.store(true, Ordering::SeqCst);
    tracing::info!(in_flight = state.engine.load(), "draining");
    let deadline = Instant::now() + timeout;
    while state.engine.load() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if state.engine.load() > 0 {
        tracing::warn!(
            in_flight = state.engine.load(),
            "shutdown timeout: cutting in-flight turns"
        );
        state.engine.cut_all();
        while state.engine.load() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt"),
    }
}

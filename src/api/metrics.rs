//! Prometheus metrics, `infini_` prefix, text format: counters and gauges kept where the work
//! happens, rendered by `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::engine::stats::EngineStats;
use crate::store::hot::PoolUsage;

/// A sum and count (Prometheus summary without quantiles).
#[derive(Debug, Default)]
pub struct Summary {
    micros: AtomicU64,
    count: AtomicU64,
}

impl Summary {
    pub fn observe(&self, seconds: f64) {
        self.micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// The server's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests by (route, status).
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    pub turns_committed: AtomicU64,
    pub turn_conflicts: AtomicU64,
    /// Archive block rows written and deleted by committed turns.
    pub block_writes: AtomicU64,
    pub block_deletes: AtomicU64,
    pub sessions_evicted: AtomicU64,
    /// Session memories that left RAM to keep the pool within its budget.
    pub pool_evictions: AtomicU64,
    pub request_duration: Summary,
}

/// Gauges read at render time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub in_flight: usize,
    pub hot_sessions: usize,
    pub cancelled: usize,
    pub draining: bool,
    pub pool: PoolUsage,
}

impl Metrics {
    pub fn count_request(&self, route: &str, status: u16) {
        let mut requests = self.requests.lock().expect("metrics lock");
        *requests.entry((route.to_string(), status)).or_default() += 1;
    }

    /// The Prometheus text exposition of these metrics, the gauges and the engine's figures.
    pub fn render(&self, gauges: Gauges, engine: &EngineStats) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: Vec<(String, f64)>| {
            let _ = writeln!(
                out,
                "# HELP infini_{name} {help}\n# TYPE infini_{name} {kind}"
            );
            for (labels, value) in lines {
                let _ = writeln!(out, "infini_{name}{labels} {value}");
            }
        };
        let requests = self.requests.lock().expect("metrics lock").clone();
        metric(
            "requests_total",
            "counter",
            "HTTP requests by route and status.",
            requests
                .into_iter()
                .map(|((route, status), n)| {
                    (
                        format!("{{route=\"{route}\",status=\"{status}\"}}"),
                        n as f64,
                    )
                })
                .collect(),
        );
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        let relaxed = |a: &AtomicUsize| a.load(Ordering::Relaxed) as f64;
        // (name, type, help, value) of every single-valued counter and gauge.
        let single: [(&str, &str, &str, f64); 18] = [
            (
                "prompt_tokens_total",
                "counter",
                "Prompt tokens fed to the model.",
                load(&self.prompt_tokens),
            ),
            (
                "generated_tokens_total",
                "counter",
                "Tokens generated.",
                load(&self.completion_tokens),
            ),
            (
                "turns_committed_total",
                "counter",
                "Session turns written through to the store.",
                load(&self.turns_committed),
            ),
            (
                "turn_conflicts_total",
                "counter",
                "Session turns refused because another writer moved the session's version.",
                load(&self.turn_conflicts),
            ),
            (
                "store_block_writes_total",
                "counter",
                "Archive blocks of session memories written to the store by committed turns.",
                load(&self.block_writes),
            ),
            (
                "store_block_deletes_total",
                "counter",
                "Archive blocks deleted from the store because a committed turn's memory let them go.",
                load(&self.block_deletes),
            ),
            (
                "sessions_evicted_total",
                "counter",
                "Idle sessions whose memory left RAM.",
                load(&self.sessions_evicted),
            ),
            (
                "memory_pool_evictions_total",
                "counter",
                "Session memories that left RAM so that the kept ones fit the pool's budget.",
                load(&self.pool_evictions),
            ),
            (
                "memory_pool_bytes",
                "gauge",
                "Bytes of RAM held by the session memories kept between turns (spare room included).",
                gauges.pool.bytes as f64,
            ),
            (
                "memory_pool_budget_bytes",
                "gauge",
                "The pool's budget (--memory-pool-bytes).",
                gauges.pool.budget as f64,
            ),
            (
                "memory_pool_sessions",
                "gauge",
                "Sessions whose memory is kept in the pool between turns.",
                gauges.pool.sessions as f64,
            ),
            (
                "generations_cancelled_total",
                "counter",
                "Generations stopped early because the client disconnected.",
                gauges.cancelled as f64,
            ),
            (
                "requests_in_flight",
                "gauge",
                "Generations queued or running.",
                gauges.in_flight as f64,
            ),
            (
                "sessions_hot",
                "gauge",
                "Sessions whose memory is in RAM.",
                gauges.hot_sessions as f64,
            ),
            (
                "draining",
                "gauge",
                "1 while shutting down.",
                f64::from(u8::from(gauges.draining)),
            ),
            (
                "requests_waiting",
                "gauge",
                "Requests queued for a place in the batch (queue depth).",
                relaxed(&engine.waiting),
            ),
            (
                "requests_running",
                "gauge",
                "Sequences in the batch (taking in their prompt or decoding).",
                relaxed(&engine.running),
            ),
            (
                "prefill_tokens_total",
                "counter",
                "Prompt tokens taken in by prefill passes (a prompt's last token is fed by its first decode step).",
                load(&engine.prefill_tokens),
            ),
        ];
        for (name, kind, help, value) in single {
            metric(name, kind, help, vec![(String::new(), value)]);
        }
        let tier = |name: &str, tokens: u64| (format!("{{tier=\"{name}\"}}"), tokens as f64);
        metric(
            "memory_pool_tokens",
            "gauge",
            "Tokens held by the kept session memories, per tier (every layer holds the same).",
            vec![
                tier("sinks", gauges.pool.sink_tokens),
                tier("stm", gauges.pool.stm_tokens),
                tier("archive", gauges.pool.archive_tokens),
            ],
        );
        metric(
            "request_duration_seconds",
            "summary",
            "Seconds per completion request, admission to the last token.",
            vec![
                ("_sum".into(), load(&self.request_duration.micros) / 1e6),
                ("_count".into(), load(&self.request_duration.count)),
            ],
        );
        for (name, help, histogram) in [
            (
                "time_to_first_token_seconds",
                "Seconds from admission to the first generated token.",
                &engine.time_to_first_token,
            ),
            (
                "inter_token_latency_seconds",
                "Seconds between consecutive generated tokens of one sequence.",
                &engine.inter_token,
            ),
            (
                "batch_size",
                "Sequences decoded together per engine step.",
                &engine.decode_rows,
            ),
            (
                "attention_calls_per_step",
                "Attention calls of one decode step over all layers: one per layer when every row reads its memory on the host together, one per layer and row for rows read through tensors.",
                &engine.decode_attention_calls,
            ),
        ] {
            let (buckets, sum, count) = histogram.snapshot();
            let mut lines: Vec<(String, f64)> = buckets
                .into_iter()
                .map(|(le, n)| (format!("_bucket{{le=\"{le}\"}}"), n as f64))
                .collect();
            lines.push(("_sum".into(), sum));
            lines.push(("_count".into(), count as f64));
            metric(name, "histogram", help, lines);
        }
        out
    }
}

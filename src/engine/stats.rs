//! What the engine counts while it runs: turns in the system and cancellations, the shutdown's
//! cut, queue depth and batch size as gauges, and histograms of time to first token, inter-token
//! latency, and rows and attention calls per decode step. Lock-free (atomics), written by the
//! engine's handle and its thread, read by `GET /metrics`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// A Prometheus histogram: cumulative counts at fixed upper bounds, a sum and a count.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    /// The sum in millionths, so that it stays an integer atomic.
    sum_millionths: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_millionths: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        if let Some(bucket) = self.bounds.iter().position(|&bound| value <= bound) {
            self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_millionths
            .fetch_add((value.max(0.0) * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// `(upper bound, observations ≤ it)` for every bound, then `+Inf`; the sum; the count.
    pub fn snapshot(&self) -> (Vec<(String, u64)>, f64, u64) {
        let mut cumulative = 0;
        let mut buckets: Vec<(String, u64)> = self
            .bounds
            .iter()
            .zip(&self.counts)
            .map(|(bound, count)| {
                cumulative += count.load(Ordering::Relaxed);
                (bound.to_string(), cumulative)
            })
            .collect();
        let count = self.count.load(Ordering::Relaxed);
        buckets.push(("+Inf".into(), count));
        let sum = self.sum_millionths.load(Ordering::Relaxed) as f64 / 1e6;
        (buckets, sum, count)
    }
}

const SECONDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const ROWS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];
/// Attention calls of a step: one per layer (30 for SmolLM2) when every row reads on the host
/// together, up to one per layer and row.
const CALLS: &[f64] = &[30.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 3840.0];

/// The engine's batching figures.
#[derive(Debug)]
pub struct EngineStats {
    /// Turns submitted and not yet finished (waiting or running).
    pub in_system: AtomicUsize,
    /// Turns ended early because their client left.
    pub cancelled: AtomicUsize,
    /// The server's shutdown deadline passed: every turn ends at its next token.
    pub cut_all: AtomicBool,
    /// Turns admitted by `submit` and not yet in the batch.
    pub waiting: AtomicUsize,
    /// Sequences in the batch (prefilling or decoding).
    pub running: AtomicUsize,
    /// Seconds from a turn's admission to its first generated token.
    pub time_to_first_token: Histogram,
    /// Seconds between consecutive tokens of one sequence.
    pub inter_token: Histogram,
    /// Sequences decoded together in one forward pass.
    pub decode_rows: Histogram,
    /// Attention calls of one decode step, over all layers (`batch::DecodedStep`).
    pub decode_attention_calls: Histogram,
    /// Prompt tokens taken in by prefill passes (all but each prompt's last, which a decode step feeds).
    pub prefill_tokens: AtomicU64,
}

impl Default for EngineStats {
    fn default() -> Self {
        Self {
            in_system: AtomicUsize::new(0),
            cancelled: AtomicUsize::new(0),
            cut_all: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            time_to_first_token: Histogram::new(SECONDS),
            inter_token: Histogram::new(SECONDS),
            decode_rows: Histogram::new(ROWS),
            decode_attention_calls: Histogram::new(CALLS),
            prefill_tokens: AtomicU64::new(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_counts_are_cumulative_and_end_with_the_total() {
        let histogram = Histogram::new(&[1.0, 2.0]);
        for value in [0.5, 1.5, 1.5, 7.0] {
            histogram.observe(value);
        }
        let (buckets, sum, count) = histogram.snapshot();
        assert_eq!(
            buckets,
            vec![("1".into(), 1), ("2".into(), 3), ("+Inf".into(), 4)]
        );
        assert!((sum - 10.5).abs() < 1e-9, "sum {sum}");
        assert_eq!(count, 4);
    }
}

//! Choosing the next token from the model's logits (`architecture.md`, "engine/": sampler).
//!
//! One [`Sampler`] per request, with its own seeded RNG (ChaCha8), so a request's output depends
//! only on its seed and never on other requests or on torch's global generator. Order of
//! operations, as in Hugging Face transformers' logits processors and warpers:
//! 1. penalties on the logits, over the tokens generated so far: repetition (divide a positive
//!    logit by the penalty, multiply a negative one), then OpenAI's frequency (× count) and
//!    presence (once) penalties, subtracted;
//! 2. temperature 0: the arg-max (greedy), done;
//! 3. otherwise logits / temperature → softmax → top-k → top-p (smallest set whose mass reaches
//!    p) → min-p (drop tokens below min_p × the top probability) → draw from what is left.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};
use thiserror::Error;

/// A rejected parameter or unusable input; messages name the field and its allowed range.
#[derive(Debug, Error, PartialEq)]
pub enum SamplingError {
    #[error("temperature must be between 0 and 2, got {0}")]
    Temperature(f64),
    #[error("top_p must be greater than 0 and at most 1, got {0}")]
    TopP(f64),
    #[error("min_p must be between 0 and 1, got {0}")]
    MinP(f64),
    #[error("repetition_penalty must be greater than 0 (1 disables it), got {0}")]
    RepetitionPenalty(f64),
    #[error("frequency_penalty must be between -2 and 2, got {0}")]
    FrequencyPenalty(f64),
    #[error("presence_penalty must be between -2 and 2, got {0}")]
    PresencePenalty(f64),
    #[error("logits must be one vector [vocab], got shape {0:?}")]
    LogitsShape(Vec<i64>),
    #[error("logits unusable: {0}")]
    BadLogits(&'static str),
    #[error("history token {id} is outside the vocabulary of {vocab}")]
    HistoryToken { id: u32, vocab: usize },
}

/// Sampling parameters as a request gives them (OpenAI names; `top_k`, `min_p` and
/// `repetition_penalty` as in transformers and llama.cpp). Defaults disable every filter.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 to 2; 0 means greedy.
    pub temperature: f64,
    /// Keep the k most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Nucleus mass, (0, 1]; 1 keeps all.
    pub top_p: f64,
    /// Relative probability floor, [0, 1]; 0 keeps all.
    pub min_p: f64,
    /// Greater than 0; 1 disables it.
    pub repetition_penalty: f64,
    /// −2 to 2, subtracted once per earlier occurrence.
    pub frequency_penalty: f64,
    /// −2 to 2, subtracted once if the token occurred.
    pub presence_penalty: f64,
    /// Makes the draw reproducible; without it a fresh seed is drawn (and reported).
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding with no penalties.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Checks every field against its range (NaN fails every check).
    pub fn validate(self) -> Result<ValidSampling, SamplingError> {
        let within = |value: f64, low: f64, high: f64| (low..=high).contains(&value);
        if !within(self.temperature, 0.0, 2.0) {
            return Err(SamplingError::Temperature(self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(SamplingError::TopP(self.top_p));
        }
        if !within(self.min_p, 0.0, 1.0) {
            return Err(SamplingError::MinP(self.min_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(SamplingError::RepetitionPenalty(self.repetition_penalty));
        }
        if !within(self.frequency_penalty, -2.0, 2.0) {
            return Err(SamplingError::FrequencyPenalty(self.frequency_penalty));
        }
        if !within(self.presence_penalty, -2.0, 2.0) {
            return Err(SamplingError::PresencePenalty(self.presence_penalty));
        }
        Ok(ValidSampling(self))
    }
}

/// Parameters that passed [`SamplingParams::validate`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSampling(SamplingParams);

impl ValidSampling {
    pub fn params(&self) -> &SamplingParams {
        &self.0
    }
}

/// The per-request sampler.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    seed: u64,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(params: ValidSampling) -> Self {
        let params = params.0;
        let seed = params.seed.unwrap_or_else(|| rand::thread_rng().gen());
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            seed,
            params,
        }
    }

    /// The seed in use (the request's, or the one drawn for it).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The next token for logits `[vocab]` (any float kind, any device), given the tokens
    /// generated so far.
    pub fn sample(&mut self, logits: &Tensor, history: &[u32]) -> Result<u32, SamplingError> {
        if logits.dim() != 1 {
            return Err(SamplingError::LogitsShape(logits.size()));
        }
        let mut logits = Vec::<f32>::try_from(
            logits
                .to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .contiguous(),
        )
        .map_err(|_| SamplingError::LogitsShape(logits.size()))?;
        self.sample_slice(&mut logits, history)
    }

    /// [`Self::sample`] on logits already in memory (changed in place by the penalties).
    pub fn sample_slice(
        &mut self,
        logits: &mut [f32],
        history: &[u32],
    ) -> Result<u32, SamplingError> {
        if logits.iter().any(|l| l.is_nan() || *l == f32::INFINITY) {
            return Err(SamplingError::BadLogits("NaN or +∞"));
        }
        if !logits.iter().any(|l| l.is_finite()) {
            return Err(SamplingError::BadLogits(
                "empty, or every token masked to −∞",
            ));
        }
        apply_penalties(&self.params, logits, history)?;
        if self.params.temperature == 0.0 {
            return Ok(argmax(logits));
        }
        let candidates = filtered_candidates(&self.params, logits);
        let total: f64 = candidates.iter().map(|&(_, p)| p).sum();
        let mut target = self.rng.gen::<f64>() * total;
        for &(id, p) in &candidates {
            target -= p;
            if target < 0.0 {
                return Ok(id);
            }
        }
        // Rounding left a sliver of mass: the last candidate owns it.
        Ok(candidates
            .last()
            .expect("at least one candidate survives the filters")
            .0)
    }
}

/// Repetition, frequency and presence penalties over `history`, in place.
fn apply_penalties(
    params: &SamplingParams,
    logits: &mut [f32],
    history: &[u32],
) -> Result<(), SamplingError> {
    let penalised = params.repetition_penalty != 1.0
        || params.frequency_penalty != 0.0
        || params.presence_penalty != 0.0;
    if !penalised {
        return Ok(());
    }
    let mut counts: HashMap<u32, u32> = HashMap::new();
    for &id in history {
        if id as usize >= logits.len() {
            return Err(SamplingError::HistoryToken {
                id,
                vocab: logits.len(),
            });
        }
        *counts.entry(id).or_default() += 1;
    }
    let repetition = params.repetition_penalty as f32;
    for (&id, &count) in &counts {
        let logit = &mut logits[id as usize];
        *logit = if *logit > 0.0 {
            *logit / repetition
        } else {
            *logit * repetition
        };
        *logit -= (count as f64 * params.frequency_penalty + params.presence_penalty) as f32;
    }
    Ok(())
}

/// The first index of the largest logit (as torch's argmax).
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// (token, unnormalised probability) of the tokens that survive top-k, top-p and min-p.
fn filtered_candidates(params: &SamplingParams, logits: &[f32]) -> Vec<(u32, f64)> {
    let inverse_temperature = 1.0 / params.temperature;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut pool: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, ((l as f64 - max) * inverse_temperature).exp()))
        .collect();
    if params.top_k > 0 && params.top_k < pool.len() {
        pool.select_nth_unstable_by(params.top_k - 1, descending);
        pool.truncate(params.top_k);
    }
    if params.top_p < 1.0 {
        // The nucleus of the (renormalised) top-k set, as transformers orders its warpers.
        let needed = params.top_p * pool.iter().map(|&(_, w)| w).sum::<f64>();
        sort_prefix_holding(&mut pool, needed);
        let mut mass = 0.0;
        let nucleus = pool.iter().position(|&(_, w)| {
            mass += w;
            mass >= needed
        });
        pool.truncate(nucleus.map_or(pool.len(), |last| last + 1));
    }
    let floor = params.min_p * pool.iter().map(|&(_, w)| w).fold(0.0, f64::max);
    pool.retain(|&(_, w)| w >= floor);
    pool
}

/// Most likely first; ties by token id, so the order never depends on the input order.
fn descending(a: &(u32, f64), b: &(u32, f64)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Sorts, in descending order, a prefix of `pool` that holds at least `needed` of the mass (or
/// all of it), and truncates `pool` to that prefix. Starts with a partial selection of 256 and
/// widens it, so the usual case sorts a few hundred entries instead of the whole vocabulary.
fn sort_prefix_holding(pool: &mut Vec<(u32, f64)>, needed: f64) {
    let mut width = 256.min(pool.len());
    loop {
        if width < pool.len() {
            pool.select_nth_unstable_by(width - 1, descending);
        }
        pool[..width].sort_unstable_by(descending);
        if width == pool.len() || pool[..width].iter().map(|&(_, w)| w).sum::<f64>() >= needed {
            pool.truncate(width);
            return;
        }
        width = (width * 8).min(pool.len());
    }
}

#[cfg(test)]
mod tests;

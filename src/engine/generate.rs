//! Generation for one sequence: prefill the prompt but its last token into the layer caches (in
//! chunks, so that attention's scratch stays bounded), then decode one token per step, starting
//! with that last prompt token, until a stop token or the token budget. Choosing each token is the
//! sampler's job ([`NextToken`]).

use std::time::{Duration, Instant};

use tch::{Kind, Tensor};

use crate::model::{LayerCache, Llama, LogitsAt, ModelError};

/// Picks the next token from the last position's logits `[V]` (f32) and the tokens so far
/// (prompt and generated).
pub trait NextToken {
    fn next(&mut self, logits: &Tensor, history: &[u32]) -> Result<u32, ModelError>;
}

/// The most likely token (ties: the lowest id, as `argmax` does).
#[derive(Debug, Default, Clone, Copy)]
pub struct Greedy;

impl NextToken for Greedy {
    fn next(&mut self, logits: &Tensor, _history: &[u32]) -> Result<u32, ModelError> {
        Ok(logits.argmax(-1, false).int64_value(&[]) as u32)
    }
}

/// The full sampler (temperature, top-k/p, min-p, penalties, seed) of `sampler.rs`.
impl NextToken for super::sampler::Sampler {
    fn next(&mut self, logits: &Tensor, history: &[u32]) -> Result<u32, ModelError> {
        self.sample(logits, history)
            .map_err(|e| ModelError::BadInput(e.to_string()))
    }
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Tokens that end the generation (not included in the output).
    pub stop_tokens: Vec<u32>,
    /// Prompt tokens per forward pass while prefilling.
    pub prefill_chunk: usize,
}

/// Prompt tokens per forward pass while prefilling (the server's scheduler, `generate`, `chat` and
/// `eval memory` all take a prompt in chunks of this many): long enough to keep the matmuls
/// efficient, short enough that a long prompt does not stall the other sequences of a batch.
pub const PREFILL_CHUNK: usize = 512;

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            stop_tokens: Vec::new(),
            prefill_chunk: PREFILL_CHUNK,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token came.
    Stop,
    /// `max_tokens` were generated.
    Length,
    /// The callback asked to stop (the client left, or a stop string matched).
    Cancelled,
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
    /// Wall time of the prompt's forward passes (including choosing the first token).
    pub prefill: Duration,
    /// Wall time of the decode steps (each feeds one token and chooses the next).
    pub decode: Duration,
}

/// Generates after `prompt`, continuing whatever `caches` hold. `on_token` sees each new token as it
/// is chosen and returns false to stop.
pub fn generate<C: LayerCache>(
    model: &Llama,
    caches: &mut [C],
    prompt: &[u32],
    sampler: &mut impl NextToken,
    options: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<Generation, ModelError> {
    if prompt.is_empty() {
        return Err(ModelError::BadInput("the prompt has no tokens".into()));
    }
    let mut history = prompt.to_vec();
    let started = Instant::now();
    // The prompt's last token goes alone, as a decode step does: the query whose logits choose the
    // first token then selects its own archive blocks (§9.7) instead of sharing one selection with
    // a chunk of earlier prompt tokens. That is what recalls a detail the prompt asks for.
    let (body, last) = prompt.split_at(prompt.len() - 1);
    if !body.is_empty() {
        let _ = prefill(model, caches, body, options.prefill_chunk)?;
    }
    let mut logits = model.forward(&token_row(last), caches, LogitsAt::Last)?;
    let mut tokens = Vec::new();
    let mut finish = FinishReason::Length;
    let mut prefill = None;
    while tokens.len() < options.max_tokens {
        let token = sampler.next(&logits.select(0, 0), &history)?;
        prefill.get_or_insert_with(|| started.elapsed());
        if options.stop_tokens.contains(&token) {
            finish = FinishReason::Stop;
            break;
        }
        tokens.push(token);
        history.push(token);
        if !on_token(token) {
            finish = FinishReason::Cancelled;
            break;
        }
        if tokens.len() == options.max_tokens {
            break;
        }
        logits = model.forward(&token_row(&[token]), caches, LogitsAt::Last)?;
    }
    let prefill = prefill.unwrap_or_else(|| started.elapsed());
    Ok(Generation {
        tokens,
        finish,
        prefill,
        decode: started.elapsed().saturating_sub(prefill),
    })
}

/// Takes `tokens` into `caches` in forward passes of at most `chunk` tokens and returns the last
/// position's logits `[1, V]` (f32). Also how a session's memory takes in a reply's final token,
/// which generation chose but did not feed.
pub fn prefill<C: LayerCache>(
    model: &Llama,
    caches: &mut [C],
    tokens: &[u32],
    chunk: usize,
) -> Result<Tensor, ModelError> {
    let mut logits = None;
    for part in tokens.chunks(chunk.max(1)) {
        logits = Some(model.forward(&token_row(part), caches, LogitsAt::Last)?);
    }
    logits.ok_or_else(|| ModelError::BadInput("no tokens to take in".into()))
}

/// `[1, T]` int64 from token ids.
pub(crate) fn token_row(tokens: &[u32]) -> Tensor {
    let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
    Tensor::from_slice(&ids).to_kind(Kind::Int64).unsqueeze(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::llama::tests::tiny;
    use crate::model::Precision;

    /// Greedy decoding by full recomputation, with no cache.
    fn greedy_without_cache(model: &Llama, prompt: &[u32], n: usize) -> Vec<u32> {
        let mut sequence = prompt.to_vec();
        for _ in 0..n {
            let logits = model
                .forward(
                    &token_row(&sequence),
                    &mut model.new_cache(),
                    LogitsAt::Last,
                )
                .unwrap();
            sequence.push(Greedy.next(&logits.select(0, 0), &sequence).unwrap());
        }
        sequence[prompt.len()..].to_vec()
    }

    /// Greedy generation from an empty cache.
    fn generate_fresh(
        model: &Llama,
        prompt: &[u32],
        options: &GenerateOptions,
        on_token: impl FnMut(u32) -> bool,
    ) -> Result<Generation, ModelError> {
        generate(
            model,
            &mut model.new_cache(),
            prompt,
            &mut Greedy,
            options,
            on_token,
        )
    }

    #[test]
    fn cached_generation_equals_recomputation_across_prefill_chunks() {
        let model = tiny(Precision::F32);
        let prompt = [5u32, 9, 33, 12, 7];
        let expected = greedy_without_cache(&model, &prompt, 10);
        let options = GenerateOptions {
            max_tokens: 10,
            stop_tokens: vec![],
            prefill_chunk: 2,
        };
        let out = generate_fresh(&model, &prompt, &options, |_| true).unwrap();
        assert_eq!(out.tokens, expected);
        assert_eq!(out.finish, FinishReason::Length);
    }

    #[test]
    fn stops_at_stop_tokens_and_on_cancel() {
        let model = tiny(Precision::F32);
        let prompt = [5u32, 9, 33];
        let free = greedy_without_cache(&model, &prompt, 6);
        let options = GenerateOptions {
            max_tokens: 6,
            stop_tokens: vec![free[2]],
            prefill_chunk: PREFILL_CHUNK,
        };
        let out = generate_fresh(&model, &prompt, &options, |_| true).unwrap();
        let first_stop = free.iter().position(|&t| t == free[2]).unwrap();
        assert_eq!(
            (out.tokens.as_slice(), out.finish),
            (&free[..first_stop], FinishReason::Stop)
        );
        let mut seen = 0;
        let options = GenerateOptions {
            max_tokens: 6,
            ..Default::default()
        };
        let out = generate_fresh(&model, &prompt, &options, |_| {
            seen += 1;
            seen < 2
        })
        .unwrap();
        assert_eq!((out.tokens.len(), out.finish), (2, FinishReason::Cancelled));
        assert!(generate_fresh(&model, &[], &options, |_| true).is_err());
    }
}

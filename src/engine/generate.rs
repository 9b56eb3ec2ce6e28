//! Generation for one sequence on its own: prefill the prompt but its last token into the layer
//! caches (in chunks, so that attention's scratch stays bounded), then decode one token per step,
//! starting with that last prompt token, until the per-token rules of `decode.rs` end it.
//! Choosing each token is the sampler's job ([`NextToken`]).

use std::time::{Duration, Instant};

use tch::{Kind, Tensor};

use super::decode::Decoding;
pub use super::decode::{FinishReason, Greedy, NextToken};
use crate::model::{LayerCache, Llama, LogitsAt, ModelError};
use crate::tokenizer::Tokenizer;

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

#[derive(Debug, Clone)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
    /// Text held back and released at the end, after the last callback (with text rules: what
    /// may have begun a stop string when a stop token ended the reply).
    pub rest: String,
    /// Wall time of the prompt's forward passes (including choosing the first token).
    pub prefill: Duration,
    /// Wall time of the decode steps (each feeds one token and chooses the next).
    pub decode: Duration,
}

/// Generates after `prompt`, continuing whatever `caches` hold, with no text: stop tokens and
/// the budget of `options`. `on_token` sees each new token as it is chosen and returns false to
/// stop.
pub fn generate<C: LayerCache>(
    model: &Llama,
    caches: &mut [C],
    prompt: &[u32],
    sampler: &mut impl NextToken,
    options: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<Generation, ModelError> {
    let mut decoding = Decoding::new(prompt, options.max_tokens, options.stop_tokens.clone());
    decode(
        model,
        caches,
        &mut decoding,
        sampler,
        None,
        options.prefill_chunk,
        |token, _| on_token(token),
    )
}

/// The token loop of one sequence on its own, by `decoding`'s rules (`decode.rs`): prefill
/// `decoding`'s prompt but its last token, then one forward pass per token. `on_token` sees each
/// generated token and the text it shows (empty without `tokenizer` and text rules), and returns
/// false to stop. The caches then hold the prompt and the reply but [`Decoding::unfed`].
pub fn decode<C: LayerCache>(
    model: &Llama,
    caches: &mut [C],
    decoding: &mut Decoding,
    sampler: &mut impl NextToken,
    tokenizer: Option<&Tokenizer>,
    prefill_chunk: usize,
    mut on_token: impl FnMut(u32, &str) -> bool,
) -> Result<Generation, ModelError> {
    let prompt = decoding.history().to_vec();
    if prompt.is_empty() {
        return Err(ModelError::BadInput("the prompt has no tokens".into()));
    }
    let started = Instant::now();
    // The prompt's last token goes alone, as a decode step does: the query whose logits choose the
    // first token then selects its own archive blocks (§9.7) instead of sharing one selection with
    // a chunk of earlier prompt tokens. That is what recalls a detail the prompt asks for.
    let (body, last) = prompt.split_at(prompt.len() - 1);
    if !body.is_empty() {
        let _ = prefill(model, caches, body, prefill_chunk)?;
    }
    let mut logits = model.forward(&token_row(last), caches, LogitsAt::Last)?;
    let mut prefill_time = None;
    let mut rest = String::new();
    loop {
        let before = decoding.generated().len();
        let (token, text) = decoding.choose(sampler, &logits.select(0, 0), tokenizer)?;
        prefill_time.get_or_insert_with(|| started.elapsed());
        if decoding.generated().len() == before {
            rest = text; // a stop token: not generated, not shown
            break;
        }
        if !on_token(token, &text) {
            decoding.cancel();
        }
        if decoding.finish().is_some() {
            break;
        }
        logits = model.forward(&token_row(&[token]), caches, LogitsAt::Last)?;
    }
    let prefill = prefill_time.unwrap_or_else(|| started.elapsed());
    Ok(Generation {
        tokens: decoding.generated().to_vec(),
        finish: decoding.finish().unwrap_or(FinishReason::Cancelled),
        rest,
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

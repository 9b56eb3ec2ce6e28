//! Pass-key retrieval (Mohtashami & Jaggi's test, as InfLLM and the prototype of
//! `infinity-former.md` §9.6 ran it): a 5-digit key stated early in a long stretch of filler, then
//! the question; the model passes when its greedy answer contains the key.

use crate::engine::generate::{generate, GenerateOptions, Greedy};
use crate::model::{LayerCache, Llama, ModelError};
use crate::tokenizer::{Tokenizer, TokenizerError};

pub(super) const INTRO: &str = "There is an important piece of information hidden inside a lot of irrelevant text. Find it and memorize it. I will quiz you about it.\n";
pub(super) const FILLER: &str =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ";
pub(super) const QUESTION: &str = "\nWhat is the pass key? The pass key is";

/// One trial: the prompt's tokens and the key it hides.
#[derive(Debug, Clone)]
pub struct Trial {
    pub key: u32,
    pub tokens: Vec<u32>,
}

/// A prompt of about `length` tokens with `key` stated at `depth` (0..1) of the filler.
pub fn trial(
    tokenizer: &Tokenizer,
    length: usize,
    key: u32,
    depth: f64,
) -> Result<Trial, TokenizerError> {
    let statement = format!("The pass key is {key}. Remember it. {key} is the pass key.\n");
    let fixed = [INTRO, statement.as_str(), QUESTION]
        .iter()
        .map(|part| tokenizer.encode(part).map(|t| t.len()))
        .sum::<Result<usize, _>>()?;
    let per_filler = tokenizer.encode(FILLER)?.len();
    let fillers = length.saturating_sub(fixed) / per_filler;
    let before = (fillers as f64 * depth).round() as usize;
    let text = format!(
        "{INTRO}{}{statement}{}{QUESTION}",
        FILLER.repeat(before),
        FILLER.repeat(fillers - before)
    );
    Ok(Trial {
        key,
        tokens: tokenizer.encode(&text)?,
    })
}

/// Tokens the model answers with.
pub(super) const ANSWER_TOKENS: usize = 8;

/// Whether greedy decoding of 8 tokens after the prompt names the key.
pub fn passes<C: LayerCache>(
    model: &Llama,
    tokenizer: &Tokenizer,
    caches: &mut [C],
    trial: &Trial,
    prefill_chunk: usize,
) -> Result<bool, ModelError> {
    answer_names(
        model,
        tokenizer,
        caches,
        &trial.tokens,
        trial.key,
        prefill_chunk,
    )
    .map(|(named, _)| named)
}

/// Greedy decoding of [`ANSWER_TOKENS`] tokens after `prompt` (taken in after what `caches`
/// hold): whether the answer names `key`, and the answer's tokens (the last one not yet fed).
pub(super) fn answer_names<C: LayerCache>(
    model: &Llama,
    tokenizer: &Tokenizer,
    caches: &mut [C],
    prompt: &[u32],
    key: u32,
    prefill_chunk: usize,
) -> Result<(bool, Vec<u32>), ModelError> {
    let options = GenerateOptions {
        max_tokens: ANSWER_TOKENS,
        stop_tokens: vec![],
        prefill_chunk,
    };
    let answer = generate(model, caches, prompt, &mut Greedy, &options, |_| true)?;
    let text = tokenizer
        .decode(&answer.tokens, true)
        .map_err(|e| ModelError::BadInput(e.to_string()))?;
    Ok((text.contains(&key.to_string()), answer.tokens))
}

/// The 5-digit keys and depths of the `n` trials at one length (fixed, so every reading and
/// every rerun faces the same prompts): depths spread over 5–25% of the filler ("stated early").
pub fn keys_and_depths(n: usize, length: usize) -> Vec<(u32, f64)> {
    (0..n)
        .map(|i| {
            let key = 10_000 + ((length as u64 * 7_919 + i as u64 * 104_729) % 90_000) as u32;
            (
                key,
                0.05 + 0.2 * i as f64 / n.max(2).saturating_sub(1) as f64,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_five_digits_and_depths_early() {
        let all = keys_and_depths(5, 16_000);
        assert_eq!(all.len(), 5);
        for (key, depth) in &all {
            assert!((10_000..100_000).contains(key));
            assert!((0.05..=0.25 + 1e-12).contains(depth), "{depth}");
        }
        assert_ne!(all[0].0, all[1].0);
    }
}

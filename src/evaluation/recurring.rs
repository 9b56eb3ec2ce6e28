//! The recurring fact (issue 19): a pass key stated early in a long stretch of filler, then
//! asked about `uses` times while it is still recent, the model answering each time with its own
//! greedy reply and the conversation then confirming the key (as a user who checks the answer
//! would: without it a 135M model's slips compound, each answer copying the last one with a digit
//! fewer); then more text than the archive's budget, then the question once more. A bounded
//! archive that keeps what the conversation uses still holds the fact at the end; one that keeps
//! the newest has let it go.
//!
//! The filler is the pass-key test's ([`super::passkey`]), not real text: with the King James
//! Bible between the statement and the question, the 135M model named the key in 0 of 3 trials
//! at 8k tokens even with the whole past exact (the unbounded archive), so real text would
//! measure the model's reading, not what the archive keeps.

use crate::engine::generate::prefill;
use crate::model::{LayerCache, Llama, ModelError};
use crate::tokenizer::Tokenizer;
use anyhow::bail;

use super::passkey::{answer_names, ANSWER_TOKENS, FILLER, INTRO, QUESTION};

/// Tokens of filler before the fact, at least.
pub const FACT_AT: usize = 1_000;
/// Tokens of text between the fact and each use, and between uses: every use comes while the
/// fact is still within an 8,192-token archive kept oldest-first, so each answer can be right.
pub const USE_GAP: usize = 2_000;

/// What the conversation does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    /// Text the memory takes in.
    Text(Vec<u32>),
    /// A question the model answers (greedily, [`ANSWER_TOKENS`] tokens), the answer kept.
    Ask(Vec<u32>),
}

/// One trial: its key and the conversation, ending with the last question.
#[derive(Debug, Clone)]
pub struct Trial {
    pub key: u32,
    pub parts: Vec<Part>,
}

/// A conversation of about `length` tokens with `key` stated after [`FACT_AT`] + `later` tokens
/// of filler and asked about `uses` times, [`USE_GAP`] tokens of filler apart, then at the end.
pub fn trial(
    tokenizer: &Tokenizer,
    later: usize,
    length: usize,
    key: u32,
    uses: usize,
) -> anyhow::Result<Trial> {
    let statement = tokenizer.encode(&format!(
        "\nThe pass key is {key}. Remember it. {key} is the pass key.\n"
    ))?;
    let question = tokenizer.encode(QUESTION)?;
    let confirmation = tokenizer.encode(&format!("\nRight: the pass key is {key}.\n"))?;
    let filler = tokenizer.encode(FILLER)?;
    // Whole fillers of about `n` tokens.
    let next_text = |n: usize| -> Vec<u32> { filler.repeat(n.div_ceil(filler.len())) };
    let mut opening = tokenizer.encode(INTRO)?;
    opening.extend(next_text(FACT_AT + later));
    opening.extend(&statement);
    let mut used = opening.len();
    let mut parts = vec![Part::Text(opening)];
    for _ in 0..uses {
        let gap = next_text(USE_GAP);
        used += gap.len() + question.len() + ANSWER_TOKENS + confirmation.len();
        parts.push(Part::Text(gap));
        parts.push(Part::Ask(question.clone()));
        parts.push(Part::Text(confirmation.clone()));
    }
    if used + question.len() > length {
        bail!(
            "a conversation of {length} tokens cannot hold the fact and {uses} uses ({used} \
             tokens before the last question): give --lengths of at least {}",
            used + question.len()
        );
    }
    let rest = length.saturating_sub(used + question.len() + filler.len());
    parts.push(Part::Text(next_text(rest)));
    parts.push(Part::Ask(question));
    Ok(Trial { key, parts })
}

/// What the model answered: at each use and at the end, whether the answer named the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answers {
    pub at_uses: Vec<bool>,
    pub at_end: bool,
}

/// Runs the conversation through `caches` (fresh), the model answering each question.
pub fn answers<C: LayerCache>(
    model: &Llama,
    tokenizer: &Tokenizer,
    caches: &mut [C],
    trial: &Trial,
    chunk: usize,
) -> Result<Answers, ModelError> {
    let mut named = vec![];
    // Generation leaves its last token unfed; it goes in with what follows.
    let mut unfed: Vec<u32> = vec![];
    for part in &trial.parts {
        match part {
            Part::Text(tokens) => {
                unfed.extend(tokens);
                if !unfed.is_empty() {
                    let _ = prefill(model, caches, &unfed, chunk)?;
                }
                unfed.clear();
            }
            Part::Ask(question) => {
                unfed.extend(question);
                let (right, answer) =
                    answer_names(model, tokenizer, caches, &unfed, trial.key, chunk)?;
                named.push(right);
                unfed = answer.last().copied().into_iter().collect();
            }
        }
    }
    let at_end = named.pop().unwrap_or(false);
    Ok(Answers {
        at_uses: named,
        at_end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trial_states_the_fact_then_asks_between_stretches_of_filler() {
        let tokenizer = crate::tokenizer::smollm_for_tests();
        let trial = trial(&tokenizer, 100, 12_000, 12_345, 3).unwrap();
        let asks = trial
            .parts
            .iter()
            .filter(|p| matches!(p, Part::Ask(_)))
            .count();
        assert_eq!(asks, 4, "three uses and the last question");
        let text = |part: &Part| match part {
            Part::Text(t) | Part::Ask(t) => tokenizer.decode(t, false).unwrap(),
        };
        assert!(text(&trial.parts[0]).ends_with("12345 is the pass key.\n"));
        assert!(text(&trial.parts[3]).contains("Right: the pass key is 12345."));
        assert_eq!(text(trial.parts.last().unwrap()), QUESTION);
        let fed: usize = trial
            .parts
            .iter()
            .map(|p| match p {
                Part::Text(t) | Part::Ask(t) => t.len(),
            })
            .sum();
        let length = fed + 3 * ANSWER_TOKENS;
        assert!((11_900..=12_000).contains(&length), "{length}");
        let short = super::trial(&tokenizer, 0, 4_000, 12_345, 3).unwrap_err();
        assert!(
            short.to_string().contains("--lengths of at least"),
            "{short}"
        );
    }
}

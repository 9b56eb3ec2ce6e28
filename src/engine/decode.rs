//! The per-token rules of one generation, in one place: the server's batched sequences
//! (`sequence.rs`), [`super::generate::generate`] (and through it `infini generate`, `infini chat`
//! and the evaluation) all choose, show and end tokens by a [`Decoding`]:
//! * the sampler chooses from the logits with the tokens so far (prompt and reply) as its history;
//! * a stop token ends the reply; it is neither shown nor counted nor fed back;
//! * each other token is decoded to text, and text that may begin a stop string is held back
//!   until the next token decides (`stop.rs`); a stop string ends the reply before it;
//! * `max_tokens` tokens end it with `length`; the caller may cancel it (client gone, shutdown);
//! * whatever ended it but a stop token, the last token was shown but not yet fed: a session's
//!   memory takes it in ([`Decoding::unfed`]) so that it holds the whole reply.

use tch::Tensor;

use super::sampler::Sampler;
use super::stop::{StopChecker, StopRules};
use crate::model::ModelError;
use crate::tokenizer::{IncrementalDecoder, Tokenizer};

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
impl NextToken for Sampler {
    fn next(&mut self, logits: &Tensor, history: &[u32]) -> Result<u32, ModelError> {
        self.sample(logits, history)
            .map_err(|e| ModelError::BadInput(e.to_string()))
    }
}

/// How a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token or a stop string.
    Stop,
    /// `max_tokens` tokens were generated.
    Length,
    /// The caller ended it: the client left, the server cut it, or a callback said stop.
    Cancelled,
}

impl FinishReason {
    /// OpenAI's `finish_reason`: `length` for the budget, `stop` otherwise (a cut turn too).
    pub fn openai(self) -> &'static str {
        match self {
            Self::Length => "length",
            Self::Stop | Self::Cancelled => "stop",
        }
    }
}

/// Text decoding and stop strings, for callers that show text.
struct Text {
    decoder: IncrementalDecoder,
    stops: StopChecker,
}

/// One generation's state between two tokens.
pub struct Decoding {
    /// The prompt, then every generated token (what samplers' penalties read).
    history: Vec<u32>,
    prompt_len: usize,
    max_tokens: usize,
    stop_tokens: Vec<u32>,
    text: Option<Text>,
    finish: Option<FinishReason>,
    /// A stop token ended the generation (so every generated token was fed already).
    ended_by_stop_token: bool,
}

impl Decoding {
    /// A generation after `prompt` of at most `max_tokens` tokens that ends at any of
    /// `stop_tokens`; tokens only (see [`Decoding::with_text`]).
    pub fn new(prompt: &[u32], max_tokens: usize, stop_tokens: Vec<u32>) -> Self {
        Self {
            history: prompt.to_vec(),
            prompt_len: prompt.len(),
            max_tokens,
            stop_tokens,
            text: None,
            finish: None,
            ended_by_stop_token: false,
        }
    }

    /// Also decodes each token to text, holding back what may begin one of `stops`.
    pub fn with_text(mut self, stops: StopRules) -> Self {
        self.text = Some(Text {
            decoder: IncrementalDecoder::new(true),
            stops: StopChecker::new(stops),
        });
        self
    }

    /// Prompt and generated tokens.
    pub fn history(&self) -> &[u32] {
        &self.history
    }

    /// The generated tokens (a stop token is not among them).
    pub fn generated(&self) -> &[u32] {
        &self.history[self.prompt_len..]
    }

    /// How the generation ended, once it has.
    pub fn finish(&self) -> Option<FinishReason> {
        self.finish
    }

    /// Chooses the next token from the last position's logits `[V]` with `sampler` and takes it
    /// ([`Decoding::take`]); the token and the text now safe to show.
    pub fn choose(
        &mut self,
        sampler: &mut impl NextToken,
        logits: &Tensor,
        tokenizer: Option<&Tokenizer>,
    ) -> Result<(u32, String), ModelError> {
        let token = sampler.next(logits, &self.history)?;
        let text = self.take(token, tokenizer)?;
        Ok((token, text))
    }

    /// Takes the chosen `token` by the rules of the module's header; returns the text now safe to
    /// show (always empty without [`Decoding::with_text`]). After the generation ended, nothing.
    pub fn take(
        &mut self,
        token: u32,
        tokenizer: Option<&Tokenizer>,
    ) -> Result<String, ModelError> {
        if self.finish.is_some() {
            return Ok(String::new());
        }
        if self.stop_tokens.contains(&token) {
            self.finish = Some(FinishReason::Stop);
            self.ended_by_stop_token = true;
            return Ok(self.release());
        }
        self.history.push(token);
        let mut shown = String::new();
        if let (Some(text), Some(tokenizer)) = (self.text.as_mut(), tokenizer) {
            let piece = text
                .decoder
                .push(tokenizer, token)
                .map_err(|e| ModelError::BadInput(e.to_string()))?;
            let step = text.stops.push(&piece);
            shown = step.text;
            if step.stopped {
                self.finish = Some(FinishReason::Stop);
                return Ok(shown);
            }
        }
        if self.generated().len() >= self.max_tokens {
            self.finish = Some(FinishReason::Length);
            shown.push_str(&self.release());
        }
        Ok(shown)
    }

    /// Ends the generation early (held-back text is dropped); no effect once it has ended.
    pub fn cancel(&mut self) {
        self.finish.get_or_insert(FinishReason::Cancelled);
    }

    /// The last generated token when the generation has ended without a stop token: shown but
    /// not yet fed to the model, so a session's memory must still take it in.
    pub fn unfed(&self) -> Option<u32> {
        match self.finish {
            Some(_) if !self.ended_by_stop_token => self.generated().last().copied(),
            _ => None,
        }
    }

    /// Held-back text, released because the reply ended without a stop string.
    fn release(&mut self) -> String {
        self.text
            .as_mut()
            .map(|text| text.stops.flush())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;

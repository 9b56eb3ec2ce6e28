//! When generation ends, and what text may be streamed before it does (`architecture.md`,
//! "engine/": stop rules).
//!
//! Three rules: a stop token (EOS and any the request adds), a stop string, and the token budget
//! (`max_tokens`). A stop string can be split across tokens (`"\n\nUser"` as `"\n"`, `"\nUs"`,
//! `"er"`), so the text that ends in a possible beginning of a stop string is held back until the
//! next token decides: it is either part of the stop string (never shown) or not (released).
//! As in OpenAI's API, neither the stop string nor the stop token's text is part of the output.

use thiserror::Error;

/// OpenAI's limit on stop sequences per request.
pub const MAX_STOP_STRINGS: usize = 4;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum StopError {
    #[error("stop may hold at most {MAX_STOP_STRINGS} strings, got {0}")]
    TooManyStrings(usize),
    #[error("stop strings must not be empty")]
    EmptyString,
    #[error("max_tokens must be at least 1, got {0}")]
    MaxTokens(usize),
}

/// Why a sequence ended (OpenAI's `finish_reason`: both stops are `"stop"`, the budget `"length"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    StopToken(u32),
    StopString(String),
    Length,
}

impl FinishReason {
    /// The OpenAI `finish_reason` value.
    pub fn as_openai(&self) -> &'static str {
        match self {
            Self::StopToken(_) | Self::StopString(_) => "stop",
            Self::Length => "length",
        }
    }
}

/// The stop rules of one request, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopRules {
    tokens: Vec<u32>,
    strings: Vec<String>,
    max_tokens: usize,
}

impl StopRules {
    /// `tokens`: ids that end generation (the model's EOS among them); `strings`: the request's
    /// `stop`; `max_tokens`: the budget of generated tokens.
    pub fn new(
        tokens: Vec<u32>,
        strings: Vec<String>,
        max_tokens: usize,
    ) -> Result<Self, StopError> {
        if strings.len() > MAX_STOP_STRINGS {
            return Err(StopError::TooManyStrings(strings.len()));
        }
        if strings.iter().any(String::is_empty) {
            return Err(StopError::EmptyString);
        }
        if max_tokens == 0 {
            return Err(StopError::MaxTokens(max_tokens));
        }
        Ok(Self {
            tokens,
            strings,
            max_tokens,
        })
    }
}

/// What one generated token means for the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopStep {
    /// Text that is now safe to show.
    pub text: String,
    /// Set when this token ended the sequence.
    pub finish: Option<FinishReason>,
}

/// Applies [`StopRules`] to a stream of (token, decoded text) pairs.
#[derive(Debug, Clone)]
pub struct StopChecker {
    rules: StopRules,
    held: String,
    generated: usize,
    finished: bool,
}

impl StopChecker {
    pub fn new(rules: StopRules) -> Self {
        Self {
            rules,
            held: String::new(),
            generated: 0,
            finished: false,
        }
    }

    /// Takes one generated token and the text it decoded to (from
    /// [`crate::tokenizer::IncrementalDecoder`], possibly empty). After a step that finishes,
    /// further tokens are ignored.
    pub fn push(&mut self, token: u32, text: &str) -> StopStep {
        if self.finished {
            return StopStep {
                text: String::new(),
                finish: None,
            };
        }
        self.generated += 1;
        if self.rules.tokens.contains(&token) {
            return self.finish(FinishReason::StopToken(token));
        }
        self.held.push_str(text);
        if let Some((start, stop)) = self.earliest_stop_string() {
            self.held.truncate(start);
            return self.finish(FinishReason::StopString(stop));
        }
        if self.generated >= self.rules.max_tokens {
            return self.finish(FinishReason::Length);
        }
        let keep = self.possible_stop_prefix_len();
        let text = self.held.drain(..self.held.len() - keep).collect();
        StopStep { text, finish: None }
    }

    /// Releases the held-back text when the stream ends for another reason (e.g. the client's
    /// context limit).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    pub fn generated(&self) -> usize {
        self.generated
    }

    fn finish(&mut self, reason: FinishReason) -> StopStep {
        self.finished = true;
        StopStep {
            text: self.flush(),
            finish: Some(reason),
        }
    }

    /// The first stop string in the held text, by start position (the longer on a tie).
    fn earliest_stop_string(&self) -> Option<(usize, String)> {
        self.rules
            .strings
            .iter()
            .filter_map(|stop| self.held.find(stop.as_str()).map(|start| (start, stop)))
            .min_by_key(|&(start, stop)| (start, std::cmp::Reverse(stop.len())))
            .map(|(start, stop)| (start, stop.clone()))
    }

    /// The length of the longest end of the held text that begins some stop string.
    fn possible_stop_prefix_len(&self) -> usize {
        let held = self.held.as_bytes();
        let longest = |stop: &String| {
            (1..stop.len().min(held.len() + 1))
                .rev()
                .find(|&n| held.ends_with(&stop.as_bytes()[..n]))
                .unwrap_or(0)
        };
        self.rules.strings.iter().map(longest).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests;

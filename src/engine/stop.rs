//! When generation ends, and what text may be streamed before it does (`architecture.md`,
//! "engine/": stop rules).
//!
//! Stop strings (the request's `stop`; stop tokens and the token budget are `decode.rs`'s). A stop
//! string can be split across tokens (`"\n\nUser"` as `"\n"`, `"\nUs"`, `"er"`), so the text that
//! ends in a possible beginning of a stop string is held back until the next token decides: it is
//! either part of the stop string (never shown) or not (released). As in OpenAI's API, the stop
//! string is not part of the output.

use thiserror::Error;

/// OpenAI's limit on stop sequences per request.
pub const MAX_STOP_STRINGS: usize = 4;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum StopError {
    #[error("stop may hold at most {MAX_STOP_STRINGS} strings, got {0}")]
    TooManyStrings(usize),
    #[error("stop strings must not be empty")]
    EmptyString,
}

/// The stop strings of one request, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopRules {
    strings: Vec<String>,
}

impl StopRules {
    /// `strings`: the request's `stop`, at most [`MAX_STOP_STRINGS`], none empty.
    pub fn new(strings: Vec<String>) -> Result<Self, StopError> {
        if strings.len() > MAX_STOP_STRINGS {
            return Err(StopError::TooManyStrings(strings.len()));
        }
        if strings.iter().any(String::is_empty) {
            return Err(StopError::EmptyString);
        }
        Ok(Self { strings })
    }
}

/// What one generated token's text means for the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopStep {
    /// Text that is now safe to show.
    pub text: String,
    /// A stop string matched: the reply ends before it.
    pub stopped: bool,
}

/// Applies [`StopRules`] to a stream of decoded texts.
#[derive(Debug, Clone)]
pub struct StopChecker {
    rules: StopRules,
    held: String,
    stopped: bool,
}

impl StopChecker {
    pub fn new(rules: StopRules) -> Self {
        Self {
            rules,
            held: String::new(),
            stopped: false,
        }
    }

    /// Takes the text one generated token decoded to (from
    /// [`crate::tokenizer::IncrementalDecoder`], possibly empty). After a stop string matched,
    /// further text is ignored.
    pub fn push(&mut self, text: &str) -> StopStep {
        if self.stopped {
            return StopStep {
                text: String::new(),
                stopped: false,
            };
        }
        self.held.push_str(text);
        if let Some(start) = self.earliest_stop_string() {
            self.held.truncate(start);
            self.stopped = true;
            return StopStep {
                text: self.flush(),
                stopped: true,
            };
        }
        let keep = self.possible_stop_prefix_len();
        let text = self.held.drain(..self.held.len() - keep).collect();
        StopStep {
            text,
            stopped: false,
        }
    }

    /// Releases the held-back text when the reply ends for another reason (a stop token, the
    /// token budget).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Where the first stop string in the held text starts.
    fn earliest_stop_string(&self) -> Option<usize> {
        self.rules
            .strings
            .iter()
            .filter_map(|stop| self.held.find(stop.as_str()))
            .min()
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

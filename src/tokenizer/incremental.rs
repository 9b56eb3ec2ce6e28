//! Streaming decode: text for each new token as soon as it is whole, never half a UTF-8 character.
//!
//! A byte-level token can end inside a multi-byte character (an emoji is often two or three
//! tokens). Each step decodes a short window of ids twice — up to the last emitted token and up to
//! the new one — and emits the difference only when it does not end in U+FFFD, the mark of an
//! incomplete character; otherwise the token's bytes wait for the next one.

use super::{Tokenizer, TokenizerError};

/// Per-sequence streaming state; holds only the ids since the last emitted text (plus one window).
#[derive(Debug, Clone, Default)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    /// Start of the window that gives the emitted text its context.
    prefix_offset: usize,
    /// End of what has been emitted.
    read_offset: usize,
    skip_special: bool,
}

impl IncrementalDecoder {
    pub fn new(skip_special: bool) -> Self {
        Self {
            skip_special,
            ..Self::default()
        }
    }

    /// Adds one generated token; returns the text it completes (empty while a character is still
    /// incomplete).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String, TokenizerError> {
        self.ids.push(id);
        let text = self.pending(tokenizer)?;
        if text.is_empty() || text.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        self.ids.drain(..self.read_offset);
        self.prefix_offset = 0;
        self.read_offset = self.ids.len();
        Ok(text)
    }

    /// Ends the stream: whatever is still held back, with incomplete characters as U+FFFD.
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<String, TokenizerError> {
        let text = self.pending(tokenizer)?;
        *self = Self::new(self.skip_special);
        Ok(text)
    }

    /// The text after the emitted part, decoded in its window.
    fn pending(&self, tokenizer: &Tokenizer) -> Result<String, TokenizerError> {
        let emitted = tokenizer.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special,
        )?;
        let full = tokenizer.decode(&self.ids[self.prefix_offset..], self.skip_special)?;
        Ok(match full.get(emitted.len()..) {
            Some(rest) if full.starts_with(&emitted) => rest.to_string(),
            // A decoder that rewrites its context (none of the byte-level ones do): emit the
            // part past the common prefix.
            _ => full.chars().skip(emitted.chars().count()).collect(),
        })
    }
}

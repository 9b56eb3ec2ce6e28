//! A conversation whose earlier turns already sit in a session's memory: each turn, only the text
//! that the memory does not hold yet is fed to the model (issue 4: "the client sends only the new
//! messages"; the memory, not a re-run of the history, carries the past).
//!
//! The chat template renders the whole conversation; the memory holds what an earlier rendering
//! (with the generation prompt) produced, followed by the assistant's reply. A template that renders
//! a longer conversation as an extension of a shorter one (ChatML and its kin) then yields the new
//! text as a suffix; a template that rewrites earlier turns is refused with a clear error.

use serde::{Deserialize, Serialize};

use super::{ChatMessage, ChatTemplate, Tokenizer, TokenizerError};

/// The messages of a session and the text its memory holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transcript {
    pub messages: Vec<ChatMessage>,
    /// The rendered text the memory has taken in so far.
    pub fed: String,
    /// Where each turn ended in the memory's tokens and in `fed` (the memory map's text of a
    /// token span). Empty in sessions stored or imported without it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub turns: Vec<TurnEnd>,
}

/// The end of one turn: tokens the memory had taken in, and bytes of `fed`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnEnd {
    pub tokens: u64,
    pub bytes: usize,
}

impl Transcript {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `new` messages and returns the text to feed now: the rendering of the whole
    /// conversation, with the generation prompt, minus what the memory already holds.
    pub fn next_prompt(
        &mut self,
        template: &ChatTemplate,
        new: &[ChatMessage],
    ) -> Result<String, TokenizerError> {
        let mut messages = self.messages.clone();
        messages.extend_from_slice(new);
        let rendered = template.render(&messages, true)?;
        let suffix = rendered.strip_prefix(self.fed.as_str()).ok_or_else(|| {
            TokenizerError::Template(
                "the chat template renders earlier turns differently once new messages follow, \
                 so a session cannot continue from its memory with this model"
                    .into(),
            )
        })?;
        let suffix = suffix.to_string();
        self.messages = messages;
        self.fed = rendered;
        Ok(suffix)
    }

    /// Records the assistant's reply, which the memory took in as it was generated, and the end
    /// of the turn: the memory has now taken in `tokens_seen` tokens.
    pub fn record_reply(&mut self, reply: &str, tokens_seen: u64) {
        self.messages.push(ChatMessage::new("assistant", reply));
        self.fed.push_str(reply);
        self.turns.push(TurnEnd {
            tokens: tokens_seen,
            bytes: self.fed.len(),
        });
    }

    /// The byte of `fed` where each of the memory's first `tokens` tokens begins (one more entry:
    /// `fed.len()`). Within a turn the turn's text is tokenized again: exact when that gives the
    /// turn's token count (a prompt always does), else spread evenly over the turn's tokens (a
    /// reply whose text tokenizes differently from how it was generated, a stop string cut from
    /// the text, a BOS). Turns not recorded count as one.
    pub fn token_starts(
        &self,
        tokenizer: &Tokenizer,
        tokens: u64,
    ) -> Result<Vec<usize>, TokenizerError> {
        let mut ends: Vec<TurnEnd> = self
            .turns
            .iter()
            .copied()
            .filter(|end| end.tokens <= tokens && end.bytes <= self.fed.len())
            .collect();
        if ends.last().is_none_or(|end| end.tokens < tokens) {
            ends.push(TurnEnd {
                tokens,
                bytes: self.fed.len(),
            });
        }
        let mut starts = Vec::with_capacity(tokens as usize + 1);
        let mut from = TurnEnd::default();
        for end in ends {
            let n = end.tokens.saturating_sub(from.tokens) as usize;
            let (b0, b1) = (from.bytes.min(end.bytes), end.bytes);
            let text = self.fed.get(b0..b1).unwrap_or("");
            let within = tokenizer.token_starts(text)?;
            let m = within.len();
            for i in 0..n {
                let j = if m == n { i } else { i * m / n };
                starts.push(b0 + within.get(j).copied().unwrap_or(b1 - b0));
            }
            from = end;
        }
        starts.push(self.fed.len());
        Ok(starts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn each_turn_feeds_only_what_the_memory_lacks() {
        let template = ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap();
        let mut transcript = Transcript::new();
        let first = transcript
            .next_prompt(&template, &[ChatMessage::new("user", "My name is Ada.")])
            .unwrap();
        assert!(first.starts_with("<|im_start|>system\nYou are helpful."));
        transcript.record_reply("Hello Ada!", 30);
        let second = transcript
            .next_prompt(&template, &[ChatMessage::new("user", "What is my name?")])
            .unwrap();
        assert_eq!(
            second,
            "<|im_end|>\n<|im_start|>user\nWhat is my name?<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(transcript.messages.len(), 3);
    }

    #[test]
    fn a_template_that_rewrites_history_is_refused() {
        // Shows only the last message: earlier turns vanish from the rendering.
        let template = ChatTemplate::new("{{ messages[-1]['content'] }}", "", "").unwrap();
        let mut transcript = Transcript::new();
        transcript
            .next_prompt(&template, &[ChatMessage::new("user", "one")])
            .unwrap();
        transcript.record_reply("two", 2);
        let before = transcript.clone();
        assert!(transcript
            .next_prompt(&template, &[ChatMessage::new("user", "three")])
            .is_err());
        assert_eq!(transcript, before, "a refused turn changes nothing");
    }
}

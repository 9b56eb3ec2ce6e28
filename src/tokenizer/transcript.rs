//! A conversation whose earlier turns already sit in a session's memory: each turn, only the text
//! that the memory does not hold yet is fed to the model (issue 4: "the client sends only the new
//! messages"; the memory, not a re-run of the history, carries the past).
//!
//! The chat template renders the whole conversation; the memory holds what an earlier rendering
//! (with the generation prompt) produced, followed by the assistant's reply. A template that renders
//! a longer conversation as an extension of a shorter one (ChatML and its kin) then yields the new
//! text as a suffix; a template that rewrites earlier turns is refused with a clear error.

use serde::{Deserialize, Serialize};

use super::{ChatMessage, ChatTemplate, TokenizerError};

/// The messages of a session and the text its memory holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transcript {
    pub messages: Vec<ChatMessage>,
    /// The rendered text the memory has taken in so far.
    pub fed: String,
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

    /// Records the assistant's reply, which the memory took in as it was generated.
    pub fn record_reply(&mut self, reply: &str) {
        self.messages.push(ChatMessage::new("assistant", reply));
        self.fed.push_str(reply);
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
        transcript.record_reply("Hello Ada!");
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
        transcript.record_reply("two");
        let before = transcript.clone();
        assert!(transcript
            .next_prompt(&template, &[ChatMessage::new("user", "three")])
            .is_err());
        assert_eq!(transcript, before, "a refused turn changes nothing");
    }
}

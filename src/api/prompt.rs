//! What a turn feeds the model. Without a session: the chat template over the whole
//! conversation. With one: only the text after what the session's memory already holds — the
//! template rendered over transcript + new messages, minus the rendering of the transcript — and,
//! after the reply, the template's close of the assistant message (`<|im_end|>\n` in ChatML), so
//! that the memory ends exactly where the next turn's text begins. This needs an append-only
//! template (rendering more messages only appends text), which is checked, never assumed.

use crate::tokenizer::{ChatMessage, ChatTemplate, TokenizerError};

/// Why a session turn's text cannot be derived.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PromptError {
    #[error("chat template: {0}")]
    Template(String),
    #[error("the model's chat template is not append-only, so a session cannot continue it")]
    NotAppendOnly,
}

impl From<TokenizerError> for PromptError {
    fn from(error: TokenizerError) -> Self {
        Self::Template(error.to_string())
    }
}

/// The text of one session turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnText {
    /// The new messages and the generation prompt, after what the memory holds.
    pub prompt: String,
    /// The text that closes the assistant's reply.
    pub close: String,
}

/// A character no message contains, standing for the reply when measuring the template's close.
const REPLY: &str = "\u{E000}";

/// The turn's text for a memory that holds `transcript` (rendered, closed) and `new` messages.
pub fn turn_text(
    template: &ChatTemplate,
    transcript: &[ChatMessage],
    new: &[ChatMessage],
) -> Result<TurnText, PromptError> {
    let held = if transcript.is_empty() {
        String::new()
    } else {
        template.render(transcript, false)?
    };
    let mut all = transcript.to_vec();
    all.extend_from_slice(new);
    let full = template.render(&all, true)?;
    let prompt = full
        .strip_prefix(held.as_str())
        .ok_or(PromptError::NotAppendOnly)?
        .to_string();
    all.push(ChatMessage::new("assistant", REPLY));
    let closed = template.render(&all, false)?;
    let close = closed
        .strip_prefix(full.as_str())
        .and_then(|rest| rest.strip_prefix(REPLY))
        .ok_or(PromptError::NotAppendOnly)?
        .to_string();
    Ok(TurnText { prompt, close })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nBe brief.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn turns_concatenate_to_the_whole_conversation() {
        let template = ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap();
        let first = [ChatMessage::new("user", "hi")];
        let one = turn_text(&template, &[], &first).unwrap();
        assert_eq!(
            one.prompt,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(one.close, "<|im_end|>\n");
        let transcript = [first[0].clone(), ChatMessage::new("assistant", "hello")];
        let two = turn_text(&template, &transcript, &[ChatMessage::new("user", "again")]).unwrap();
        assert_eq!(
            two.prompt,
            "<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\n"
        );
        let whole = template
            .render(
                &[
                    transcript[0].clone(),
                    transcript[1].clone(),
                    ChatMessage::new("user", "again"),
                ],
                true,
            )
            .unwrap();
        assert_eq!(
            format!("{}hello{}{}", one.prompt, one.close, two.prompt),
            whole
        );
    }

    #[test]
    fn a_template_that_rewrites_the_past_is_refused() {
        let template = ChatTemplate::new(
            "{{ messages | length }}{% for m in messages %}{{ m.content }}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        let transcript = [ChatMessage::new("user", "a")];
        assert_eq!(
            turn_text(&template, &transcript, &[ChatMessage::new("user", "b")]),
            Err(PromptError::NotAppendOnly)
        );
    }
}

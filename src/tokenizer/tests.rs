//! Unit tests: the chat template's Jinja set-up, streaming decode, special tokens and errors. The
//! comparison with the reference tokenizer on thousands of strings is tests/tokenizer_reference.rs.

use super::smollm_for_tests as smollm;
use super::*;

fn user(content: &str) -> Vec<ChatMessage> {
    vec![ChatMessage::new("user", content)]
}

#[test]
fn template_trims_blocks_like_transformers() {
    let template = ChatTemplate::new("{% for m in messages %}\n  {% if m.role == 'user' %}\n[{{ m.content }}]\n  {% endif %}\n{% endfor %}", "<s>", "</s>").unwrap();
    assert_eq!(template.render(&user("hi"), false).unwrap(), "[hi]\n");
}

#[test]
fn template_has_python_string_methods_and_special_token_variables() {
    let template = ChatTemplate::new("{{ bos_token }}{{ messages[0].content.strip().upper() }}{% if add_generation_prompt %}>{% endif %}{{ eos_token }}", "<s>", "</s>").unwrap();
    assert_eq!(
        template.render(&user("  hey "), true).unwrap(),
        "<s>HEY></s>"
    );
    assert_eq!(template.render(&user("x"), false).unwrap(), "<s>X</s>");
}

#[test]
fn template_errors_are_clear() {
    let message = ChatTemplate::new("{% for m in messages %}", "", "")
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with("chat template: syntax error") && message.contains("chat_template:1"),
        "{message}"
    );
    let raising = ChatTemplate::new("{% if messages[0].role != 'system' %}{{ raise_exception('the first message must be a system message') }}{% endif %}", "", "").unwrap();
    let message = raising.render(&user("x"), false).unwrap_err().to_string();
    assert!(
        message.contains("the first message must be a system message"),
        "{message}"
    );
}

#[test]
fn special_tokens_come_from_the_metadata_and_are_parsed_in_text() {
    let tokenizer = smollm();
    assert_eq!(
        tokenizer.special_tokens(),
        SpecialTokens {
            bos: Some(1),
            eos: Some(2),
            padding: Some(2)
        }
    );
    assert_eq!(tokenizer.vocab_size(), 49152);
    assert_eq!(tokenizer.encode("<|im_start|><|im_end|>").unwrap(), [1, 2]);
    assert_eq!(tokenizer.token_id("<|im_end|>"), Some(2));
    assert_eq!(
        tokenizer.decode(&[1, 2], true).unwrap(),
        "",
        "skip_special drops them"
    );
    assert_eq!(
        tokenizer.decode(&[1, 2], false).unwrap(),
        "<|im_start|><|im_end|>"
    );
    let message = tokenizer.decode(&[49152], false).unwrap_err().to_string();
    assert!(
        message.contains("49152 is outside the vocabulary of 49152"),
        "{message}"
    );
}

#[test]
fn every_digit_is_its_own_token() {
    let tokenizer = smollm();
    let ids = tokenizer.encode("x 2026").unwrap();
    let pieces: Vec<String> = ids
        .iter()
        .map(|&id| tokenizer.token_text(id).unwrap())
        .collect();
    assert_eq!(pieces, ["x", "Ġ", "2", "0", "2", "6"]);
}

#[test]
fn incremental_decoding_never_splits_a_character() {
    let tokenizer = smollm();
    let text = "héllo 😀👨‍👩‍👧 wörld 中文";
    let ids = tokenizer.encode(text).unwrap();
    let mut decoder = IncrementalDecoder::new(false);
    let chunks: Vec<String> = ids
        .iter()
        .map(|&id| decoder.push(&tokenizer, id).unwrap())
        .collect();
    assert!(
        chunks.iter().any(String::is_empty),
        "an emoji spans several tokens, so some step holds back"
    );
    assert!(chunks.iter().all(|c| !c.contains('\u{FFFD}')), "{chunks:?}");
    assert_eq!(chunks.concat() + &decoder.finish(&tokenizer).unwrap(), text);
}

#[test]
fn finishing_mid_character_flushes_a_replacement_character() {
    let tokenizer = smollm();
    let ids = tokenizer.encode("a😀").unwrap();
    let mut decoder = IncrementalDecoder::new(false);
    let mut text = String::new();
    for &id in &ids[..ids.len() - 1] {
        text += &decoder.push(&tokenizer, id).unwrap();
    }
    assert_eq!(text, "a");
    assert!(decoder.finish(&tokenizer).unwrap().contains('\u{FFFD}'));
}

#[test]
fn a_tokenizer_json_folder_loads_with_its_config() {
    let gguf = smollm();
    let dir = std::env::temp_dir().join(format!("infini-hf-tokenizer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    gguf.inner.save(dir.join("tokenizer.json"), false).unwrap();
    let config = r#"{"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"},
        "chat_template": "{{ messages[0].content }}"}"#;
    std::fs::write(dir.join("tokenizer_config.json"), config).unwrap();
    let hf = Tokenizer::from_hf_dir(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    let hf = hf.unwrap();
    let expected = SpecialTokens {
        bos: Some(1),
        eos: Some(2),
        padding: None,
    };
    assert_eq!(hf.special_tokens(), expected);
    let text = "Hello <|im_end|> 2026 中文 😀";
    assert_eq!(hf.encode(text).unwrap(), gguf.encode(text).unwrap());
    let rendered = hf
        .chat_template()
        .unwrap()
        .render(&user("x"), false)
        .unwrap();
    assert_eq!(rendered, "x");
    let missing = Tokenizer::from_hf_dir(Path::new("/nonexistent"))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("/nonexistent/tokenizer.json"), "{missing}");
}

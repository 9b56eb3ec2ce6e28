//! The tokenizer and chat template built from the default model's GGUF metadata, against the
//! reference (transformers' GGUF tokenizer with SmolLM2's pre-tokeniser) on the fixtures written
//! by scripts/reference/tokenizer_fixtures.py.

use infini::gguf::GgufFile;
use infini::tokenizer::{ChatMessage, IncrementalDecoder, Tokenizer};
use serde::Deserialize;

const MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Chat {
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    rendered: String,
    ids: Vec<u32>,
}

fn tokenizer() -> Tokenizer {
    let file = GgufFile::open(MODEL).unwrap_or_else(|e| panic!("{e}"));
    Tokenizer::from_gguf(&file).unwrap_or_else(|e| panic!("{e}"))
}

fn cases() -> Vec<Case> {
    let text =
        std::fs::read_to_string("tests/fixtures/tokenizer_cases.jsonl").expect("fixture present");
    let lines = text.lines();
    // The first line is the header naming the reference.
    let cases: Vec<Case> = lines
        .skip(1)
        .map(|l| serde_json::from_str(l).expect("a case"))
        .collect();
    assert!(
        cases.len() >= 3000,
        "a few thousand cases, found {}",
        cases.len()
    );
    cases
}

#[test]
fn tokenisation_equals_the_reference_on_every_case() {
    let tokenizer = tokenizer();
    let cases = cases();
    let wrong: Vec<String> = cases
        .iter()
        .filter_map(|case| {
            let ours = tokenizer.encode(&case.text).unwrap();
            (ours != case.ids)
                .then(|| format!("{:?}: ours {ours:?}, reference {:?}", case.text, case.ids))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} differ, e.g.\n{}",
        wrong.len(),
        cases.len(),
        wrong.iter().take(5).cloned().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn decoding_inverts_encoding_whole_and_streamed() {
    let tokenizer = tokenizer();
    for case in cases() {
        assert_eq!(tokenizer.decode(&case.ids, false).unwrap(), case.text);
        let mut decoder = IncrementalDecoder::new(false);
        let mut streamed = String::new();
        for &id in &case.ids {
            let chunk = decoder.push(&tokenizer, id).unwrap();
            assert!(
                !chunk.contains('\u{FFFD}') || case.text.contains('\u{FFFD}'),
                "{:?}: chunk {chunk:?}",
                case.text
            );
            streamed += &chunk;
        }
        streamed += &decoder.finish(&tokenizer).unwrap();
        assert_eq!(streamed, case.text);
    }
}

#[test]
fn chat_template_renders_as_the_reference() {
    let tokenizer = tokenizer();
    let template = tokenizer
        .chat_template()
        .expect("the model ships a chat template");
    let text = std::fs::read_to_string("tests/fixtures/chat_template_cases.json")
        .expect("fixture present");
    let chats: Vec<Chat> = serde_json::from_str(&text).expect("chat fixture");
    assert!(chats.len() >= 8);
    for chat in chats {
        let rendered = template
            .render(&chat.messages, chat.add_generation_prompt)
            .unwrap();
        assert_eq!(rendered, chat.rendered);
        assert_eq!(
            tokenizer.encode(&rendered).unwrap(),
            chat.ids,
            "{rendered:?}"
        );
    }
}

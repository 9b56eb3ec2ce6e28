//! The default precision's answers stay close to the f32 model's (issue #16, item 3): the 30
//! prompts of `scripts/agreement.py` (20 chat questions, 10 raw continuations, from
//! `tests/fixtures/agreement_prompts.json`), greedy, 20 tokens, through `infini serve` in f32 and in
//! the default precision; a reply agrees when its first 8 words are f32's. Measured: 28/30 for the
//! default (int4) on an AMD EPYC with AVX-512, where llama.cpp on the same GGUF gets 23/30
//! (docs/EVALUATION.md, "Answers per precision"). The floor, 25, is above llama.cpp's figures (23
//! and 24 on two machines) and leaves room for a CPU whose libtorch kernels round differently.

mod common;

use common::{reply_text, require_model, Server, TempDir};
use serde_json::{json, Value};

/// Replies that must share their first 8 words with f32's, of the 30.
const FLOOR: usize = 25;

/// Every prompt's greedy reply from a server in `precision`, in the fixture's order.
fn replies(precision: &str, prompts: &Value) -> Vec<(String, String)> {
    let dir = TempDir::new(&format!("agreement-{precision}"));
    let server = Server::start(
        &[
            ("INFINI_DATA_DIR", dir.0.display().to_string()),
            ("INFINI_PRECISION", precision.to_string()),
            ("INFINI_THREADS", "2".to_string()),
        ],
        &dir.0,
    );
    let list = |kind: &str| -> Vec<String> {
        prompts[kind]
            .as_array()
            .unwrap_or_else(|| panic!("the fixture has a list `{kind}`"))
            .iter()
            .map(|p| p.as_str().expect("prompts are strings").to_string())
            .collect()
    };
    let mut out = vec![];
    for question in list("chat") {
        let body = json!({"messages": [{"role": "user", "content": question}],
                          "temperature": 0, "max_tokens": 20});
        let reply = reply_text(&server.post("/v1/chat/completions", None, &body));
        out.push((format!("chat: {question}"), reply));
    }
    for prompt in list("raw") {
        let body = json!({"prompt": prompt, "temperature": 0, "max_tokens": 20});
        let response = server.post("/v1/completions", None, &body);
        assert_eq!(response.status, 200, "{}", response.text());
        let text = response.json()["choices"][0]["text"]
            .as_str()
            .expect("a completion has text")
            .to_string();
        out.push((format!("raw: {prompt}"), text));
    }
    out
}

fn first_words(text: &str) -> Vec<&str> {
    text.split_whitespace().take(8).collect()
}

#[test]
fn the_default_precision_agrees_with_f32_on_most_prompts() {
    require_model();
    let fixture = common::root().join("tests/fixtures/agreement_prompts.json");
    let prompts: Value = serde_json::from_str(&std::fs::read_to_string(&fixture).unwrap())
        .expect("the prompts fixture is JSON");
    let reference = replies("f32", &prompts);
    let default = replies(infini::model::Precision::default().name(), &prompts);
    assert_eq!(reference.len(), 30, "the fixture holds 30 prompts");
    let differ: Vec<String> = reference
        .iter()
        .zip(&default)
        .filter(|((_, f32_reply), (_, reply))| first_words(f32_reply) != first_words(reply))
        .map(|((prompt, f32_reply), (_, reply))| {
            format!("{prompt}\n  f32: {f32_reply:?}\n  default: {reply:?}")
        })
        .collect();
    let agree = reference.len() - differ.len();
    println!("the default agrees with f32 on {agree}/30");
    assert!(
        agree >= FLOOR,
        "the default agrees with f32 on {agree}/30 prompts, below the floor of {FLOOR}; differing:\n{}",
        differ.join("\n")
    );
}

//! One test per per-token rule, with the real tokenizer's text (the default model's GGUF).

use super::*;
use crate::tokenizer::smollm_for_tests as smollm;

fn ids(tokenizer: &Tokenizer, text: &str) -> Vec<u32> {
    tokenizer.encode(text).unwrap()
}

/// Takes `tokens` in turn until the generation ends; the shown text.
fn run(decoding: &mut Decoding, tokenizer: &Tokenizer, tokens: &[u32]) -> String {
    let mut shown = String::new();
    for &token in tokens {
        shown += &decoding.take(token, Some(tokenizer)).unwrap();
        if decoding.finish().is_some() {
            break;
        }
    }
    shown
}

#[test]
fn a_stop_token_ends_without_its_text_and_leaves_nothing_unfed() {
    let tokenizer = smollm();
    let eos = tokenizer.special_tokens().eos.unwrap();
    let mut tokens = ids(&tokenizer, "Hello there");
    tokens.extend([eos, ids(&tokenizer, "never")[0]]);
    let mut decoding = Decoding::new(&[1, 2], 100, vec![eos]).with_text(StopRules::default());
    assert_eq!(run(&mut decoding, &tokenizer, &tokens), "Hello there");
    assert_eq!(decoding.finish(), Some(FinishReason::Stop));
    assert_eq!(decoding.generated(), &tokens[..tokens.len() - 2]);
    assert_eq!(decoding.history().len(), 2 + tokens.len() - 2);
    assert_eq!(decoding.unfed(), None, "every shown token was fed");
    assert_eq!(FinishReason::Stop.openai(), "stop");
}

#[test]
fn a_stop_string_ends_the_reply_before_it() {
    let tokenizer = smollm();
    let tokens = ids(&tokenizer, "abc xEND yz");
    let stops = StopRules::new(vec!["END".into()]).unwrap();
    let mut decoding = Decoding::new(&[], 100, vec![]).with_text(stops);
    assert_eq!(run(&mut decoding, &tokenizer, &tokens), "abc x");
    assert_eq!(decoding.finish(), Some(FinishReason::Stop));
    assert_eq!(
        decoding.unfed(),
        decoding.generated().last().copied(),
        "the token that completed the stop string was not fed"
    );
}

#[test]
fn the_budget_ends_with_length_and_releases_held_text() {
    let tokenizer = smollm();
    let tokens = ids(&tokenizer, "a b ST OP more");
    let stops = StopRules::new(vec![" STOP".into()]).unwrap();
    let budget = ids(&tokenizer, "a b ST").len();
    let mut decoding = Decoding::new(&[], budget, vec![]).with_text(stops);
    assert_eq!(
        run(&mut decoding, &tokenizer, &tokens),
        "a b ST",
        "the held prefix is shown once the budget ends the stream"
    );
    assert_eq!(decoding.finish(), Some(FinishReason::Length));
    assert_eq!(decoding.generated().len(), budget);
    assert_eq!(FinishReason::Length.openai(), "length");
}

#[test]
fn a_cancelled_generation_drops_held_text_and_ignores_later_tokens() {
    let mut decoding = Decoding::new(&[7], 10, vec![9]);
    assert_eq!(decoding.take(3, None).unwrap(), "");
    decoding.cancel();
    assert_eq!(decoding.finish(), Some(FinishReason::Cancelled));
    assert_eq!(FinishReason::Cancelled.openai(), "stop");
    assert_eq!(decoding.unfed(), Some(3));
    assert_eq!(decoding.take(4, None).unwrap(), "");
    assert_eq!(decoding.generated(), &[3]);
    decoding.cancel();
    assert_eq!(decoding.finish(), Some(FinishReason::Cancelled));
    let mut stopped = Decoding::new(&[7], 10, vec![9]);
    stopped.take(9, None).unwrap();
    stopped.cancel();
    assert_eq!(
        stopped.finish(),
        Some(FinishReason::Stop),
        "the first end stands"
    );
}

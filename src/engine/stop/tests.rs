//! One test per stop rule, streaming text through [`StopChecker`] as the generation loop will.

use super::*;

fn rules(tokens: &[u32], strings: &[&str], max_tokens: usize) -> StopRules {
    StopRules::new(
        tokens.to_vec(),
        strings.iter().map(|s| s.to_string()).collect(),
        max_tokens,
    )
    .unwrap()
}

/// Feeds (token, text) pairs; returns the shown text and the finish reason.
fn run(rules: StopRules, steps: &[(u32, &str)]) -> (String, Option<FinishReason>) {
    let mut checker = StopChecker::new(rules);
    let mut shown = String::new();
    for &(token, text) in steps {
        let step = checker.push(token, text);
        shown += &step.text;
        if step.finish.is_some() {
            return (shown, step.finish);
        }
    }
    shown += &checker.flush();
    (shown, None)
}

#[test]
fn a_stop_token_ends_without_its_text() {
    let (shown, finish) = run(
        rules(&[2], &[], 100),
        &[(5, "Hello"), (6, " there"), (2, "<|im_end|>"), (7, "never")],
    );
    assert_eq!(shown, "Hello there");
    assert_eq!(finish, Some(FinishReason::StopToken(2)));
    assert_eq!(finish.unwrap().as_openai(), "stop");
}

#[test]
fn a_stop_string_inside_one_token_cuts_the_text_before_it() {
    let (shown, finish) = run(
        rules(&[], &["END"], 100),
        &[(1, "abc"), (2, "xENDy"), (3, "z")],
    );
    assert_eq!(shown, "abcx");
    assert_eq!(finish, Some(FinishReason::StopString("END".into())));
}

#[test]
fn a_stop_string_split_across_tokens_is_never_shown() {
    let mut checker = StopChecker::new(rules(&[], &["\n\nUser:"], 100));
    assert_eq!(checker.push(1, "Sure.").text, "Sure.");
    assert_eq!(
        checker.push(2, "\n").text,
        "",
        "a possible start of the stop string is held back"
    );
    assert_eq!(checker.push(3, "\nUs").text, "");
    let last = checker.push(4, "er: hi");
    assert_eq!(last.text, "");
    assert_eq!(
        last.finish,
        Some(FinishReason::StopString("\n\nUser:".into()))
    );
}

#[test]
fn held_text_is_released_when_the_stop_string_does_not_follow() {
    let mut checker = StopChecker::new(rules(&[], &["\n\nUser:"], 100));
    assert_eq!(checker.push(1, "a\n").text, "a");
    assert_eq!(checker.push(2, "\nUs").text, "");
    assert_eq!(
        checker.push(3, "ual").text,
        "\n\nUsual",
        "no longer a prefix: released at once"
    );
}

#[test]
fn the_earliest_of_several_stop_strings_wins() {
    let (shown, finish) = run(rules(&[], &["world", "lo w"], 100), &[(1, "hello world")]);
    assert_eq!(shown, "hel");
    assert_eq!(finish, Some(FinishReason::StopString("lo w".into())));
}

#[test]
fn multibyte_stop_strings_are_held_on_character_boundaries() {
    let (shown, finish) = run(rules(&[], &["∞!"], 100), &[(1, "a∞"), (2, "b∞"), (3, "!c")]);
    assert_eq!(shown, "a∞b");
    assert_eq!(finish, Some(FinishReason::StopString("∞!".into())));
}

#[test]
fn the_budget_ends_with_length_and_releases_held_text() {
    let (shown, finish) = run(
        rules(&[], &["STOP"], 3),
        &[(1, "a"), (2, "b"), (3, "ST"), (4, "OP")],
    );
    assert_eq!(
        shown, "abST",
        "the held prefix is shown once the budget ends the stream"
    );
    assert_eq!(finish, Some(FinishReason::Length));
    assert_eq!(FinishReason::Length.as_openai(), "length");
}

#[test]
fn tokens_after_the_finish_are_ignored() {
    let mut checker = StopChecker::new(rules(&[9], &[], 10));
    assert!(checker.push(9, "").finish.is_some());
    assert_eq!(
        checker.push(1, "late"),
        StopStep {
            text: String::new(),
            finish: None
        }
    );
    assert_eq!(checker.generated(), 1);
}

#[test]
fn invalid_rules_are_named() {
    let many: Vec<String> = (0..5).map(|i| i.to_string()).collect();
    assert_eq!(
        StopRules::new(vec![], many, 1).unwrap_err().to_string(),
        "stop may hold at most 4 strings, got 5"
    );
    assert_eq!(
        StopRules::new(vec![], vec![String::new()], 1).unwrap_err(),
        StopError::EmptyString
    );
    assert_eq!(
        StopRules::new(vec![], vec![], 0).unwrap_err().to_string(),
        "max_tokens must be at least 1, got 0"
    );
}

//! One test per stop-string rule, streaming text through [`StopChecker`] as [`crate::engine::decode`]
//! does (its tests hold the stop-token and budget rules).

use super::*;

fn rules(strings: &[&str]) -> StopRules {
    StopRules::new(strings.iter().map(|s| s.to_string()).collect()).unwrap()
}

/// Feeds texts; returns the shown text and whether a stop string ended it.
fn run(rules: StopRules, texts: &[&str]) -> (String, bool) {
    let mut checker = StopChecker::new(rules);
    let mut shown = String::new();
    for text in texts {
        let step = checker.push(text);
        shown += &step.text;
        if step.stopped {
            return (shown, true);
        }
    }
    shown += &checker.flush();
    (shown, false)
}

#[test]
fn a_stop_string_inside_one_token_cuts_the_text_before_it() {
    let (shown, stopped) = run(rules(&["END"]), &["abc", "xENDy", "z"]);
    assert_eq!(shown, "abcx");
    assert!(stopped);
}

#[test]
fn a_stop_string_split_across_tokens_is_never_shown() {
    let mut checker = StopChecker::new(rules(&["\n\nUser:"]));
    assert_eq!(checker.push("Sure.").text, "Sure.");
    assert_eq!(
        checker.push("\n").text,
        "",
        "a possible start of the stop string is held back"
    );
    assert_eq!(checker.push("\nUs").text, "");
    let last = checker.push("er: hi");
    assert_eq!(last.text, "");
    assert!(last.stopped);
}

#[test]
fn held_text_is_released_when_the_stop_string_does_not_follow() {
    let mut checker = StopChecker::new(rules(&["\n\nUser:"]));
    assert_eq!(checker.push("a\n").text, "a");
    assert_eq!(checker.push("\nUs").text, "");
    assert_eq!(
        checker.push("ual").text,
        "\n\nUsual",
        "no longer a prefix: released at once"
    );
}

#[test]
fn the_earliest_of_several_stop_strings_wins() {
    let (shown, stopped) = run(rules(&["world", "lo w"]), &["hello world"]);
    assert_eq!(shown, "hel");
    assert!(stopped);
}

#[test]
fn multibyte_stop_strings_are_held_on_character_boundaries() {
    let (shown, stopped) = run(rules(&["∞!"]), &["a∞", "b∞", "!c"]);
    assert_eq!(shown, "a∞b");
    assert!(stopped);
}

#[test]
fn text_after_the_stop_is_ignored() {
    let mut checker = StopChecker::new(rules(&["x"]));
    assert!(checker.push("x").stopped);
    assert_eq!(
        checker.push("late"),
        StopStep {
            text: String::new(),
            stopped: false
        }
    );
}

#[test]
fn invalid_rules_are_named() {
    let many: Vec<String> = (0..5).map(|i| i.to_string()).collect();
    assert_eq!(
        StopRules::new(many).unwrap_err().to_string(),
        "stop may hold at most 4 strings, got 5"
    );
    assert_eq!(
        StopRules::new(vec![String::new()]).unwrap_err(),
        StopError::EmptyString
    );
}

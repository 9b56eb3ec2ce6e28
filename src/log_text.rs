//! Text from a request or a stored memory on its way into a log line. A client controls session
//! ids, imported memories and the errors that quote them; written raw, a newline in any of them
//! starts a log line of the client's choosing (log forging) and an escape sequence recolours an
//! operator's terminal. [`Escaped`] writes every control character as its Rust escape (`\n`,
//! `\u{1b}`), so one event stays one line whatever it carries.

use std::fmt::{self, Display, Write};

/// `value`'s text with control characters escaped: `tracing::info!(id = %Escaped(&id), …)`.
pub struct Escaped<T>(pub T);

impl<T: Display> Display for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.to_string().chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_break_a_line() {
        let hostile = "layout\nFORGED-LOG-LINE \r\u{1b}[31mred\u{0}\t\u{7f}\u{85}end";
        let written = Escaped(hostile).to_string();
        assert!(!written.chars().any(char::is_control), "{written}");
        assert_eq!(
            written,
            "layout\\nFORGED-LOG-LINE \\r\\u{1b}[31mred\\u{0}\\t\\u{7f}\\u{85}end"
        );
        assert_eq!(
            Escaped("plain text, ünïcode ✓").to_string(),
            "plain text, ünïcode ✓"
        );
        assert_eq!(Escaped(42).to_string(), "42");
    }
}

//! Splitting alert text into Discord-sized messages. Pure: no I/O, property-tested.
//!
//! Cuts fall after a newline, else after a space, else on a character boundary. A code
//! fence open at a cut is closed at the end of the part and reopened (with its info string)
//! at the start of the next, so every message renders on its own. The input's text is
//! carried unchanged: the parts' bodies, joined, are exactly the input.

use std::ops::Range;

/// Discord's limit for `content`, in characters.
pub const DISCORD_MESSAGE_LIMIT: usize = 2000;

/// What closes a fence that is open at a cut.
const FENCE_CLOSE: &str = "\n```";
/// A fence's info string longer than this is not repeated when the fence is reopened.
const MAX_REOPEN_INFO_CHARS: usize = 64;

/// Why content cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// The content is empty or only whitespace.
    #[error("Message content is empty")]
    Empty,
}

/// One message: `reopen` + the input's `body` range + `close`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The message as sent.
    pub text: String,
    /// The byte range of the input this message carries.
    pub body: Range<usize>,
}

/// Fence state while walking the input.
#[derive(Debug, Clone, Default)]
struct Fences {
    /// The opening line (e.g. "```rust") of the fence we are inside, if any.
    open: Option<String>,
    /// Whether the next character starts a line.
    at_line_start: bool,
}

impl Fences {
    fn reopen(&self) -> String {
        match &self.open {
            Some(line) if line.chars().count() <= MAX_REOPEN_INFO_CHARS + 3 => format!("{line}\n"),
            Some(_) => "```\n".to_owned(),
            None => String::new(),
        }
    }

    /// Walks `body` (which continues the input where the last body ended).
    fn advance(&mut self, body: &str) {
        for line in body.split_inclusive('\n') {
            if self.at_line_start {
                let trimmed = line.trim_start_matches([' ', '\t']);
                if trimmed.starts_with("```") {
                    self.open = match self.open {
                        Some(_) => None,
                        None => Some(trimmed.trim_end().to_owned()),
                    };
                }
            }
            self.at_line_start = line.ends_with('\n');
        }
    }
}

/// The byte length of the first `chars` characters of `text` (all of it when shorter).
fn prefix_len(text: &str, chars: usize) -> usize {
    text.char_indices()
        .nth(chars)
        .map_or(text.len(), |(index, _)| index)
}

/// Where to cut `window` (a prefix of the remaining text): after its last newline, else
/// after its last space, else at its end. Never returns 0 for a non-empty window.
fn cut_point(window: &str) -> usize {
    window
        .rfind('\n')
        .or_else(|| window.rfind(' '))
        .map_or(window.len(), |index| index + 1)
}

/// Splits `content` into messages of at most `limit` characters (`limit` ≥ 100).
pub fn split_message(content: &str, limit: usize) -> Result<Vec<Part>, SplitError> {
    if content.trim().is_empty() {
        return Err(SplitError::Empty);
    }
    let mut parts = Vec::new();
    let mut fences = Fences {
        open: None,
        at_line_start: true,
    };
    let mut start = 0;
    while start < content.len() {
        let rest = &content[start..];
        let reopen = fences.reopen();
        let reopen_chars = reopen.chars().count();
        let end = if reopen_chars + rest.chars().count() <= limit {
            content.len()
        } else {
            // Room for the reopened fence and, whatever the cut, a closing one.
            let room = limit - reopen_chars - FENCE_CLOSE.len();
            start + cut_point(&rest[..prefix_len(rest, room)])
        };
        let body = &content[start..end];
        fences.advance(body);
        let close = if fences.open.is_some() && end < content.len() {
            FENCE_CLOSE
        } else {
            ""
        };
        parts.push(Part {
            text: format!("{reopen}{body}{close}"),
            body: start..end,
        });
        start = end;
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn texts(parts: &[Part]) -> Vec<&str> {
        parts.iter().map(|p| p.text.as_str()).collect()
    }

    /// Fence lines per message, counted the way a reader (and Discord) sees them.
    fn fence_lines(text: &str) -> usize {
        text.lines()
            .filter(|l| l.trim_start_matches([' ', '\t']).starts_with("```"))
            .count()
    }

    #[test]
    fn short_content_is_one_unchanged_message() {
        let parts = split_message("disk almost full", 2000).unwrap();

        assert_eq!(texts(&parts), ["disk almost full"]);
    }

    #[test]
    fn empty_and_blank_content_are_refused() {
        for content in ["", "   ", "\n\t \n"] {
            let err = split_message(content, 2000).unwrap_err();

            assert_eq!(err.to_string(), "Message content is empty");
        }
    }

    #[test]
    fn cut_prefers_newline_then_space_then_any_character() {
        let lines = format!("{}\n{}", "a".repeat(150), "b".repeat(100));
        let words = format!("{} {}", "a".repeat(150), "b".repeat(100));
        let solid = "é".repeat(250);

        let by_line = split_message(&lines, 200).unwrap();
        let by_word = split_message(&words, 200).unwrap();
        let by_char = split_message(&solid, 200).unwrap();

        assert_eq!(by_line[0].text, format!("{}\n", "a".repeat(150)));
        assert_eq!(by_word[0].text, format!("{} ", "a".repeat(150)));
        assert_eq!(by_char[0].text.chars().count(), 196);
        assert_eq!(by_char[1].text, "é".repeat(54));
    }

    #[test]
    fn fence_open_at_a_cut_is_closed_and_reopened_with_its_language() {
        let code: String = (0..30).map(|i| format!("let x{i} = {i};\n")).collect();
        let content = format!("intro\n```rust\n{code}```\nafter");

        let parts = split_message(&content, 200).unwrap();

        assert!(parts.len() > 1);
        assert!(parts[0].text.ends_with("\n```"));
        assert!(parts[1].text.starts_with("```rust\n"));
        assert!(parts.iter().all(|p| fence_lines(&p.text).is_multiple_of(2)));
    }

    /// Lines of words (ASCII, multibyte, emoji), some of them fence lines.
    fn alert_text() -> impl Strategy<Value = String> {
        let word = prop_oneof![
            "[a-z]{1,12}",
            "[à-ÿ]{1,8}",
            "[🚀🔥✅]{1,3}",
            "[a-z]{200,400}",
            Just("@everyone".to_owned()),
        ];
        let line = prop_oneof![
            4 => prop::collection::vec(word, 0..16).prop_map(|w| w.join(" ")),
            1 => Just("```".to_owned()),
            1 => Just("```rust".to_owned()),
        ];
        prop::collection::vec(line, 1..60)
            .prop_map(|lines| lines.join("\n"))
            .prop_filter("not blank", |s| !s.trim().is_empty())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn every_part_fits_and_nothing_is_lost(content in alert_text(), limit in 100usize..2500) {
            let parts = split_message(&content, limit).unwrap();

            let joined: String = parts.iter().map(|p| &content[p.body.clone()]).collect();
            prop_assert_eq!(joined, content.clone());
            for part in &parts {
                prop_assert!(part.text.chars().count() <= limit);
                prop_assert!(!part.body.is_empty());
                prop_assert!(part.text.contains(&content[part.body.clone()]));
            }
        }

        #[test]
        fn fences_are_balanced_in_every_part_when_the_input_is(content in alert_text()) {
            let parts = split_message(&content, 300).unwrap();

            let (_, all_but_last) = parts.split_last().unwrap();
            for part in all_but_last {
                prop_assert_eq!(fence_lines(&part.text) % 2, 0, "{:?}", part.text);
            }
            if fence_lines(&content).is_multiple_of(2) {
                prop_assert_eq!(fence_lines(&parts.last().unwrap().text) % 2, 0);
            }
        }

        #[test]
        fn any_text_is_split_on_char_boundaries(content in "\\PC{1,3000}") {
            prop_assume!(!content.trim().is_empty());

            let parts = split_message(&content, 150).unwrap();

            prop_assert!(parts.iter().all(|p| p.text.chars().count() <= 150));
            let joined: String = parts.iter().map(|p| &content[p.body.clone()]).collect();
            prop_assert_eq!(joined, content);
        }
    }
}

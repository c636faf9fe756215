//! Python's `json.loads` (which FastAPI used) accepts `NaN`, `Infinity`, `-Infinity` and
//! numbers beyond f64's range (read as infinity); serde_json refuses all of them. So that
//! such bodies get the original's validation error (`finite_number`) instead of
//! `json_invalid`, a body serde_json refuses is re-read with those tokens replaced by
//! marker strings, which validation recognises.
//!
//! A marker is the token itself behind one DEL character (`"\u{7f}NaN"`): at most 3 bytes
//! more than the token, so a marked text is at most 1.75× the body (`NaN,` → `"␡NaN",`).
//! Markers are looked for only in a text that was marked, and only a string that is DEL
//! followed by exactly such a token counts as one.

use std::borrow::Cow;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// The character a marker starts with. It is stripped before storage, so no stored value
/// reads as a marker.
const MARKER: char = '\u{7f}';

/// Parses like Python's `json.loads` into a tree: the reference reading, for tests and
/// fuzz targets (requests are read without a tree: see [`check`] and `domain::Body`).
pub fn parse(body: &[u8]) -> Result<Value, serde_json::Error> {
    serde_json::from_slice(body).or_else(|err| match mark_non_finite(body) {
        Some(rewritten) => serde_json::from_slice(&rewritten).map_err(|_| err),
        None => Err(err),
    })
}

/// Whether `body` is JSON exactly as [`parse`] reads it (the same error for the same body,
/// nesting and lone surrogates included), found without building a tree: every value is
/// visited and dropped. `Ok(true)` when the body holds non-finite tokens, which
/// [`marked`] then marks.
pub fn check(body: &[u8]) -> Result<bool, serde_json::Error> {
    // Skipping (`IgnoredAny`) is the fast check, but it neither counts nesting nor pairs
    // surrogate escapes, and may stop at another error than `Value` would: a body that may
    // hold either, or that it refuses, is visited value by value for the exact answer.
    let visit = |bytes: &[u8]| {
        let skipped = serde_json::from_slice::<IgnoredAny>(bytes);
        if skipped.is_err() || may_need_a_full_visit(bytes) {
            return serde_json::from_slice::<Skip>(bytes).map(drop);
        }
        Ok(())
    };
    match visit(body) {
        Ok(()) => Ok(false),
        Err(err) => match mark_non_finite(body) {
            Some(rewritten) => visit(&rewritten).map(|()| true).map_err(|_| err),
            None => Err(err),
        },
    }
}

/// Most nesting `Value` takes (serde_json's recursion limit).
const MAX_NESTING: usize = 128;

/// Whether `text` may be one that skipping accepts but `Value` does not read as it is:
/// nesting deeper than `Value` takes, a surrogate escape (`\uD800`–`\uDFFF`, refused
/// unpaired), or a number beyond f64's range (skipping does not parse numbers). One byte
/// scan, erring on the side of a full visit.
fn may_need_a_full_visit(text: &[u8]) -> bool {
    let mut depth = 0usize;
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'"' => {
                i += 1;
                loop {
                    let Some(at) = text[i..].iter().position(|&b| b == b'"' || b == b'\\') else {
                        return true;
                    };
                    i += at;
                    if text[i] == b'"' {
                        break;
                    }
                    let surrogate = text.get(i + 1) == Some(&b'u')
                        && text
                            .get(i + 2)
                            .is_some_and(|b| b.eq_ignore_ascii_case(&b'd'))
                        && text
                            .get(i + 3)
                            .is_some_and(|b| matches!(b, b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F'));
                    if surrogate {
                        return true;
                    }
                    i += 2;
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth >= MAX_NESTING {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'-' | b'0'..=b'9' => {
                let len = number_len(&text[i..]);
                let token = &text[i..i + len];
                // Only an exponent or a long run of digits can leave f64's range.
                let may_overflow = len > 15 || token.iter().any(|b| matches!(b, b'e' | b'E'));
                if may_overflow && as_f64(token).is_none_or(f64::is_infinite) {
                    return true;
                }
                i += len;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    false
}

/// The text to read a checked body from: the body itself, or, when [`check`] found
/// non-finite tokens, the body with them marked.
pub fn marked(body: &[u8], has_non_finite: bool) -> Cow<'_, [u8]> {
    match has_non_finite.then(|| mark_non_finite(body)).flatten() {
        Some(rewritten) => Cow::Owned(rewritten),
        None => Cow::Borrowed(body),
    }
}

/// Whether a JSON text's first token (after JSON's whitespace) opens an object. serde's
/// derived struct readers also take an array, with the fields by position, which FastAPI
/// refuses: a reader that skips the `Value` tree must look here first.
pub fn is_object_text(text: &[u8]) -> bool {
    first_byte(text) == Some(b'{')
}

/// The first byte of a JSON text after JSON's whitespace.
pub fn first_byte(text: &[u8]) -> Option<u8> {
    text.iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .copied()
}

/// The original token (`NaN`, `Infinity`, `1e999`, …) when `value` is a marker.
pub fn non_finite_token(value: &Value) -> Option<&str> {
    non_finite_str(value.as_str()?)
}

/// The original token when the string `text` is a marker.
pub fn non_finite_str(text: &str) -> Option<&str> {
    text.strip_prefix(MARKER)
        .filter(|token| is_non_finite(token))
}

fn is_non_finite(token: &str) -> bool {
    matches!(token, "NaN" | "Infinity" | "-Infinity")
        || (number_len(token.as_bytes()) == token.len()
            && as_f64(token.as_bytes()).is_some_and(f64::is_infinite))
}

/// The length of the number-like token (digits, signs, `.`, exponents) `text` starts with.
pub(crate) fn number_len(text: &[u8]) -> usize {
    text.iter()
        .take_while(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
        .count()
}

/// A number token as f64 (an overflowing one reads as an infinity, as in Python).
fn as_f64(token: &[u8]) -> Option<f64> {
    std::str::from_utf8(token).ok()?.parse().ok()
}

/// The text with non-finite tokens outside strings replaced by markers; None if it has none.
/// Sized exactly before it is written (a first pass counts), so it never holds more than
/// the marked text.
fn mark_non_finite(body: &[u8]) -> Option<Vec<u8>> {
    let mut len = 0;
    let found = rewrite(body, |piece| len += piece.len());
    if !found {
        return None;
    }
    let mut out = Vec::with_capacity(len);
    rewrite(body, |piece| out.extend_from_slice(piece));
    Some(out)
}

/// Hands the pieces of the marked text to `emit`; whether any token was marked.
fn rewrite(body: &[u8], mut emit: impl FnMut(&[u8])) -> bool {
    let mut found = false;
    let marker = |token: &[u8], emit: &mut dyn FnMut(&[u8])| {
        // `"`, then DEL (one byte in UTF-8), the token and the closing quote.
        emit(b"\"\x7f");
        emit(token);
        emit(b"\"");
    };
    let mut i = 0;
    while i < body.len() {
        let rest = &body[i..];
        let token_len = if rest[0] == b'"' {
            string_len(rest)
        } else if let Some(len) = ["NaN", "Infinity", "-Infinity"]
            .iter()
            .find(|t| rest.starts_with(t.as_bytes()))
            .map(|t| t.len())
        {
            marker(&rest[..len], &mut emit);
            found = true;
            i += len;
            continue;
        } else if rest[0] == b'-' || rest[0].is_ascii_digit() {
            let len = number_len(rest);
            if as_f64(&rest[..len]).is_some_and(f64::is_infinite) {
                marker(&rest[..len], &mut emit);
                found = true;
                i += len;
                continue;
            }
            len
        } else {
            1
        };
        emit(&rest[..token_len]);
        i += token_len;
    }
    found
}

/// Length of the string literal at the start of `text`, quotes included (or all of it).
fn string_len(text: &[u8]) -> usize {
    let mut i = 1;
    while i < text.len() {
        match text[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    text.len()
}

/// Any JSON value, visited the way `Value` is read (so with the same errors) and dropped.
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(Skip)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = Skip;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_unit<E>(self) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_key::<Skip>()?.is_some() {
            map.next_value::<Skip>()?;
        }
        Ok(Skip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn python_literals_and_overflowing_numbers_become_markers() {
        let value =
            parse(br#"{"a": NaN, "b": [Infinity, -Infinity], "c": 1e999, "d": 1.5}"#).unwrap();

        assert_eq!(non_finite_token(&value["a"]), Some("NaN"));
        assert_eq!(non_finite_token(&value["b"][1]), Some("-Infinity"));
        assert_eq!(non_finite_token(&value["c"]), Some("1e999"));
        assert_eq!(value["d"], json!(1.5));
    }

    #[test]
    fn tokens_inside_strings_are_left_alone() {
        let value = parse(br#"{"a": "NaN \" Infinity", "b": NaN}"#).unwrap();

        assert_eq!(value["a"], json!("NaN \" Infinity"));
        assert_eq!(non_finite_token(&value["a"]), None);
    }

    #[test]
    fn other_syntax_errors_keep_serde_jsons_error() {
        let err = parse(br#"{"a": NaN,,}"#).unwrap_err();

        assert_eq!(err.column(), 7);
    }

    #[test]
    fn a_marked_text_is_at_most_seven_quarters_of_the_body() {
        let body = format!("[{}NaN]", "NaN,".repeat(1000));

        let marked = marked(body.as_bytes(), true);

        assert!(marked.len() * 4 <= body.len() * 7, "{} bytes", marked.len());
        assert!(check(body.as_bytes()).unwrap());
    }

    #[test]
    fn check_refuses_exactly_what_parse_refuses() {
        let nested = |depth| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let (deep, at_the_limit, past_it) = (nested(200), nested(128), nested(129));
        for body in [
            deep.as_str(),
            at_the_limit.as_str(),
            past_it.as_str(),
            r#"{"a": "\uD83D\ude00", "b": "\ud83d"}"#,
            r#"{"a": "[[[[\"", "b": "\\ud800"}"#,
            r#"{"a": "\ud800"}"#,
            r#"{"a": NaN,,}"#,
            r#"{"a": 1} x"#,
            r#"{"a": [1, 2, NaN, 1e999]}"#,
            r#"{"a": "x"}"#,
            r#"{"a": 1e309, "b": [-1E400]}"#,
            "[1000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000]",
        ] {
            let as_is = serde_json::from_slice::<Value>(body.as_bytes()).is_ok();
            let parsed = parse(body.as_bytes())
                .map(|_| !as_is)
                .map_err(|e| e.to_string());
            let checked = check(body.as_bytes()).map_err(|e| e.to_string());
            assert_eq!(checked, parsed, "{body}");
        }
    }

    proptest::proptest! {
        /// On texts of brackets, strings with escapes (surrogates paired, lone, escaped
        /// backslashes), Python's tokens and junk, nested up to past the limit.
        #[test]
        fn check_answers_what_parse_answers(pieces in proptest::collection::vec(
            proptest::sample::select(vec![
                "[", "]", "{\"k\":", "}", ",", "1", "NaN", "1e999", "\"x\"", "\"[{\"",
                "\"\\ud800\"", "\"\\uD83D\\ude00\"", "\"\\\\ud800\"", "\"\\\"[\"", " ",
                "1e308", "-2E400", "1.5e-400", "12345678901234567890", "tru", "true",
            ]),
            0..300,
        ), nest in 0usize..140) {
            let body = format!("{}{}{}", "[".repeat(nest), pieces.concat(), "]".repeat(nest));
            // Ok(true) exactly when the tree needs markers: a body read as it is, or not.
            let as_is = serde_json::from_slice::<Value>(body.as_bytes()).is_ok();
            let parsed = parse(body.as_bytes()).map(|_| !as_is).map_err(|e| e.to_string());
            let checked = check(body.as_bytes()).map_err(|e| e.to_string());
            proptest::prop_assert_eq!(checked, parsed, "{}", body);
        }
    }

    #[test]
    fn only_a_whole_token_behind_the_marker_counts() {
        assert_eq!(non_finite_str("\u{7f}NaN"), Some("NaN"));
        assert_eq!(non_finite_str("\u{7f}1e999"), Some("1e999"));
        assert_eq!(non_finite_str("\u{7f}NaNx"), None);
        assert_eq!(non_finite_str("\u{7f}12"), None);
        assert_eq!(non_finite_str("NaN"), None);
    }
}

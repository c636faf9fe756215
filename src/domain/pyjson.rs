//! Python's `json.loads` (which FastAPI used) accepts `NaN`, `Infinity`, `-Infinity` and
//! numbers beyond f64's range (read as infinity); serde_json refuses all of them. So that
//! such bodies get the original's validation error (`finite_number`) instead of
//! `json_invalid`, a body serde_json refuses is re-read with those tokens replaced by
//! marker strings, which validation recognises.

use serde::de::IgnoredAny;
use serde_json::Value;

/// Prefix of the marker string standing for a non-finite number. U+0000 cannot survive
/// into storage (it is stripped), so no stored value is ever mistaken for a marker.
const MARKER: &str = "\u{0}non-finite:";

/// Parses like Python's `json.loads`; the error is serde_json's for the original text.
pub fn parse(body: &[u8]) -> Result<Value, serde_json::Error> {
    serde_json::from_slice(body).or_else(|err| match mark_non_finite(body) {
        Some(rewritten) => serde_json::from_slice(&rewritten).map_err(|_| err),
        None => Err(err),
    })
}

/// Whether `body` is JSON as [`parse`] reads it, checked without building a tree (so a
/// request is refused for bad syntax before it is authenticated, at the cost of a walk).
/// Strings are not checked for UTF-8 here, nor nesting depth: [`parse`] still refuses those.
pub fn check(body: &[u8]) -> Result<(), serde_json::Error> {
    let ignore = |bytes: &[u8]| serde_json::from_slice::<IgnoredAny>(bytes).map(drop);
    ignore(body).or_else(|err| match mark_non_finite(body) {
        Some(rewritten) => ignore(&rewritten).map_err(|_| err),
        None => Err(err),
    })
}

/// Whether a JSON text's first token (after JSON's whitespace) opens an object. serde's
/// derived struct readers also take an array, with the fields by position, which FastAPI
/// refuses: a reader that skips the `Value` tree must look here first.
pub fn is_object_text(text: &[u8]) -> bool {
    text.iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .is_some_and(|&b| b == b'{')
}

/// The original token (`NaN`, `Infinity`, `1e999`, …) when `value` is a marker.
pub fn non_finite_token(value: &Value) -> Option<&str> {
    value.as_str()?.strip_prefix(MARKER)
}

/// The text with non-finite tokens outside strings replaced by markers; None if it has none.
fn mark_non_finite(body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len() + 32);
    let mut found = false;
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
            push_marker(&mut out, &rest[..len]);
            found = true;
            i += len;
            continue;
        } else if rest[0] == b'-' || rest[0].is_ascii_digit() {
            let len = rest
                .iter()
                .take_while(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
                .count();
            let token = std::str::from_utf8(&rest[..len]).unwrap_or_default();
            if token.parse::<f64>().is_ok_and(f64::is_infinite) {
                push_marker(&mut out, &rest[..len]);
                found = true;
                i += len;
                continue;
            }
            len
        } else {
            1
        };
        out.extend_from_slice(&rest[..token_len]);
        i += token_len;
    }
    found.then_some(out)
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

fn push_marker(out: &mut Vec<u8>, token: &[u8]) {
    out.extend_from_slice(b"\"\\u0000non-finite:");
    out.extend_from_slice(token);
    out.push(b'"');
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
}

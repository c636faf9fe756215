//! The `input` a validation error echoes, built from the raw text of the offending value
//! and cut as an answer shows it (`FieldError`'s limits) before anything is copied: an
//! error about a 16 MiB value costs about a kilobyte, never a copy of the value.

use serde_json::Value;
use serde_json::value::RawValue;

use super::compact::{self, Keys, Stop, Style};
use super::field_error::{Input, MAX_INPUT_BYTES};
use super::pyjson;
use super::reader::{self, Kind, Text};

/// The echo of the raw JSON value `raw` of a body (`marked`: its non-finite tokens are
/// markers, echoed as their token), without the outermost object's `hidden` key.
pub(crate) fn echo(raw: &str, marked: bool, hidden: Option<&'static str>) -> Input {
    match reader::kind(raw) {
        Kind::String => match serde_json::from_str::<Text<'_>>(raw) {
            Ok(Text(text)) => match marked.then(|| pyjson::non_finite_str(&text)).flatten() {
                Some(token) => Value::String(token.to_owned()).into(),
                None => echo_string(&text),
            },
            Err(_) => Value::Null.into(),
        },
        Kind::Object | Kind::Array => {
            let style = Style {
                strip: false,
                keys: Keys::Merged,
                max_len: MAX_INPUT_BYTES,
                hidden_key: hidden,
            };
            match compact::write(raw, style, 0) {
                // The text itself, not a tree: `[[[…]]]` would cost ~300 bytes a level.
                Ok(text) => RawValue::from_string(text).map_or(Value::Null.into(), Input::Raw),
                Err(Stop::TooLong(start)) => {
                    Value::String(format!("{}…", valid_start(&start))).into()
                }
                Err(Stop::Json(_)) => Value::Null.into(),
            }
        }
        Kind::Number | Kind::Other => serde_json::from_str::<Value>(raw)
            .unwrap_or(Value::Null)
            .into(),
    }
}

/// A string echoed as an answer shows it: cut to [`MAX_INPUT_BYTES`] (as `cut` does),
/// copying only what is shown.
pub(crate) fn echo_string(text: &str) -> Input {
    if text.len() <= MAX_INPUT_BYTES {
        return Value::String(text.to_owned()).into();
    }
    let shown = format!("{}…", &text[..text.floor_char_boundary(MAX_INPUT_BYTES)]);
    Value::String(shown).into()
}

/// The longest UTF-8 start of `bytes`.
fn valid_start(bytes: &[u8]) -> &str {
    match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(err) => std::str::from_utf8(&bytes[..err.valid_up_to()]).expect("valid up to there"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::field_error::cut;
    use serde_json::json;

    #[test]
    fn a_large_value_is_echoed_as_the_start_of_its_text() {
        let raw = format!("[{}0]", "0, ".repeat(100_000));

        let Input::Value(Value::String(start)) = echo(&raw, false, None) else {
            panic!("a string")
        };

        assert!(start.starts_with("[0,0,0,") && start.ends_with('…'));
        assert_eq!(start.len(), MAX_INPUT_BYTES + '…'.len_utf8());
    }

    #[test]
    fn small_values_are_echoed_whole_markers_as_their_token() {
        assert_eq!(
            echo(r#" {"a": [1, "x"]} "#, false, None),
            Input::from(json!({"a": [1, "x"]}))
        );
        assert_eq!(echo("\"\u{7f}NaN\"", true, None), Input::from(json!("NaN")));
        assert_eq!(
            echo("\"\u{7f}NaN\"", false, None),
            Input::from(json!("\u{7f}NaN"))
        );
        assert_eq!(echo("12.5", false, None), Input::from(json!(12.5)));
        assert_eq!(
            echo(r#"{"token": "secret", "a": 1}"#, false, Some("token")),
            Input::from(json!({"a": 1}))
        );
    }

    #[test]
    fn a_long_string_is_cut_as_an_answer_cuts_it() {
        let long = "é".repeat(5000);

        let echoed = echo(&serde_json::to_string(&long).unwrap(), false, None);

        let mut expected = long.clone();
        cut(&mut expected, MAX_INPUT_BYTES);
        assert_eq!(echoed.to_value(), Value::String(expected));
    }
}

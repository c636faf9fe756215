//! Control-character stripping: PostgreSQL's JSONB cannot hold U+0000, and the other C0
//! controls (bar tab, LF, CR) and DEL are never meaningful in analytics data.

use serde_json::{Map, Value};

fn is_stripped(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{8}' | '\u{b}' | '\u{c}' | '\u{e}'..='\u{1f}' | '\u{7f}')
}

/// `text` without U+0000–U+0008, U+000B, U+000C, U+000E–U+001F and U+007F.
pub fn strip_control_chars(text: &str) -> String {
    if text.chars().any(is_stripped) {
        text.chars().filter(|c| !is_stripped(*c)).collect()
    } else {
        text.to_owned()
    }
}

/// A copy of `value` with the same stripping applied to every string, object keys included.
/// (Built straight from the borrowed body, so the data is copied once.)
pub fn strip_control_chars_in_json(value: &Value) -> Value {
    match value {
        Value::String(s) => Value::String(strip_control_chars(s)),
        Value::Array(items) => {
            Value::Array(items.iter().map(strip_control_chars_in_json).collect())
        }
        Value::Object(map) => Value::Object(strip_control_chars_in_map(map)),
        other => other.clone(),
    }
}

/// [`strip_control_chars_in_json`] for an object.
pub fn strip_control_chars_in_map(map: &Map<String, Value>) -> Map<String, Value> {
    map.iter()
        .map(|(k, v)| (strip_control_chars(k), strip_control_chars_in_json(v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strips_controls_but_keeps_tab_newline_and_carriage_return() {
        assert_eq!(
            strip_control_chars("a\u{0}b\u{1f}c\u{7f}\t\n\r"),
            "abc\t\n\r"
        );
    }

    #[test]
    fn strips_inside_nested_values_and_keys() {
        let dirty = json!({"k\u{0}ey": ["x\u{1}", {"n\u{8}": "v\u{b}"}], "n": 1});

        let clean = strip_control_chars_in_json(&dirty);

        assert_eq!(clean, json!({"key": ["x", {"n": "v"}], "n": 1}));
    }
}

//! Control-character stripping: PostgreSQL's JSONB cannot hold U+0000, and the other C0
//! controls (bar tab, LF, CR) and DEL are never meaningful in analytics data.

use std::borrow::Cow;

use serde_json::{Map, Value};

fn is_stripped(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{8}' | '\u{b}' | '\u{c}' | '\u{e}'..='\u{1f}' | '\u{7f}')
}

/// `text` without U+0000–U+0008, U+000B, U+000C, U+000E–U+001F and U+007F.
pub fn strip_control_chars(text: &str) -> String {
    stripped(text).into_owned()
}

/// [`strip_control_chars`] without a copy when there is nothing to strip.
pub(crate) fn stripped(text: &str) -> Cow<'_, str> {
    if text.chars().any(is_stripped) {
        Cow::Owned(text.chars().filter(|c| !is_stripped(*c)).collect())
    } else {
        Cow::Borrowed(text)
    }
}

/// [`strip_control_chars`] of a string read from a body, in place when it is owned.
pub(crate) fn into_stripped(text: Cow<'_, str>) -> String {
    match text {
        Cow::Borrowed(text) => strip_control_chars(text),
        Cow::Owned(mut text) => {
            text.retain(|c| !is_stripped(c));
            text
        }
    }
}

/// Applies the same stripping to every string in `value`, object keys included, in place:
/// only strings that hold a stripped character are rewritten.
pub fn strip_control_chars_in_json(value: &mut Value) {
    match value {
        Value::String(text) if text.chars().any(is_stripped) => {
            text.retain(|c| !is_stripped(c));
        }
        Value::Array(items) => items.iter_mut().for_each(strip_control_chars_in_json),
        Value::Object(map) => strip_control_chars_in_map(map),
        _ => {}
    }
}

/// [`strip_control_chars_in_json`] for an object; the map is rebuilt only when one of its
/// keys holds a stripped character.
pub fn strip_control_chars_in_map(map: &mut Map<String, Value>) {
    if map.keys().any(|key| key.chars().any(is_stripped)) {
        let mut rebuilt = Map::with_capacity(map.len());
        for (key, mut value) in std::mem::take(map) {
            strip_control_chars_in_json(&mut value);
            rebuilt.insert(strip_control_chars(&key), value);
        }
        *map = rebuilt;
    } else {
        map.values_mut().for_each(strip_control_chars_in_json);
    }
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

        let mut clean = dirty;
        strip_control_chars_in_json(&mut clean);

        assert_eq!(clean, json!({"key": ["x", {"n": "v"}], "n": 1}));
    }
}

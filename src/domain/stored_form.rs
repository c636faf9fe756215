//! Whether a JSON text can be stored exactly as it arrived.
//!
//! The general path parses `data` into a `Value` tree, strips control characters and writes
//! it back compactly; for the ~300-byte events browsers send that was the largest share of
//! the service's CPU per request. Browsers send `JSON.stringify` output, which is almost
//! always already that compact form, so a text that provably is goes to the database as
//! it is. Anything this check cannot vouch for takes the general path: `false` only means
//! "not sure", never "invalid".

/// Deepest nesting vouched for; serde_json refuses a `Value` deeper than 128 levels, and
/// that refusal must keep coming from the general path.
const MAX_DEPTH: usize = 100;

/// Most keys per object vouched for: duplicate keys are looked for pairwise.
const MAX_KEYS: usize = 64;

/// True when `text`, a JSON text serde_json accepted, is exactly what the general path
/// stores for it: `serde_json::to_string` of its `Value` with control characters stripped.
///
/// That holds when the text has no whitespace between tokens, no escapes (so no string
/// needs unescaping, and a stripped control character could only appear escaped), no DEL,
/// no duplicate keys (the `Value` keeps only the last), and only numbers that serde_json
/// writes back digit for digit (`1.5` but not `1.50`, `-0` or `1e3`).
pub fn is_stored_form(text: &str) -> bool {
    let bytes = text.as_bytes();
    if bytes.iter().any(|&b| b == b'\\' || b == 0x7f) {
        return false;
    }
    let mut open: Vec<Container> = Vec::new();
    // Keys of every object in `open`, each object's from its `keys_from`.
    let mut keys: Vec<&[u8]> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // With no backslash in the text, the next quote closes the string.
                let Some(len) = bytes[i + 1..].iter().position(|&b| b == b'"') else {
                    return false;
                };
                let string = &bytes[i + 1..i + 1 + len];
                if let Some(Container::Object {
                    keys_from,
                    expects_key: expects_key @ true,
                }) = open.last_mut()
                {
                    let siblings = &keys[*keys_from..];
                    if siblings.len() >= MAX_KEYS || siblings.contains(&string) {
                        return false;
                    }
                    keys.push(string);
                    *expects_key = false;
                }
                i += len + 2;
            }
            b'{' | b'[' => {
                open.push(if bytes[i] == b'{' {
                    Container::Object {
                        keys_from: keys.len(),
                        expects_key: true,
                    }
                } else {
                    Container::Array
                });
                if open.len() > MAX_DEPTH {
                    return false;
                }
                i += 1;
            }
            b'}' | b']' => {
                if let Some(Container::Object { keys_from, .. }) = open.pop() {
                    keys.truncate(keys_from);
                }
                i += 1;
            }
            b',' => {
                if let Some(Container::Object { expects_key, .. }) = open.last_mut() {
                    *expects_key = true;
                }
                i += 1;
            }
            b':' => i += 1,
            b't' | b'n' => i += 4,
            b'f' => i += 5,
            b'-' | b'0'..=b'9' => {
                let len = super::pyjson::number_len(&bytes[i..]);
                if !is_written_back_as_is(&text[i..i + len]) {
                    return false;
                }
                i += len;
            }
            // Whitespace between tokens (or anything unexpected).
            _ => return false,
        }
    }
    open.is_empty()
}

enum Container {
    Array,
    Object {
        /// Where this object's keys start in the shared key list.
        keys_from: usize,
        /// The next string is a key (after `{` or `,`), not a value.
        expects_key: bool,
    },
}

/// True when serde_json reads `number` and writes back the same text: an integer within
/// i64/u64 (kept exact) other than `-0`, or a float that zmij, serde_json's float writer,
/// prints the same way.
fn is_written_back_as_is(number: &str) -> bool {
    if number.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        number != "-0" && (number.parse::<u64>().is_ok() || number.parse::<i64>().is_ok())
    } else {
        number.parse::<f64>().is_ok_and(|float| {
            float.is_finite() && zmij::Buffer::new().format_finite(float) == number
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    /// What the general path stores for `text`.
    fn stored(text: &str) -> String {
        let mut value: Value = serde_json::from_str(text).unwrap();
        crate::domain::strip_control_chars_in_json(&mut value);
        serde_json::to_string(&value).unwrap()
    }

    #[test]
    fn a_typical_browser_event_is_stored_as_it_is() {
        let data = r#"{"page":"/build","referrer":"/marketplace/agent/42","session":{"id":"b7e2c9d4","step":3,"started_at":"2026-11-22T10:15:30Z"},"viewport":{"w":1920,"h":1080,"dpr":2.5},"tags":["a","b"],"flags":{"beta":true,"dark_mode":false,"x":null},"durations_ms":[120,-87,0,15],"é":"ünï"}"#;

        assert!(is_stored_form(data));
        assert_eq!(stored(data), data);
    }

    #[test]
    fn texts_the_general_path_would_rewrite_are_not_vouched_for() {
        for text in [
            r#"{"a": 1}"#,
            r#"{"a":1,"a":2}"#,
            r#"{"a":{"b":1,"b":1}}"#,
            r#"{"a":"x\u0001"}"#,
            r#"{"a":"\/"}"#,
            "{\"a\":\"x\u{7f}\"}",
            r#"{"a":1.50}"#,
            r#"{"a":-0}"#,
            r#"{"a":1e3}"#,
            r#"{"a":1E3}"#,
            r#"{"a":18446744073709551616}"#,
            r#"{"a":1e400}"#,
            "[\n]",
        ] {
            assert!(!is_stored_form(text), "{text}");
        }
    }

    #[test]
    fn the_same_key_in_sibling_and_nested_objects_is_not_a_duplicate() {
        let text = r#"{"a":{"a":1},"b":[{"a":1},{"a":2}],"c":{"a":{"a":[]}}}"#;

        assert!(is_stored_form(text));
    }

    #[test]
    fn nesting_deeper_than_vouched_for_takes_the_general_path() {
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));

        assert!(!is_stored_form(&deep));
    }

    fn json_text() -> impl Strategy<Value = String> {
        let number = prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| f.to_string()),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| serde_json::to_string(&f).unwrap()),
            "-?[0-9]{1,3}(\\.[0-9]{1,3})?([eE][-+]?[0-9]{1,3})?",
        ];
        let string = prop_oneof![
            "[a-zé ]{0,4}".prop_map(|s| format!("\"{s}\"")),
            Just("\"\\u0001\"".to_owned()),
            Just("\"\\n\"".to_owned()),
            Just("\"\u{7f}\"".to_owned()),
        ];
        let leaf = prop_oneof![
            number,
            string.clone(),
            Just("true".to_owned()),
            Just("null".to_owned())
        ];
        leaf.prop_recursive(4, 32, 4, move |inner| {
            let space = prop_oneof![Just(""), Just(" ")];
            prop_oneof![
                (prop::collection::vec(inner.clone(), 0..4), space.clone())
                    .prop_map(|(items, sep)| format!("[{}]", items.join(&format!(",{sep}")))),
                (prop::collection::vec(("[ab]{1}", inner), 0..4), space).prop_map(
                    |(fields, sep)| {
                        let fields: Vec<String> = fields
                            .into_iter()
                            .map(|(k, v)| format!("\"{k}\":{sep}{v}"))
                            .collect();
                        format!("{{{}}}", fields.join(","))
                    }
                ),
            ]
        })
    }

    proptest! {
        #[test]
        fn a_vouched_for_text_is_what_the_general_path_stores(text in json_text()) {
            prop_assume!(serde_json::from_str::<Value>(&text).is_ok());
            if is_stored_form(&text) {
                prop_assert_eq!(stored(&text), text);
            }
        }

        #[test]
        fn what_the_general_path_stores_is_vouched_for(text in json_text()) {
            // Its own output has no duplicates, whitespace or odd numbers, so only an escape
            // (a control character or quote in a string) may send it the general way.
            prop_assume!(serde_json::from_str::<Value>(&text).is_ok());
            let compact = stored(&text);
            prop_assert!(is_stored_form(&compact) || compact.contains('\\'), "{}", compact);
        }
    }
}

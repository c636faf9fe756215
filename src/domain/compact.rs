//! Writes a JSON text out compactly in one streaming pass, without a tree: `data`'s stored
//! form (control characters stripped, repeated keys merged as a `Value` tree would merge
//! them) and the start of an echoed `input`. The output is capped: writing stops as soon as
//! it would pass `max_len`, so what this builds is bounded whatever the text holds.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::reader::Text;
use super::sanitize::stripped;

/// How to write.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Style {
    /// Strip control characters from strings and keys (the stored form).
    pub strip: bool,
    /// What becomes of an object's keys.
    pub keys: Keys,
    /// Most bytes written; past it the writing stops with [`Stop::TooLong`].
    pub max_len: usize,
    /// A key of the outermost object left out (a beacon's `token`).
    pub hidden_key: Option<&'static str>,
}

/// What becomes of an object's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keys {
    /// Written as sent (tests: a capped write is then the start of the whole).
    #[cfg(test)]
    AsSent,
    /// Repeated keys merged: the first key's place, the last key's value (as `Value`).
    Merged,
    /// Sorted (by the keys' text, unescaped), for a text whose keys do not repeat.
    Sorted,
}

/// Why writing stopped.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The output would pass `max_len`; what was written so far is kept.
    TooLong(Vec<u8>),
    /// The text is not JSON (callers pass checked text, so this is defensive).
    Json(serde_json::Error),
}

/// `raw` (a JSON text) written compactly in `style`, starting with room for `capacity`.
pub(crate) fn write(raw: &str, style: Style, capacity: usize) -> Result<String, Stop> {
    let mut writer = Writer {
        out: Vec::with_capacity(capacity.min(style.max_len)),
        style,
        too_long: false,
    };
    let mut deserializer = serde_json::Deserializer::from_str(raw);
    let written = Node {
        writer: &mut writer,
        outermost: true,
        after_comma: false,
    }
    .deserialize(&mut deserializer)
    .and_then(|()| deserializer.end());
    match written {
        Ok(()) => Ok(String::from_utf8(writer.out).expect("only UTF-8 is written")),
        Err(_) if writer.too_long => Err(Stop::TooLong(writer.out)),
        Err(err) => Err(Stop::Json(err)),
    }
}

/// A stored `data` text (keys unique: see `NewAnalyticsEvent`) with every object's keys
/// sorted, written without a tree: what the `Idempotency-Key` body hash reads.
pub fn sorted_json(stored: &str) -> String {
    let style = Style {
        strip: false,
        keys: Keys::Sorted,
        max_len: usize::MAX,
        hidden_key: None,
    };
    match write(stored, style, stored.len()) {
        Ok(sorted) => sorted,
        Err(_) => unreachable!("a stored data text is JSON and the writing is not capped"),
    }
}

struct Writer {
    out: Vec<u8>,
    style: Style,
    too_long: bool,
}

impl Writer {
    /// Makes room for `extra` more bytes, growing as a `Vec` does (doubling) but never past
    /// the cap: the buffer is then at most the cap, not twice it.
    fn make_room(&mut self, extra: usize) {
        let needed = self.out.len() + extra;
        if needed > self.out.capacity() {
            let grown = (self.out.capacity() * 2)
                .min(self.style.max_len)
                .max(needed);
            self.out.reserve_exact(grown - self.out.len());
        }
    }

    /// Appends `bytes`, or stops the writing when they would pass the cap (keeping what fits).
    fn push<E: de::Error>(&mut self, bytes: &[u8]) -> Result<(), E> {
        let room = self.style.max_len - self.out.len();
        self.make_room(bytes.len().min(room));
        if bytes.len() > room {
            self.out.extend_from_slice(&bytes[..room]);
            self.too_long = true;
            return Err(E::custom("output longer than its cap"));
        }
        self.out.extend_from_slice(bytes);
        Ok(())
    }

    /// Appends `value` as serde_json writes it (so a number reads back as `Value` writes it).
    fn push_json<E: de::Error>(&mut self, value: &impl serde::Serialize) -> Result<(), E> {
        let mut scratch = [0u8; 32];
        let mut cursor = std::io::Cursor::new(&mut scratch[..]);
        serde_json::to_writer(&mut cursor, value).map_err(E::custom)?;
        let len = usize::try_from(cursor.position()).expect("32 bytes fit in usize");
        self.push(&scratch[..len])
    }

    /// Appends the string `text` as a JSON string (stripped when the style says so). A
    /// string that cannot fit is escaped only as far as the room goes.
    fn push_string<E: de::Error>(&mut self, text: &str) -> Result<(), E> {
        let text = if self.style.strip {
            stripped(text)
        } else {
            Cow::Borrowed(text)
        };
        self.push_json_string(&text)
    }

    /// Appends `text` as a JSON string, as it is.
    fn push_json_string<E: de::Error>(&mut self, text: &str) -> Result<(), E> {
        let room = self.style.max_len - self.out.len();
        // Escaped, a string is at least its bytes and two quotes.
        let cut = text.len() + 2 > room;
        // Escaping at least `room` bytes of it fills the room: the cut output is then exactly
        // the start of the whole string's, never a shorter string with its closing quote.
        let shown = if cut {
            &text[..text.ceil_char_boundary(room)]
        } else {
            text
        };
        let start = self.out.len();
        self.make_room(shown.len() + 2);
        serde_json::to_writer(&mut self.out, shown).map_err(E::custom)?;
        if cut || self.out.len() > self.style.max_len {
            self.out.truncate(start + room);
            self.too_long = true;
            return Err(E::custom("output longer than its cap"));
        }
        Ok(())
    }
}

/// One value to write.
struct Node<'w> {
    writer: &'w mut Writer,
    outermost: bool,
    /// An element after the first: its comma is written once the element is known to exist.
    after_comma: bool,
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        if self.after_comma {
            self.writer.push(b",")?;
        }
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<(), E> {
        self.writer.push(if value { b"true" } else { b"false" })
    }
    fn visit_i64<E: de::Error>(self, value: i64) -> Result<(), E> {
        self.writer.push_json(&value)
    }
    fn visit_u64<E: de::Error>(self, value: u64) -> Result<(), E> {
        self.writer.push_json(&value)
    }
    fn visit_f64<E: de::Error>(self, value: f64) -> Result<(), E> {
        self.writer.push_json(&value)
    }
    fn visit_str<E: de::Error>(self, value: &str) -> Result<(), E> {
        self.writer.push_string(value)
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.writer.push(b"null")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.writer.push(b"[")?;
        let mut after_comma = false;
        while seq
            .next_element_seed(Node {
                writer: &mut *self.writer,
                outermost: false,
                after_comma,
            })?
            .is_some()
        {
            after_comma = true;
        }
        self.writer.push(b"]")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let start = self.writer.out.len();
        self.writer.push(b"{")?;
        let keys_style = self.writer.style.keys;
        let merge = keys_style == Keys::Merged;
        // Where each entry's key starts in the output, to find repeated keys once the
        // object ends; and, for keys that stripping changed, the key as sent (escaped).
        let mut keys: Vec<usize> = Vec::new();
        let mut changed: Vec<(usize, Vec<u8>)> = Vec::new();
        while let Some(key) = map.next_key::<Text<'de>>()? {
            if self.outermost && self.writer.style.hidden_key == Some(key.0.as_ref()) {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            if !keys.is_empty() {
                self.writer.push(b",")?;
            }
            let shown = if self.writer.style.strip {
                stripped(&key.0)
            } else {
                Cow::Borrowed(key.0.as_ref())
            };
            if merge && matches!(shown, Cow::Owned(_)) {
                let sent = serde_json::to_vec(key.0.as_ref()).map_err(de::Error::custom)?;
                changed.push((keys.len(), sent));
            }
            keys.push(self.writer.out.len());
            self.writer.push_json_string(&shown)?;
            self.writer.push(b":")?;
            map.next_value_seed(Node {
                writer: &mut *self.writer,
                outermost: false,
                after_comma: false,
            })?;
        }
        if keys.len() > 1 {
            match keys_style {
                Keys::Merged => merge_repeated_keys(&mut self.writer.out, start, &keys, &changed),
                Keys::Sorted => sort_entries(&mut self.writer.out, start, &keys),
                #[cfg(test)]
                Keys::AsSent => {}
            }
        }
        self.writer.push(b"}")
    }
}

/// The end of the JSON string (a key) that starts at `at` in `out`.
fn string_end(out: &[u8], at: usize) -> usize {
    let mut i = at + 1;
    while out[i] != b'"' {
        i += if out[i] == b'\\' { 2 } else { 1 };
    }
    i + 1
}

/// The JSON string (a key, quotes included) that starts at `at` in `out`.
fn key_text(out: &[u8], at: usize) -> &[u8] {
    &out[at..string_end(out, at)]
}

/// Rewrites the object written from `start` (its `{` and entries, not yet closed) as a
/// `Value` tree would store it: first each key as sent once, in the place of its first
/// occurrence with the value of its last (`serde_json::Map` with `preserve_order`, and
/// Python's dict); then, keys that stripping made equal, once more the same way (as
/// `strip_control_chars_in_map` rebuilds the map). `keys`: where each entry's key starts;
/// `changed`: the keys as sent of the entries whose key stripping changed, by entry.
/// Nothing is rewritten when no key repeats.
fn merge_repeated_keys(
    out: &mut Vec<u8>,
    start: usize,
    keys: &[usize],
    changed: &[(usize, Vec<u8>)],
) {
    let shown = |entry: usize| key_text(out, keys[entry]);
    let mut by_shown: Vec<usize> = (0..keys.len()).collect();
    by_shown.sort_by(|&a, &b| shown(a).cmp(shown(b)).then(a.cmp(&b)));
    if !by_shown
        .windows(2)
        .any(|pair| shown(pair[0]) == shown(pair[1]))
    {
        return;
    }
    let sent = |entry: usize| match changed.binary_search_by_key(&entry, |(index, _)| *index) {
        Ok(found) => &changed[found].1[..],
        Err(_) => shown(entry),
    };
    // As the tree reads the object: (first entry, entry whose value is kept) per key sent.
    let mut by_sent: Vec<usize> = (0..keys.len()).collect();
    by_sent.sort_by(|&a, &b| sent(a).cmp(sent(b)).then(a.cmp(&b)));
    let read = keep_first_place_last_value(&by_sent, |entry| sent(entry), |entry| (entry, entry));
    // As stripping rebuilds it: the same again per key shown, in the order read.
    let mut by_shown: Vec<usize> = (0..read.len()).collect();
    by_shown.sort_by(|&a, &b| shown(read[a].0).cmp(shown(read[b].0)).then(a.cmp(&b)));
    let kept =
        keep_first_place_last_value(&by_shown, |index| shown(read[index].0), |index| read[index]);
    // An entry's value ends where the next entry's comma is, or at the end of the output.
    let value_end = |entry: usize| keys.get(entry + 1).map_or(out.len(), |next| next - 1);
    let mut merged = Vec::with_capacity(out.len() - start);
    merged.push(b'{');
    for (index, &(first, last)) in kept.iter().enumerate() {
        if index > 0 {
            merged.push(b',');
        }
        merged.extend_from_slice(key_text(out, keys[first]));
        merged.push(b':');
        let value_start = string_end(out, keys[last]) + 1;
        merged.extend_from_slice(&out[value_start..value_end(last)]);
    }
    out.truncate(start);
    out.extend_from_slice(&merged);
}

/// Rewrites the object written from `start` (not yet closed) with its entries in the order
/// of their keys' text, unescaped (as sorting `String` keys orders them). `keys`: where
/// each entry's key starts.
fn sort_entries(out: &mut Vec<u8>, start: usize, keys: &[usize]) {
    let value_end = |entry: usize| keys.get(entry + 1).map_or(out.len(), |next| next - 1);
    let order = {
        // A key without escapes orders as its bytes between the quotes.
        let unescaped = |at: usize| -> Cow<'_, [u8]> {
            let key = key_text(out, at);
            if key.contains(&b'\\') {
                let text: String = serde_json::from_slice(key).expect("a key the writer wrote");
                Cow::Owned(text.into_bytes())
            } else {
                Cow::Borrowed(&key[1..key.len() - 1])
            }
        };
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_by_cached_key(|&entry| unescaped(keys[entry]));
        order
    };
    let mut sorted = Vec::with_capacity(out.len() - start);
    sorted.push(b'{');
    for (index, &entry) in order.iter().enumerate() {
        if index > 0 {
            sorted.push(b',');
        }
        sorted.extend_from_slice(&out[keys[entry]..value_end(entry)]);
    }
    out.truncate(start);
    out.extend_from_slice(&sorted);
}

/// Given items sorted by (key, order), one `(first, last)` per key: the first item's place
/// and the last item's value (`pair` gives an item's own place and value), in place order.
fn keep_first_place_last_value<'k>(
    sorted: &[usize],
    key: impl Fn(usize) -> &'k [u8],
    pair: impl Fn(usize) -> (usize, usize),
) -> Vec<(usize, usize)> {
    let mut kept: Vec<(usize, usize, usize)> = Vec::new();
    for &item in sorted {
        let (place, value) = pair(item);
        match kept.last_mut() {
            Some((first_item, _, kept_value)) if key(*first_item) == key(item) => {
                *kept_value = value
            }
            _ => kept.push((item, place, value)),
        }
    }
    let mut kept: Vec<(usize, usize)> = kept
        .into_iter()
        .map(|(_, place, value)| (place, value))
        .collect();
    kept.sort_unstable();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    fn stored_style(max_len: usize) -> Style {
        Style {
            strip: true,
            keys: Keys::Merged,
            max_len,
            hidden_key: None,
        }
    }

    /// What a `Value` tree stores for `text`: the reference.
    fn through_a_tree(text: &str) -> String {
        let mut value: Value = serde_json::from_str(text).unwrap();
        crate::domain::strip_control_chars_in_json(&mut value);
        serde_json::to_string(&value).unwrap()
    }

    #[test]
    fn repeated_keys_keep_the_first_place_and_the_last_value() {
        let text = r#"{"a": 1, "b": {"x": [1, 2], "x": "y"}, "a": [3], "c\u0001": 0, "c": 5}"#;

        let written = write(text, stored_style(usize::MAX), 0).unwrap();

        assert_eq!(written, through_a_tree(text));
        assert_eq!(written, r#"{"a":[3],"b":{"x":"y"},"c":5}"#);
    }

    #[test]
    fn the_output_stops_at_its_cap() {
        let text = format!("[{}]", "1e15,".repeat(100) + "1");

        let Err(Stop::TooLong(start)) = write(&text, stored_style(64), 0) else {
            panic!("capped")
        };

        assert_eq!(start.len(), 64);
        assert!(start.starts_with(b"[1000000000000000.0,"));
    }

    #[test]
    fn a_hidden_key_is_left_out_of_the_outermost_object_only() {
        let style = Style {
            hidden_key: Some("token"),
            ..stored_style(usize::MAX)
        };

        let written = write(r#"{"token": "t", "a": {"token": 1}}"#, style, 0).unwrap();

        assert_eq!(written, r#"{"a":{"token":1}}"#);
    }

    fn json_text() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| f.to_string()),
            "-?[0-9]{1,3}(\\.[0-9]{1,3})?([eE][-+]?[0-9]{1,2})?",
            "[a-c\u{1}\u{7f}é ]{0,4}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            Just("\"\\u0001x\\n\"".to_owned()),
            Just("true".to_owned()),
            Just("null".to_owned()),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5)
                    .prop_map(|items| format!("[{}]", items.join(", "))),
                prop::collection::vec(("[ab\u{1}]{0,2}", inner), 0..6).prop_map(|fields| {
                    let fields: Vec<String> = fields
                        .into_iter()
                        .map(|(k, v)| format!("{}: {v}", serde_json::to_string(&k).unwrap()))
                        .collect();
                    format!("{{{}}}", fields.join(", "))
                }),
            ]
        })
    }

    proptest! {
        #[test]
        fn the_stored_form_is_what_a_value_tree_stores(text in json_text()) {
            prop_assume!(serde_json::from_str::<Value>(&text).is_ok());
            let written = write(&text, stored_style(usize::MAX), 0).unwrap();
            prop_assert_eq!(written, through_a_tree(&text));
        }

        #[test]
        fn a_capped_write_is_the_start_of_the_whole(text in json_text(), cap in 0usize..64) {
            prop_assume!(serde_json::from_str::<Value>(&text).is_ok());
            // As an echo is written: nothing merged, so a capped write is a prefix.
            let style = |max_len| Style { strip: false, keys: Keys::AsSent, max_len, hidden_key: None };
            let whole = write(&text, style(usize::MAX), 0).unwrap();
            match write(&text, style(cap), 0) {
                Ok(written) => prop_assert!(written == whole && whole.len() <= cap),
                Err(Stop::TooLong(start)) => {
                    prop_assert!(start.len() <= cap);
                    prop_assert!(whole.len() > cap);
                    prop_assert!(whole.as_bytes().starts_with(&start));
                }
                Err(Stop::Json(err)) => prop_assert!(false, "{}", err),
            }
        }
    }
}

//! Reading a body in one pass over its text, without a tree: the fields the contract reads
//! are taken as raw JSON text (slices of the body), every other field is skipped. What a
//! body costs to validate is then what its read fields become, never what its ignored
//! parts would have become as a tree.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::pyjson;

/// A JSON string as read: borrowed from the text when it has no escapes.
pub(crate) struct Text<'de>(pub Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(text)))
            }
            fn visit_str<E>(self, text: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(text.to_owned())))
            }
            fn visit_string<E>(self, text: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

/// What kind of JSON value a raw text holds, from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    String,
    Number,
    Object,
    Array,
    Other,
}

/// The kind of the (valid) JSON text `raw`.
pub(crate) fn kind(raw: &str) -> Kind {
    match pyjson::first_byte(raw.as_bytes()) {
        Some(b'"') => Kind::String,
        Some(b'{') => Kind::Object,
        Some(b'[') => Kind::Array,
        Some(b'-' | b'0'..=b'9') => Kind::Number,
        _ => Kind::Other,
    }
}

/// The string a raw JSON string holds (`None` for any other kind).
pub(crate) fn string(raw: &RawValue) -> Option<Cow<'_, str>> {
    if kind(raw.get()) != Kind::String {
        return None;
    }
    serde_json::from_str::<Text<'_>>(raw.get())
        .ok()
        .map(|text| text.0)
}

/// The raw values of the fields `names` of the JSON object `text` (the last of repeated
/// keys, as Python's `json.loads` keeps); `None` when `text` is not an object. Other
/// fields are skipped without being built.
pub(crate) fn object_fields<'a, const N: usize>(
    text: &'a str,
    names: [&str; N],
) -> Result<Option<[Option<&'a RawValue>; N]>, serde_json::Error> {
    if !pyjson::is_object_text(text.as_bytes()) {
        return Ok(None);
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let fields = deserializer.deserialize_map(Fields { names })?;
    deserializer.end()?;
    Ok(Some(fields))
}

struct Fields<'n, const N: usize> {
    names: [&'n str; N],
}

impl<'de, const N: usize> Visitor<'de> for Fields<'_, N> {
    type Value = [Option<&'de RawValue>; N];

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut values = [None; N];
        while let Some(key) = map.next_key::<Text<'de>>()? {
            match self.names.iter().position(|name| *name == key.0) {
                Some(index) => values[index] = Some(map.next_value::<&'de RawValue>()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(values)
    }
}

/// Calls `item` on the raw text of each element of the JSON array `text`, in order, while
/// it answers `true`; then only counts the rest. `None` when `text` is not an array, else
/// the number of elements.
pub(crate) fn each_element<'a>(
    text: &'a str,
    item: impl FnMut(&'a RawValue) -> bool,
) -> Result<Option<usize>, serde_json::Error> {
    if pyjson::first_byte(text.as_bytes()) != Some(b'[') {
        return Ok(None);
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let count = deserializer.deserialize_seq(Elements { item })?;
    deserializer.end()?;
    Ok(Some(count))
}

struct Elements<F> {
    item: F,
}

impl<'de, F: FnMut(&'de RawValue) -> bool> Visitor<'de> for Elements<F> {
    type Value = usize;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON array")
    }

    fn visit_seq<A: de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<usize, A::Error> {
        let mut count = 0;
        let mut reading = true;
        while reading {
            let Some(raw) = seq.next_element::<&'de RawValue>()? else {
                return Ok(count);
            };
            count += 1;
            reading = (self.item)(raw);
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {
            count += 1;
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_fields_are_taken_raw_the_last_of_repeated_keys_wins() {
        let text = r#"{"a": [1, 2], "skip": {"x": [0, 0]}, "b": "x", "a": {"k": 1}}"#;

        let [a, b, c] = object_fields(text, ["a", "b", "c"]).unwrap().unwrap();

        assert_eq!(a.unwrap().get(), r#"{"k": 1}"#);
        assert_eq!(string(b.unwrap()).as_deref(), Some("x"));
        assert!(c.is_none());
    }

    #[test]
    fn an_array_is_not_an_object() {
        assert!(object_fields(r#"["a", 1]"#, ["a"]).unwrap().is_none());
        assert!(object_fields(r#" "x" "#, ["a"]).unwrap().is_none());
    }

    #[test]
    fn elements_past_the_reader_are_only_counted() {
        let mut seen = Vec::new();

        let count = each_element("[1, [2], {\"a\": 3}, 4]", |raw| {
            seen.push(raw.get().to_owned());
            seen.len() < 2
        });

        assert_eq!(count.unwrap(), Some(4));
        assert_eq!(seen, ["1", "[2]"]);
        assert_eq!(each_element("{}", |_| true).unwrap(), None);
    }
}

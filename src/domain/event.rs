//! `log_raw_analytics`'s body: `{"type": str, "data": object, "data_index": str}`.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use super::compact::{self, Keys, Stop, Style};
use super::reader::{self, Kind, Text};
use super::stored_form::is_stored_form;
use super::{Body, FieldError, Fields, Location, MAX_LISTED_ERRORS, fields, pyjson};

/// Most UTF-8 bytes in `type` and in `data_index`. Both are keys of PostgreSQL's b-tree index
/// `"AnalyticsDetails_userId_type_dataIndex_idx"`, which refuses an entry over 2704 bytes (a
/// 500 in the original); two fields of 1000 bytes plus a user id stay under it.
pub const MAX_INDEXED_BYTES: usize = 1000;

/// `data`'s stored form may be at most this many times its text as sent (plus
/// [`STORED_SLACK_BYTES`]). Only numbers grow when written out (`1e15` is stored as
/// `1000000000000000.0`): the cap keeps a body of such numbers from growing 4× in memory.
pub const MAX_STORED_GROWTH: usize = 2;
/// See [`MAX_STORED_GROWTH`].
pub const STORED_SLACK_BYTES: usize = 64;

/// An analytics event that passed validation, control characters already stripped.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAnalyticsEvent {
    /// Event type (`type`); may be empty.
    pub event_type: String,
    /// Free-form payload (`data`, always a JSON object) as compact JSON text, the form both
    /// stores write.
    pub data_json: String,
    /// Secondary key for lookups (`dataIndex`); may be empty.
    pub data_index: String,
}

impl NewAnalyticsEvent {
    /// Validates a body, reporting every field error at once.
    pub fn from_body(body: Body<'_>) -> Result<Self, Vec<FieldError>> {
        let fields = Fields::read(
            body,
            "LogRawAnalyticsRequest",
            ["type", "data", "data_index"],
        )?;
        let mut errors = Vec::new();
        let event_type = indexed_string(&fields, 0, "type", &mut errors);
        let data_json = data(&fields, "data", &mut errors);
        let data_index = indexed_string(&fields, 2, "data_index", &mut errors);
        match (event_type, data_json, data_index) {
            (Some(event_type), Some(data_json), Some(data_index)) => Ok(NewAnalyticsEvent {
                event_type,
                data_json,
                data_index,
            }),
            _ => Err(errors),
        }
    }

    /// Validates a parsed body (its non-finite markers honoured): for tests and fuzz
    /// targets, which build bodies as trees. Requests go through [`from_body`](Self::from_body).
    pub fn parse(body: &Value) -> Result<Self, Vec<FieldError>> {
        super::read_tree(body, Self::from_body)
    }
}

/// A string of at most [`MAX_INDEXED_BYTES`] as sent.
fn indexed_string<const N: usize>(
    fields: &Fields<'_, N>,
    index: usize,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    fields::string(fields, index, field, 0, MAX_INDEXED_BYTES, errors)
}

/// `data`'s stored form: an object without non-finite numbers, written compactly with
/// control characters stripped.
fn data<const N: usize>(
    fields: &Fields<'_, N>,
    field: &'static str,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    let Some(raw) = fields.raw(1) else {
        errors.push(fields.missing(field));
        return None;
    };
    let text = raw.get();
    if reader::kind(text) != Kind::Object {
        errors.push(FieldError::dict_type(field, fields.echo(raw)));
        return None;
    }
    // Markers exist only in a marked text, so only there is `data` searched for them.
    if fields.marked() {
        let found = non_finite_numbers(raw, field, errors);
        if found > MAX_LISTED_ERRORS {
            let loc = vec![Location::from("body"), Location::from(field)];
            errors.push(FieldError::omitted(loc, found - MAX_LISTED_ERRORS));
        }
        if found > 0 {
            return None;
        }
    }
    // Compact browser JSON is already its stored form.
    if is_stored_form(text) {
        return Some(text.to_owned());
    }
    let style = Style {
        strip: true,
        keys: Keys::Merged,
        max_len: MAX_STORED_GROWTH * text.len() + STORED_SLACK_BYTES,
        hidden_key: None,
    };
    match compact::write(text, style, text.len()) {
        Ok(stored) => Some(stored),
        Err(Stop::TooLong(_)) => {
            errors.push(FieldError::stored_too_long(field, style.max_len));
            None
        }
        Err(Stop::Json(err)) => {
            errors.push(super::unreadable(&err));
            None
        }
    }
}

/// Python would have stored NaN/Infinity and PostgreSQL's JSONB refused them (a 500); here
/// they are a 422 naming where they are. Every one is counted, the first
/// [`MAX_LISTED_ERRORS`] are reported: a body of many such tokens costs neither time nor
/// memory per token beyond the walk. Returns how many were found.
fn non_finite_numbers(raw: &RawValue, field: &'static str, errors: &mut Vec<FieldError>) -> usize {
    let mut search = NonFiniteSearch {
        path: vec![
            Step::Key(Text("body".into())),
            Step::Key(Text(field.into())),
        ],
        found: 0,
        errors,
    };
    let mut deserializer = serde_json::Deserializer::from_str(raw.get());
    if let Err(err) = Visit(&mut search).deserialize(&mut deserializer) {
        search.errors.push(super::unreadable(&err));
    }
    search.found
}

/// One step of the path to a value: owned `loc`s are built only for the errors listed.
enum Step<'a> {
    Key(Text<'a>),
    Index(usize),
}

struct NonFiniteSearch<'a, 'e> {
    path: Vec<Step<'a>>,
    found: usize,
    errors: &'e mut Vec<FieldError>,
}

impl NonFiniteSearch<'_, '_> {
    fn string(&mut self, text: &str) {
        let Some(token) = pyjson::non_finite_str(text) else {
            return;
        };
        self.found += 1;
        if self.found <= MAX_LISTED_ERRORS {
            let loc = self.path.iter().map(|step| match step {
                Step::Key(key) => Location::cut_key(&key.0),
                Step::Index(index) => Location::Index(*index),
            });
            let error =
                FieldError::finite_number_at(loc.collect(), Value::String(token.to_owned()));
            self.errors.push(error);
        }
    }
}

/// Walks one value of the search.
struct Visit<'s, 'a, 'e>(&'s mut NonFiniteSearch<'a, 'e>);

impl<'de, 'e> DeserializeSeed<'de> for Visit<'_, 'de, 'e> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, 'e> Visitor<'de> for Visit<'_, 'de, 'e> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, text: &str) -> Result<(), E> {
        self.0.string(text);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        self.0.path.push(Step::Index(0));
        loop {
            *self.0.path.last_mut().expect("pushed above") = Step::Index(index);
            if seq.next_element_seed(Visit(&mut *self.0))?.is_none() {
                break;
            }
            index += 1;
        }
        self.0.path.pop();
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Text<'de>>()? {
            self.0.path.push(Step::Key(key));
            map.next_value_seed(Visit(&mut *self.0))?;
            self.0.path.pop();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_the_frontend_body() {
        let body = json!({"type": "home_viewed", "data": {}, "data_index": "home_viewed"});

        let event = NewAnalyticsEvent::parse(&body).unwrap();

        assert_eq!(event.event_type, "home_viewed");
        assert_eq!(event.data_json, "{}");
    }

    #[test]
    fn empty_strings_are_allowed_and_unknown_keys_ignored() {
        let body = json!({"type": "", "data": {"a": 1}, "data_index": "", "extra": true});

        assert!(NewAnalyticsEvent::parse(&body).is_ok());
    }

    #[test]
    fn type_and_index_longer_than_the_index_allows_are_refused() {
        let long = "é".repeat(MAX_INDEXED_BYTES / 2 + 1);
        let body = json!({"type": long, "data": {}, "data_index": "x".repeat(MAX_INDEXED_BYTES)});

        let errors = NewAnalyticsEvent::parse(&body).unwrap_err();

        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].kind, "string_too_long");
        assert_eq!(
            errors[0].msg,
            "String should have at most 1000 bytes (UTF-8)"
        );
    }

    #[test]
    fn data_that_would_more_than_double_when_stored_is_refused() {
        let grows = format!(r#"{{"x":[{}1e15]}}"#, "1e15,".repeat(1000));
        let body = format!(r#"{{"type":"t","data":{grows},"data_index":"i"}}"#);

        let errors = NewAnalyticsEvent::from_body(Body::json(&body, false)).unwrap_err();

        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].kind, "value_error");
        let cap = MAX_STORED_GROWTH * grows.len() + STORED_SLACK_BYTES;
        assert_eq!(errors[0].ctx, Some(json!({ "max_stored_bytes": cap })));
        // 1.5x (`1e2` is stored as `100.0`) is within the cap.
        let body = format!(
            r#"{{"type":"t","data":{{"x":[{}1e2]}},"data_index":"i"}}"#,
            "1e2,".repeat(1000)
        );
        let event = NewAnalyticsEvent::from_body(Body::json(&body, false)).unwrap();
        assert!(event.data_json.starts_with(r#"{"x":[100.0,100.0,"#));
    }

    #[test]
    fn data_must_be_an_object() {
        for data in [json!([]), json!("x"), json!(null), json!(3)] {
            let body = json!({"type": "t", "data": data, "data_index": "i"});
            let errors = NewAnalyticsEvent::parse(&body).unwrap_err();
            assert_eq!(errors.len(), 1);
            assert_eq!(errors[0].kind, "dict_type");
            assert_eq!(errors[0].msg, "Input should be a valid dictionary");
        }
    }

    #[test]
    fn strips_control_characters_from_data_keys_and_values() {
        let body = json!({"type": "t\u{0}", "data": {"k\u{1}": "v\u{7f}"}, "data_index": "i"});

        let event = NewAnalyticsEvent::parse(&body).unwrap();

        assert_eq!(event.event_type, "t");
        assert_eq!(event.data_json, r#"{"k":"v"}"#);
    }
}

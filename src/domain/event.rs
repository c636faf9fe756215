//! `log_raw_analytics`'s body: `{"type": str, "data": object, "data_index": str}`.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::stored_form::is_stored_form;
use super::{
    FieldError, Location, MAX_LISTED_ERRORS, body_object, fields, input_of, pyjson,
    strip_control_chars, strip_control_chars_in_map,
};

/// Most UTF-8 bytes in `type` and in `data_index`. Both are keys of PostgreSQL's b-tree index
/// `"AnalyticsDetails_userId_type_dataIndex_idx"`, which refuses an entry over 2704 bytes (a
/// 500 in the original); two fields of 1000 bytes plus a user id stay under it.
pub const MAX_INDEXED_BYTES: usize = 1000;

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
    /// Validates a JSON body, reporting every field error at once.
    pub fn parse(body: &Value) -> Result<Self, Vec<FieldError>> {
        let (event_type, data, data_index) = validate(body)?;
        let mut data = data.clone();
        strip_control_chars_in_map(&mut data);
        Ok(NewAnalyticsEvent {
            event_type: strip_control_chars(event_type),
            data_json: serde_json::to_string(&data).expect("a JSON map always serializes"),
            data_index: strip_control_chars(data_index),
        })
    }

    /// The event of a body in the compact form browsers send, read straight from its bytes
    /// without building a `Value` tree: `Some` only when the result is provably what
    /// [`parse`](Self::parse) gives for the same body. `None` means "take the general path"
    /// (which also produces any validation errors), never "invalid".
    pub fn from_compact_body(body: &[u8]) -> Option<Self> {
        if !pyjson::is_object_text(body) {
            return None;
        }
        let body: CompactBody<'_> = serde_json::from_slice(body).ok()?;
        let data = body.data.get();
        let indexed_fit = body.event_type.len() <= MAX_INDEXED_BYTES
            && body.data_index.len() <= MAX_INDEXED_BYTES;
        (indexed_fit && data.starts_with('{') && is_stored_form(data)).then(|| NewAnalyticsEvent {
            event_type: strip_control_chars(body.event_type),
            data_json: data.to_owned(),
            data_index: strip_control_chars(body.data_index),
        })
    }
}

/// The three fields exactly, as borrowed strings: a string with escapes, a missing,
/// repeated or unknown field or any other type fails to deserialize, and that body goes
/// the general way.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompactBody<'a> {
    #[serde(rename = "type")]
    event_type: &'a str,
    #[serde(borrow)]
    data: &'a RawValue,
    data_index: &'a str,
}

/// `type`, `data` and `data_index`, borrowed from a valid body.
type ValidFields<'a> = (&'a str, &'a Map<String, Value>, &'a str);

/// The body's `type`, `data` and `data_index` when all are valid, else every field error.
fn validate(body: &Value) -> Result<ValidFields<'_>, Vec<FieldError>> {
    let object = body_object(body, "LogRawAnalyticsRequest")?;
    let mut errors = Vec::new();
    let event_type = indexed_string(object, "type", &mut errors);
    let data = dict(object, "data", &mut errors);
    let data_index = indexed_string(object, "data_index", &mut errors);
    match (event_type, data, data_index) {
        (Some(event_type), Some(data), Some(data_index)) => Ok((event_type, data, data_index)),
        _ => Err(errors),
    }
}

fn indexed_string<'a>(
    object: &'a Map<String, Value>,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<&'a str> {
    let value = fields::string(object, field, 0, errors)?;
    if value.len() > MAX_INDEXED_BYTES {
        errors.push(FieldError::string_too_long_bytes(
            field,
            &object[field],
            MAX_INDEXED_BYTES,
        ));
        return None;
    }
    Some(value)
}

fn dict<'a>(
    object: &'a Map<String, Value>,
    field: &'a str,
    errors: &mut Vec<FieldError>,
) -> Option<&'a Map<String, Value>> {
    match object.get(field) {
        None => {
            errors.push(FieldError::missing(field, object));
            None
        }
        Some(data @ Value::Object(map)) => {
            let mut search = NonFiniteSearch {
                path: vec![Step::Key("body"), Step::Key(field)],
                found: 0,
                errors,
            };
            search.visit(data);
            let found = search.found;
            if found > MAX_LISTED_ERRORS {
                let loc = vec![Location::from("body"), Location::from(field)];
                errors.push(FieldError::omitted(loc, found - MAX_LISTED_ERRORS));
            }
            (found == 0).then_some(map)
        }
        Some(other) => {
            errors.push(FieldError::dict_type(field, other));
            None
        }
    }
}

/// One step of the path to a value, borrowed from the body: owned `loc`s are built only
/// for the errors listed.
#[derive(Clone, Copy)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// Python would have stored NaN/Infinity and PostgreSQL's JSONB refused them (a 500); here
/// they are a 422 naming where they are. Every one is counted, the first
/// [`MAX_LISTED_ERRORS`] are reported: a body of many such tokens costs neither time nor
/// memory per token beyond the walk.
struct NonFiniteSearch<'a, 'e> {
    path: Vec<Step<'a>>,
    found: usize,
    errors: &'e mut Vec<FieldError>,
}

impl<'a> NonFiniteSearch<'a, '_> {
    fn visit(&mut self, value: &'a Value) {
        match value {
            Value::Object(map) => map.iter().for_each(|(key, item)| {
                self.path.push(Step::Key(key));
                self.visit(item);
                self.path.pop();
            }),
            Value::Array(items) => items.iter().enumerate().for_each(|(index, item)| {
                self.path.push(Step::Index(index));
                self.visit(item);
                self.path.pop();
            }),
            other if pyjson::non_finite_token(other).is_some() => {
                self.found += 1;
                if self.found <= MAX_LISTED_ERRORS {
                    let loc = self.path.iter().map(|step| match *step {
                        Step::Key(key) => Location::from(key),
                        Step::Index(index) => Location::Index(index),
                    });
                    let error = FieldError::finite_number_at(loc.collect(), &input_of(other));
                    self.errors.push(error);
                }
            }
            _ => {}
        }
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

    #[test]
    fn a_compact_body_gives_what_the_general_path_gives() {
        let body = "{\"type\":\"t\u{7f}\",\"data\":{\"a\":{\"b\":[1,\"c\",2.5,null]},\"n\":-3},\"data_index\":\"i\"}";

        let compact = NewAnalyticsEvent::from_compact_body(body.as_bytes()).unwrap();

        let general = NewAnalyticsEvent::parse(&serde_json::from_str(body).unwrap()).unwrap();
        assert_eq!(compact, general);
        assert_eq!(compact.event_type, "t");
    }

    #[test]
    fn bodies_the_compact_reader_cannot_vouch_for_take_the_general_path() {
        let long = "x".repeat(MAX_INDEXED_BYTES + 1);
        for body in [
            r#"{"type":"t","data":{"a":1},"data_index":"i","extra":1}"#.to_owned(),
            r#"{"type":"t","data":{"a":1}}"#.to_owned(),
            r#"{"type":"t","type":"u","data":{},"data_index":"i"}"#.to_owned(),
            r#"{"type":"t\n","data":{},"data_index":"i"}"#.to_owned(),
            r#"{"type":"t","data":[],"data_index":"i"}"#.to_owned(),
            r#"{"type":"t","data":{"a": 1},"data_index":"i"}"#.to_owned(),
            r#"{"type":5,"data":{},"data_index":"i"}"#.to_owned(),
            format!(r#"{{"type":"{long}","data":{{}},"data_index":"i"}}"#),
            // Not an object: serde's derived reader would take an array by position.
            r#"["home",{"a":1},"idx"]"#.to_owned(),
            r#" ["0",{},"0"]"#.to_owned(),
            r#"[{"type":"t","data":{},"data_index":"i"}]"#.to_owned(),
            r#""x""#.to_owned(),
            "null".to_owned(),
            "1".to_owned(),
        ] {
            assert_eq!(
                NewAnalyticsEvent::from_compact_body(body.as_bytes()),
                None,
                "{body}"
            );
        }
    }
}

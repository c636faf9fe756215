//! Validated request types and the rules that build them. No I/O here.
//!
//! Bodies are validated in one streaming pass over their text (`reader`): the fields the
//! contract reads are taken as raw slices of the body, ignored fields are skipped, an
//! error's `input` is cut before it is copied (`echo`) and `data` is written out in its
//! stored form without a tree (`compact`). What validating a body allocates is bounded by
//! what its read fields become: docs/OPERATIONS.md ("Memory") states the bound, and
//! `tests/memory` checks it with a counting allocator.

mod batch;
mod compact;
mod echo;
mod event;
mod field_error;
mod metric;
pub mod pyjson;
mod reader;
mod sanitize;
mod stored_form;

use std::cell::OnceCell;

pub use batch::{ItemOutcome, parse_batch};
pub use compact::sorted_json;
pub use event::NewAnalyticsEvent;
pub use field_error::{
    DetailBudget, FieldError, Input, Location, MAX_DETAIL_BYTES, MAX_LISTED_ERRORS, serialized_len,
};
pub use metric::NewMetric;
pub use sanitize::{strip_control_chars, strip_control_chars_in_json, strip_control_chars_in_map};

use serde_json::Value;
use serde_json::value::RawValue;

/// A request body as FastAPI reads it, not parsed yet.
#[derive(Debug, Clone, Copy)]
pub enum Body<'a> {
    /// JSON text whose syntax was checked (`pyjson::check`); with `marked`, Python's
    /// non-finite tokens in it are markers (`pyjson::marked`). `hidden`: a key of the
    /// outermost object that validation does not see (a beacon's `token`).
    Json {
        /// The text.
        text: &'a str,
        /// Whether it holds markers.
        marked: bool,
        /// A key left out of the outermost object.
        hidden: Option<&'static str>,
    },
    /// A body not sent as JSON: validation sees one string.
    Text(&'a str),
}

impl<'a> Body<'a> {
    /// A checked JSON text without hidden keys; an empty body reads as `{}`.
    pub fn json(text: &'a str, marked: bool) -> Self {
        let text = if text.is_empty() { "{}" } else { text };
        Body::Json {
            text,
            marked,
            hidden: None,
        }
    }

    /// The echo of the whole body, as an error's `input` shows it.
    fn echo(&self) -> Input {
        match *self {
            Body::Json {
                text,
                marked,
                hidden,
            } => echo::echo(text, marked, hidden),
            Body::Text(text) => echo::echo_string(text),
        }
    }

    /// Whether markers may appear in it.
    fn marked(&self) -> bool {
        matches!(self, Body::Json { marked: true, .. })
    }
}

/// The fields a validator reads of an object body, as raw JSON text.
pub struct Fields<'a, const N: usize> {
    body: Body<'a>,
    values: [Option<&'a RawValue>; N],
    /// The body's echo, made once for every `missing` error.
    echoed: OnceCell<Input>,
}

impl<'a, const N: usize> Fields<'a, N> {
    /// The fields `names` of `body`, or the pydantic error when it is not an object
    /// (`model_type`, naming `class_name`).
    pub fn read(
        body: Body<'a>,
        class_name: &'static str,
        names: [&str; N],
    ) -> Result<Self, Vec<FieldError>> {
        let not_an_object = || vec![FieldError::model_type(class_name, body.echo())];
        let Body::Json { text, .. } = body else {
            return Err(not_an_object());
        };
        match reader::object_fields(text, names) {
            Ok(Some(values)) => Ok(Fields {
                body,
                values,
                echoed: OnceCell::new(),
            }),
            Ok(None) => Err(not_an_object()),
            Err(err) => Err(vec![unreadable(&err)]),
        }
    }

    /// The raw value of the `index`-th field, if the body has it.
    pub fn raw(&self, index: usize) -> Option<&'a RawValue> {
        self.values[index]
    }

    /// `field` is absent: the error echoes the whole body.
    pub fn missing(&self, field: &str) -> FieldError {
        FieldError::missing(field, self.echoed.get_or_init(|| self.body.echo()).clone())
    }

    /// The echo of one of its values.
    pub fn echo(&self, raw: &RawValue) -> Input {
        echo::echo(raw.get(), self.body.marked(), None)
    }

    /// The string `raw` holds, unless it is not a string or is a marker.
    pub fn string(&self, raw: &'a RawValue) -> Option<std::borrow::Cow<'a, str>> {
        let text = reader::string(raw)?;
        let is_marker = self.body.marked() && pyjson::non_finite_str(&text).is_some();
        (!is_marker).then_some(text)
    }

    /// Whether it may hold markers.
    fn marked(&self) -> bool {
        self.body.marked()
    }
}

/// `read` on a body given as a tree (its non-finite markers honoured): for tests and fuzz
/// targets, which build bodies as trees.
fn read_tree<T>(body: &Value, read: impl FnOnce(Body<'_>) -> T) -> T {
    let text = serde_json::to_string(body).expect("a JSON value serializes");
    read(Body::json(&text, true))
}

/// A checked text that a validator still could not read (defensive: `pyjson::check`
/// refuses what `parse` refuses, so this is not expected).
fn unreadable(err: &serde_json::Error) -> FieldError {
    FieldError::json_invalid(0, &err.to_string())
}

/// Field readers shared by the request types.
mod fields {
    use super::{FieldError, Fields, sanitize};

    /// A string of at least `min_length` characters and at most `max_bytes` bytes of
    /// UTF-8 as sent (control characters are stripped after the checks), or an error
    /// pushed to `errors`.
    pub fn string<const N: usize>(
        fields: &Fields<'_, N>,
        index: usize,
        field: &str,
        min_length: usize,
        max_bytes: usize,
        errors: &mut Vec<FieldError>,
    ) -> Option<String> {
        let Some(raw) = fields.raw(index) else {
            errors.push(fields.missing(field));
            return None;
        };
        let Some(text) = fields.string(raw) else {
            errors.push(FieldError::string_type(field, fields.echo(raw)));
            return None;
        };
        // Counted only as far as the minimum: a megabyte string is not walked for it.
        if text.chars().take(min_length).count() < min_length {
            errors.push(FieldError::string_too_short(
                field,
                fields.echo(raw),
                min_length,
            ));
            return None;
        }
        if text.len() > max_bytes {
            let echo = fields.echo(raw);
            errors.push(FieldError::string_too_long_bytes(field, echo, max_bytes));
            return None;
        }
        Some(sanitize::into_stripped(text))
    }
}

//! Property tests of validation: it never panics on any JSON value, and a body it accepts
//! comes back from the real database (PostgreSQL and an SQLite file) as validated.

use analytics_service::domain::{
    Body, FieldError, Location, NewAnalyticsEvent, NewMetric, strip_control_chars_in_json,
};
use analytics_service::routes::json::parse;
use axum::body::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Map, Value, json};

use crate::helpers::{Backend, TestApp, event_body, metric_body};

/// Strings that hit the interesting cases: control characters, numerals, anything else.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[\u{0}-\u{1f}\u{7f} a-z]{0,6}",
        " ?-?[0-9]{1,4}(\\.[0-9]{0,3})?(e[+-]?[0-9]{1,3})? ?",
        Just("inf".to_owned()),
        Just("NaN".to_owned()),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        // Whole floats that serde writes in exponent form (`1e17`).
        (1u32..1000).prop_map(|n| Value::from(f64::from(n) * 1e17)),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        number(),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((text(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

/// Objects that carry the endpoints' field names (each maybe absent) with any values,
/// so validation gets past the "not an object" check.
fn body_like() -> impl Strategy<Value = Value> {
    let fields = [
        "metric_name",
        "metric_value",
        "data_string",
        "type",
        "data",
        "data_index",
    ];
    prop_oneof![
        json_value(),
        prop::collection::vec(prop::option::of(json_value()), 6).prop_map(move |values| {
            let object: Map<String, Value> = fields
                .iter()
                .zip(values)
                .filter_map(|(name, value)| Some(((*name).to_owned(), value?)))
                .collect();
            Value::Object(object)
        }),
    ]
}

fn has_stripped_chars(text: &str) -> bool {
    text.chars()
        .any(|c| (c as u32) < 0x80 && c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
}

fn errors_are_well_formed(errors: &[FieldError]) -> Result<(), TestCaseError> {
    prop_assert!(!errors.is_empty());
    for error in errors {
        prop_assert_eq!(&error.loc[0], &Location::Key("body".to_owned()));
        serde_json::to_string(error).expect("a field error serializes");
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(2000))]

    #[test]
    fn validation_never_panics_and_accepted_bodies_keep_the_contract(body in prop_oneof![body_like(), event_bodies()]) {
        match NewMetric::parse(&body) {
            Ok(metric) => {
                prop_assert!(metric.metric_value.is_finite() && metric.metric_value >= 0.0);
                prop_assert!(!has_stripped_chars(&metric.metric_name));
                prop_assert!(!has_stripped_chars(&metric.data_string));
            }
            Err(errors) => errors_are_well_formed(&errors)?,
        }
        match NewAnalyticsEvent::parse(&body) {
            Ok(event) => {
                prop_assert!(!has_stripped_chars(&event.event_type));
                prop_assert!(!has_stripped_chars(&event.data_index));
                // Stripping again changes nothing: no control character (NUL included) is
                // left in any key or string. (Looking for the text `\u0000` would also
                // match an escaped backslash.)
                let data: Value = serde_json::from_str(&event.data_json).unwrap();
                let mut restripped = data.clone();
                strip_control_chars_in_json(&mut restripped);
                prop_assert_eq!(restripped, data);
            }
            Err(errors) => errors_are_well_formed(&errors)?,
        }
    }
}

/// `cases`, or `PROPTEST_CASES` when set (for a long run by hand).
fn cases(default: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(default);
    Config::with_cases(cases)
}

/// The compact text of a JSON value, or a spelling of it that only a text can have.
fn spelled(value: Value) -> impl Strategy<Value = String> {
    let compact = serde_json::to_string(&value).unwrap();
    let spaced = serde_json::to_string_pretty(&value).unwrap();
    prop_oneof![
        4 => Just(compact.clone()),
        1 => Just(spaced),
        1 => Just(format!(" \n{compact}\t")),
        // A key or string opened with an escape (`"\u0074ype"` for `"type"`).
        1 => (0..compact.len().max(1)).prop_map(move |at| escape_a_string_from(&compact, at)),
    ]
}

/// `text` with the first string at or after byte `at` opened by an escaped first character.
fn escape_a_string_from(text: &str, at: usize) -> String {
    let quote = text
        .char_indices()
        .find(|&(i, c)| i >= at && c == '"')
        .or_else(|| text.char_indices().find(|&(_, c)| c == '"'));
    let Some((quote, _)) = quote else {
        return text.to_owned();
    };
    let mut chars = text[quote + 1..].chars();
    match chars.next() {
        Some(first) if first.is_ascii_alphanumeric() => format!(
            "{}\"\\u{:04x}{}",
            &text[..quote],
            u32::from(first),
            chars.as_str()
        ),
        _ => text.to_owned(),
    }
}

/// Bodies a client might send that are near a valid event: the event's fields by position
/// in an array, an event inside an array, top-level strings, numbers and `null`, objects
/// with a repeated key, with whitespace or escapes, or with `data` nested in `data`.
fn body_text() -> impl Strategy<Value = String> {
    let short = "[a-z0-9]{0,3}".prop_map(Value::from);
    let by_position = (
        prop_oneof![short.clone(), json_value()],
        prop_oneof![Just(json!({})), json_value()],
        prop_oneof![short.clone(), json_value()],
        prop::collection::vec(json_value(), 0..2),
    )
        .prop_map(|(kind, data, index, more)| {
            let mut items = vec![kind, data, index];
            items.extend(more);
            Value::Array(items)
        });
    let scalar = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        number(),
        text().prop_map(Value::from),
    ];
    let nested_data = (event_bodies(), event_bodies()).prop_map(|(mut outer, inner)| {
        outer["data"]["data"] = inner["data"].clone();
        outer
    });
    let value = prop_oneof![
        3 => event_bodies(),
        2 => by_position,
        1 => event_bodies().prop_map(|event| json!([event])),
        1 => scalar,
        1 => nested_data,
        2 => body_like(),
    ];
    let text = value.prop_flat_map(spelled);
    let repeated_key = (
        event_bodies(),
        prop::sample::select(vec!["type", "data", "data_index"]),
    )
        .prop_map(|(event, key)| {
            let compact = serde_json::to_string(&event).unwrap();
            let again = serde_json::to_string(&event[key]).unwrap();
            format!("{},\"{key}\":{again}}}", &compact[..compact.len() - 1])
        });
    prop_oneof![6 => text, 1 => repeated_key]
}

proptest! {
    #![proptest_config(cases(2000))]

    /// Reading a body's text in one pass (no `Value` tree) answers what reading its tree
    /// answers, however the text is spelled (spaces, escapes, repeated keys, fields by
    /// position): the same event, or errors of the same kinds at the same places.
    #[test]
    fn the_streaming_reader_agrees_with_the_tree(text in body_text()) {
        let Ok(value) = parse(&Bytes::from(text.clone()), true) else {
            return Ok(());
        };
        let streamed = NewAnalyticsEvent::from_body(Body::json(&text, false));
        let from_tree = NewAnalyticsEvent::parse(&value);
        let places = |errors: &Vec<FieldError>| -> Vec<_> {
            errors.iter().map(|e| (e.kind, e.loc.clone())).collect()
        };
        match (&streamed, &from_tree) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b, "{}", text),
            (Err(a), Err(b)) => prop_assert_eq!(places(a), places(b), "{}", text),
            _ => prop_assert!(false, "{}: {:?} vs {:?}", text, streamed, from_tree),
        }
    }
}

fn metric_bodies() -> impl Strategy<Value = Value> {
    let non_empty = any::<String>().prop_filter("at least one character", |s| !s.is_empty());
    let value = prop_oneof![
        (0.0..f64::MAX).prop_map(Value::from),
        any::<u32>().prop_map(Value::from),
        Just(Value::from(0.0)),
        (0u32..100_000).prop_map(|n| Value::from(format!(" {n}.5 "))),
    ];
    (non_empty.clone(), value, non_empty)
        .prop_map(|(name, value, data)| metric_body(name, value, data))
}

fn event_bodies() -> impl Strategy<Value = Value> {
    let data = prop::collection::vec((text(), json_value()), 0..6)
        .prop_map(|pairs| Value::Object(pairs.into_iter().collect()));
    (any::<String>(), data, any::<String>())
        .prop_map(|(kind, data, index)| event_body(kind, data, index))
}

/// JSON numbers as JSON means them: PostgreSQL's JSONB keeps the value, not serde's
/// integer/float tag (`1e17` comes back as the integer `100000000000000000`).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i128(), y.as_i128()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// Runs `cases` accepted bodies through the real service into `backend` and reads them
/// back; proptest shrinks a failure to a minimal body.
async fn accepted_bodies_round_trip(backend: Backend, cases: u32) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("prop-user");
    let runtime = tokio::runtime::Handle::current();
    let mut runner = TestRunner::new(Config::with_cases(cases));

    tokio::task::block_in_place(|| {
        runner
            .run(&metric_bodies(), |body| {
                runtime.block_on(async {
                    let expected =
                        NewMetric::parse(&body).expect("the strategy makes valid bodies");
                    let response = app.post_json(METRIC, &body, Some(&token)).await;
                    prop_assert_eq!(response.status().as_u16(), 200);
                    let id: String = response.json().await.unwrap();
                    let row = app.store.metric_by_id(&id).await.unwrap().unwrap();
                    prop_assert_eq!(&row.analytic_metric, &expected.metric_name);
                    prop_assert_eq!(row.value, expected.metric_value);
                    prop_assert_eq!(
                        row.data_string.as_deref(),
                        Some(expected.data_string.as_str())
                    );
                    prop_assert_eq!(row.user_id.as_str(), "prop-user");
                    Ok(())
                })
            })
            .unwrap();
        runner
            .run(&event_bodies(), |body| {
                runtime.block_on(async {
                    let expected =
                        NewAnalyticsEvent::parse(&body).expect("the strategy makes valid bodies");
                    let response = app.post_json(EVENT, &body, Some(&token)).await;
                    prop_assert_eq!(response.status().as_u16(), 200);
                    let id: String = response.json().await.unwrap();
                    let row = app.store.event_by_id(&id).await.unwrap().unwrap();
                    prop_assert_eq!(&row.event_type, &expected.event_type);
                    prop_assert_eq!(
                        row.data_index.as_deref(),
                        Some(expected.data_index.as_str())
                    );
                    let stored = Value::Object(row.data.unwrap_or_default());
                    let sent: Value = serde_json::from_str(&expected.data_json).unwrap();
                    prop_assert!(same_json(&stored, &sent), "stored {} for {}", stored, sent);
                    Ok(())
                })
            })
            .unwrap();
    });
}

const METRIC: &str = "/api/analytics/log_raw_metric";
const EVENT: &str = "/api/analytics/log_raw_analytics";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_bodies_round_trip_through_postgres() {
    accepted_bodies_round_trip(Backend::Postgres, 24).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_bodies_round_trip_through_an_sqlite_file() {
    accepted_bodies_round_trip(Backend::Sqlite, 24).await;
}

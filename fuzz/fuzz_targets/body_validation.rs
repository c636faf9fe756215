//! Body decoding + validation: any bytes, as either content type, through the same
//! functions a request goes through. Nothing may panic; an accepted body keeps the
//! contract's invariants; a refused one renders a 422 body.
#![no_main]

use analytics_service::domain::{
    Body, FieldError, NewAnalyticsEvent, NewMetric, pyjson, strip_control_chars_in_json,
};
use analytics_service::idempotency::{event_hash, metric_hash};
use analytics_service::routes::json::{check, parse};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fn clean(text: &str) -> bool {
    !text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r') && (c as u32) < 0x80)
}

/// The streaming reader (no `Value` tree) on the text answers what the tree answers:
/// the same row, or errors of the same kinds at the same places.
fn streaming_reader_agrees<T: PartialEq + std::fmt::Debug>(
    streamed: &Result<T, Vec<FieldError>>,
    from_tree: &Result<T, Vec<FieldError>>,
) {
    let places = |errors: &Vec<FieldError>| -> Vec<_> {
        errors.iter().map(|e| (e.kind, e.loc.clone())).collect()
    };
    match (streamed, from_tree) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "the streaming reader disagrees"),
        (Err(a), Err(b)) => assert_eq!(places(a), places(b), "the streaming reader disagrees"),
        _ => panic!("the streaming reader disagrees: {streamed:?} vs {from_tree:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let json = selector & 1 == 0;
    let value = match parse(&Bytes::copy_from_slice(body), json) {
        Ok(value) => value,
        Err(error) => {
            assert_eq!(error.kind, "json_invalid");
            serde_json::to_string(&error).expect("a field error serializes");
            return;
        }
    };
    let text = String::from_utf8_lossy(body);
    let streamed_body = if json {
        check(&Bytes::copy_from_slice(body), true)
            .map(|marked| (marked, pyjson::marked(body, marked)))
    } else {
        Ok((false, std::borrow::Cow::Borrowed(body)))
    };
    let (marked, marked_text) = streamed_body.expect("parse accepted it, so check does");
    let marked_text = String::from_utf8_lossy(&marked_text).into_owned();
    let streamed = |read: &dyn Fn(Body<'_>)| {
        if json {
            read(Body::json(&marked_text, marked))
        } else {
            read(Body::Text(&text))
        }
    };
    streamed(&|read| {
        streaming_reader_agrees(&NewMetric::from_body(read), &NewMetric::parse(&value))
    });
    streamed(&|read| {
        streaming_reader_agrees(
            &NewAnalyticsEvent::from_body(read),
            &NewAnalyticsEvent::parse(&value),
        )
    });
    match NewMetric::parse(&value) {
        Ok(metric) => {
            assert!(metric.metric_value.is_finite() && metric.metric_value >= 0.0);
            assert!(clean(&metric.metric_name) && clean(&metric.data_string));
            metric_hash(&metric);
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            serde_json::to_string(&errors).expect("field errors serialize");
        }
    }
    match NewAnalyticsEvent::parse(&value) {
        Ok(event) => {
            assert!(clean(&event.event_type) && clean(&event.data_index));
            // Stripping again changes nothing: no NUL (or other stripped character) is left
            // for the database.
            let data: serde_json::Value =
                serde_json::from_str(&event.data_json).expect("data is stored as JSON");
            let mut restripped = data.clone();
            strip_control_chars_in_json(&mut restripped);
            assert_eq!(restripped, data, "a control character reaches the database");
            event_hash(&event);
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            serde_json::to_string(&errors).expect("field errors serialize");
        }
    }
});

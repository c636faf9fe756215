//! Body decoding + validation: any bytes, as either content type, through the same
//! functions a request goes through. Nothing may panic; an accepted body keeps the
//! contract's invariants; a refused one renders a 422 body.
#![no_main]

use analytics_service::domain::{NewAnalyticsEvent, NewMetric, strip_control_chars_in_json};
use analytics_service::idempotency::{event_hash, metric_hash};
use analytics_service::routes::json::parse;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fn clean(text: &str) -> bool {
    !text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r') && (c as u32) < 0x80)
}

/// The compact reader (no `Value` tree) may only answer what the general path answers.
fn compact_reader_agrees(
    body: &[u8],
    general: &Result<NewAnalyticsEvent, Vec<analytics_service::domain::FieldError>>,
) {
    if let Some(compact) = NewAnalyticsEvent::from_compact_body(body) {
        assert_eq!(&Ok(compact), general, "the compact reader disagrees");
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
    let general = NewAnalyticsEvent::parse(&value);
    if json {
        compact_reader_agrees(body, &general);
        // Byte mutations rarely turn an object into an array of its values, which serde's
        // derived readers take by position: try that shape of every object too.
        if let Some(object) = value.as_object() {
            let values: Vec<&serde_json::Value> = object.values().collect();
            let reshaped = serde_json::to_vec(&values).expect("JSON values serialize");
            let general = NewAnalyticsEvent::parse(&serde_json::Value::from(
                values.into_iter().cloned().collect::<Vec<_>>(),
            ));
            compact_reader_agrees(&reshaped, &general);
        }
    }
    match general {
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

//! The memory bound of docs/OPERATIONS.md ("Memory"), as a property: whatever a body holds,
//! what checking, validating and building its stored rows allocates on top of the body
//! itself is at most `K` × its (decompressed) bytes + `C`, on every route that reads a body
//! and in both sinks (a stream-mode row is also encoded as its message), with or without an
//! `Idempotency-Key` (whose body hash is computed too).
//!
//! The heap is counted by a global allocator ([`peak_alloc`]; a reallocation counts the old
//! and the new block until the old is freed), so this binary holds one test that runs its
//! cases one after another: nothing else allocates while a case is measured.

use analytics_service::domain::{Body, NewAnalyticsEvent, NewMetric, parse_batch};
use analytics_service::idempotency::{event_hash, metric_hash};
use analytics_service::routes::alerts::parse as parse_alert;
use analytics_service::routes::beacon::unwrap_body;
use analytics_service::routes::json::{check, with_body};
use analytics_service::store::{EventRow, MetricRow};
use analytics_service::stream::StreamRow;
use axum::body::Bytes;
use peak_alloc::PeakAlloc;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

#[global_allocator]
static HEAP: PeakAlloc = PeakAlloc;

/// Bytes allocated per body byte, at most (docs/OPERATIONS.md states the same).
const K: f64 = 4.0;
/// ... plus this much whatever the body: the answer's error lists (60 KiB listed, a count
/// per item past that), and per-item bookkeeping of a batch of up to `MAX_ITEMS` items
/// (each item's result, row struct and error entry: ~2 KiB at most).
const C: usize = 4 << 20;
/// The batch endpoints' default item limit.
const MAX_ITEMS: usize = 1000;

#[derive(Debug, Clone, Copy)]
enum Route {
    Metric,
    Event,
    MetricBatch,
    EventBatch,
    Beacon,
    Alert,
}

const ROUTES: [Route; 6] = [
    Route::Metric,
    Route::Event,
    Route::MetricBatch,
    Route::EventBatch,
    Route::Beacon,
    Route::Alert,
];

/// Everything a request builds from its body, kept until the request would be done.
fn handle(route: Route, body: &Bytes) -> Vec<Bytes> {
    let json = !matches!(route, Route::Beacon);
    let Ok(has_non_finite) = check(body, json) else {
        return Vec::new();
    };
    let now = chrono::Utc::now();
    let user = || "2b7e1516-28ae-4d2a-abf7-158809cf4f3c".to_owned();
    // Each row as the direct sink holds it, as the stream sink encodes it, and with the
    // body hash an `Idempotency-Key` request computes.
    let metric = |metric: NewMetric| {
        let row = MetricRow::new(now, user(), metric);
        let hash = metric_hash(&row.metric);
        let message = row.encode();
        (row, message, hash)
    };
    let event = |event: NewAnalyticsEvent| {
        let row = EventRow::new(now, user(), event);
        let hash = event_hash(&row.event);
        let message = row.encode();
        (row, message, hash)
    };
    with_body(body, json, has_non_finite, |read: Body<'_>| match route {
        Route::Metric => NewMetric::from_body(read)
            .map(|m| vec![metric(m).1])
            .unwrap_or_else(|errors| vec![errors_text(&errors)]),
        Route::Event => NewAnalyticsEvent::from_body(read)
            .map(|e| vec![event(e).1])
            .unwrap_or_else(|errors| vec![errors_text(&errors)]),
        Route::Beacon => NewAnalyticsEvent::from_body(unwrap_body(true, read))
            .map(|e| vec![event(e).1])
            .unwrap_or_else(|errors| vec![errors_text(&errors)]),
        Route::MetricBatch => match parse_batch(read, MAX_ITEMS, NewMetric::from_body) {
            Ok(items) => items
                .into_iter()
                .map(|item| item.map_or_else(|e| errors_text(&e), |m| metric(m).1))
                .collect(),
            Err(errors) => vec![errors_text(&errors)],
        },
        Route::EventBatch => match parse_batch(read, MAX_ITEMS, NewAnalyticsEvent::from_body) {
            Ok(items) => items
                .into_iter()
                .map(|item| item.map_or_else(|e| errors_text(&e), |e| event(e).1))
                .collect(),
            Err(errors) => vec![errors_text(&errors)],
        },
        Route::Alert => match parse_alert(read) {
            Ok((_, content)) => vec![Bytes::from(content)],
            Err(errors) => vec![errors_text(&errors)],
        },
    })
}

/// A 422's errors as the answer carries them (listed and cut by its budget).
fn errors_text(errors: &[analytics_service::domain::FieldError]) -> Bytes {
    let listed = analytics_service::domain::DetailBudget::default()
        .list(errors.to_vec(), vec!["body".into()]);
    Bytes::from(serde_json::to_vec(&listed).expect("errors serialize"))
}

/// The heap `work` allocates at its peak, above what was in use before.
fn peak_of<T>(work: impl FnOnce() -> T) -> (usize, T) {
    let before = HEAP.current_usage();
    HEAP.reset_peak_usage();
    let kept = work();
    (HEAP.peak_usage().saturating_sub(before), kept)
}

/// A JSON value of about `bytes` bytes in one of the shapes that cost most as a tree.
fn filler(shape: u8, bytes: usize) -> String {
    let repeat = |item: &str, sep: &str| {
        let n = (bytes / (item.len() + sep.len())).max(1);
        vec![item; n].join(sep)
    };
    match shape % 12 {
        0 => format!("[{}]", repeat("0", ",")),
        1 => format!("[{}]", repeat("NaN", ",")),
        2 => format!("[{}]", repeat("1e999", ",")),
        3 => format!("[{}]", repeat("1e15", ",")),
        4 => format!("[{}]", repeat("{}", ",")),
        5 => {
            let n = (bytes / 8).max(1);
            let fields: Vec<String> = (0..n).map(|i| format!("\"{i:x}\":0")).collect();
            format!("{{{}}}", fields.join(","))
        }
        6 => {
            // Nested 120 deep, side by side until the size is reached.
            let one = format!("{}0{}", "[".repeat(120), "]".repeat(120));
            format!("[{}]", repeat(&one, ","))
        }
        7 => format!("{{\"{}\":[NaN]}}", "k".repeat(bytes)),
        8 => format!("\"{}\"", repeat("\\u0041\\\"\\\\", "")),
        9 => format!("{{{}}}", repeat("\"a\":[0,0]", ",")),
        10 => format!("[{}]", repeat("\"\\u0001\"", ",")),
        _ => format!(
            "[{}]",
            repeat("{\"a\":NaN,\"b\":[Infinity,-Infinity]}", ",")
        ),
    }
}

/// A body for `route` with `fill` placed where `placement` says.
fn body(route: Route, placement: u8, fill: &str, bytes: usize) -> String {
    let single = |placement: u8| match (route, placement % 6) {
        (Route::Metric, 0) => {
            format!(r#"{{"metric_name":"a","metric_value":1,"data_string":"d","x":{fill}}}"#)
        }
        (Route::Metric, 1) => format!(r#"{{"metric_name":{fill},"metric_value":{fill}}}"#),
        (Route::Alert, 0) => format!(r#"{{"content":{fill},"channel":{fill}}}"#),
        (Route::Alert, 1) => format!(r#"{{"content":"x","x":{fill}}}"#),
        (_, 0) => format!(r#"{{"type":"t","data":{{"k":{fill}}},"data_index":"i"}}"#),
        (_, 1) => format!(r#"{{"type":{fill},"data":{fill},"data_index":{fill}}}"#),
        (_, 2) => format!(r#"{{"x":{fill}}}"#),
        (_, 3) => fill.to_owned(),
        (_, 4) => format!(r#"{{"type":"t","data":{fill},"data_index":"i","token":"x"}}"#),
        _ => format!(r#"{{"data":{fill},"data":{fill},"a":{{"a":1,"a":{fill}}}}}"#),
    };
    match route {
        Route::MetricBatch | Route::EventBatch => match placement % 3 {
            0 => format!(r#"{{"x":{fill}}}"#),
            1 => fill.to_owned(),
            _ => {
                // Many items, each with its own share of the filler's bytes.
                let items = (bytes / fill.len().max(1)).clamp(1, MAX_ITEMS + 5);
                let item = single(placement / 3);
                format!("[{}]", vec![item.as_str(); items].join(","))
            }
        },
        _ => single(placement),
    }
}

fn bounded(route: Route, text: &str) -> Result<f64, String> {
    let body = Bytes::from(text.to_owned());
    let (peak, kept) = peak_of(|| handle(route, &body));
    drop(kept);
    let bound = K * body.len() as f64 + C as f64;
    if peak as f64 > bound {
        return Err(format!(
            "{route:?}: {peak} bytes for a {}-byte body (bound {bound}); starts {}",
            body.len(),
            &text[..text.floor_char_boundary(200)]
        ));
    }
    // Below a megabyte the constant dominates; the ratio says little there.
    Ok(if body.len() >= 1 << 20 {
        peak as f64 / body.len() as f64
    } else {
        0.0
    })
}

#[test]
fn validating_any_body_allocates_at_most_k_times_its_bytes() {
    the_count_sees_a_tree();
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..Config::default()
    });
    let strategy = (0..ROUTES.len(), any::<u8>(), any::<u8>(), 256usize..2 << 20);
    let worst = std::cell::Cell::new(0.0f64);
    runner
        .run(&strategy, |(route, shape, placement, bytes)| {
            let route = ROUTES[route];
            let fill = filler(shape, bytes / 3);
            let text = body(route, placement, &fill, bytes);
            let ratio = bounded(route, &text).map_err(TestCaseError::fail)?;
            worst.set(worst.get().max(ratio));
            Ok(())
        })
        .unwrap();
    // The measured cases of the issue, at the limits' full size (16 MiB batches, 1 MiB
    // single bodies).
    let dense = |bytes: usize| format!("[{}0]", "0,".repeat(bytes / 2));
    let cases = [
        (
            Route::MetricBatch,
            format!(
                r#"[{{"metric_name":"a","metric_value":1,"data_string":"d","x":{}}}]"#,
                dense(16 << 20)
            ),
        ),
        (
            Route::MetricBatch,
            format!(r#"{{"x":{}}}"#, dense(16 << 20)),
        ),
        (Route::Metric, format!(r#"{{"x":{}}}"#, dense(1 << 20))),
        (
            Route::Event,
            format!(
                r#"{{"type":"t","data":{{"x":{}}},"data_index":"i"}}"#,
                dense(1 << 20)
            ),
        ),
    ];
    for (route, text) in cases {
        let ratio = bounded(route, &text).unwrap();
        worst.set(worst.get().max(ratio));
    }
    eprintln!(
        "largest allocation per body byte seen (bodies of 1 MiB or more): {:.2}",
        worst.get()
    );
}

/// The counting sees what a tree would cost: the same dense body read as a `Value` passes
/// the bound many times over (so the property can fail).
fn the_count_sees_a_tree() {
    let body = Bytes::from(format!("[{}0]", "0,".repeat(1 << 19)));
    let (peak, tree) = peak_of(|| serde_json::from_slice::<serde_json::Value>(&body).unwrap());
    drop(tree);
    assert!(
        peak as f64 > K * body.len() as f64 + C as f64,
        "{peak} bytes"
    );
}

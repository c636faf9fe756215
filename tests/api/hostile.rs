//! Hostile bodies: answers stay small whatever the input, and nothing is built or queued
//! for a request that auth refuses.

use std::io::Write;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::edge::raw::{connect, post_head, read_response};
use crate::helpers::{Backend, TestApp, eventually};

const EVENT: &str = "/api/analytics/log_raw_analytics";
const EVENT_BATCH: &str = "/api/analytics/log_raw_analytics/batch";
const METRIC_BATCH: &str = "/api/analytics/log_raw_metric/batch";
/// The bound on a 422's body, whatever the input.
const MAX_422_BYTES: usize = 64 * 1024;

/// `data` nested `depth` levels deep under `key_bytes`-byte keys, ending in an array of
/// `tokens` `NaN`s: one validation error per token, each deep in the body.
fn nan_document(depth: usize, key_bytes: usize, tokens: usize) -> String {
    let key = "k".repeat(key_bytes);
    let mut data = String::new();
    for _ in 0..depth {
        data.push_str(&format!("{{\"{key}\":"));
    }
    data.push('[');
    data.push_str(&vec!["NaN"; tokens].join(","));
    data.push(']');
    data.push_str(&"}".repeat(depth));
    format!(r#"{{"type":"t","data":{data},"data_index":"i"}}"#)
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(body).unwrap();
    encoder.finish().unwrap()
}

/// Checks a 422 from the NaN document: bounded, the first errors listed with their place,
/// the rest counted.
fn assert_bounded_nan_422(body: &[u8], tokens: usize) {
    assert!(body.len() <= MAX_422_BYTES, "{} bytes", body.len());
    let answer: Value = serde_json::from_slice(body).unwrap();
    let detail = answer["detail"].as_array().unwrap();
    assert!(detail.len() <= 21, "{} entries", detail.len());
    assert_eq!(detail[0]["type"], "finite_number");
    assert_eq!(detail[0]["loc"][0], "body");
    assert_eq!(detail[0]["loc"][1], "data");
    let last = detail.last().unwrap();
    assert_eq!(last["type"], "too_many_errors");
    let listed = detail.len() - 1;
    assert_eq!(last["ctx"]["omitted"], tokens - listed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_of_many_nan_tokens_gets_a_bounded_422_plain_and_gzipped() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let token = app.token("attacker");
    let document = nan_document(50, 100, 200_000);
    assert!(document.len() < 1024 * 1024);

    let plain = app.post_raw(EVENT, document.clone(), Some(&token)).await;
    assert_eq!(plain.status(), 422);
    assert_bounded_nan_422(&plain.bytes().await.unwrap(), 200_000);

    let zipped = app
        .client
        .post(app.url(EVENT))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(gzip(document.as_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(zipped.status(), 422);
    assert_bounded_nan_422(&zipped.bytes().await.unwrap(), 200_000);
    assert_eq!(app.count_rows(r#""AnalyticsDetails""#).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_answers_stay_bounded_per_item_and_in_total() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let token = app.token("attacker");
    let item = nan_document(50, 1000, 50_000);
    let valid = r#"{"type":"t","data":{},"data_index":"i"}"#;
    let body = format!("[{item},{item},{valid},{item},{item}]");

    let response = app.post_raw(EVENT_BATCH, body, Some(&token)).await;

    assert_eq!(response.status(), 200);
    let bytes = response.bytes().await.unwrap();
    assert!(bytes.len() <= MAX_422_BYTES, "{} bytes", bytes.len());
    let results: Vec<Value> = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(results.len(), 5);
    assert!(results[2]["id"].is_string(), "the valid item is stored");
    for index in [0, 1, 3, 4] {
        let errors = results[index]["error"].as_array().unwrap();
        let last = errors.last().unwrap();
        assert_eq!(last["type"], "too_many_errors", "item {index}");
        assert_eq!(last["loc"], serde_json::json!(["body", index]));
        let counted = last["ctx"]["omitted"].as_u64().unwrap() as usize;
        assert_eq!(counted + errors.len() - 1, 50_000, "item {index}");
    }
    assert_eq!(app.count_rows(r#""AnalyticsDetails""#).await, 1);
}

/// The batch and alert routes answer 401 from the head alone: the server does not wait
/// for (or read) a body announced but never sent, nor take a batch turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_and_alert_routes_refuse_an_anonymous_request_before_its_body() {
    let app = TestApp::spawn_with(Backend::Sqlite, |settings| {
        settings.batch.max_concurrent = 1;
    })
    .await;
    for path in [METRIC_BATCH, EVENT_BATCH, "/api/alerts/discord"] {
        let mut stream = connect(app.addr).await;
        let head = post_head(
            path,
            &[
                "Content-Type: application/json".to_owned(),
                "Content-Length: 1000000".to_owned(),
            ],
        );
        stream.write_all(head.as_bytes()).await.unwrap();

        let response = read_response(&mut stream).await;

        assert_eq!(response.status, 401, "{path}");
        assert_eq!(
            response.json()["detail"],
            "Authorization header is missing",
            "{path}"
        );
    }
}

/// The single-event routes keep the original's order: a body that is not JSON is a 422
/// even without a token, a JSON body without a token a 401 (its fields never looked at).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_single_event_requests_keep_the_originals_order() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let cases = [
        ("{not json", 422),
        ("[1, 2", 422),
        ("{\"type\": NaN, \"data\": [], \"data_index\": 5}", 401),
        (r#"["home",{"a":1},"idx"]"#, 401),
    ];
    for path in [EVENT, "/api/analytics/log_raw_metric"] {
        for (body, status) in cases {
            let response = app.post_raw(path, body, None).await;

            assert_eq!(response.status(), status, "{path} {body}");
            if status == 422 {
                let answer: Value = response.json().await.unwrap();
                assert_eq!(answer["detail"][0]["type"], "json_invalid", "{body}");
            }
        }
    }
}

/// A client that announces a body of `length` bytes and sends only its first byte, so
/// that its charge on the body budget stays held.
async fn stalled_sender(
    app: &TestApp,
    path: &str,
    token: Option<&str>,
    length: usize,
) -> tokio::net::TcpStream {
    let mut headers = vec![
        "Content-Type: application/json".to_owned(),
        format!("Content-Length: {length}"),
    ];
    if let Some(token) = token {
        headers.push(format!("Authorization: Bearer {token}"));
    }
    let mut stream = connect(app.addr).await;
    stream
        .write_all(post_head(path, &headers).as_bytes())
        .await
        .unwrap();
    stream.write_all(b"[").await.unwrap();
    stream
}

fn metric_batch(items: usize) -> String {
    let item = r#"{"metric_name":"m","metric_value":1,"data_string":"d"}"#;
    format!("[{}]", vec![item; items].join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_past_the_memory_budget_get_503_until_room_is_made() {
    let app = TestApp::spawn_with(Backend::Sqlite, |settings| {
        settings.edge.requests.body_limit_bytes = 64 * 1024;
        settings.batch.body_limit_bytes = 64 * 1024;
        settings.edge.requests.body_budget_bytes = 100 * 1024;
        settings.edge.requests.anonymous_body_budget_bytes = 64 * 1024;
        settings.edge.requests.body_budget_wait = std::time::Duration::from_millis(200);
    })
    .await;
    let token = app.token("u");
    let budget = app.body_budget.clone();
    let holder = stalled_sender(&app, METRIC_BATCH, Some(&token), 60_000).await;
    eventually(
        "the stalled body charged",
        Duration::from_secs(10),
        async || budget.available() <= 100 * 1024 - 60_000,
    )
    .await;
    let batch = metric_batch(900);
    assert!(batch.len() > 45_000);

    let refused = app
        .post_raw(METRIC_BATCH, batch.clone(), Some(&token))
        .await;
    let small = app
        .post_raw(METRIC_BATCH, metric_batch(1), Some(&token))
        .await;

    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let answer: Value = refused.json().await.unwrap();
    assert_eq!(
        answer["detail"]["message"],
        "Too many request bodies in memory; retry later"
    );
    assert_eq!(small.status(), 200, "a body that fits is still read");
    drop(holder);
    eventually("the charge released", Duration::from_secs(10), async || {
        budget.available() == 100 * 1024
    })
    .await;
    let accepted = app.post_raw(METRIC_BATCH, batch, Some(&token)).await;
    assert_eq!(accepted.status(), 200);
    assert_eq!(app.count_rows(r#""AnalyticsMetrics""#).await, 901);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_senders_cannot_spend_the_signed_in_budget() {
    let app = TestApp::spawn_with(Backend::Sqlite, |settings| {
        settings.edge.requests.body_limit_bytes = 64 * 1024;
        settings.edge.requests.anonymous_body_budget_bytes = 64 * 1024;
        settings.edge.requests.body_budget_wait = std::time::Duration::from_millis(200);
    })
    .await;
    let budget = app.body_budget.clone();
    let signed_in_budget = budget.available();
    let _holder = stalled_sender(&app, EVENT, None, 64 * 1024).await;
    let padding = "x".repeat(20_000);
    let body = format!(r#"{{"type":"t","data":{{"p":"{padding}"}},"data_index":"i"}}"#);

    eventually(
        "the anonymous budget spent",
        Duration::from_secs(10),
        async || budget.anonymous_available() == 0,
    )
    .await;
    let anonymous = app.post_raw(EVENT, body.clone(), None).await;
    let signed_in = app.post_raw(EVENT, body, Some(&app.token("u"))).await;

    assert_eq!(anonymous.status(), 503, "the anonymous budget is spent");
    assert_eq!(signed_in.status(), 200);
    assert_eq!(budget.available(), signed_in_budget);
}

//! The memory bounds of docs/OPERATIONS.md ("Memory") on the real service process, with
//! the bodies that took it past a gigabyte before validation stopped building trees: one
//! such request stays under 300 MB, every batch turn busy with one stays under 400 MB, and
//! the service answers normally afterwards.

use std::io::Write;

use reqwest::StatusCode;

use crate::process::ServiceProcess;

/// `[0,0,…]` of about `bytes` bytes: 2 bytes a value, ~70 as a tree.
fn dense(bytes: usize) -> String {
    format!("[{}0]", "0,".repeat(bytes / 2))
}

fn gzip(body: &str) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(body.as_bytes()).unwrap();
    encoder.finish().unwrap()
}

const BATCH_LIMIT: usize = 16 * 1024 * 1024;

/// A metric batch of one item padded with an ignored dense array to just under the limit.
fn padded_batch() -> String {
    let item = |pad: &str| {
        format!(r#"[{{"metric_name":"a","metric_value":1,"data_string":"d","x":{pad}}}]"#)
    };
    item(&dense(BATCH_LIMIT - item("").len() - 16))
}

async fn post(service: &ServiceProcess, path: &str, body: Vec<u8>, gzipped: bool) -> StatusCode {
    let token = service.token("2b7e1516-28ae-4d2a-abf7-158809cf4f3c");
    send(service.url(path), token, body, gzipped).await.unwrap()
}

/// POSTs `body` (owned, so that it can be spawned) and answers the status.
async fn send(
    url: String,
    token: String,
    body: Vec<u8>,
    gzipped: bool,
) -> reqwest::Result<StatusCode> {
    let mut request = reqwest::Client::new()
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json");
    if gzipped {
        request = request.header("content-encoding", "gzip");
    }
    Ok(request.body(body).send().await?.status())
}

/// A normal request is answered as usual.
async fn answers_normally(service: &ServiceProcess) {
    let body = r#"{"metric_name":"m","metric_value":1,"data_string":"d"}"#;
    let status = post(service, "/api/analytics/log_raw_metric", body.into(), false).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_of_the_issue_stays_under_300_mb() {
    let service = ServiceProcess::start(&[]).await;
    let batch = padded_batch();
    let cases: Vec<(&str, Vec<u8>, bool, StatusCode)> = vec![
        (
            "/api/analytics/log_raw_metric/batch",
            gzip(&batch),
            true,
            StatusCode::OK,
        ),
        (
            "/api/analytics/log_raw_metric/batch",
            batch.clone().into_bytes(),
            false,
            StatusCode::OK,
        ),
        (
            "/api/analytics/log_raw_metric/batch",
            gzip(&format!(r#"{{"x":{}}}"#, dense(BATCH_LIMIT - 16))),
            true,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/api/analytics/log_raw_metric",
            format!(r#"{{"x":{}}}"#, dense(1024 * 1024 - 16)).into_bytes(),
            false,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/api/analytics/log_raw_analytics",
            format!(
                r#"{{"type":"t","data":{{"x":{}}},"data_index":"i"}}"#,
                dense(1024 * 1024 - 64)
            )
            .into_bytes(),
            false,
            StatusCode::OK,
        ),
    ];
    for (path, body, gzipped, expected) in cases {
        let status = post(&service, path, body, gzipped).await;
        assert_eq!(status, expected, "{path}");
        let peak = service.peak_rss_mib();
        eprintln!("{path} (gzip: {gzipped}): {status}, peak RSS so far {peak} MiB");
        assert!(peak < 300, "{path}: peak RSS {peak} MiB");
    }
    answers_normally(&service).await;
}

/// Sixteen of the worst batches (the 8 batch turns of old twice over, 4 turns by
/// default now) all at once: the dense ignored field, and valid events whose `data` grows by half when stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_batch_turn_busy_with_the_worst_body_stays_under_400_mb() {
    let service = ServiceProcess::start(&[]).await;
    let padded = gzip(&padded_batch());
    // `1e2` is stored as `100.0`: data written out 1.5x, an event batch at the limit.
    let item = |n: usize| {
        format!(
            r#"{{"type":"t","data":{{"x":[{}1e2]}},"data_index":"i"}}"#,
            "1e2, ".repeat(n)
        )
    };
    let per_item = (BATCH_LIMIT - 1000 * 80) / 1000 / 5;
    let events = format!("[{}]", vec![item(per_item); 1000].join(","));
    assert!(events.len() <= BATCH_LIMIT, "{} bytes", events.len());
    let events = gzip(&events);

    let mut sends = tokio::task::JoinSet::new();
    for round in 0..16 {
        let (path, body) = if round % 2 == 0 {
            ("/api/analytics/log_raw_metric/batch", padded.clone())
        } else {
            ("/api/analytics/log_raw_analytics/batch", events.clone())
        };
        // A user each: a batch of 1000 items takes the whole default per-user burst.
        let token = service.token(&format!("user-{round}"));
        sends.spawn(send(service.url(path), token, body, true));
    }
    let mut statuses = Vec::new();
    while let Some(sent) = sends.join_next().await {
        statuses.push(sent.unwrap().expect("every request is answered").as_u16());
    }
    // A batch that gets no turn or no budget within its wait is told to retry (503).
    assert!(
        statuses.iter().all(|s| [200, 503].contains(s)),
        "{statuses:?}"
    );
    assert!(statuses.contains(&200), "{statuses:?}");
    let peak = service.peak_rss_mib();
    eprintln!("16 worst batches at once: peak RSS {peak} MiB, statuses {statuses:?}");
    assert!(peak < 400, "peak RSS {peak} MiB");
    answers_normally(&service).await;
}

/// An operator's per-user limit of one request a second, burst 1, with every batch setting
/// at its default: the binary starts (it used to exit, asking for a burst of at least
/// `ingest.batch_max_items`), a batch of 50 is refused whole with 429 and `Retry-After`,
/// and a single event is still stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_one_starts_and_refuses_a_batch_of_fifty() {
    let service = ServiceProcess::start(&[
        ("APP_RATE_LIMIT__USER_PER_SECOND", "1"),
        ("APP_RATE_LIMIT__USER_BURST", "1"),
    ])
    .await;
    let item = r#"{"metric_name":"m","metric_value":1,"data_string":"d"}"#;
    let batch = format!("[{}]", vec![item; 50].join(","));
    let client = reqwest::Client::new();
    let token = service.token("2b7e1516-28ae-4d2a-abf7-158809cf4f3c");

    let refused = client
        .post(service.url("/api/analytics/log_raw_metric/batch"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(batch)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1, "Retry-After {retry_after}");

    answers_normally(&service).await;
}

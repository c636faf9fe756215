//! Rate limits: per client IP before auth, per user after auth, dry-run, proxies.

use std::sync::Arc;

use analytics_service::clock::SystemClock;
use analytics_service::settings::Settings;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, event_body, metric_body};

const PATH: &str = "/api/analytics/log_raw_metric";

/// Limits that refill so slowly (one token per 1000 s) that no token comes back mid-test.
fn ip_limit(burst: u32) -> impl FnOnce(&mut Settings) {
    move |s| {
        s.edge.rate_limit.ip_per_second = 0.001;
        s.edge.rate_limit.ip_burst = burst;
        s.edge.rate_limit.user_per_second = 0.0;
    }
}

async fn assert_rate_limited(response: reqwest::Response, burst: u32) {
    assert_eq!(response.status(), 429);
    let headers = response.headers().clone();
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    assert_eq!(headers["ratelimit-limit"], burst.to_string().as_str());
    assert_eq!(headers["ratelimit-remaining"], "0");
    assert_eq!(headers["ratelimit-reset"], retry_after.to_string().as_str());
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"detail": format!("Too many requests: retry in {retry_after} seconds")})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_over_the_ip_burst_gets_429_with_retry_after() {
    let app = TestApp::spawn_with(Backend::Sqlite, ip_limit(3)).await;
    let token = app.token("user-ip");
    for i in 0..3 {
        let response = app
            .post_json(PATH, &metric_body("m", 1, "d"), Some(&token))
            .await;
        assert_eq!(response.status(), 200, "request {i} is within the burst");
    }

    let over = app
        .post_json(PATH, &metric_body("m", 1, "d"), Some(&token))
        .await;
    // Before auth: a request without a token is refused by the IP limit too.
    let anonymous = app.post_json(PATH, &metric_body("m", 1, "d"), None).await;
    let probe = app.client.get(app.url("/healthz")).send().await.unwrap();

    assert_rate_limited(over, 3).await;
    assert_eq!(anonymous.status(), 429);
    assert_eq!(probe.status(), 200, "probes are never rate limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_over_the_user_burst_gets_429_and_other_users_are_unaffected() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.edge.rate_limit.ip_per_second = 0.0;
        s.edge.rate_limit.user_per_second = 0.001;
        s.edge.rate_limit.user_burst = 2;
    })
    .await;
    let alice = app.token("alice");
    let bob = app.token("bob");
    for _ in 0..2 {
        assert_eq!(
            app.post_json(PATH, &metric_body("m", 1, "d"), Some(&alice))
                .await
                .status(),
            200
        );
    }

    let over = app
        .post_json(PATH, &metric_body("m", 1, "d"), Some(&alice))
        .await;
    let other_route = app
        .post_json(
            "/api/analytics/log_raw_analytics",
            &event_body("t", json!({}), "i"),
            Some(&alice),
        )
        .await;
    let other_user = app
        .post_json(PATH, &metric_body("m", 1, "d"), Some(&bob))
        .await;

    assert_rate_limited(over, 2).await;
    assert_eq!(
        other_route.status(),
        429,
        "the bucket is per user, not per route"
    );
    assert_eq!(other_user.status(), 200);
}

/// A batch takes one token per item: the limit counts rows stored, not requests. A batch
/// over the burst (here with `ingest.batch_max_items` at its 1000) takes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_takes_one_user_token_per_item() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.edge.rate_limit.ip_per_second = 0.0;
        s.edge.rate_limit.user_per_second = 0.001;
        s.edge.rate_limit.user_burst = 10;
    })
    .await;
    let alice = app.token("alice");
    let batch = |n: usize| serde_json::Value::Array(vec![metric_body("m", 1, "d"); n]);
    let batch_path = "/api/analytics/log_raw_metric/batch";

    let eleven = app.post_json(batch_path, &batch(11), Some(&alice)).await;
    let seven = app.post_json(batch_path, &batch(7), Some(&alice)).await;
    let four = app.post_json(batch_path, &batch(4), Some(&alice)).await;
    let three = app.post_json(batch_path, &batch(3), Some(&alice)).await;
    let one_more = app
        .post_json(PATH, &metric_body("m", 1, "d"), Some(&alice))
        .await;

    assert_eq!(eleven.status(), 429, "more items than the bucket holds");
    assert_eq!(seven.status(), 200, "the refused batch took no tokens");
    assert_eq!(four.status(), 429, "only 3 tokens are left");
    assert_eq!(three.status(), 200);
    assert_rate_limited(one_more, 10).await;
    assert_eq!(app.count_rows(r#""AnalyticsMetrics""#).await, 10);
}

/// A burst of 1 (settings accept it): a batch of 50 can never fit the bucket, so it is
/// answered 429 at once, with the time a drained bucket takes to fill, and charges nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_the_user_burst_gets_429_and_a_single_event_still_passes() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.edge.rate_limit.ip_per_second = 0.0;
        s.edge.rate_limit.user_per_second = 0.01;
        s.edge.rate_limit.user_burst = 1;
    })
    .await;
    let alice = app.token("alice");
    let metrics = serde_json::Value::Array(vec![metric_body("m", 1, "d"); 50]);
    let events = serde_json::Value::Array(vec![event_body("t", json!({}), "i"); 50]);

    let metric_batch = app
        .post_json(
            "/api/analytics/log_raw_metric/batch",
            &metrics,
            Some(&alice),
        )
        .await;
    let event_batch = app
        .post_json(
            "/api/analytics/log_raw_analytics/batch",
            &events,
            Some(&alice),
        )
        .await;
    let single = app
        .post_json(PATH, &metric_body("m", 1, "d"), Some(&alice))
        .await;
    let next_single = app
        .post_json(PATH, &metric_body("m", 1, "d"), Some(&alice))
        .await;

    for over in [metric_batch, event_batch] {
        assert_eq!(over.status(), 429);
        let headers = over.headers().clone();
        assert_eq!(headers["retry-after"], "100", "1 token at 0.01 per second");
        assert_eq!(headers["ratelimit-limit"], "1");
        assert_eq!(headers["ratelimit-remaining"], "0");
        let body: Value = over.json().await.unwrap();
        assert_eq!(
            body,
            json!({"detail": "Too many items: the rate limit admits at most 1 at once; \
                split the batch and retry in 100 seconds"})
        );
    }
    assert_eq!(single.status(), 200, "the refused batches took no token");
    assert_rate_limited(next_single, 1).await;
    assert_eq!(app.count_rows(r#""AnalyticsMetrics""#).await, 1);
    assert_eq!(app.count_rows(r#""AnalyticsDetails""#).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_forwarded_client_ip_is_limited() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        ip_limit(1)(s);
        s.edge.rate_limit.trusted_proxy_hops = 1;
    })
    .await;
    let token = app.token("user-proxy");
    let send = |xff: &'static str| {
        app.client
            .post(app.url(PATH))
            .bearer_auth(&token)
            .header("x-forwarded-for", xff)
            .json(&metric_body("m", 1, "d"))
            .send()
    };

    let first = send("198.51.100.1").await.unwrap();
    let second_client = send("198.51.100.2").await.unwrap();
    // A spoofed left-most entry does not help: the proxy's entry is the last one.
    let spoofed = send("203.0.113.9, 198.51.100.1").await.unwrap();
    // IPv6 clients are limited per /64: one subscriber can draw any number of addresses.
    let v6 = send("2001:db8:1:2::1").await.unwrap();
    let v6_same_64 = send("2001:db8:1:2:ffff::9").await.unwrap();
    let v6_other_64 = send("2001:db8:1:3::1").await.unwrap();

    assert_eq!(first.status(), 200);
    assert_eq!(second_client.status(), 200);
    assert_eq!(spoofed.status(), 429);
    assert_eq!(v6.status(), 200);
    assert_eq!(v6_same_64.status(), 429, "the same /64");
    assert_eq!(v6_other_64.status(), 200);
}

type Snapshot = Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

fn rate_limited_count(snapshot: &Snapshot, reason: &str, dry_run: &str) -> u64 {
    snapshot
        .iter()
        .filter(|(key, ..)| {
            let key = key.key();
            key.name() == "analytics_rate_limited_total"
                && key
                    .labels()
                    .any(|l| l.key() == "reason" && l.value() == reason)
                && key
                    .labels()
                    .any(|l| l.key() == "dry_run" && l.value() == dry_run)
        })
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => *n,
            other => panic!("a counter, not {other:?}"),
        })
        .sum()
}

// A plain test with its own current-thread runtime, so that the thread-local metrics
// recorder sees everything the server does (the process-wide recorder belongs to /metrics).
#[test]
fn dry_run_lets_every_request_through_and_counts_the_would_be_refusals() {
    let recorder = DebuggingRecorder::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let app = TestApp::spawn_full(
                Backend::Sqlite,
                |s| {
                    ip_limit(2)(s);
                    s.edge.rate_limit.user_per_second = 0.001;
                    s.edge.rate_limit.user_burst = 1;
                    s.edge.rate_limit.dry_run = true;
                },
                Arc::new(SystemClock),
            )
            .await;
            let token = app.token("user-dry");
            for i in 0..5 {
                let response = app
                    .post_json(PATH, &metric_body("m", 1, "d"), Some(&token))
                    .await;
                assert_eq!(response.status(), 200, "request {i} passes in dry-run mode");
            }
        })
    });

    // One snapshot: taking it drains the counters.
    let snapshot = recorder.snapshotter().snapshot().into_vec();
    assert_eq!(rate_limited_count(&snapshot, "ip", "true"), 3);
    assert_eq!(rate_limited_count(&snapshot, "user", "true"), 4);
}

//! `GET /metrics`: Prometheus text that moves with the traffic.

use std::path::PathBuf;
use std::sync::Arc;

use analytics_service::clock::SystemClock;
use analytics_service::settings::{Settings, load_from};
use analytics_service::startup::Application;
use prometheus_parse::{LineInfo, Scrape, Value as Sample};

use crate::helpers::{Backend, TestApp, TestDatabase, metric_body, test_settings};
use crate::support::serial;

const METRIC: &str = "/api/analytics/log_raw_metric";

/// Parses the scrape, failing on any line that is not a comment or a sample.
pub fn parse(text: &str) -> Scrape {
    for line in text.lines() {
        assert!(
            !matches!(LineInfo::parse(line), LineInfo::Ignored),
            "not Prometheus text: {line:?}"
        );
    }
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("the scrape parses")
}

pub fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Sample::Counter(v) | Sample::Gauge(v) | Sample::Untyped(v) => *v,
            Sample::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Sample::Summary(_) => f64::NAN,
        })
}

async fn scrape(client: &reqwest::Client, url: &str) -> Scrape {
    let response = client.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    parse(&response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_move_with_requests() {
    let _serial = serial().await;
    let app = TestApp::spawn(Backend::Sqlite).await;
    let counter = [("method", "POST"), ("route", METRIC), ("status", "200")];
    let before = scrape(&app.client, &app.url("/metrics")).await;
    let body = metric_body("m", 1, "d");

    let response = app.post_json(METRIC, &body, Some(&app.token("u"))).await;

    assert_eq!(response.status(), 200);
    let after = scrape(&app.client, &app.url("/metrics")).await;
    let requests = |s: &Scrape| value(s, "http_requests_total", &counter).unwrap_or(0.0);
    assert_eq!(requests(&after), requests(&before) + 1.0);
    let rows = |s: &Scrape| {
        value(
            s,
            "analytics_rows_stored_total",
            &[("table", "AnalyticsMetrics")],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(rows(&after), rows(&before) + 1.0);
    let latency = [("method", "POST"), ("route", METRIC)];
    assert!(value(&after, "http_request_duration_seconds", &latency).unwrap() >= 1.0);
    let version = [("version", env!("CARGO_PKG_VERSION"))];
    assert_eq!(value(&after, "analytics_build_info", &version), Some(1.0));
    assert_eq!(value(&after, "analytics_db_pool_max", &[]), Some(5.0));
    assert!(value(&after, "analytics_db_pool_size", &[]).unwrap() >= 1.0);
    assert!(value(&after, "analytics_db_pool_idle", &[]).is_some());
    // The row was written before its answer, so no row is left waiting.
    let waiting = |table| {
        value(
            &after,
            "analytics_group_commit_waiting_rows",
            &[("table", table)],
        )
    };
    assert_eq!(waiting("AnalyticsMetrics"), Some(0.0));
    assert_eq!(waiting("AnalyticsDetails"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_status_of_a_route_is_counted_on_its_own_and_every_time() {
    let _serial = serial().await;
    let app = TestApp::spawn(Backend::Sqlite).await;
    let requests = |s: &Scrape, status| {
        let labels = [("method", "POST"), ("route", METRIC), ("status", status)];
        value(s, "http_requests_total", &labels).unwrap_or(0.0)
    };
    let valid = metric_body("m", 1, "d");
    let invalid = metric_body("", 1, "d");
    let before = scrape(&app.client, &app.url("/metrics")).await;

    for body in [&valid, &invalid, &valid] {
        app.post_json(METRIC, body, Some(&app.token("u"))).await;
    }

    let after = scrape(&app.client, &app.url("/metrics")).await;
    assert_eq!(requests(&after, "200"), requests(&before, "200") + 2.0);
    assert_eq!(requests(&after, "422"), requests(&before, "422") + 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_errors_are_counted_by_kind() {
    let _serial = serial().await;
    let mut settings = test_settings("postgres://postgres@127.0.0.1:1/nowhere");
    settings.database.startup_timeout = std::time::Duration::from_secs(0);
    settings.database.run_migrations = false;
    settings.database.acquire_timeout = std::time::Duration::from_millis(300);
    let app = TestApp::start(settings, None, Arc::new(SystemClock)).await;
    let errors = |s: &Scrape| {
        value(
            s,
            "analytics_storage_errors_total",
            &[("kind", "unavailable")],
        )
        .unwrap_or(0.0)
    };
    let before = scrape(&app.client, &app.url("/metrics")).await;
    let body = metric_body("m", 1, "d");

    let response = app.post_json(METRIC, &body, Some(&app.token("u"))).await;

    assert_eq!(response.status(), 503);
    let after = scrape(&app.client, &app.url("/metrics")).await;
    assert!(errors(&after) > errors(&before));
}

/// The prod profile as `main` loads it (a valid key, `database_url`), on a free port.
fn prod_settings(database_url: &str) -> Settings {
    let env = [
        ("APP_ENV", "prod"),
        ("JWT_VERIFY_KEY", "0123456789abcdef0123456789abcdef"),
        ("DATABASE_URL", database_url),
        ("PORT", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let config_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config");
    load_from(&config_dir, &env).expect("the prod profile loads")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_the_prod_profile_metrics_move_to_an_admin_port_of_their_own() {
    let _serial = serial().await;
    let database = TestDatabase::create(Backend::Sqlite).await;
    let mut settings = prod_settings(&database.url());
    assert_eq!(settings.telemetry.metrics.admin_port, Some(9464));
    // A free port: 9464 may be taken on this machine.
    settings.telemetry.metrics.admin_port = Some(0);
    let app = Application::build(&settings).await.unwrap();
    let (main, admin) = (
        app.local_addr(),
        app.admin_addr().expect("an admin listener"),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();

    let on_main = client
        .get(format!("http://{main}/metrics"))
        .send()
        .await
        .unwrap();
    let on_admin = scrape(&client, &format!("http://{admin}/metrics")).await;

    assert_eq!(on_main.status(), 404);
    assert!(value(&on_admin, "analytics_build_info", &[]).is_some());
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

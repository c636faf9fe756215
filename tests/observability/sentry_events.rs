//! Sentry as the fake ingest server receives it.

use std::time::Duration;

use analytics_service::settings::Settings;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sqlx::{Connection, Executor};

use crate::fake_sentry::FakeSentry;
use crate::helpers::{Backend, TestApp, event_body, eventually, metric_body};
use crate::support::{serial, start_telemetry};

const METRIC: &str = "/api/analytics/log_raw_metric";
const ANALYTICS: &str = "/api/analytics/log_raw_analytics";
const BOT_TOKEN: &str = "MTA5ODc2NTQzMjEwOTg3NjU0Mw.GhIjKl.abcdefghijklmnopqrstuvwxyz0123456789";
const DB_PASSWORD: &str = "db-password-never-sent";
const API_KEY: &str = "alerts-api-key-never-sent";
const COOKIE: &str = "session-cookie-never-sent";
const FLUSH: Duration = Duration::from_secs(5);

/// Settings pointing at `fake`, tracing everything, with secrets worth leaking.
fn with_sentry(fake: &FakeSentry) -> impl FnOnce(&mut Settings) {
    let dsn = fake.dsn();
    move |settings| {
        settings.telemetry.sentry.dsn = SecretString::from(dsn);
        settings.telemetry.sentry.traces_sample_rate = 1.0;
        settings.alerts.bot_token = SecretString::from(BOT_TOKEN);
        settings.alerts.alerts_api_key = SecretString::from(API_KEY);
        let url = settings.database.url.as_ref().unwrap().expose_secret();
        let mut url = url::Url::parse(url).unwrap();
        if url.scheme().starts_with("postgres") {
            // Trust authentication ignores it, but it is in the settings to be leaked.
            url.set_password(Some(DB_PASSWORD)).unwrap();
            settings.database.url = Some(SecretString::from(url.to_string()));
        }
    }
}

/// Spawns the app with telemetry started first, as `main` does.
async fn spawn(
    backend: Backend,
    fake: &FakeSentry,
) -> (analytics_service::telemetry::TelemetryGuard, TestApp) {
    spawn_with(backend, fake, |_| {}).await
}

/// As `spawn`, with `tweak` applied to the settings after `with_sentry`.
async fn spawn_with(
    backend: Backend,
    fake: &FakeSentry,
    tweak: impl Fn(&mut Settings),
) -> (analytics_service::telemetry::TelemetryGuard, TestApp) {
    let configure = |settings: &mut Settings| {
        with_sentry(fake)(settings);
        tweak(settings);
    };
    let mut settings = crate::helpers::test_settings("sqlite://unused");
    configure(&mut settings);
    let guard = start_telemetry(&settings);
    let app = TestApp::spawn_with(backend, configure).await;
    (guard, app)
}

async fn drop_table(app: &TestApp, table: &str) {
    let url = app.settings.database.url.as_ref().unwrap().expose_secret();
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    conn.execute(sqlx::AssertSqlSafe(format!(r#"drop table "{table}""#)))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_failure_is_one_error_event_with_environment_release_and_request_id() {
    let _serial = serial().await;
    let fake = FakeSentry::start().await;
    let (telemetry, app) = spawn(Backend::Postgres, &fake).await;
    drop_table(&app, "AnalyticsDetails").await;
    let token = app.token("user-1");

    let response = app
        .client
        .post(app.url(ANALYTICS))
        .bearer_auth(&token)
        .header("cookie", format!("session={COOKIE}"))
        .header("x-api-key", API_KEY)
        .json(&event_body("t", json!({}), "i"))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 500);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(telemetry.flush(FLUSH));
    eventually("a Sentry event", Duration::from_secs(5), async || {
        !fake.events().is_empty()
    })
    .await;
    let events = fake.events();
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    assert_eq!(event["environment"], "app:local-behave:local");
    assert_eq!(
        event["release"],
        concat!("analytics-service@", env!("CARGO_PKG_VERSION"))
    );
    // "error" is the protocol's default level and may be left out.
    assert_eq!(event["level"].as_str().unwrap_or("error"), "error");
    assert_eq!(event["tags"]["request_id"], request_id);
    assert_eq!(event["transaction"], format!("POST {ANALYTICS}"));
    assert!(
        !event["exception"]["values"].as_array().unwrap().is_empty(),
        "the error is sent as an exception with its chain: {event:#}"
    );
    println!("EVENT {}", serde_json::to_string_pretty(event).unwrap());
    let raw: Vec<u8> = fake.raw().concat();
    let raw = String::from_utf8_lossy(&raw);
    for secret in [token.as_str(), COOKIE, API_KEY, DB_PASSWORD, BOT_TOKEN] {
        assert!(!raw.contains(secret), "{secret} was sent to Sentry");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_422_is_not_an_error_event() {
    let _serial = serial().await;
    let fake = FakeSentry::start().await;
    let (telemetry, app) = spawn(Backend::Sqlite, &fake).await;
    let body = metric_body("", "abc", 1);

    let response = app.post_json(METRIC, &body, Some(&app.token("u"))).await;

    assert_eq!(response.status(), 422);
    assert!(telemetry.flush(FLUSH));
    // The request's transaction arriving shows the pipeline works; no event came with it.
    eventually("a Sentry transaction", Duration::from_secs(5), async || {
        !fake.transactions().is_empty()
    })
    .await;
    assert!(telemetry.flush(FLUSH));
    assert_eq!(fake.events(), Vec::<Value>::new());
    assert_eq!(
        fake.transactions()[0]["contexts"]["trace"]["status"],
        "invalid_argument"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_of_an_unknown_user_is_a_403_not_an_error_event() {
    let _serial = serial().await;
    let fake = FakeSentry::start().await;
    let (telemetry, app) = spawn(Backend::Postgres, &fake).await;
    app.require_known_users(&["known"]).await;

    let response = app
        .post_json(
            METRIC,
            &metric_body("page_load_ms", 12.5, "/build"),
            Some(&app.token("stranger")),
        )
        .await;

    assert_eq!(response.status(), 403);
    assert!(telemetry.flush(FLUSH));
    // The request's transaction arriving shows the pipeline works; no event came with it.
    eventually("a Sentry transaction", Duration::from_secs(5), async || {
        !fake.transactions().is_empty()
    })
    .await;
    assert!(telemetry.flush(FLUSH));
    assert_eq!(fake.events(), Vec::<Value>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_a_transaction_named_by_its_route_template_continuing_the_trace() {
    let _serial = serial().await;
    let fake = FakeSentry::start().await;
    // PostgreSQL: sqlx's SQLite worker thread holds the caller's span a moment after it
    // answers, so with SQLite the handler span may close after the transaction was sent.
    let (telemetry, app) = spawn(Backend::Postgres, &fake).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();

    let response = app
        .client
        .post(app.url(METRIC))
        .bearer_auth(app.token("u"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&metric_body("page_load_ms", 12.5, "/build"))
        .send()
        .await
        .unwrap();

    assert_eq!(health.status(), 200);
    assert_eq!(response.status(), 200);
    assert!(telemetry.flush(FLUSH));
    eventually("a Sentry transaction", Duration::from_secs(5), async || {
        !fake.transactions().is_empty()
    })
    .await;
    let transactions = fake.transactions();
    assert_eq!(
        transactions.len(),
        1,
        "/healthz is never traced: {transactions:#?}"
    );
    let transaction = &transactions[0];
    assert_eq!(transaction["transaction"], format!("POST {METRIC}"));
    assert_eq!(transaction["contexts"]["trace"]["op"], "http.server");
    assert_eq!(transaction["contexts"]["trace"]["trace_id"], trace_id);
    assert_eq!(
        transaction["contexts"]["trace"]["parent_span_id"],
        "00f067aa0ba902b7"
    );
    assert_eq!(transaction["environment"], "app:local-behave:local");
    let spans: Vec<&str> = transaction["spans"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["description"].as_str())
        .collect();
    assert!(spans.contains(&"http.request"), "request span: {spans:?}");
    assert!(spans.contains(&"log_raw_metric"), "handler span: {spans:?}");
    println!(
        "TRANSACTION {}",
        serde_json::to_string_pretty(transaction).unwrap()
    );
    println!(
        "TRANSACTION {}",
        serde_json::to_string_pretty(transaction).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactions_url_reaches_sentry_without_its_query_string() {
    let _serial = serial().await;
    let fake = FakeSentry::start().await;
    let (telemetry, app) = spawn(Backend::Sqlite, &fake).await;
    let token = app.token("u");

    let response = app
        .client
        .post(format!("{}?token={token}&page=2", app.url(METRIC)))
        .bearer_auth(&token)
        .json(&metric_body("page_load_ms", 12.5, "/build"))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    assert!(telemetry.flush(FLUSH));
    eventually("a Sentry transaction", Duration::from_secs(5), async || {
        !fake.transactions().is_empty()
    })
    .await;
    let transaction = &fake.transactions()[0];
    let url = transaction["request"]["url"].as_str().unwrap();
    assert!(url.ends_with(METRIC), "{url}");
    let raw: Vec<u8> = fake.raw().concat();
    let raw = String::from_utf8_lossy(&raw);
    assert!(!raw.contains(&token), "the token in the query was sent");
    assert!(!raw.contains("page=2"), "the query string was sent");
}

/// Sends one metric carrying a sampled `sentry-trace` to an app whose own rate is 0 and
/// which trusts incoming traces or not, then one message as a control that envelopes
/// arrive; returns the transactions Sentry received once that message is in.
async fn transactions_after_a_sampled_incoming_trace(trust_incoming_traces: bool) -> usize {
    let fake = FakeSentry::start().await;
    let (telemetry, app) = spawn_with(Backend::Sqlite, &fake, |settings| {
        settings.telemetry.sentry.traces_sample_rate = 0.0;
        settings.telemetry.sentry.trust_incoming_traces = trust_incoming_traces;
    })
    .await;

    let response = app
        .client
        .post(app.url(METRIC))
        .bearer_auth(app.token("u"))
        .header(
            "sentry-trace",
            "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        )
        .json(&metric_body("page_load_ms", 12.5, "/build"))
        .send()
        .await
        .unwrap();
    // Queued after the transaction, which is finished before the response is sent.
    sentry::capture_message("control", sentry::Level::Error);

    assert_eq!(response.status(), 200);
    assert!(telemetry.flush(FLUSH));
    eventually("a Sentry event", Duration::from_secs(5), async || {
        !fake.events().is_empty()
    })
    .await;
    fake.transactions().len()
}

// One test each: a runtime's worker threads keep the Sentry hub of the first client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incoming_sampled_trace_forces_no_transaction_by_default() {
    let _serial = serial().await;

    let transactions = transactions_after_a_sampled_incoming_trace(false).await;

    assert_eq!(transactions, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incoming_sampled_trace_forces_a_transaction_when_trusted() {
    let _serial = serial().await;

    let transactions = transactions_after_a_sampled_incoming_trace(true).await;

    assert_eq!(transactions, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_error_sends_the_error_with_its_source_chain_and_flushes() {
    let _serial = serial().await;
    let fake = FakeSentry::start().await;
    let mut settings = crate::helpers::test_settings("sqlite://unused");
    settings.telemetry.sentry.dsn = SecretString::from(fake.dsn());
    let _telemetry = start_telemetry(&settings);
    let err = anyhow::Error::new(std::io::Error::other("connection refused"))
        .context("database not usable");

    analytics_service::telemetry::capture_error(err.as_ref());

    eventually("a Sentry event", Duration::from_secs(5), async || {
        !fake.events().is_empty()
    })
    .await;
    let events = fake.events();
    assert_eq!(events.len(), 1, "logged once, reported once: {events:#?}");
    let chain: Vec<&str> = events[0]["exception"]["values"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["value"].as_str())
        .collect();
    assert_eq!(chain, ["connection refused", "database not usable"]);
}

// Two runtimes: worker threads take the Sentry client they first see, so the part without
// a DSN runs on threads that never saw the first part's client.
#[test]
fn with_no_dsn_nothing_is_sent() {
    let _serial = crate::support::serial_blocking();
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    };
    let fake_runtime = runtime();
    let fake = fake_runtime.block_on(FakeSentry::start());
    runtime().block_on(async {
        let (telemetry, app) = spawn(Backend::Sqlite, &fake).await;
        app.post_json(
            METRIC,
            &metric_body("page_load_ms", 12.5, "/build"),
            Some(&app.token("u")),
        )
        .await;
        assert!(telemetry.flush(FLUSH));
        eventually("a Sentry transaction", Duration::from_secs(5), async || {
            !fake.transactions().is_empty()
        })
        .await;
    });
    let received = fake.raw().len();

    runtime().block_on(async {
        let mut settings = crate::helpers::test_settings("sqlite://unused");
        settings.telemetry.sentry.dsn = SecretString::from("");
        let telemetry = start_telemetry(&settings);
        let app = TestApp::spawn_with(Backend::Postgres, |s| {
            s.telemetry.sentry.dsn = SecretString::from("")
        })
        .await;
        drop_table(&app, "AnalyticsMetrics").await;

        let failed = app
            .post_json(
                METRIC,
                &metric_body("page_load_ms", 12.5, "/build"),
                Some(&app.token("u")),
            )
            .await;

        assert_eq!(failed.status(), 500);
        assert!(!telemetry.sentry_enabled());
        assert!(sentry::Hub::main().client().is_none());
        assert!(telemetry.flush(FLUSH));
    });
    assert_eq!(
        fake.raw().len(),
        received,
        "nothing arrived once the DSN was empty"
    );
}

async fn panicking_handler() -> &'static str {
    panic!("a bug in a handler")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_reported_once_and_answered_500() {
    use tower::ServiceExt;
    let _serial = serial().await;
    let fake = FakeSentry::start().await;
    let mut settings = crate::helpers::test_settings("sqlite://unused");
    settings.telemetry.sentry.dsn = SecretString::from(fake.dsn());
    let telemetry = start_telemetry(&settings);
    let router = analytics_service::telemetry::http::instrument(
        axum::Router::new().route("/boom/{id}", axum::routing::get(panicking_handler)),
    );
    let request = axum::http::Request::get("/boom/7")
        .body(axum::body::Body::empty())
        .unwrap();

    let response = router.oneshot(request).await.unwrap();

    assert_eq!(response.status(), 500);
    assert!(telemetry.flush(FLUSH));
    eventually("a Sentry event", Duration::from_secs(5), async || {
        !fake.events().is_empty()
    })
    .await;
    let events = fake.events();
    assert_eq!(events.len(), 1, "{events:#?}");
    let exception = &events[0]["exception"]["values"][0];
    assert_eq!(exception["mechanism"]["type"], "panic");
    assert_eq!(exception["value"], "a bug in a handler");
    assert_eq!(events[0]["transaction"], "GET /boom/{id}");
}

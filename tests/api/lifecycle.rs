//! Start-up, readiness, storage failures and graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use analytics_service::clock::SystemClock;
use serde_json::{Value, json};
use sqlx::{Connection, Executor};

use crate::helpers::{
    Backend, TestApp, TestDatabase, event_body, metric_body, metric_storage_503_body, test_settings,
};

const METRIC: &str = "/api/analytics/log_raw_metric";

#[tokio::test]
async fn healthz_and_readyz_answer_when_the_database_does() {
    let app = TestApp::spawn(Backend::Postgres).await;

    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();

    assert_eq!(health.status(), 200);
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn an_unreachable_database_gives_503_with_retry_after() {
    let mut settings = test_settings("postgres://postgres@127.0.0.1:1/nowhere");
    settings.database.startup_timeout = Duration::from_secs(0);
    settings.database.run_migrations = false;
    settings.database.acquire_timeout = Duration::from_millis(500);
    let app = TestApp::start(settings, None, Arc::new(SystemClock)).await;

    let response = app
        .post_json(METRIC, &metric_body("m", 1, "d"), Some(&app.token("u")))
        .await;
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();

    let body = metric_storage_503_body(response).await;
    assert!(
        !body.to_string().contains("127.0.0.1"),
        "no connection details: {body}"
    );
    assert_eq!(ready.status(), 503);
}

#[tokio::test]
async fn a_broken_schema_gives_500_with_a_safe_message() {
    let app = TestApp::spawn(Backend::Postgres).await;
    let mut conn = sqlx::PgConnection::connect(
        app.settings
            .database
            .url
            .as_ref()
            .map(secrecy::ExposeSecret::expose_secret)
            .unwrap(),
    )
    .await
    .unwrap();
    conn.execute(r#"drop table "AnalyticsDetails""#)
        .await
        .unwrap();
    let body = event_body("t", json!({}), "i");

    let response = app
        .post_json(
            "/api/analytics/log_raw_analytics",
            &body,
            Some(&app.token("u")),
        )
        .await;

    assert_eq!(response.status(), 500);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"detail": {"message": "Analytics database error", "hint": "Ensure analytics DB is reachable."}})
    );
}

/// Posts one metric through an app whose database URL ends in `?{query}`, then counts
/// that metric's row in `table` (a qualified name, read on a plain connection).
async fn metric_rows_in(query: &str, table: &str) -> i64 {
    let database = TestDatabase::create(Backend::Postgres).await;
    let plain_url = database.url();
    let url = format!("{plain_url}?{query}");
    let app = TestApp::start(test_settings(&url), Some(database), Arc::new(SystemClock)).await;

    let response = app
        .post_json(METRIC, &metric_body("m", 1, "d"), Some(&app.token("u")))
        .await;

    assert_eq!(response.status(), 200);
    let id: String = response.json().await.unwrap();
    let mut conn = sqlx::PgConnection::connect(&plain_url).await.unwrap();
    let count_in_table = format!(r#"select count(*) from {table} where "id" = $1"#);
    let (count,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(count_in_table))
        .bind(&id)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    count
}

#[tokio::test]
async fn prisma_schema_parameter_puts_the_tables_in_that_schema() {
    let rows = metric_rows_in(
        "schema=platform&connect_timeout=5",
        r#"platform."AnalyticsMetrics""#,
    )
    .await;

    assert_eq!(rows, 1);
}

#[tokio::test]
async fn a_schema_name_with_capitals_keeps_its_case() {
    let rows = metric_rows_in("schema=MySchema", r#""MySchema"."AnalyticsMetrics""#).await;

    assert_eq!(rows, 1);
}

#[tokio::test]
async fn pgbouncer_parameter_is_accepted_and_rows_are_written() {
    let rows = metric_rows_in("pgbouncer=true", r#"public."AnalyticsMetrics""#).await;

    assert_eq!(rows, 1);
}

#[tokio::test]
async fn the_embedded_default_creates_its_file_and_folder() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings("");
    settings.database.url = None;
    settings.database.sqlite_path = dir.path().join("data").join("analytics.db");
    let app = TestApp::start(settings.clone(), None, Arc::new(SystemClock)).await;

    let response = app
        .post_json(METRIC, &metric_body("m", 1, "d"), Some(&app.token("u")))
        .await;

    assert_eq!(response.status(), 200);
    assert!(settings.database.sqlite_path.is_file());
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let mut app = TestApp::spawn(Backend::Postgres).await;
    let mut blocker = app.lock_metrics_table().await;
    let request = app
        .client
        .post(app.url(METRIC))
        .bearer_auth(app.token("u"))
        .json(&metric_body("m", 1, "d"))
        .send();
    let in_flight = tokio::spawn(request);
    app.wait_for_lock_waiter().await;

    let release_later = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        blocker.execute("commit").await.unwrap();
    };
    let (stopped, ()) = tokio::join!(app.stop(), release_later);

    stopped.expect("the server stops cleanly");
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let id: String = response.json().await.unwrap();
    let mut check = app.pg().await;
    let (count,): (i64,) =
        sqlx::query_as(r#"select count(*) from "AnalyticsMetrics" where "id" = $1"#)
            .bind(&id)
            .fetch_one(&mut check)
            .await
            .unwrap();
    assert_eq!(count, 1);
}

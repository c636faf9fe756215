//! `Idempotency-Key` on both analytics endpoints, against a real database.

use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::{Value, json};
use sqlx::Connection;

use crate::helpers::{Backend, TestApp, event_body, eventually, metric_body};
use crate::on_both_backends;

const METRIC: &str = "/api/analytics/log_raw_metric";
const EVENT: &str = "/api/analytics/log_raw_analytics";

/// The metric these tests send, with `value`.
fn page_load(value: f64) -> Value {
    metric_body("page_load_ms", value, "/build")
}

/// The event these tests send.
fn agent_run() -> Value {
    event_body("agent_run", json!({"b": 1, "a": [1, 2]}), "a1")
}

async fn post_keyed(
    app: &TestApp,
    path: &str,
    body: &Value,
    token: &str,
    key: &str,
) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .expect("the request reaches the server")
}

async fn id_of(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Rows of `table` the user owns, read with a connection of the test's own.
async fn rows_of(app: &TestApp, table: &str, user: &str) -> i64 {
    let url = app
        .settings
        .database
        .url
        .as_ref()
        .unwrap()
        .expose_secret()
        .to_owned();
    let sql = format!(r#"select count(*) from "{table}" where "userId" = $1"#);
    let (count,): (i64,) = if url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(user)
            .fetch_one(&mut conn)
            .await
            .unwrap()
    } else {
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(user)
            .fetch_one(&mut conn)
            .await
            .unwrap()
    };
    count
}

async fn fifty_racing_replays_store_one_row_and_answer_one_id(app: TestApp) {
    let token = app.token("racer");
    let body = page_load(12.5);

    let mut racers = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let request = app
            .client
            .post(app.url(METRIC))
            .bearer_auth(&token)
            .header("Idempotency-Key", "race-key-1")
            .json(&body);
        racers.spawn(async move { id_of(request.send().await.unwrap()).await });
    }
    let ids = racers.join_all().await;

    assert!(ids.iter().all(|id| *id == ids[0]), "ids differ: {ids:?}");
    assert_eq!(rows_of(&app, "AnalyticsMetrics", "racer").await, 1);
    let row = app.store.metric_by_id(&ids[0]).await.unwrap().unwrap();
    assert_eq!(row.value, 12.5);
}

async fn a_replay_answers_the_original_id_and_stores_nothing(app: TestApp) {
    let token = app.token("user-1");
    let reordered = json!({"data_index": "a1", "data": {"a": [1, 2], "b": 1}, "type": "agent_run"});

    let first = id_of(post_keyed(&app, EVENT, &agent_run(), &token, "k-1").await).await;
    let replay = id_of(post_keyed(&app, EVENT, &reordered, &token, "k-1").await).await;
    let other_key = id_of(post_keyed(&app, EVENT, &agent_run(), &token, "k-2").await).await;

    assert_eq!(replay, first);
    assert_ne!(other_key, first);
    assert_eq!(rows_of(&app, "AnalyticsDetails", "user-1").await, 2);
}

async fn the_same_key_with_another_body_is_a_422_naming_the_conflict(app: TestApp) {
    let token = app.token("user-1");
    let first = id_of(post_keyed(&app, METRIC, &page_load(1.0), &token, "k").await).await;

    let response = post_keyed(&app, METRIC, &page_load(2.0), &token, "k").await;

    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["message"],
        "Invalid data for POST /api/analytics/log_raw_metric"
    );
    assert_eq!(body["hint"], "Ensure the request matches the API schema.");
    assert_eq!(body["detail"][0]["type"], "idempotency_key_conflict");
    assert_eq!(
        body["detail"][0]["loc"],
        json!(["header", "Idempotency-Key"])
    );
    assert_eq!(body["detail"][0]["input"], "k");
    assert!(
        body["detail"][0]["msg"]
            .as_str()
            .unwrap()
            .contains("already used with a different request body"),
        "{body}"
    );
    assert_eq!(rows_of(&app, "AnalyticsMetrics", "user-1").await, 1);
    assert!(app.store.metric_by_id(&first).await.unwrap().is_some());
}

async fn keys_of_different_users_never_collide(app: TestApp) {
    let (alice, bob) = (app.token("alice"), app.token("bob"));

    let alice_id = id_of(post_keyed(&app, METRIC, &page_load(1.0), &alice, "shared").await).await;
    let bob_id = id_of(post_keyed(&app, METRIC, &page_load(2.0), &bob, "shared").await).await;

    assert_ne!(alice_id, bob_id);
    assert_eq!(rows_of(&app, "AnalyticsMetrics", "alice").await, 1);
    assert_eq!(rows_of(&app, "AnalyticsMetrics", "bob").await, 1);
    let bob_row = app.store.metric_by_id(&bob_id).await.unwrap().unwrap();
    assert_eq!((bob_row.user_id.as_str(), bob_row.value), ("bob", 2.0));
}

async fn a_key_is_scoped_to_its_endpoint(app: TestApp) {
    let token = app.token("user-1");

    let metric_id = id_of(post_keyed(&app, METRIC, &page_load(1.0), &token, "k").await).await;
    let event_id = id_of(post_keyed(&app, EVENT, &agent_run(), &token, "k").await).await;

    assert_ne!(metric_id, event_id);
    assert!(app.store.event_by_id(&event_id).await.unwrap().is_some());
}

async fn a_malformed_key_is_a_422_after_auth(app: TestApp) {
    let token = app.token("user-1");
    let too_long = "x".repeat(256);

    for key in ["   ", too_long.as_str()] {
        let response = post_keyed(&app, METRIC, &page_load(1.0), &token, key).await;

        assert_eq!(response.status(), 422, "{key:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["detail"][0]["type"], "idempotency_key_invalid");
    }
    let unauthenticated = app
        .client
        .post(app.url(METRIC))
        .header("Idempotency-Key", "   ")
        .json(&page_load(1.0))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    assert_eq!(rows_of(&app, "AnalyticsMetrics", "user-1").await, 0);
}

async fn requests_without_a_key_are_stored_each_time(app: TestApp) {
    let token = app.token("user-1");

    let first = id_of(app.post_json(METRIC, &page_load(1.0), Some(&token)).await).await;
    let second = id_of(app.post_json(METRIC, &page_load(1.0), Some(&token)).await).await;

    assert_ne!(first, second);
    assert_eq!(rows_of(&app, "AnalyticsMetrics", "user-1").await, 2);
}

async fn pruning_deletes_expired_keys_only(app: TestApp) {
    let token = app.token("user-1");
    id_of(post_keyed(&app, METRIC, &page_load(1.0), &token, "k").await).await;
    let now = chrono::Utc::now().naive_utc();

    let none_yet = app
        .store
        .prune_idempotency_keys(now - chrono::Duration::hours(1))
        .await
        .unwrap();
    let pruned = app
        .store
        .prune_idempotency_keys(now + chrono::Duration::seconds(1))
        .await
        .unwrap();

    assert_eq!((none_yet, pruned), (0, 1));
    let after = id_of(post_keyed(&app, METRIC, &page_load(2.0), &token, "k").await).await;
    assert_eq!(
        app.store.metric_by_id(&after).await.unwrap().unwrap().value,
        2.0
    );
}

on_both_backends!(
    fifty_racing_replays_store_one_row_and_answer_one_id,
    a_replay_answers_the_original_id_and_stores_nothing,
    the_same_key_with_another_body_is_a_422_naming_the_conflict,
    keys_of_different_users_never_collide,
    a_key_is_scoped_to_its_endpoint,
    a_malformed_key_is_a_422_after_auth,
    requests_without_a_key_are_stored_each_time,
    pruning_deletes_expired_keys_only,
);

/// With a one-second retention, the key is forgotten and the same key stores a new row.
async fn an_expired_key_stores_a_new_row(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        s.idempotency.retention = Duration::from_secs(1)
    })
    .await;
    let token = app.token("user-1");
    let first = id_of(post_keyed(&app, METRIC, &page_load(1.0), &token, "k").await).await;

    let renewed = eventually("the key to expire", Duration::from_secs(10), async || {
        let id = id_of(post_keyed(&app, METRIC, &page_load(1.0), &token, "k").await).await;
        (id != first).then_some(id)
    })
    .await;

    assert_ne!(renewed, first, "the key did not expire within 10 s");
    assert_eq!(rows_of(&app, "AnalyticsMetrics", "user-1").await, 2);
    let replay = id_of(post_keyed(&app, METRIC, &page_load(1.0), &token, "k").await).await;
    assert_eq!(replay, renewed, "the renewed key is remembered again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_key_stores_a_new_row_on_postgres() {
    an_expired_key_stores_a_new_row(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_key_stores_a_new_row_on_sqlite() {
    an_expired_key_stores_a_new_row(Backend::Sqlite).await;
}

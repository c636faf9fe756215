//! The batch endpoints: one result per item, in order; valid items stored together.

use serde_json::{Value, json};
use sqlx::Executor;

use crate::helpers::{Backend, TestApp, event_body, metric_body, metric_storage_503_body};
use crate::on_both_backends;

const METRICS: &str = "/api/analytics/log_raw_metric/batch";
const EVENTS: &str = "/api/analytics/log_raw_analytics/batch";

async fn mixed_items_are_answered_in_order_and_only_valid_ones_stored(app: TestApp) {
    let token = app.token("user-1");
    let body = json!([
        {"metric_name": "a", "metric_value": 1, "data_string": "d"},
        {"metric_name": "", "metric_value": 1, "data_string": "d"},
        {"metric_name": "c", "metric_value": "2.5", "data_string": "d"},
        "not an object",
    ]);

    let response = app.post_json(METRICS, &body, Some(&token)).await;

    assert_eq!(response.status(), 200);
    let results: Vec<Value> = response.json().await.unwrap();
    assert_eq!(results.len(), 4);
    let first = app
        .store
        .metric_by_id(results[0]["id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.analytic_metric, "a");
    assert_eq!(results[1]["error"][0]["type"], "string_too_short");
    assert_eq!(
        results[1]["error"][0]["loc"],
        json!(["body", 1, "metric_name"])
    );
    let third = app
        .store
        .metric_by_id(results[2]["id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(third.value, 2.5);
    assert_eq!(results[3]["error"][0]["type"], "model_type");
}

async fn events_batch_stores_every_valid_event(app: TestApp) {
    let token = app.token("user-2");
    let items: Vec<Value> = (0..100)
        .map(|i| event_body("t", json!({"i": i}), format!("{i}")))
        .collect();

    let response = app
        .post_json(EVENTS, &Value::Array(items), Some(&token))
        .await;

    assert_eq!(response.status(), 200);
    let results: Vec<Value> = response.json().await.unwrap();
    assert_eq!(results.len(), 100);
    let last = app
        .store
        .event_by_id(results[99]["id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(last.data_index.as_deref(), Some("99"));
    assert_eq!(last.user_id, "user-2");
}

async fn empty_non_array_and_oversized_batches_are_refused_whole(app: TestApp) {
    let token = app.token("user-1");
    let item = metric_body("a", 1, "d");
    let too_many = Value::Array(vec![item.clone(); app.settings.batch.max_items + 1]);
    let cases = [
        (json!([]), "too_short"),
        (item.clone(), "list_type"),
        (too_many, "too_long"),
    ];

    for (body, kind) in cases {
        let response = app.post_json(METRICS, &body, Some(&token)).await;

        assert_eq!(response.status(), 422);
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["message"],
            "Invalid data for POST /api/analytics/log_raw_metric/batch"
        );
        assert_eq!(body["detail"][0]["type"], kind);
    }
}

on_both_backends!(
    mixed_items_are_answered_in_order_and_only_valid_ones_stored,
    events_batch_stores_every_valid_event,
    empty_non_array_and_oversized_batches_are_refused_whole,
);

#[tokio::test]
async fn batches_need_a_token_and_have_their_own_body_limit() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| s.batch.body_limit_bytes = 500).await;
    let big: Vec<Value> = (0..20).map(|_| metric_body("aaaa", 1, "d")).collect();

    let anonymous = app.post_json(METRICS, &json!([]), None).await;
    let too_big = app
        .post_json(METRICS, &Value::Array(big), Some(&app.token("u")))
        .await;

    assert_eq!(anonymous.status(), 401);
    assert_eq!(too_big.status(), 413);
    assert_eq!(
        too_big.json::<Value>().await.unwrap(),
        json!({"detail": "Request body too large: the limit is 500 bytes"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_gets_no_turn_in_time_is_answered_503() {
    let app = TestApp::spawn_with(Backend::Postgres, |s| {
        s.batch.max_concurrent = 1;
        s.database.acquire_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    let mut blocker = app.lock_metrics_table().await;
    let token = app.token("user-1");
    let batch = |name: &str| {
        let item = metric_body(name, 1, "d");
        app.client
            .post(app.url(METRICS))
            .bearer_auth(&token)
            .json(&json!([item]))
            .send()
    };
    // The first batch takes the only turn and waits on the table lock.
    let first = tokio::spawn(batch("first"));
    app.wait_for_lock_waiter().await;

    let second = batch("second").await.unwrap();

    metric_storage_503_body(second).await;
    blocker.execute("commit").await.unwrap();
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    let third = batch("third").await.unwrap();
    assert_eq!(third.status(), 200, "the turn is given back");
}

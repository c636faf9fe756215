//! `POST /api/analytics/log_raw_metric`: the original's `analytics_test.py` cases against a
//! real database, rows read back field by field.

use std::sync::Arc;

use analytics_service::clock::FixedClock;
use chrono::{TimeZone, Utc};
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, metric_body};
use crate::on_both_backends;

const PATH: &str = "/api/analytics/log_raw_metric";

async fn stored_id(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body.as_str()
        .expect("the id is a bare JSON string")
        .to_owned()
}

async fn metric_is_stored_and_its_id_returned(app: TestApp) {
    let token = app.token("user-1");
    let body = metric_body("page_load_time", 123.45, "/build");

    let id = stored_id(app.post_json(PATH, &body, Some(&token)).await).await;

    let row = app
        .store
        .metric_by_id(&id)
        .await
        .unwrap()
        .expect("the row exists");
    assert_eq!(row.id, id);
    assert_eq!(row.analytic_metric, "page_load_time");
    assert_eq!(row.value, 123.45);
    assert_eq!(row.data_string.as_deref(), Some("/build"));
    assert_eq!(row.user_id, "user-1");
    assert_eq!(row.created_at, row.updated_at);
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7);
}

async fn the_original_six_metric_values_are_stored_exactly(app: TestApp) {
    let token = app.token("user-1");
    for value in [0.0, 1.0, 0.5, 100.0, 999_999.99, 1e-10] {
        let body = metric_body("m", value, "d");

        let id = stored_id(app.post_json(PATH, &body, Some(&token)).await).await;

        let row = app.store.metric_by_id(&id).await.unwrap().unwrap();
        assert_eq!(row.value, value);
    }
}

async fn numeric_strings_are_converted(app: TestApp) {
    let token = app.token("user-1");
    let body = metric_body("m", " 2.5 ", "d");

    let id = stored_id(app.post_json(PATH, &body, Some(&token)).await).await;

    assert_eq!(
        app.store.metric_by_id(&id).await.unwrap().unwrap().value,
        2.5
    );
}

async fn validation_errors_are_all_reported_in_the_original_shape(app: TestApp) {
    let token = app.token("user-1");
    let body = metric_body("", "abc", 42);

    let response = app.post_json(PATH, &body, Some(&token)).await;

    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["message"],
        "Invalid data for POST /api/analytics/log_raw_metric"
    );
    assert_eq!(body["hint"], "Ensure the request matches the API schema.");
    assert_eq!(
        body["detail"],
        json!([
            {"type": "string_too_short", "loc": ["body", "metric_name"],
             "msg": "String should have at least 1 character", "input": "", "ctx": {"min_length": 1}},
            {"type": "float_parsing", "loc": ["body", "metric_value"],
             "msg": "Input should be a valid number, unable to parse string as a number", "input": "abc"},
            {"type": "string_type", "loc": ["body", "data_string"],
             "msg": "Input should be a valid string", "input": 42},
        ])
    );
}

async fn missing_fields_and_empty_body_report_every_field(app: TestApp) {
    let token = app.token("user-1");

    for raw in ["", "{}"] {
        let response = app.post_raw(PATH, raw, Some(&token)).await;

        assert_eq!(response.status(), 422);
        let body: Value = response.json().await.unwrap();
        let fields: Vec<&Value> = body["detail"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["loc"][1])
            .collect();
        assert_eq!(fields, vec!["metric_name", "metric_value", "data_string"]);
        assert!(
            body["detail"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["type"] == "missing")
        );
    }
}

async fn non_finite_negative_and_non_numeric_values_are_refused(app: TestApp) {
    let token = app.token("user-1");
    let cases = [
        (json!("inf"), "finite_number"),
        (json!("NaN"), "finite_number"),
        (json!("1e309"), "finite_number"),
        (json!(-1.5), "greater_than_equal"),
        (json!(true), "float_type"),
        (json!(null), "float_type"),
    ];
    for (value, kind) in cases {
        let body = metric_body("m", value.clone(), "d");

        let response = app.post_json(PATH, &body, Some(&token)).await;

        assert_eq!(response.status(), 422, "value {value}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["detail"][0]["type"], kind, "value {value}");
    }
}

async fn control_characters_are_stripped_before_storing(app: TestApp) {
    let token = app.token("user-1");
    let body = metric_body("a\u{0}b", 1, "\u{1}");

    let id = stored_id(app.post_json(PATH, &body, Some(&token)).await).await;

    let row = app.store.metric_by_id(&id).await.unwrap().unwrap();
    assert_eq!(row.analytic_metric, "ab");
    assert_eq!(row.data_string.as_deref(), Some(""));
}

async fn a_body_that_is_not_json_is_refused_before_auth(app: TestApp) {
    let response = app.post_raw(PATH, "{not json", None).await;

    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["detail"][0]["type"], "json_invalid");
    assert_eq!(body["detail"][0]["msg"], "JSON decode error");
}

on_both_backends!(
    metric_is_stored_and_its_id_returned,
    the_original_six_metric_values_are_stored_exactly,
    numeric_strings_are_converted,
    validation_errors_are_all_reported_in_the_original_shape,
    missing_fields_and_empty_body_report_every_field,
    non_finite_negative_and_non_numeric_values_are_refused,
    control_characters_are_stripped_before_storing,
    a_body_that_is_not_json_is_refused_before_auth,
);

#[tokio::test]
async fn timestamps_come_from_the_clock_at_millisecond_precision() {
    let now = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
        + chrono::Duration::microseconds(678_901);
    let app = TestApp::spawn_full(Backend::Postgres, |_| {}, Arc::new(FixedClock(now))).await;
    let body = metric_body("m", 1, "d");

    let id = stored_id(app.post_json(PATH, &body, Some(&app.token("u"))).await).await;

    let row = app.store.metric_by_id(&id).await.unwrap().unwrap();
    let expected = (now - chrono::Duration::microseconds(901)).naive_utc();
    assert_eq!(row.created_at, expected);
    assert_eq!(row.updated_at, expected);
}

#[tokio::test]
async fn python_json_literals_and_overflowing_numbers_are_finite_number_errors() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let token = app.token("user-1");
    for literal in ["NaN", "Infinity", "-Infinity", "1e309"] {
        let raw =
            format!(r#"{{"metric_name": "m", "metric_value": {literal}, "data_string": "d"}}"#);

        let response = app.post_raw(PATH, raw, Some(&token)).await;

        assert_eq!(response.status(), 422, "{literal}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["detail"][0]["type"], "finite_number", "{literal}");
        assert_eq!(body["detail"][0]["input"], literal);
    }
}

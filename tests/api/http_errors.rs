//! HTTP-level answers: unknown routes, wrong methods, oversized and non-JSON bodies.

use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, event_body};

#[tokio::test]
async fn other_methods_get_405_in_the_detail_shape() {
    let app = TestApp::spawn(Backend::Sqlite).await;

    for path in [
        "/api/analytics/log_raw_metric",
        "/api/analytics/log_raw_analytics",
    ] {
        let response = app.client.get(app.url(path)).send().await.unwrap();

        assert_eq!(response.status(), 405);
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            json!({"detail": "Method Not Allowed"})
        );
    }
}

#[tokio::test]
async fn unknown_paths_get_404_in_the_detail_shape() {
    let app = TestApp::spawn(Backend::Sqlite).await;

    let response = app.client.get(app.url("/nope")).send().await.unwrap();

    assert_eq!(response.status(), 404);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"detail": "Not Found"})
    );
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413_naming_the_limit() {
    let app =
        TestApp::spawn_with(Backend::Sqlite, |s| s.edge.requests.body_limit_bytes = 1000).await;
    let token = app.token("u");
    let big = event_body("t", json!({"blob": "x".repeat(2000)}), "i");

    let response = app
        .post_json("/api/analytics/log_raw_analytics", &big, Some(&token))
        .await;

    assert_eq!(response.status(), 413);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"detail": "Request body too large: the limit is 1000 bytes"})
    );
}

#[tokio::test]
async fn a_body_that_is_not_declared_json_is_a_model_type_error_after_auth() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let send = |token: Option<String>| {
        let mut request = app
            .client
            .post(app.url("/api/analytics/log_raw_metric"))
            .header("content-type", "text/plain")
            .body(r#"{"metric_name": "m", "metric_value": 1, "data_string": "d"}"#);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };

    let anonymous = send(None).await.unwrap();
    let signed_in = send(Some(app.token("u"))).await.unwrap();

    assert_eq!(anonymous.status(), 401);
    assert_eq!(signed_in.status(), 422);
    let body: Value = signed_in.json().await.unwrap();
    assert_eq!(body["detail"][0]["type"], "model_type");
    assert_eq!(body["detail"][0]["loc"], json!(["body"]));
}

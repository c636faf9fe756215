//! Log lines: JSON, one per line, each line of a request carrying its request id.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{Backend, TestApp, eventually, metric_body};
use crate::support::{log_lines, serial, start_telemetry};

const METRIC: &str = "/api/analytics/log_raw_metric";

fn lines_with(request_id: &str) -> Vec<Value> {
    log_lines()
        .iter()
        .filter(|line| line.contains(request_id))
        .map(|line| serde_json::from_str(line).expect("every log line is JSON"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_id_is_returned_and_in_every_log_line_of_the_request() {
    let _serial = serial().await;
    let _telemetry = start_telemetry(&crate::helpers::test_settings("sqlite://unused"));
    let app = TestApp::spawn(Backend::Sqlite).await;
    let token = app.token("user-1");
    let given = format!("req-{}", uuid::Uuid::new_v4());
    let body = metric_body("m", 1, "d");

    let with_id = app
        .client
        .post(app.url(METRIC))
        .bearer_auth(&token)
        .header("x-request-id", &given)
        .json(&body)
        .send()
        .await
        .unwrap();
    let without_id = app.post_json(METRIC, &body, Some(&token)).await;

    assert_eq!(with_id.headers()["x-request-id"], given.as_str());
    let generated = without_id.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");
    for request_id in [given.as_str(), generated.as_str()] {
        eventually(
            "the request's log lines",
            Duration::from_secs(5),
            async || !lines_with(request_id).is_empty(),
        )
        .await;
        let lines = lines_with(request_id);
        let finished = lines
            .iter()
            .find(|line| line["message"] == "request finished")
            .unwrap_or_else(|| panic!("an access line for {request_id}: {lines:#?}"));
        assert_eq!(finished["span"]["request_id"], request_id);
        assert_eq!(finished["span"]["http.route"], METRIC);
        assert_eq!(finished["status"], 200);
    }
    let all = log_lines().concat();
    assert!(!all.contains(&token), "the bearer token is never logged");
    assert!(!all.contains("\"metric_name\""), "bodies are never logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_log_line_carries_the_request_id_of_its_request() {
    let _serial = serial().await;
    let _telemetry = start_telemetry(&crate::helpers::test_settings("sqlite://unused"));
    let app = TestApp::spawn(Backend::Postgres).await;
    let request_id = format!("req-{}", uuid::Uuid::new_v4());
    app.store.close().await;

    let response = app
        .client
        .get(app.url("/readyz"))
        .header("x-request-id", &request_id)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 503);
    eventually(
        "a WARN line in the request's span",
        Duration::from_secs(5),
        async || {
            lines_with(&request_id).iter().any(|line| {
                line["level"] == "WARN" && line["span"]["request_id"] == request_id.as_str()
            })
        },
    )
    .await;
}

//! `GET /openapi.json` and the offline docs page.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::helpers::{Backend, TestApp};

/// Every route the service serves, as (method, path in the spec). A new route goes here
/// and, through utoipa-axum's `routes!`, into the spec; the test fails until both agree.
const ROUTES: &[(&str, &str)] = &[
    ("post", "/api/analytics/log_raw_metric"),
    ("post", "/api/analytics/log_raw_analytics"),
    ("post", "/api/analytics/log_raw_metric/batch"),
    ("post", "/api/analytics/log_raw_analytics/batch"),
    ("post", "/api/alerts/discord"),
    ("get", "/metrics"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/openapi.json"),
    ("get", "/docs/"),
];

async fn spec(app: &TestApp) -> Value {
    let response = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn operations(spec: &Value) -> BTreeSet<(String, String)> {
    spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_in_the_spec_and_every_spec_path_is_served() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let spec = spec(&app).await;

    let documented = operations(&spec);

    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, expected);
    for (method, path) in ROUTES {
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let response = app
            .client
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        assert!(
            ![404, 405].contains(&response.status().as_u16()),
            "{method} {path} answered {}",
            response.status()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spec_is_openapi_3_1_with_the_frontend_operation_ids_errors_and_bearer_auth() {
    let app = TestApp::spawn(Backend::Sqlite).await;

    let spec = spec(&app).await;

    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    let scheme = &spec["components"]["securitySchemes"]["bearerAuth"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    for (path, operation_id, schema) in [
        (
            "/api/analytics/log_raw_metric",
            "postAnalyticsLogRawMetric",
            "LogRawMetricRequest",
        ),
        (
            "/api/analytics/log_raw_analytics",
            "postAnalyticsLogRawAnalytics",
            "LogRawAnalyticsRequest",
        ),
    ] {
        let op = &spec["paths"][path]["post"];
        assert_eq!(op["operationId"], operation_id);
        assert_eq!(op["security"][0]["bearerAuth"], serde_json::json!([]));
        assert_eq!(
            op["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            format!("#/components/schemas/{schema}")
        );
        let responses = op["responses"].as_object().unwrap();
        let codes: BTreeSet<&str> = responses.keys().map(String::as_str).collect();
        assert_eq!(
            codes,
            BTreeSet::from(["200", "401", "403", "413", "422", "429", "500", "503"])
        );
        assert!(responses["429"]["headers"]["Retry-After"].is_object());
        let body_ref = |code: &str| {
            responses[code]["content"]["application/json"]["schema"]["$ref"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(body_ref("422"), "#/components/schemas/ValidationErrorBody");
        assert_eq!(body_ref("413"), "#/components/schemas/Detail");
        assert_eq!(body_ref("503"), "#/components/schemas/StorageErrorBody");
    }
    let metric = &spec["components"]["schemas"]["LogRawMetricRequest"];
    let mut required: Vec<&str> = metric["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    required.sort();
    assert_eq!(required, ["data_string", "metric_name", "metric_value"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_page_and_its_assets_are_served_without_the_network() {
    let app = TestApp::spawn(Backend::Sqlite).await;

    let page = app.client.get(app.url("/docs")).send().await.unwrap();
    let bundle = app
        .client
        .get(app.url("/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .unwrap();
    let initializer = app
        .client
        .get(app.url("/docs/swagger-initializer.js"))
        .send()
        .await
        .unwrap();

    assert_eq!(page.status(), 200, "the redirect to /docs/ is followed");
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(
        !html.contains("://"),
        "no asset is fetched from another host"
    );
    assert_eq!(bundle.status(), 200);
    assert!(bundle.bytes().await.unwrap().len() > 100_000);
    assert!(initializer.text().await.unwrap().contains("/openapi.json"));
}

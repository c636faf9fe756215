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
            BTreeSet::from([
                "200", "401", "403", "408", "413", "422", "429", "500", "503"
            ])
        );
        assert!(responses["429"]["headers"]["Retry-After"].is_object());
        assert!(responses["408"]["headers"]["Connection"].is_object());
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

/// Where `body`, answered with `status` by `method path`, departs from the response schema
/// the served document gives for that status; the status must be documented.
fn mismatches(spec: &Value, method: &str, path: &str, status: u16, body: &Value) -> Vec<String> {
    let response = &spec["paths"][path][method]["responses"][status.to_string()];
    assert!(
        response.is_object(),
        "{method} {path} answered {status}, which the document does not list: {body}"
    );
    let schema = &response["content"]["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "{method} {path} {status} has a JSON schema"
    );
    // The schema's `$ref`s point into the document's components: validate against a
    // root that holds both.
    let mut root = schema.as_object().unwrap().clone();
    root.insert("components".to_owned(), spec["components"].clone());
    let validator = jsonschema::validator_for(&Value::Object(root)).expect("a valid schema");
    validator
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

fn conforms(spec: &Value, method: &str, path: &str, status: u16, body: &Value) {
    let errors = mismatches(spec, method, path, status, body);
    assert!(
        errors.is_empty(),
        "{method} {path} {status}: the answer does not match the document:\n{}\n{body}",
        errors.join("\n")
    );
}

/// (method, path, Authorization, extra header, body, expected status).
type Case<'a> = (
    &'a str,
    &'a str,
    &'a str,
    Option<(&'a str, &'a str)>,
    String,
    u16,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_answers_of_every_route_match_the_served_document() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use crate::alerts::fake_discord::{mount_channel, mount_messages};

    let discord = MockServer::start().await;
    mount_channel(&discord, "42", 0).await;
    mount_messages(&discord, "42").await;
    Mock::given(method("GET"))
        .and(path("/channels/77"))
        .respond_with(
            ResponseTemplate::new(404)
                .set_body_json(serde_json::json!({"code": 10003, "message": "Unknown Channel"})),
        )
        .mount(&discord)
        .await;
    Mock::given(method("GET"))
        .and(path("/users/@me/guilds"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!([])))
        .mount(&discord)
        .await;
    let base = discord.uri();
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.alerts.bot_token = "bot-token".to_owned().into();
        s.alerts.api_base_url = base;
        s.alerts.platform_channel = "42".to_owned();
        s.alerts.product_channel = "77".to_owned();
    })
    .await;
    let spec = spec(&app).await;
    let user = format!("Bearer {}", app.token("user-1"));
    let admin = format!("Bearer {}", app.admin_token("admin-1"));
    let metric = r#"{"metric_name":"m","metric_value":1.5,"data_string":"d"}"#;
    let event = r#"{"type":"t","data":{"a":1},"data_index":"i"}"#;
    // Just over the 1 MiB limit, so the service reads all of it before the 413: a body far
    // over it may see its connection closed (reset) while the client still sends, before
    // the answer is read (docs/OPERATIONS.md, "Body size"), which made this test flaky.
    let too_large = format!(r#"{{"metric_name":"{}"}}"#, "x".repeat(1 << 20));
    let m = "/api/analytics/log_raw_metric";
    let e = "/api/analytics/log_raw_analytics";
    let mb = "/api/analytics/log_raw_metric/batch";
    let eb = "/api/analytics/log_raw_analytics/batch";
    let alert = "/api/alerts/discord";
    let disk_full = r#"{"content":"disk full"}"#;
    let cases: Vec<Case> = vec![
        ("post", m, &user, None, metric.to_owned(), 200),
        ("post", m, "", None, metric.to_owned(), 401),
        (
            "post",
            m,
            &user,
            Some(("X-Act-As-User-Id", "other")),
            metric.to_owned(),
            403,
        ),
        ("post", m, &user, None, too_large, 413),
        (
            "post",
            m,
            &user,
            None,
            r#"{"metric_name":""}"#.to_owned(),
            422,
        ),
        ("post", m, &user, None, "not json".to_owned(), 422),
        ("post", e, &user, None, event.to_owned(), 200),
        ("post", e, "Bearer not-a-jwt", None, event.to_owned(), 401),
        ("post", e, &user, None, r#"["t",{},"i"]"#.to_owned(), 422),
        (
            "post",
            mb,
            &user,
            None,
            format!(r#"[{metric},{{"metric_value":-1}}]"#),
            200,
        ),
        (
            "post",
            mb,
            &user,
            None,
            r#"{"not":"a list"}"#.to_owned(),
            422,
        ),
        ("post", eb, &user, None, format!("[{event}]"), 200),
        ("post", eb, "", None, format!("[{event}]"), 401),
        // Sent, then the same alert again: answered "Suppressed duplicate".
        ("post", alert, &admin, None, disk_full.to_owned(), 200),
        ("post", alert, &admin, None, disk_full.to_owned(), 200),
        (
            "post",
            alert,
            &admin,
            None,
            r#"{"content":"x","channel":"product"}"#.to_owned(),
            502,
        ),
        (
            "post",
            alert,
            &admin,
            None,
            r#"{"content":"  "}"#.to_owned(),
            422,
        ),
        (
            "post",
            alert,
            &user,
            None,
            r#"{"content":"x"}"#.to_owned(),
            403,
        ),
        (
            "post",
            alert,
            "",
            Some(("X-API-Key", "wrong")),
            r#"{"content":"x"}"#.to_owned(),
            401,
        ),
        ("get", "/healthz", "", None, String::new(), 200),
        ("get", "/readyz", "", None, String::new(), 200),
    ];

    for (verb, path, authorization, extra, body, expected) in cases {
        let mut request = app
            .client
            .request(verb.to_uppercase().parse().unwrap(), app.url(path))
            .header("content-type", "application/json");
        if !authorization.is_empty() {
            request = request.header("authorization", authorization);
        }
        if let Some((name, value)) = extra {
            request = request.header(name, value);
        }
        if verb == "post" {
            request = request.body(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let answer: Value = response.json().await.expect("a JSON answer");

        assert_eq!(status, expected, "{verb} {path}: {answer}");
        conforms(&spec, verb, path, status, &answer);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_of_another_shape_does_not_match_the_document() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let spec = spec(&app).await;
    let m = "/api/analytics/log_raw_metric";

    let number_detail = mismatches(&spec, "post", m, 401, &serde_json::json!({"detail": 5}));
    let no_hint = mismatches(
        &spec,
        "post",
        m,
        422,
        &serde_json::json!({"message": "x", "detail": []}),
    );
    let bad_item = mismatches(
        &spec,
        "post",
        "/api/analytics/log_raw_metric/batch",
        200,
        &serde_json::json!([{"id": 7}]),
    );

    assert!(!number_detail.is_empty());
    assert!(!no_hint.is_empty());
    assert!(!bad_item.is_empty());
}

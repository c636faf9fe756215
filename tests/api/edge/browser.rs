//! Browser ingestion: CORS for allowed origins, beacon-mode bodies.

use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, event_body};

const ALLOWED: &str = "https://platform.example.com";
const ANALYTICS: &str = "/api/analytics/log_raw_analytics";

async fn cors_app() -> TestApp {
    TestApp::spawn_with(Backend::Sqlite, |s| {
        s.edge.browser.allowed_origins = format!("{ALLOWED}, http://localhost:3000");
        s.edge.browser.preflight_max_age = std::time::Duration::from_secs(900);
    })
    .await
}

async fn preflight(app: &TestApp, origin: &str) -> reqwest::Response {
    app.client
        .request(reqwest::Method::OPTIONS, app.url(ANALYTICS))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preflight_from_an_allowed_origin_is_granted_with_credentials_and_cached() {
    let app = cors_app().await;

    let response = preflight(&app, ALLOWED).await;

    assert_eq!(response.status(), 200);
    let h = response.headers();
    assert_eq!(h["access-control-allow-origin"], ALLOWED);
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-max-age"], "900");
    let methods = h["access-control-allow-methods"].to_str().unwrap();
    assert!(methods.contains("POST"), "{methods}");
    let allowed = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("content-type"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preflight_from_another_origin_gets_no_cors_grant() {
    let app = cors_app().await;

    let response = preflight(&app, "https://evil.example.net").await;

    // Without Access-Control-Allow-Origin the browser refuses to send the request.
    assert!(
        !response
            .headers()
            .contains_key("access-control-allow-origin")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_origin_may_read_the_retry_and_rate_limit_headers() {
    let app = cors_app().await;

    let response = app
        .client
        .post(app.url(ANALYTICS))
        .header("origin", ALLOWED)
        .bearer_auth(app.token("u"))
        .json(&event_body("t", json!({}), "i"))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["access-control-allow-origin"], ALLOWED);
    let exposed = response.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for name in [
        "retry-after",
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
    ] {
        assert!(exposed.contains(name), "{name} not in {exposed}");
    }
}

fn beacon_body(token: &str) -> String {
    json!({"type": "page_closed", "data": {"ms": 1200}, "data_index": "build", "token": token})
        .to_string()
}

async fn send_beacon(app: &TestApp, body: String) -> reqwest::Response {
    app.client
        .post(app.url(ANALYTICS))
        .header("content-type", "text/plain;charset=UTF-8")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_beacon_with_the_token_in_its_text_body_is_stored_when_enabled() {
    for backend in [Backend::Postgres, Backend::Sqlite] {
        let app = TestApp::spawn_with(backend, |s| s.edge.browser.beacon_enabled = true).await;

        let response = send_beacon(&app, beacon_body(&app.token("user-beacon"))).await;

        assert_eq!(response.status(), 200, "{backend:?}");
        let id: String = response.json().await.unwrap();
        let row = app.store.event_by_id(&id).await.unwrap().unwrap();
        assert_eq!(row.user_id, "user-beacon");
        assert_eq!(row.event_type, "page_closed");
        assert_eq!(row.data_index.as_deref(), Some("build"));
        let data = Value::Object(row.data.unwrap());
        assert_eq!(data, json!({"ms": 1200}), "the token is not stored");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_beacon_is_refused_without_the_setting() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    assert!(!app.settings.edge.browser.beacon_enabled, "off by default");

    let response = send_beacon(&app, beacon_body(&app.token("user-beacon"))).await;

    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"detail": "Authorization header is missing"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_beacon_gets_the_usual_answers_for_a_bad_token_or_bad_fields() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| s.edge.browser.beacon_enabled = true).await;

    let bad_token = send_beacon(&app, beacon_body("not.a.jwt")).await;
    let no_token = send_beacon(&app, json!({"type": "t"}).to_string()).await;
    let bad_fields = send_beacon(
        &app,
        json!({"type": 5, "data": [], "data_index": "i", "token": app.token("u")}).to_string(),
    )
    .await;

    assert_eq!(bad_token.status(), 401);
    let text = bad_token.json::<Value>().await.unwrap()["detail"].clone();
    assert!(
        text.as_str().unwrap().starts_with("Invalid token: "),
        "{text}"
    );
    assert_eq!(no_token.status(), 401);
    assert_eq!(bad_fields.status(), 422);
    let body: Value = bad_fields.json().await.unwrap();
    let kinds: Vec<&str> = body["detail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["string_type", "dict_type"]);
}

/// A beacon's token is checked as a header token is, with the request's other headers:
/// impersonation by a non-admin is refused, by an admin honoured; a text body shaped as
/// an array is never read as a beacon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_beacon_is_authenticated_like_a_header_token() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| s.edge.browser.beacon_enabled = true).await;
    let beacon = |token: String| {
        app.client
            .post(app.url(ANALYTICS))
            .header("content-type", "text/plain;charset=UTF-8")
            .header("X-Act-As-User-Id", "someone-else")
            .body(beacon_body(&token))
            .send()
    };

    let by_user = beacon(app.token("user-beacon")).await.unwrap();
    let by_admin = beacon(app.admin_token("admin-1")).await.unwrap();
    let array = send_beacon(&app, json!([app.token("u")]).to_string()).await;

    assert_eq!(by_user.status(), 403);
    assert_eq!(by_admin.status(), 200);
    let id: String = by_admin.json().await.unwrap();
    let row = app.store.event_by_id(&id).await.unwrap().unwrap();
    assert_eq!(row.user_id, "someone-else");
    assert_eq!(array.status(), 401, "an array carries no token field");
}

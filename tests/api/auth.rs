//! The auth matrix of `autogpt_libs.auth`, against the real service (SQLite backend).

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, event_body, metric_body};

const PATH: &str = "/api/analytics/log_raw_metric";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn sign(app: &TestApp, algorithm: Algorithm, claims: &Value) -> String {
    let key = app
        .settings
        .auth
        .jwt_verify_key
        .as_ref()
        .unwrap()
        .expose_secret()
        .to_owned();
    sign_with(algorithm, claims, key.trim().as_bytes())
}

fn sign_with(algorithm: Algorithm, claims: &Value, key: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(algorithm),
        claims,
        &EncodingKey::from_secret(key),
    )
    .unwrap()
}

fn claims() -> Value {
    json!({"sub": "user-1", "aud": "authenticated", "role": "authenticated", "exp": now() + 600})
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().unwrap().remove(key);
    claims
}

async fn send(app: &TestApp, authorization: Option<&str>) -> (u16, Value, Option<String>) {
    let mut request = app
        .client
        .post(app.url(PATH))
        .json(&metric_body("m", 1, "d"));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, response.json().await.unwrap(), challenge)
}

async fn assert_refused(app: &TestApp, authorization: Option<&str>, detail: &str) {
    let (status, body, challenge) = send(app, authorization).await;
    assert_eq!(status, 401, "{authorization:?}: {body}");
    assert_eq!(body, json!({"detail": detail}), "{authorization:?}");
    assert_eq!(challenge.as_deref(), Some("Bearer"));
}

#[tokio::test]
async fn missing_or_unusable_headers_say_the_header_is_missing() {
    let app = TestApp::spawn(Backend::Sqlite).await;

    for header in [
        None,
        Some("Basic dXNlcjpwYXNz"),
        Some("Bearer "),
        Some("Bearer"),
        Some(""),
    ] {
        assert_refused(&app, header, "Authorization header is missing").await;
    }
}

#[tokio::test]
async fn the_bearer_scheme_word_is_case_insensitive() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let token = sign(&app, Algorithm::HS256, &claims());

    let (status, _, _) = send(&app, Some(&format!("bearer {token}"))).await;

    assert_eq!(status, 200);
}

#[tokio::test]
async fn an_expired_token_has_expired() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let token = sign(
        &app,
        Algorithm::HS256,
        &with(claims(), "exp", json!(now() - 10)),
    );

    assert_refused(&app, Some(&format!("Bearer {token}")), "Token has expired").await;
}

#[tokio::test]
async fn a_token_that_was_accepted_is_refused_once_it_expires() {
    // Verified tokens are remembered (no second HMAC); the memory must not outlive `exp`.
    let app = TestApp::spawn(Backend::Sqlite).await;
    let expires = now() + 2;
    let token = sign(
        &app,
        Algorithm::HS256,
        &with(claims(), "exp", json!(expires)),
    );
    let bearer = format!("Bearer {token}");

    let (first, _, _) = send(&app, Some(&bearer)).await;
    let (again, _, _) = send(&app, Some(&bearer)).await;
    while now() <= expires {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    assert_eq!((first, again), (200, 200));
    assert_refused(&app, Some(&bearer), "Token has expired").await;
}

#[tokio::test]
async fn bad_tokens_are_invalid_with_a_reason() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let wrong_key = sign_with(
        Algorithm::HS256,
        &claims(),
        b"another-key-0123456789abcdef012345",
    );
    let wrong_aud = sign(
        &app,
        Algorithm::HS256,
        &with(claims(), "aud", json!("someone-else")),
    );
    let aud_list = sign(
        &app,
        Algorithm::HS256,
        &with(claims(), "aud", json!(["x", "authenticated"])),
    );
    let no_aud = sign(&app, Algorithm::HS256, &without(claims(), "aud"));
    let no_exp = sign(&app, Algorithm::HS256, &without(claims(), "exp"));
    let other_alg = sign(&app, Algorithm::HS512, &claims());
    let not_yet = sign(
        &app,
        Algorithm::HS256,
        &with(claims(), "nbf", json!(now() + 600)),
    );
    let issued_later = sign(
        &app,
        Algorithm::HS256,
        &with(claims(), "iat", json!(now() + 600)),
    );
    let unsigned = {
        use base64::Engine;
        let encode = |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
        format!(
            "{}.{}.",
            encode(r#"{"alg":"none","typ":"JWT"}"#),
            encode(&claims().to_string())
        )
    };
    let cases = [
        (wrong_key, "Invalid token: Signature verification failed"),
        (wrong_aud, "Invalid token: Audience doesn't match"),
        (no_aud, "Invalid token: Token is missing the \"aud\" claim"),
        (no_exp, "Invalid token: Token is missing the \"exp\" claim"),
        (
            other_alg,
            "Invalid token: The specified alg value is not allowed",
        ),
        (not_yet, "Invalid token: The token is not yet valid (nbf)"),
        (
            issued_later,
            "Invalid token: The token is not yet valid (iat)",
        ),
    ];
    for (token, detail) in cases {
        assert_refused(&app, Some(&format!("Bearer {token}")), detail).await;
    }
    for malformed in [unsigned.as_str(), "abc", "a.b.c", "Bearer x.y"] {
        let (status, body, _) = send(&app, Some(&format!("Bearer {malformed}"))).await;
        assert_eq!(status, 401, "{malformed}");
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .starts_with("Invalid token: "),
            "{body}"
        );
    }
    let (status, _, _) = send(&app, Some(&format!("Bearer {}", aud_list))).await;
    assert_eq!(
        status, 200,
        "an audience list containing `authenticated` is accepted"
    );
}

#[tokio::test]
async fn a_token_without_exp_is_accepted_when_exp_is_not_required() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| s.auth.require_exp = false).await;
    let token = sign(&app, Algorithm::HS256, &without(claims(), "exp"));

    let (status, _, _) = send(&app, Some(&format!("Bearer {token}"))).await;

    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_token_without_a_user_id_is_refused() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let no_sub = sign(&app, Algorithm::HS256, &without(claims(), "sub"));
    let empty_sub = sign(&app, Algorithm::HS256, &with(claims(), "sub", json!("")));

    for token in [no_sub, empty_sub] {
        assert_refused(
            &app,
            Some(&format!("Bearer {token}")),
            "User ID not found in token",
        )
        .await;
    }
}

#[tokio::test]
async fn a_non_admin_cannot_impersonate_and_a_blank_header_is_ignored() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let token = app.token("user-1");
    let post = |act_as: &'static str| {
        app.client
            .post(app.url(PATH))
            .bearer_auth(&token)
            .header("X-Act-As-User-Id", act_as)
            .json(&metric_body("m", 1, "d"))
            .send()
    };

    let forbidden = post("someone-else").await.unwrap();
    let blank = post("   ").await.unwrap();

    assert_eq!(forbidden.status(), 403);
    assert_eq!(
        forbidden.json::<Value>().await.unwrap(),
        json!({"detail": "Only admin users can impersonate other users"})
    );
    assert_eq!(blank.status(), 200);
    let id: String = blank.json().await.unwrap();
    assert_eq!(
        app.store.metric_by_id(&id).await.unwrap().unwrap().user_id,
        "user-1"
    );
}

#[tokio::test]
async fn a_valid_json_body_without_a_token_gets_401_not_422() {
    let app = TestApp::spawn(Backend::Sqlite).await;

    let response = app.post_json(PATH, &json!({}), None).await;

    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn a_supabase_style_token_is_accepted() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let claims = json!({
        "aud": "authenticated", "exp": now() + 3600, "iat": now() - 5,
        "sub": "2b7e1516-28ae-4d2a-abf7-158809cf4f3c", "email": "a@b.c", "phone": "",
        "app_metadata": {"provider": "email"}, "user_metadata": {}, "role": "authenticated",
        "aal": "aal1", "session_id": "s"
    });
    let token = sign(&app, Algorithm::HS256, &claims);
    let body = event_body("home_viewed", json!({}), "home_viewed");

    let response = app
        .post_json("/api/analytics/log_raw_analytics", &body, Some(&token))
        .await;

    assert_eq!(response.status(), 200);
    let id: String = response.json().await.unwrap();
    let row = app.store.event_by_id(&id).await.unwrap().unwrap();
    assert_eq!(row.user_id, "2b7e1516-28ae-4d2a-abf7-158809cf4f3c");
}

//! Asymmetric tokens verified against a JWKS served by a fake key server on 127.0.0.1.

use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{Backend, TestApp, eventually, metric_body};

const METRIC: &str = "/api/analytics/log_raw_metric";

/// The DER inside a PEM fixture of tests/fixtures/jwks.
fn fixture_der(name: &str) -> Vec<u8> {
    let file = format!("{}/tests/fixtures/jwks/{name}", env!("CARGO_MANIFEST_DIR"));
    let pem = std::fs::read_to_string(file).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

fn fixture_text(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/jwks/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

struct TestKey {
    kid: &'static str,
    alg: Algorithm,
    key: EncodingKey,
}

impl TestKey {
    fn es256(kid: &'static str, file: &str) -> Self {
        let key = EncodingKey::from_ec_der(&fixture_der(file));
        TestKey {
            kid,
            alg: Algorithm::ES256,
            key,
        }
    }

    fn rs256() -> Self {
        let key = EncodingKey::from_rsa_der(&fixture_der("rs256.pem"));
        TestKey {
            kid: "rsa-1",
            alg: Algorithm::RS256,
            key,
        }
    }

    fn eddsa() -> Self {
        let key = EncodingKey::from_ed_der(&fixture_der("ed25519.pem"));
        TestKey {
            kid: "ed-1",
            alg: Algorithm::EdDSA,
            key,
        }
    }

    fn jwk(&self) -> Value {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.alg).unwrap();
        jwk.common.key_id = Some(self.kid.to_owned());
        serde_json::to_value(jwk).unwrap()
    }

    fn token(&self, sub: &str) -> String {
        sign(self.alg, Some(self.kid), &self.key, sub)
    }
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, sub: &str) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    let exp = chrono::Utc::now().timestamp() + 600;
    let claims = json!({"sub": sub, "aud": "authenticated", "role": "authenticated", "exp": exp});
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

async fn serve_keys(server: &MockServer, keys: Vec<Value>) {
    Mock::given(method("GET"))
        .and(path("/jwks.json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "keys": keys })))
        .mount(server)
        .await;
}

/// The service with `JWT_JWKS_URL` at the fake server; `hmac` keeps the HMAC key too.
async fn spawn(server: &MockServer, hmac: bool) -> TestApp {
    let url = format!("{}/jwks.json", server.uri());
    TestApp::spawn_with(Backend::Sqlite, |s| {
        s.auth.jwks_url = Some(url);
        if !hmac {
            s.auth.jwt_verify_key = None;
        }
    })
    .await
}

async fn fetches(server: &MockServer) -> usize {
    server.received_requests().await.unwrap().len()
}

async fn send(app: &TestApp, token: &str) -> (u16, Value) {
    let body = metric_body("m", 1, "d");
    let response = app.post_json(METRIC, &body, Some(token)).await;
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn es256_rs256_and_eddsa_tokens_from_the_key_set_are_accepted_next_to_hmac() {
    let server = MockServer::start().await;
    let (es, rs, ed) = (
        TestKey::es256("ec-a", "es256_a.pem"),
        TestKey::rs256(),
        TestKey::eddsa(),
    );
    serve_keys(&server, vec![es.jwk(), rs.jwk(), ed.jwk()]).await;
    let app = spawn(&server, true).await;

    let mut ids = Vec::new();
    for (key, user) in [(&es, "es-user"), (&rs, "rs-user"), (&ed, "ed-user")] {
        let (status, id) = send(&app, &key.token(user)).await;
        assert_eq!(status, 200, "{:?}: {id}", key.alg);
        ids.push((id.as_str().unwrap().to_owned(), user));
    }
    let (hmac_status, _) = send(&app, &app.token("hmac-user")).await;

    assert_eq!(hmac_status, 200, "HMAC tokens keep working");
    for (id, user) in ids {
        let row = app.store.metric_by_id(&id).await.unwrap().unwrap();
        assert_eq!(row.user_id, user);
    }
    assert_eq!(
        fetches(&server).await,
        1,
        "one fetch at start-up serves all"
    );
}

#[tokio::test]
async fn rotation_to_a_new_kid_fetches_the_set_again_and_drops_the_old_key() {
    let server = MockServer::start().await;
    let (old, new, rs) = (
        TestKey::es256("ec-a", "es256_a.pem"),
        TestKey::es256("ec-b", "es256_b.pem"),
        TestKey::rs256(),
    );
    serve_keys(&server, vec![old.jwk(), rs.jwk()]).await;
    let app = spawn(&server, false).await;
    assert_eq!(send(&app, &old.token("u")).await.0, 200);

    server.reset().await;
    serve_keys(&server, vec![new.jwk(), rs.jwk()]).await;
    let (new_status, _) = send(&app, &new.token("u")).await;
    let (rs_status, _) = send(&app, &rs.token("u")).await;
    let (old_status, old_body) = send(&app, &old.token("u")).await;

    assert_eq!((new_status, rs_status), (200, 200));
    assert_eq!(old_status, 401);
    assert_eq!(
        old_body,
        json!({"detail": "Invalid token: Unable to find a signing key that matches: \"ec-a\""})
    );
    assert_eq!(fetches(&server).await, 1, "one refetch for the new kid");
}

#[tokio::test]
async fn unknown_kids_are_refused_without_hammering_the_key_server() {
    let server = MockServer::start().await;
    let known = TestKey::es256("ec-a", "es256_a.pem");
    let stranger = EncodingKey::from_ec_der(&fixture_der("es256_b.pem"));
    serve_keys(&server, vec![known.jwk()]).await;
    let app = spawn(&server, false).await;

    let mut statuses = Vec::new();
    for i in 0..20 {
        let kid = format!("unknown-{i}");
        let (status, body) = send(&app, &sign(Algorithm::ES256, Some(&kid), &stranger, "u")).await;
        assert_eq!(
            body["detail"],
            format!("Invalid token: Unable to find a signing key that matches: \"{kid}\"")
        );
        statuses.push(status);
    }

    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    assert_eq!(
        fetches(&server).await,
        2,
        "start-up, then at most one refresh per minute"
    );
}

#[tokio::test]
async fn an_hmac_token_signed_with_the_public_key_is_refused() {
    let server = MockServer::start().await;
    let rs = TestKey::rs256();
    let shared = b"a-shared-secret-published-in-the-jwks-0123";
    let oct = json!({"kty": "oct", "kid": "shared", "alg": "HS256",
        "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(shared)});
    serve_keys(&server, vec![rs.jwk(), oct]).await;
    let public_pem = EncodingKey::from_secret(&fixture_text("rs256_public.pem"));
    let confused = sign(Algorithm::HS256, Some("rsa-1"), &public_pem, "attacker");
    let with_oct = sign(
        Algorithm::HS256,
        Some("shared"),
        &EncodingKey::from_secret(shared),
        "attacker",
    );
    let jwks_only = spawn(&server, false).await;
    let both = spawn(&server, true).await;

    let (status, body) = send(&jwks_only, &confused).await;
    assert_eq!(status, 401);
    assert_eq!(
        body,
        json!({"detail": "Invalid token: The specified alg value is not allowed"})
    );
    let (status, body) = send(&jwks_only, &with_oct).await;
    assert_eq!(status, 401);
    assert_eq!(
        body,
        json!({"detail": "Invalid token: The specified alg value is not allowed"})
    );
    for token in [&confused, &with_oct] {
        let (status, body) = send(&both, token).await;
        assert_eq!(status, 401);
        assert_eq!(
            body,
            json!({"detail": "Invalid token: Signature verification failed"})
        );
    }
    let (status, _) = send(&both, &rs.token("u")).await;
    assert_eq!(status, 200, "the RSA key itself works");
}

#[tokio::test]
async fn a_token_whose_alg_does_not_fit_its_key_or_lacks_a_kid_is_refused() {
    let server = MockServer::start().await;
    let (es, rs) = (TestKey::es256("ec-a", "es256_a.pem"), TestKey::rs256());
    serve_keys(&server, vec![es.jwk(), rs.jwk()]).await;
    let app = spawn(&server, false).await;
    let rsa_under_ec_kid = sign(Algorithm::RS256, Some("ec-a"), &rs.key, "u");
    let no_kid = sign(Algorithm::ES256, None, &es.key, "u");

    let (mismatch_status, mismatch) = send(&app, &rsa_under_ec_kid).await;
    let (no_kid_status, missing) = send(&app, &no_kid).await;

    assert_eq!((mismatch_status, no_kid_status), (401, 401));
    assert_eq!(
        mismatch["detail"],
        "Invalid token: The specified alg value is not allowed"
    );
    assert_eq!(
        missing["detail"],
        "Invalid token: Token has no key id (kid)"
    );
}

#[tokio::test]
async fn an_unreachable_key_server_answers_503_while_hmac_tokens_still_work() {
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.auth.jwks_url = Some(format!("http://127.0.0.1:{closed_port}/jwks.json"));
    })
    .await;
    let es = TestKey::es256("ec-a", "es256_a.pem");

    let response = app
        .post_json(METRIC, &metric_body("m", 1, "d"), Some(&es.token("u")))
        .await;
    let (hmac_status, _) = send(&app, &app.token("u")).await;

    assert_eq!(response.status(), 503);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (59..=60).contains(&retry_after),
        "the next fetch is a minute away: {retry_after}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"detail": "Signing keys are unavailable; retry later"})
    );
    assert_eq!(hmac_status, 200);
}

#[tokio::test]
async fn old_keys_are_served_at_once_while_one_background_fetch_replaces_them() {
    let server = MockServer::start().await;
    let es = TestKey::es256("ec-a", "es256_a.pem");
    serve_keys(&server, vec![es.jwk()]).await;
    let url = format!("{}/jwks.json", server.uri());
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.auth.jwks_url = Some(url);
        s.auth.jwt_verify_key = None;
        s.auth.jwks_max_age = Duration::from_secs(0);
        s.auth.jwks_min_refresh = Duration::from_secs(0);
        s.auth.jwks_timeout = Duration::from_millis(30_000);
    })
    .await;
    server.reset().await;
    let key_server_delay = Duration::from_secs(10);
    Mock::given(method("GET"))
        .and(path("/jwks.json"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({ "keys": [es.jwk()] }))
                .set_delay(key_server_delay),
        )
        .mount(&server)
        .await;

    let started = Instant::now();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(send(&app, &es.token("u")).await.0);
    }
    let answered_in = started.elapsed();
    eventually(
        "the background key fetch",
        Duration::from_secs(10),
        async || fetches(&server).await > 0,
    )
    .await;

    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    eprintln!("measured: 5 requests with old keys answered in {answered_in:?}");
    assert!(
        answered_in < key_server_delay / 2,
        "no request waited on the key server: {answered_in:?}"
    );
    assert_eq!(fetches(&server).await, 1, "one background fetch at a time");
}

/// A key set holding `es`'s key, padded with an unused field to more than `bytes`.
fn padded_key_set(es: &TestKey, bytes: usize) -> Vec<u8> {
    let set = json!({ "keys": [es.jwk()], "padding": "x".repeat(bytes) });
    serde_json::to_vec(&set).unwrap()
}

async fn spawn_with_cap(url: String, max_bytes: usize) -> TestApp {
    TestApp::spawn_with(Backend::Sqlite, |s| {
        s.auth.jwks_url = Some(url);
        s.auth.jwt_verify_key = None;
        s.auth.jwks_max_bytes = max_bytes;
    })
    .await
}

/// A key server answering every request with `body` in 64 KiB chunks
/// (`Transfer-Encoding: chunked`, so no `Content-Length` announces the size); on a thread
/// of its own, for the life of the test binary.
fn serve_chunked(body: Vec<u8>) -> String {
    use std::io::{Read, Write};

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for socket in listener.incoming() {
            let Ok(mut socket) = socket else { return };
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let mut answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
                .to_vec();
            for chunk in body.chunks(64 * 1024) {
                answer.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                answer.extend_from_slice(chunk);
                answer.extend_from_slice(b"\r\n");
            }
            answer.extend_from_slice(b"0\r\n\r\n");
            // The service may hang up once it has read its limit: not an error here.
            let _ = socket.write_all(&answer);
        }
    });
    url
}

async fn assert_keys_unavailable(app: &TestApp, token: &str) {
    let response = app
        .post_json(METRIC, &metric_body("m", 1, "d"), Some(token))
        .await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"detail": "Signing keys are unavailable; retry later"})
    );
}

/// An answer over `auth.jwks_max_bytes` (here announced by its `Content-Length`) is a failed
/// fetch: the token needing it gets the fetch-failure 503. The same answer under a larger
/// cap holds a good key, so only the size made the fetch fail.
#[tokio::test]
async fn a_key_set_answer_over_the_size_cap_is_a_failed_fetch() {
    let server = MockServer::start().await;
    let es = TestKey::es256("ec-a", "es256_a.pem");
    let body = padded_key_set(&es, 1536 * 1024);
    Mock::given(method("GET"))
        .and(path("/jwks.json"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(body, "application/json"))
        .mount(&server)
        .await;
    let url = format!("{}/jwks.json", server.uri());
    let capped = spawn_with_cap(url.clone(), 1024 * 1024).await;
    let roomy = spawn_with_cap(url, 4 * 1024 * 1024).await;

    assert_keys_unavailable(&capped, &es.token("u")).await;
    let (roomy_status, roomy_body) = send(&roomy, &es.token("u")).await;

    assert_eq!(roomy_status, 200, "{roomy_body}");
    assert!(
        fetches(&server).await >= 3,
        "the capped service did fetch (start-up and for the token)"
    );
}

/// Without a `Content-Length` the answer is counted as it arrives and given up at the cap.
#[tokio::test]
async fn a_chunked_key_set_answer_over_the_size_cap_is_a_failed_fetch() {
    let es = TestKey::es256("ec-a", "es256_a.pem");
    let url = serve_chunked(padded_key_set(&es, 3 * 1024 * 1024));
    let capped = spawn_with_cap(url.clone(), 1024 * 1024).await;
    let roomy = spawn_with_cap(url, 8 * 1024 * 1024).await;

    assert_keys_unavailable(&capped, &es.token("u")).await;
    let (roomy_status, roomy_body) = send(&roomy, &es.token("u")).await;

    assert_eq!(roomy_status, 200, "{roomy_body}");
}

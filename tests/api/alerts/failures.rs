//! Discord errors: retries after 429s, 5xx and timeouts, what is not retried, an unreachable
//! Discord, a missing bot token, and the token kept out of answers and logs.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use wiremock::matchers::path_regex;
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::fake_discord::{posted, requests_to};
use super::{
    Auth, BOT_TOKEN, alert, platform_channel_answering, point_at_discord, post_alert, spawn,
};
use crate::helpers::{Backend, TestApp};

/// Sends one alert that Discord answers with a 429 carrying `retry_after`, then 200;
/// returns how long after the 429 the retry reached Discord.
async fn retry_delay_after_a_429(retry_after: f64) -> Duration {
    let (_discord, script, app) = platform_channel_answering(
        vec![
            ResponseTemplate::new(429).set_body_json(
                json!({"message": "You are being rate limited.", "retry_after": retry_after, "global": false}),
            ),
            ResponseTemplate::new(200).set_body_json(json!({"id": "m1"})),
        ],
        |_| {},
    )
    .await;

    let (status, body, _) = alert(&app, "slow down", "platform").await;

    assert_eq!(status, 200, "{body}");
    let times = script.times();
    assert_eq!(times.len(), 2);
    let delay = times[1] - times[0];
    eprintln!("measured: retry came {delay:?} after a 429 with retry_after {retry_after}");
    delay
}

#[tokio::test]
async fn a_429_is_retried_after_retry_after_and_succeeds() {
    let delay = retry_delay_after_a_429(0.5).await;

    assert!(delay >= Duration::from_millis(500), "{delay:?}");
}

#[tokio::test]
async fn a_429_with_retry_after_zero_still_waits_a_moment() {
    let delay = retry_delay_after_a_429(0.0).await;

    assert!(delay >= Duration::from_millis(100), "{delay:?}");
}

#[tokio::test]
async fn a_message_post_that_timed_out_is_retried_with_the_same_nonce() {
    let (discord, _script, app) = platform_channel_answering(
        vec![
            ResponseTemplate::new(200)
                .set_body_json(json!({"id": "m1"}))
                .set_delay(Duration::from_secs(3)),
            ResponseTemplate::new(200).set_body_json(json!({"id": "m1"})),
        ],
        |s| s.alerts.request_timeout = Duration::from_millis(300),
    )
    .await;

    let (status, body, _) = alert(&app, "posted once", "platform").await;

    assert_eq!(status, 200, "{body}");
    let bodies = posted(&discord, "42").await;
    assert_eq!(bodies.len(), 2);
    let nonce = bodies[0]["nonce"].as_str().expect("a string nonce");
    assert!(!nonce.is_empty() && nonce.len() <= 25, "{nonce}");
    for body in &bodies {
        assert_eq!(body["nonce"], nonce, "{body}");
        assert_eq!(body["enforce_nonce"], true, "{body}");
    }
}

#[tokio::test]
async fn a_500_is_retried_and_the_alert_still_goes_out() {
    let (_discord, script, app) = platform_channel_answering(
        vec![
            ResponseTemplate::new(500),
            ResponseTemplate::new(200).set_body_json(json!({"id": "m1"})),
        ],
        |_| {},
    )
    .await;

    let (status, body, _) = alert(&app, "flaky", "platform").await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message_ids"], json!(["m1"]));
    assert_eq!(script.times().len(), 2);
}

#[tokio::test]
async fn a_403_is_not_retried_and_answers_502_with_discords_message() {
    let (_discord, script, app) = platform_channel_answering(
        vec![
            ResponseTemplate::new(403)
                .set_body_json(json!({"message": "Missing Permissions", "code": 50013})),
        ],
        |_| {},
    )
    .await;

    let (status, body, _) = alert(&app, "no rights", "platform").await;

    assert_eq!(status, 502);
    assert_eq!(
        body,
        json!({"detail": {"status": "Error: Missing Permissions", "code": 50013, "message": "Missing Permissions"}})
    );
    assert_eq!(script.times().len(), 1);
}

#[tokio::test]
async fn rate_limits_past_the_wait_budget_answer_503_with_retry_after() {
    let (_discord, script, app) = platform_channel_answering(
        vec![ResponseTemplate::new(429).set_body_json(
            json!({"message": "You are being rate limited.", "retry_after": 30.0, "global": false}),
        )],
        |_| {},
    )
    .await;

    let (status, body, headers) = alert(&app, "too many", "platform").await;

    assert_eq!(status, 503, "{body}");
    assert_eq!(headers["retry-after"], "30");
    assert_eq!(script.times().len(), 1);
}

#[tokio::test]
async fn an_unreachable_or_hanging_discord_answers_503_with_retry_after() {
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = TestApp::spawn_with(Backend::Sqlite, |s| {
        point_at_discord(s, &format!("http://127.0.0.1:{closed_port}"));
        s.alerts.platform_channel = "42".into();
    })
    .await;
    let hanging = MockServer::start().await;
    Mock::given(path_regex(".*"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)))
        .mount(&hanging)
        .await;
    let slow = spawn(&hanging, |s| {
        s.alerts.platform_channel = "42".into();
        s.alerts.request_timeout = Duration::from_millis(200);
        s.alerts.max_retries = 1;
    })
    .await;

    let (refused, refused_body, refused_headers) = alert(&unreachable, "x", "platform").await;
    let (timed_out, timed_out_body, timed_out_headers) = alert(&slow, "x", "platform").await;

    assert_eq!(refused, 503, "{refused_body}");
    assert_eq!(timed_out, 503, "{timed_out_body}");
    assert!(refused_headers.contains_key("retry-after"));
    assert!(timed_out_headers.contains_key("retry-after"));
    assert_eq!(requests_to(&hanging, "/channels/42").await, 2);
}

#[tokio::test]
async fn alerts_answer_503_when_no_bot_token_is_configured() {
    let app = TestApp::spawn(Backend::Sqlite).await;

    let (status, body, _) = post_alert(&app, json!({"content": "x"}), Auth::Admin).await;

    assert_eq!(
        (status, body),
        (503, json!({"detail": "Discord alerts are not configured"}))
    );
}

/// Collects every log line written while the guard is held on this thread.
#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLogs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

// Current-thread runtime: the server, the client and their tasks all log on this thread.
#[tokio::test(flavor = "current_thread")]
async fn the_bot_token_appears_in_no_response_and_no_log_line() {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let (_discord, _script, app) = platform_channel_answering(
        vec![
            ResponseTemplate::new(500),
            ResponseTemplate::new(429)
                .set_body_json(json!({"message": "limited", "retry_after": 0.05, "global": true})),
            ResponseTemplate::new(200).set_body_json(json!({"id": "m1"})),
            ResponseTemplate::new(401)
                .set_body_json(json!({"message": "401: Unauthorized", "code": 0})),
        ],
        |_| {},
    )
    .await;
    let unreachable = TestApp::spawn_with(Backend::Sqlite, |s| {
        point_at_discord(s, "http://127.0.0.1:1");
        s.alerts.max_retries = 0;
    })
    .await;

    // A callsite another test registers while this subscriber is being set up may cache
    // "never"; each send recomputes every callsite's interest first.
    let mut answers = Vec::new();
    for (app, content, channel) in [
        (&app, "first", "platform"),
        (&app, "second", "platform"),
        (&app, "not found", "product"),
        (&unreachable, "x", "platform"),
    ] {
        tracing::callsite::rebuild_interest_cache();
        answers.push(alert(app, content, channel).await);
    }

    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert_eq!(statuses, [200, 502, 502, 503]);
    for (_, body, headers) in &answers {
        assert!(!body.to_string().contains(BOT_TOKEN), "{body}");
        assert!(!format!("{headers:?}").contains(BOT_TOKEN));
    }
    let text = logs.text();
    assert!(
        text.contains("Discord alert not delivered"),
        "logs were captured"
    );
    assert!(text.contains("Discord rate limit"), "logs were captured");
    assert!(
        !text.contains(BOT_TOKEN),
        "the token leaked into a log line"
    );
    assert!(!text.contains("bot-token-SECRET"));
}

//! `POST /api/alerts/discord` and the storage alert, against a fake Discord REST server on
//! 127.0.0.1 (wiremock) and the real client.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use analytics_service::clock::SystemClock;
use analytics_service::settings::Settings;
use reqwest::header::HeaderMap;
use secrecy::SecretString;
use serde_json::{Value, json};
use wiremock::matchers::{method, path, path_regex, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::helpers::{Backend, TestApp, eventually, test_settings};

const ALERTS: &str = "/api/alerts/discord";
const BOT_TOKEN: &str = "MTIzNDU2Nzg5.bot-token-SECRET.xyz";
const API_KEY: &str = "alerts-api-key-for-tests-0123456789";

/// Answers with `responses` in turn (the last one repeats), noting when each request came.
#[derive(Clone)]
struct Script {
    responses: Vec<ResponseTemplate>,
    calls: Arc<AtomicUsize>,
    times: Arc<Mutex<Vec<Instant>>>,
}

impl Script {
    fn new(responses: Vec<ResponseTemplate>) -> Self {
        Script {
            responses,
            calls: Arc::default(),
            times: Arc::default(),
        }
    }

    fn times(&self) -> Vec<Instant> {
        self.times.lock().unwrap().clone()
    }
}

impl Respond for Script {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        self.times.lock().unwrap().push(Instant::now());
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        self.responses[n.min(self.responses.len() - 1)].clone()
    }
}

/// Message ids m1, m2, … for every post.
struct MessageIds(AtomicUsize);

impl Respond for MessageIds {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        ResponseTemplate::new(200).set_body_json(json!({ "id": format!("m{n}") }))
    }
}

fn point_at_discord(settings: &mut Settings, base_url: &str) {
    let discord = &mut settings.alerts;
    discord.bot_token = SecretString::from(BOT_TOKEN.to_owned());
    discord.api_base_url = base_url.to_owned();
    discord.alerts_api_key = SecretString::from(API_KEY.to_owned());
    discord.connect_timeout = Duration::from_millis(500);
    discord.request_timeout = Duration::from_millis(2000);
    discord.wait_budget = Duration::from_millis(5000);
    discord.max_retries = 2;
}

async fn spawn(discord: &MockServer, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let base = discord.uri();
    TestApp::spawn_with(Backend::Sqlite, |s| {
        point_at_discord(s, &base);
        tweak(s);
    })
    .await
}

/// Two guilds; `name` is a channel of `kind` in the second one, with id `id`.
async fn mount_guilds_with(discord: &MockServer, name: &str, id: &str, kind: u64) {
    Mock::given(method("GET"))
        .and(path("/users/@me/guilds"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!([{"id": "901"}, {"id": "902"}])),
        )
        .mount(discord)
        .await;
    Mock::given(method("GET"))
        .and(path("/guilds/901/channels"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            {"id": "11", "name": "general", "type": 0},
            {"id": "12", "name": "random", "type": 0}
        ])))
        .mount(discord)
        .await;
    Mock::given(method("GET"))
        .and(path("/guilds/902/channels"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            {"id": "21", "name": "general", "type": 0},
            {"id": id, "name": name, "type": kind}
        ])))
        .mount(discord)
        .await;
}

async fn mount_channel(discord: &MockServer, id: &str, kind: u64) {
    Mock::given(method("GET"))
        .and(path(format!("/channels/{id}")))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"id": id, "type": kind, "name": "c"})),
        )
        .mount(discord)
        .await;
}

async fn mount_messages(discord: &MockServer, channel_id: &str) {
    Mock::given(method("POST"))
        .and(path(format!("/channels/{channel_id}/messages")))
        .respond_with(MessageIds(AtomicUsize::new(0)))
        .mount(discord)
        .await;
}

async fn mount_script(discord: &MockServer, channel_id: &str, script: &Script) {
    Mock::given(method("POST"))
        .and(path(format!("/channels/{channel_id}/messages")))
        .respond_with(script.clone())
        .mount(discord)
        .await;
}

/// The JSON bodies Discord received on `POST /channels/{id}/messages`, in order.
async fn posted(discord: &MockServer, channel_id: &str) -> Vec<Value> {
    let wanted = format!("/channels/{channel_id}/messages");
    discord
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.method.as_str() == "POST" && r.url.path() == wanted)
        .map(|r| r.body_json::<Value>().unwrap())
        .collect()
}

async fn requests_to(discord: &MockServer, wanted: &str) -> usize {
    discord
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == wanted)
        .count()
}

#[derive(Clone, Copy)]
enum Auth<'a> {
    Admin,
    User,
    Key(&'a str),
    Nothing,
}

async fn post_alert(app: &TestApp, body: Value, auth: Auth<'_>) -> (u16, Value, HeaderMap) {
    let mut request = app.client.post(app.url(ALERTS)).json(&body);
    request = match auth {
        Auth::Admin => request.bearer_auth(app.admin_token("admin-1")),
        Auth::User => request.bearer_auth(app.token("user-1")),
        Auth::Key(key) => request.header("x-api-key", key),
        Auth::Nothing => request,
    };
    let response = request.send().await.expect("the service answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, response.json().await.unwrap(), headers)
}

async fn alert(app: &TestApp, content: &str, channel: &str) -> (u16, Value, HeaderMap) {
    post_alert(
        app,
        json!({"content": content, "channel": channel}),
        Auth::Key(API_KEY),
    )
    .await
}

#[tokio::test]
async fn alert_goes_to_the_channel_found_by_name_in_the_second_guild() {
    let discord = MockServer::start().await;
    mount_guilds_with(&discord, "local-alerts", "2222", 0).await;
    mount_messages(&discord, "2222").await;
    let app = spawn(&discord, |_| {}).await;

    let (status, body, _) = alert(&app, "deploy finished", "platform").await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"status": "Message sent", "channel_id": "2222", "message_ids": ["m1"]})
    );
    let requests = discord.received_requests().await.unwrap();
    assert!(requests.iter().all(|r| {
        r.headers.get("authorization").unwrap().to_str().unwrap() == format!("Bot {BOT_TOKEN}")
    }));
    let guilds = requests
        .iter()
        .find(|r| r.url.path() == "/users/@me/guilds")
        .unwrap();
    assert_eq!(guilds.url.query(), Some("limit=200"));
}

#[tokio::test]
async fn the_guild_list_is_read_page_by_page() {
    let discord = MockServer::start().await;
    let first_page: Vec<Value> = (1..=200)
        .map(|i| json!({"id": (1000 + i).to_string()}))
        .collect();
    Mock::given(method("GET"))
        .and(path("/users/@me/guilds"))
        .and(query_param_is_missing("after"))
        .respond_with(ResponseTemplate::new(200).set_body_json(first_page))
        .mount(&discord)
        .await;
    Mock::given(method("GET"))
        .and(path("/users/@me/guilds"))
        .and(query_param("after", "1200"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([{"id": "5000"}])))
        .mount(&discord)
        .await;
    Mock::given(method("GET"))
        .and(path("/guilds/5000/channels"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!([{"id": "5001", "name": "local-alerts", "type": 5}])),
        )
        .mount(&discord)
        .await;
    Mock::given(method("GET"))
        .and(path_regex(r"^/guilds/1\d{3}/channels$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&discord)
        .await;
    mount_messages(&discord, "5001").await;
    let app = spawn(&discord, |_| {}).await;

    let (status, body, _) = alert(&app, "found on page two", "platform").await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["channel_id"], "5001");
    assert_eq!(requests_to(&discord, "/users/@me/guilds").await, 2);
}

#[tokio::test]
async fn alert_goes_to_a_channel_given_by_id_and_the_lookup_is_cached() {
    let discord = MockServer::start().await;
    mount_channel(&discord, "123456789", 0).await;
    mount_messages(&discord, "123456789").await;
    let app = spawn(&discord, |s| s.alerts.product_channel = "123456789".into()).await;

    let (first, body, _) = alert(&app, "a new signup", "product").await;
    let (second, _, _) = alert(&app, "another signup", "product").await;

    assert_eq!(first, 200, "{body}");
    assert_eq!(second, 200);
    assert_eq!(body["channel_id"], "123456789");
    assert_eq!(requests_to(&discord, "/channels/123456789").await, 1);
    assert_eq!(requests_to(&discord, "/users/@me/guilds").await, 0);
}

#[tokio::test]
async fn an_unknown_channel_name_answers_502_channel_not_found() {
    let discord = MockServer::start().await;
    mount_guilds_with(&discord, "some-other-channel", "2222", 0).await;
    let app = spawn(&discord, |_| {}).await;

    let (status, body, _) = alert(&app, "anyone there?", "platform").await;

    assert_eq!(status, 502);
    assert_eq!(
        body,
        json!({"detail": {"status": "Channel not found: local-alerts"}})
    );
}

#[tokio::test]
async fn a_voice_channel_with_the_name_cannot_receive_messages() {
    let discord = MockServer::start().await;
    mount_guilds_with(&discord, "product-alerts", "3333", 2).await;
    let app = spawn(&discord, |_| {}).await;

    let (status, body, _) = alert(&app, "hello", "product").await;

    assert_eq!(status, 502);
    assert_eq!(
        body,
        json!({"detail": {"status": "Channel product-alerts cannot receive messages (not a text channel)"}})
    );
}

#[tokio::test]
async fn a_cached_channel_that_disappears_is_looked_up_again() {
    let discord = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/users/@me/guilds"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([{"id": "901"}])))
        .mount(&discord)
        .await;
    Mock::given(method("GET"))
        .and(path("/guilds/901/channels"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!([{"id": "111", "name": "local-alerts", "type": 0}])),
        )
        .up_to_n_times(1)
        .mount(&discord)
        .await;
    Mock::given(method("GET"))
        .and(path("/guilds/901/channels"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!([{"id": "222", "name": "local-alerts", "type": 0}])),
        )
        .mount(&discord)
        .await;
    let gone = Script::new(vec![
        ResponseTemplate::new(200).set_body_json(json!({"id": "m1"})),
        ResponseTemplate::new(404)
            .set_body_json(json!({"message": "Unknown Channel", "code": 10003})),
    ]);
    mount_script(&discord, "111", &gone).await;
    mount_messages(&discord, "222").await;
    let app = spawn(&discord, |_| {}).await;

    let (first, first_body, _) = alert(&app, "one", "platform").await;
    let (second, second_body, _) = alert(&app, "two", "platform").await;

    assert_eq!((first, second), (200, 200), "{first_body} {second_body}");
    assert_eq!(first_body["channel_id"], "111");
    assert_eq!(second_body["channel_id"], "222");
    assert_eq!(requests_to(&discord, "/guilds/901/channels").await, 2);
}

/// Fence lines of one message, as a reader sees them.
fn fence_lines(text: &str) -> usize {
    text.lines()
        .filter(|l| l.trim_start().starts_with("```"))
        .count()
}

/// The opening line of the fence left open at the end of `text`, if any.
fn open_fence(text: &str) -> Option<String> {
    let mut open = None;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            open = match open {
                Some(_) => None,
                None => Some(line.trim().to_owned()),
            };
        }
    }
    open
}

/// The input back from the messages: the fences the splitter added are removed.
fn rejoin(parts: &[String]) -> String {
    let mut text = String::new();
    for (i, part) in parts.iter().enumerate() {
        let mut body = part.as_str();
        if let Some(opening) = open_fence(&text) {
            body = body
                .strip_prefix(&format!("{opening}\n"))
                .expect("a part continuing a fence reopens it");
        }
        if i + 1 < parts.len()
            && let Some(without_close) = body.strip_suffix("\n```")
            && open_fence(&format!("{text}{without_close}")).is_some()
        {
            body = without_close;
        }
        text.push_str(body);
    }
    text
}

fn long_alert_with_a_code_fence() -> String {
    let prose: String = (0..40)
        .map(|i| format!("Zeile {i}: Ünïcödé ✅ — 数据库 слишком медленно, naïve café.\n"))
        .collect();
    let code: String = (0..60)
        .map(|i| format!("    let été_{i} = \"日本語 {i}\"; // ≤ ok\n"))
        .collect();
    let text = format!("{prose}```rust\n{code}```\n{prose}{prose}");
    text.chars().take(4500).collect()
}

#[tokio::test]
async fn a_long_multibyte_alert_with_a_code_fence_is_split_into_balanced_parts() {
    let discord = MockServer::start().await;
    mount_channel(&discord, "42", 0).await;
    mount_messages(&discord, "42").await;
    let app = spawn(&discord, |s| s.alerts.platform_channel = "42".into()).await;
    let content = long_alert_with_a_code_fence();
    assert_eq!(content.chars().count(), 4500);

    let (status, body, _) = alert(&app, &content, "platform").await;

    assert_eq!(status, 200, "{body}");
    let parts: Vec<String> = posted(&discord, "42")
        .await
        .iter()
        .map(|b| b["content"].as_str().unwrap().to_owned())
        .collect();
    let sizes: Vec<usize> = parts.iter().map(|p| p.chars().count()).collect();
    eprintln!("measured: 4500-char alert went out as parts of {sizes:?} characters");
    assert_eq!(parts.len(), 3);
    assert!(sizes.iter().all(|n| *n <= 2000), "{sizes:?}");
    assert!(parts.iter().all(|p| fence_lines(p).is_multiple_of(2)));
    assert_eq!(rejoin(&parts), content);
    assert_eq!(body["message_ids"], json!(["m1", "m2", "m3"]));
}

#[tokio::test]
async fn every_message_is_sent_with_mentions_disabled() {
    let discord = MockServer::start().await;
    mount_channel(&discord, "42", 0).await;
    mount_messages(&discord, "42").await;
    let app = spawn(&discord, |s| s.alerts.platform_channel = "42".into()).await;
    let content = format!("@everyone @here <@&123> {}", "word ".repeat(500));

    let (status, _, _) = alert(&app, &content, "platform").await;

    assert_eq!(status, 200);
    let bodies = posted(&discord, "42").await;
    assert_eq!(bodies.len(), 2);
    for body in bodies {
        assert_eq!(body["allowed_mentions"], json!({"parse": []}), "{body}");
    }
}

/// A fake Discord whose channel 42 answers message posts with `responses` in turn, and an
/// app alerting its platform channel there (`tweak` adjusts the settings further).
async fn platform_channel_answering(
    responses: Vec<ResponseTemplate>,
    tweak: impl FnOnce(&mut Settings),
) -> (MockServer, Script, TestApp) {
    let discord = MockServer::start().await;
    mount_channel(&discord, "42", 0).await;
    let script = Script::new(responses);
    mount_script(&discord, "42", &script).await;
    let app = spawn(&discord, |s| {
        s.alerts.platform_channel = "42".into();
        tweak(s);
    })
    .await;
    (discord, script, app)
}

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
async fn after_a_failed_alert_the_identical_next_one_is_sent_not_suppressed() {
    let (_discord, script, app) = platform_channel_answering(
        vec![
            ResponseTemplate::new(500),
            ResponseTemplate::new(200).set_body_json(json!({"id": "m1"})),
        ],
        |s| s.alerts.max_retries = 0,
    )
    .await;

    let (first, _, _) = alert(&app, "disk full on db-1", "platform").await;
    let (second, body, _) = alert(&app, "disk full on db-1", "platform").await;

    assert_eq!(first, 503);
    assert_eq!(second, 200, "{body}");
    assert_eq!(body["status"], "Message sent");
    assert_eq!(script.times().len(), 2);
}

#[tokio::test]
async fn a_global_429_pauses_sends_to_every_channel() {
    let discord = MockServer::start().await;
    mount_channel(&discord, "41", 0).await;
    mount_channel(&discord, "42", 0).await;
    let limited = Script::new(vec![
        ResponseTemplate::new(429).set_body_json(
            json!({"message": "You are being rate limited.", "retry_after": 0.8, "global": true}),
        ),
        ResponseTemplate::new(200).set_body_json(json!({"id": "m1"})),
    ]);
    let other = Script::new(vec![
        ResponseTemplate::new(200).set_body_json(json!({"id": "m2"})),
    ]);
    mount_script(&discord, "41", &limited).await;
    mount_script(&discord, "42", &other).await;
    let app = Arc::new(
        spawn(&discord, |s| {
            s.alerts.platform_channel = "41".into();
            s.alerts.product_channel = "42".into();
        })
        .await,
    );
    let first_app = app.clone();
    let first = tokio::spawn(async move { alert(&first_app, "first", "platform").await });
    eventually("the global 429", async || !limited.times().is_empty()).await;

    let (second_status, _, _) = alert(&app, "second", "product").await;

    let (first_status, _, _) = first.await.unwrap();
    assert_eq!((first_status, second_status), (200, 200));
    let paused_for = other.times()[0] - limited.times()[0];
    eprintln!(
        "measured: a send to another channel waited {paused_for:?} after a global 429 (retry_after 0.8)"
    );
    assert!(paused_for >= Duration::from_millis(800), "{paused_for:?}");
}

#[tokio::test]
async fn messages_beyond_the_channel_burst_are_paced_instead_of_rate_limited() {
    let discord = MockServer::start().await;
    mount_channel(&discord, "42", 0).await;
    let script = Script::new(vec![
        ResponseTemplate::new(200).set_body_json(json!({"id": "m"})),
    ]);
    mount_script(&discord, "42", &script).await;
    let app = spawn(&discord, |s| {
        s.alerts.platform_channel = "42".into();
        s.alerts.channel_burst = 2;
        s.alerts.channel_interval = Duration::from_millis(300);
    })
    .await;
    let content = "word ".repeat(1500);

    let (status, body, _) = alert(&app, &content, "platform").await;

    assert_eq!(status, 200, "{body}");
    let times = script.times();
    assert_eq!(times.len(), 4);
    let third_after = times[2] - times[0];
    let fourth_after = times[3] - times[0];
    eprintln!(
        "measured: with a burst of 2 per 300 ms, parts 3 and 4 left {third_after:?} and {fourth_after:?} after part 1"
    );
    assert!(third_after >= Duration::from_millis(200), "{third_after:?}");
    assert!(
        fourth_after >= Duration::from_millis(450),
        "{fourth_after:?}"
    );
}

#[tokio::test]
async fn a_500_is_retried_and_the_alert_still_goes_out() {
    let discord = MockServer::start().await;
    mount_channel(&discord, "42", 0).await;
    let script = Script::new(vec![
        ResponseTemplate::new(500),
        ResponseTemplate::new(200).set_body_json(json!({"id": "m1"})),
    ]);
    mount_script(&discord, "42", &script).await;
    let app = spawn(&discord, |s| s.alerts.platform_channel = "42".into()).await;

    let (status, body, _) = alert(&app, "flaky", "platform").await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message_ids"], json!(["m1"]));
    assert_eq!(script.times().len(), 2);
}

#[tokio::test]
async fn a_403_is_not_retried_and_answers_502_with_discords_message() {
    let discord = MockServer::start().await;
    mount_channel(&discord, "42", 0).await;
    let script =
        Script::new(vec![ResponseTemplate::new(403).set_body_json(
            json!({"message": "Missing Permissions", "code": 50013}),
        )]);
    mount_script(&discord, "42", &script).await;
    let app = spawn(&discord, |s| s.alerts.platform_channel = "42".into()).await;

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
    let discord = MockServer::start().await;
    mount_channel(&discord, "42", 0).await;
    let script = Script::new(vec![ResponseTemplate::new(429).set_body_json(
        json!({"message": "You are being rate limited.", "retry_after": 30.0, "global": false}),
    )]);
    mount_script(&discord, "42", &script).await;
    let app = spawn(&discord, |s| s.alerts.platform_channel = "42".into()).await;

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
async fn identical_alerts_are_sent_once_and_counted_after_the_window() {
    let discord = MockServer::start().await;
    mount_channel(&discord, "42", 0).await;
    mount_messages(&discord, "42").await;
    // Long enough for 100 concurrent requests on a loaded CI machine.
    let window = Duration::from_secs(2);
    let app = Arc::new(
        spawn(&discord, |s| {
            s.alerts.platform_channel = "42".into();
            s.alerts.dedupe_window = window;
        })
        .await,
    );

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let app = app.clone();
        tasks.spawn(async move { alert(&app, "disk full on db-1", "platform").await });
    }
    let statuses: Vec<String> = tasks
        .join_all()
        .await
        .into_iter()
        .map(|(status, body, _)| format!("{status} {}", body["status"].as_str().unwrap()))
        .collect();
    let sent_during_window = posted(&discord, "42").await.len();
    tokio::time::sleep(window).await;
    let (after, body, _) = alert(&app, "disk full on db-1", "platform").await;

    assert_eq!(
        statuses.iter().filter(|s| *s == "200 Message sent").count(),
        1
    );
    let suppressed = "200 Suppressed duplicate";
    assert_eq!(statuses.iter().filter(|s| *s == suppressed).count(), 99);
    assert_eq!(sent_during_window, 1);
    assert_eq!(after, 200, "{body}");
    let messages = posted(&discord, "42").await;
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1]["content"], "disk full on db-1\n(repeated ×99)");
}

#[tokio::test]
async fn only_admins_and_holders_of_the_api_key_may_send_alerts() {
    let discord = MockServer::start().await;
    mount_channel(&discord, "42", 0).await;
    mount_messages(&discord, "42").await;
    let app = spawn(&discord, |s| s.alerts.platform_channel = "42".into()).await;
    let body = |n: u32| json!({"content": format!("alert {n}")});

    let admin = post_alert(&app, body(1), Auth::Admin).await;
    let key = post_alert(&app, body(2), Auth::Key(API_KEY)).await;
    let wrong_key = post_alert(&app, body(3), Auth::Key("not-the-key")).await;
    let user = post_alert(&app, body(4), Auth::User).await;
    let nothing = post_alert(&app, body(5), Auth::Nothing).await;

    assert_eq!(admin.0, 200, "{}", admin.1);
    assert_eq!(key.0, 200, "{}", key.1);
    assert_eq!(
        (wrong_key.0, wrong_key.1),
        (401, json!({"detail": "Invalid API key"}))
    );
    assert_eq!(
        (user.0, user.1),
        (403, json!({"detail": "Admin access required"}))
    );
    assert_eq!(
        (nothing.0, nothing.1),
        (401, json!({"detail": "Authorization header is missing"}))
    );
    assert_eq!(posted(&discord, "42").await.len(), 2);
}

/// Guessing the key: past the failure burst a client is locked out, and then even the
/// right key gets 429 (a guess cannot be checked at full speed); other limits untouched.
#[tokio::test]
async fn wrong_api_keys_lock_the_client_out_until_a_token_is_back() {
    let discord = MockServer::start().await;
    mount_channel(&discord, "42", 0).await;
    mount_messages(&discord, "42").await;
    let app = spawn(&discord, |s| {
        s.alerts.platform_channel = "42".into();
        s.edge.rate_limit.api_key_failure_burst = 3;
        s.edge.rate_limit.api_key_failure_interval = Duration::from_secs(3600);
    })
    .await;
    let body = || json!({"content": "guess"});

    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(post_alert(&app, body(), Auth::Key("guess")).await.0);
    }
    let (right_status, right_body, headers) = post_alert(&app, body(), Auth::Key(API_KEY)).await;
    let admin = post_alert(&app, body(), Auth::Admin).await;

    assert_eq!(statuses, [401, 401, 401, 429]);
    assert_eq!(right_status, 429, "locked out: {right_body}");
    assert!(
        headers["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 3000
    );
    assert_eq!(admin.0, 200, "an admin JWT is not an API-key guess");
    assert_eq!(posted(&discord, "42").await.len(), 1);
}

#[tokio::test]
async fn an_api_key_is_refused_when_none_is_configured() {
    let discord = MockServer::start().await;
    let app = spawn(&discord, |s| {
        s.alerts.alerts_api_key = SecretString::from(String::new())
    })
    .await;

    let (status, body, _) = post_alert(&app, json!({"content": "x"}), Auth::Key("")).await;

    assert_eq!((status, body), (401, json!({"detail": "Invalid API key"})));
}

#[tokio::test]
async fn blank_content_and_unknown_channels_answer_422() {
    let discord = MockServer::start().await;
    let app = spawn(&discord, |_| {}).await;

    let (blank, blank_body, _) = alert(&app, "  \n ", "platform").await;
    let (channel, channel_body, _) = alert(&app, "hi", "marketing").await;

    assert_eq!(blank, 422);
    assert_eq!(
        blank_body["message"],
        "Invalid data for POST /api/alerts/discord"
    );
    assert_eq!(
        blank_body["detail"][0]["msg"],
        "Value error, Message content is empty"
    );
    assert_eq!(channel, 422);
    assert_eq!(channel_body["detail"][0]["type"], "enum");
    assert_eq!(channel_body["detail"][0]["loc"], json!(["body", "channel"]));
    assert!(discord.received_requests().await.unwrap().is_empty());
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
    let discord = MockServer::start().await;
    mount_channel(&discord, "42", 0).await;
    let script = Script::new(vec![
        ResponseTemplate::new(500),
        ResponseTemplate::new(429)
            .set_body_json(json!({"message": "limited", "retry_after": 0.05, "global": true})),
        ResponseTemplate::new(200).set_body_json(json!({"id": "m1"})),
        ResponseTemplate::new(401)
            .set_body_json(json!({"message": "401: Unauthorized", "code": 0})),
    ]);
    mount_script(&discord, "42", &script).await;
    let app = spawn(&discord, |s| s.alerts.platform_channel = "42".into()).await;
    let unreachable = TestApp::spawn_with(Backend::Sqlite, |s| {
        point_at_discord(s, "http://127.0.0.1:1");
        s.alerts.max_retries = 0;
    })
    .await;

    let answers = vec![
        alert(&app, "first", "platform").await,
        alert(&app, "second", "platform").await,
        alert(&app, "not found", "product").await,
        alert(&unreachable, "x", "platform").await,
    ];

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

#[tokio::test]
async fn storage_failing_past_the_threshold_sends_one_platform_alert() {
    let discord = MockServer::start().await;
    mount_channel(&discord, "42", 0).await;
    mount_messages(&discord, "42").await;
    let mut settings = test_settings("postgres://postgres@127.0.0.1:1/nowhere");
    settings.database.startup_timeout = Duration::from_secs(0);
    settings.database.run_migrations = false;
    settings.database.acquire_timeout = Duration::from_millis(300);
    point_at_discord(&mut settings, &discord.uri());
    settings.alerts.platform_channel = "42".into();
    settings.alerts.storage_alert_after = Duration::from_millis(200);
    let app = TestApp::start(settings, None, Arc::new(SystemClock)).await;
    let token = app.token("user-1");
    let metric = json!({"metric_name": "m", "metric_value": 1, "data_string": "d"});

    let first = app
        .post_json("/api/analytics/log_raw_metric", &metric, Some(&token))
        .await;
    let before_threshold = posted(&discord, "42").await.len();
    tokio::time::sleep(Duration::from_millis(250)).await;
    for _ in 0..3 {
        let response = app
            .post_json("/api/analytics/log_raw_metric", &metric, Some(&token))
            .await;
        assert_eq!(response.status(), 503);
    }
    eventually("the storage alert", async || {
        !posted(&discord, "42").await.is_empty()
    })
    .await;

    assert_eq!(first.status(), 503);
    assert_eq!(before_threshold, 0);
    let messages = posted(&discord, "42").await;
    assert_eq!(messages.len(), 1, "one alert per window: {messages:?}");
    let text = messages[0]["content"].as_str().unwrap();
    assert!(text.contains("storage has been failing"), "{text}");
    assert!(text.contains("database unavailable"), "{text}");
}

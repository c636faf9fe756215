//! Sending: the channel found by name or id, long messages split into parts, mentions off,
//! and what is refused before anything is sent.

use serde_json::{Value, json};
use wiremock::matchers::{method, path, path_regex, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::fake_discord::{
    Script, mount_channel, mount_guilds_with, mount_messages, mount_script, posted, requests_to,
};
use super::{BOT_TOKEN, alert, platform_channel, spawn};

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

/// The answer to an alert for `channel` when the bot's guilds hold only the channel
/// `name` (id `id`, Discord channel type `kind`).
async fn alert_with_only_channel(name: &str, id: &str, kind: u64, channel: &str) -> (u16, Value) {
    let discord = MockServer::start().await;
    mount_guilds_with(&discord, name, id, kind).await;
    let app = spawn(&discord, |_| {}).await;
    let (status, body, _) = alert(&app, "anyone there?", channel).await;
    (status, body)
}

#[tokio::test]
async fn an_unknown_channel_name_answers_502_channel_not_found() {
    let (status, body) = alert_with_only_channel("some-other-channel", "2222", 0, "platform").await;

    assert_eq!(status, 502);
    assert_eq!(
        body,
        json!({"detail": {"status": "Channel not found: local-alerts"}})
    );
}

#[tokio::test]
async fn a_voice_channel_with_the_name_cannot_receive_messages() {
    let (status, body) = alert_with_only_channel("product-alerts", "3333", 2, "product").await;

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
    let (discord, app) = platform_channel(|_| {}).await;
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
    let (discord, app) = platform_channel(|_| {}).await;
    let content = format!("@everyone @here <@&123> {}", "word ".repeat(500));

    let (status, _, _) = alert(&app, &content, "platform").await;

    assert_eq!(status, 200);
    let bodies = posted(&discord, "42").await;
    assert_eq!(bodies.len(), 2);
    for body in bodies {
        assert_eq!(body["allowed_mentions"], json!({"parse": []}), "{body}");
    }
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

//! Floods: identical alerts deduplicated, parts paced within the channel burst, a global
//! 429 pausing every channel.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use wiremock::{MockServer, ResponseTemplate};

use super::fake_discord::{Script, mount_channel, mount_script, posted};
use super::{alert, platform_channel, platform_channel_answering, spawn};
use crate::helpers::eventually;

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
    eventually("the global 429", Duration::from_secs(10), async || {
        !limited.times().is_empty()
    })
    .await;

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
    let (_discord, script, app) = platform_channel_answering(
        vec![ResponseTemplate::new(200).set_body_json(json!({"id": "m"}))],
        |s| {
            s.alerts.channel_burst = 2;
            s.alerts.channel_interval = Duration::from_millis(300);
        },
    )
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
async fn identical_alerts_are_sent_once_and_counted_after_the_window() {
    // Long enough for 100 concurrent requests on a loaded CI machine.
    let window = Duration::from_secs(2);
    let (discord, app) = platform_channel(|s| s.alerts.dedupe_window = window).await;
    let app = Arc::new(app);

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

/// Stream mode: two replicas share the dedupe window through NATS, so the same alert sent
/// to both at once is posted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_alert_sent_to_two_replicas_is_posted_once() {
    let nats = crate::stream::NatsCluster::start(1).await;
    let discord = MockServer::start().await;
    mount_channel(&discord, "42", 0).await;
    super::fake_discord::mount_messages(&discord, "42").await;
    let database = crate::helpers::TestDatabase::create(crate::helpers::Backend::Sqlite).await;
    let mut settings = crate::stream::stream_settings(&database.url(), &nats, 1);
    super::point_at_discord(&mut settings, &discord.uri());
    settings.alerts.platform_channel = "42".into();
    let first = crate::stream::capture(&settings).await;
    let second = crate::stream::capture(&settings).await;

    let (a, b) = tokio::join!(
        alert(&first, "replica-wide: disk full on db-1", "platform"),
        alert(&second, "replica-wide: disk full on db-1", "platform"),
    );
    let other = alert(&second, "replica-wide: another alert", "platform").await;

    assert_eq!((a.0, b.0, other.0), (200, 200, 200));
    let statuses = [a.1["status"].clone(), b.1["status"].clone()];
    assert!(
        statuses.contains(&json!("Message sent")),
        "neither replica sent it: {statuses:?}"
    );
    let posted = posted(&discord, "42").await;
    let contents: Vec<&str> = posted
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert_eq!(
        contents,
        [
            "replica-wide: disk full on db-1",
            "replica-wide: another alert"
        ]
    );
}

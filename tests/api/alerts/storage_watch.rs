//! The storage watch: storage failing past the threshold sends one platform alert.

use std::sync::Arc;
use std::time::Duration;

use analytics_service::clock::SystemClock;
use wiremock::MockServer;

use super::fake_discord::{mount_channel, mount_messages, posted};
use super::point_at_discord;
use crate::helpers::{TestApp, eventually, metric_body, test_settings};

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
    let metric = metric_body("m", 1, "d");

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
    eventually("the storage alert", Duration::from_secs(10), async || {
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

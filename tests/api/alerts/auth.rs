//! Who may send alerts: admins and holders of the API key; wrong keys are throttled.

use std::time::Duration;

use secrecy::SecretString;
use serde_json::json;
use wiremock::MockServer;

use super::fake_discord::posted;
use super::{API_KEY, Auth, platform_channel, post_alert, spawn};

#[tokio::test]
async fn only_admins_and_holders_of_the_api_key_may_send_alerts() {
    let (discord, app) = platform_channel(|_| {}).await;
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

/// Guessing the key: past the failure burst a client's wrong keys get 429, but the right
/// key from the same client (behind a load balancer: everyone) is still answered normally,
/// so nobody can lock the key holder out.
#[tokio::test]
async fn wrong_api_keys_are_throttled_but_never_lock_the_right_key_out() {
    let (discord, app) = platform_channel(|s| {
        s.edge.rate_limit.api_key_failure_burst = 10;
        s.edge.rate_limit.api_key_failure_interval = Duration::from_secs(3600);
    })
    .await;
    let body = |n: u32| json!({"content": format!("alert {n}")});

    let mut statuses = Vec::new();
    for n in 0..12 {
        statuses.push(post_alert(&app, body(n), Auth::Key("guess")).await.0);
    }
    let right = post_alert(&app, body(100), Auth::Key(API_KEY)).await;
    let (wrong_status, wrong_body, wrong_headers) =
        post_alert(&app, body(101), Auth::Key("another-guess")).await;
    let right_again = post_alert(&app, body(102), Auth::Key(API_KEY)).await;
    let admin = post_alert(&app, body(103), Auth::Admin).await;

    assert_eq!(statuses[..10], [401; 10], "{statuses:?}");
    assert_eq!(statuses[10..], [429; 2], "{statuses:?}");
    assert_eq!(
        right.0, 200,
        "the right key is never locked out: {}",
        right.1
    );
    assert_eq!(right.1["status"], "Message sent");
    assert_eq!(wrong_status, 429, "{wrong_body}");
    let retry_after: u64 = wrong_headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after > 3000, "{retry_after}");
    assert_eq!(right_again.0, 200, "{}", right_again.1);
    assert_eq!(admin.0, 200, "an admin JWT is not an API-key guess");
    assert_eq!(posted(&discord, "42").await.len(), 3);
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

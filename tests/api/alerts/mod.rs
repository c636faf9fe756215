//! `POST /api/alerts/discord` and the storage alert, against a fake Discord REST server on
//! 127.0.0.1 (wiremock) and the real client.

mod auth;
mod delivery;
mod failures;
pub mod fake_discord;
mod flood;
mod storage_watch;

use std::time::Duration;

use analytics_service::settings::Settings;
use reqwest::header::HeaderMap;
use secrecy::SecretString;
use serde_json::{Value, json};
use wiremock::{MockServer, ResponseTemplate};

use crate::helpers::{Backend, TestApp};
use fake_discord::{Script, mount_channel, mount_messages, mount_script};

const ALERTS: &str = "/api/alerts/discord";
const BOT_TOKEN: &str = "MTIzNDU2Nzg5.bot-token-SECRET.xyz";
const API_KEY: &str = "alerts-api-key-for-tests-0123456789";

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

/// A fake Discord whose channel 42 takes every message post (ids m1, m2, …), and an app
/// alerting its platform channel there (`tweak` adjusts the settings further).
async fn platform_channel(tweak: impl FnOnce(&mut Settings)) -> (MockServer, TestApp) {
    let discord = MockServer::start().await;
    mount_channel(&discord, "42", 0).await;
    mount_messages(&discord, "42").await;
    let app = spawn(&discord, |s| {
        s.alerts.platform_channel = "42".into();
        tweak(s);
    })
    .await;
    (discord, app)
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

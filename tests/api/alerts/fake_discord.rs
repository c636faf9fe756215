//! The fake Discord REST server: wiremock mocks for the guild list, channels and message
//! posts, and what Discord received.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// Answers with `responses` in turn (the last one repeats), noting when each request came.
#[derive(Clone)]
pub struct Script {
    responses: Vec<ResponseTemplate>,
    calls: Arc<AtomicUsize>,
    times: Arc<Mutex<Vec<Instant>>>,
}

impl Script {
    pub fn new(responses: Vec<ResponseTemplate>) -> Self {
        Script {
            responses,
            calls: Arc::default(),
            times: Arc::default(),
        }
    }

    pub fn times(&self) -> Vec<Instant> {
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
pub struct MessageIds(AtomicUsize);

impl Respond for MessageIds {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        ResponseTemplate::new(200).set_body_json(json!({ "id": format!("m{n}") }))
    }
}

/// Two guilds; `name` is a channel of `kind` in the second one, with id `id`.
pub async fn mount_guilds_with(discord: &MockServer, name: &str, id: &str, kind: u64) {
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

pub async fn mount_channel(discord: &MockServer, id: &str, kind: u64) {
    Mock::given(method("GET"))
        .and(path(format!("/channels/{id}")))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"id": id, "type": kind, "name": "c"})),
        )
        .mount(discord)
        .await;
}

pub async fn mount_messages(discord: &MockServer, channel_id: &str) {
    Mock::given(method("POST"))
        .and(path(format!("/channels/{channel_id}/messages")))
        .respond_with(MessageIds(AtomicUsize::new(0)))
        .mount(discord)
        .await;
}

pub async fn mount_script(discord: &MockServer, channel_id: &str, script: &Script) {
    Mock::given(method("POST"))
        .and(path(format!("/channels/{channel_id}/messages")))
        .respond_with(script.clone())
        .mount(discord)
        .await;
}

/// The JSON bodies Discord received on `POST /channels/{id}/messages`, in order.
pub async fn posted(discord: &MockServer, channel_id: &str) -> Vec<Value> {
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

pub async fn requests_to(discord: &MockServer, wanted: &str) -> usize {
    discord
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == wanted)
        .count()
}

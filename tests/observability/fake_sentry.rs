//! A fake Sentry ingest server on 127.0.0.1: records every envelope the SDK posts.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use serde_json::Value;

type Envelopes = Arc<Mutex<Vec<Vec<u8>>>>;

/// The server and what it received.
pub struct FakeSentry {
    addr: SocketAddr,
    envelopes: Envelopes,
    server: tokio::task::JoinHandle<()>,
}

/// One envelope item: its header and its payload (JSON for the items we read).
#[derive(Debug, Clone)]
pub struct Item {
    pub kind: String,
    pub payload: Value,
}

impl FakeSentry {
    pub async fn start() -> Self {
        let envelopes = Envelopes::default();
        let app = Router::new()
            .route("/api/{project}/envelope/", post(receive))
            .with_state(envelopes.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeSentry {
            addr,
            envelopes,
            server,
        }
    }

    /// A DSN for this server, over plain HTTP, project 42.
    pub fn dsn(&self) -> String {
        format!("http://public@{}/42", self.addr)
    }

    /// Every envelope as the SDK sent it.
    pub fn raw(&self) -> Vec<Vec<u8>> {
        self.envelopes.lock().unwrap().clone()
    }

    /// Every item of every envelope received.
    pub fn items(&self) -> Vec<Item> {
        self.raw().iter().flat_map(|e| parse_envelope(e)).collect()
    }

    /// Error events (items of type `event`).
    pub fn events(&self) -> Vec<Value> {
        self.of_kind("event")
    }

    /// Transactions.
    pub fn transactions(&self) -> Vec<Value> {
        self.of_kind("transaction")
    }

    fn of_kind(&self, kind: &str) -> Vec<Value> {
        self.items()
            .into_iter()
            .filter(|i| i.kind == kind)
            .map(|i| i.payload)
            .collect()
    }
}

impl Drop for FakeSentry {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receive(State(envelopes): State<Envelopes>, body: Bytes) -> &'static str {
    envelopes.lock().unwrap().push(body.to_vec());
    "{}"
}

/// Envelope format: a header line, then per item a header line and a payload of `length`
/// bytes (or up to the next newline when the header has no length).
fn parse_envelope(bytes: &[u8]) -> Vec<Item> {
    let mut items = Vec::new();
    let Some(end) = bytes.iter().position(|&b| b == b'\n') else {
        return items;
    };
    let mut rest = &bytes[end + 1..];
    while !rest.is_empty() {
        let line_end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let header: Value = match serde_json::from_slice(&rest[..line_end]) {
            Ok(header) => header,
            Err(_) => break,
        };
        rest = rest.get(line_end + 1..).unwrap_or_default();
        let length = header["length"]
            .as_u64()
            .map(|l| l as usize)
            .unwrap_or_else(|| rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len()));
        let payload =
            serde_json::from_slice(&rest[..length.min(rest.len())]).unwrap_or(Value::Null);
        items.push(Item {
            kind: header["type"].as_str().unwrap_or_default().to_owned(),
            payload,
        });
        rest = rest.get(length + 1..).unwrap_or_default();
    }
    items
}

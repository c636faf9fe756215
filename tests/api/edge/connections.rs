//! Connections cannot be parked: a request head is due within the header timeout of
//! connecting (before and during protocol sniffing), an idle keep-alive connection is closed
//! after the idle timeout, and HTTP/2 is off unless enabled. The connection metrics are
//! counted exactly in `tests/observability/connections.rs`.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::raw::{connect, exchange};
use crate::helpers::{Backend, TestApp};

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n";
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty HTTP/2 SETTINGS frame: what a client sends right after the preface.
const EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
/// Added to every "closed within" bound: far more than scheduling ever takes.
const MARGIN: Duration = Duration::from_secs(4);

/// Reads (and discards) until the server closes the connection; `None` when it is still
/// open after `within`, else when it closed.
async fn closed_at(stream: &mut TcpStream, within: Duration) -> Option<Instant> {
    let mut buffer = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) => break Instant::now(),
                Ok(_) => continue,
                Err(err) => panic!("the server reset the connection instead of closing it: {err}"),
            }
        }
    })
    .await
    .ok()
}

/// The value of an unlabelled or `reason`-labelled sample in a Prometheus text scrape.
fn sample(scrape: &str, name: &str, reason: Option<&str>) -> f64 {
    let prefix = match reason {
        Some(reason) => format!("{name}{{reason=\"{reason}\"}} "),
        None => format!("{name} "),
    };
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0.0, |value| value.trim().parse().expect("a number"))
}

async fn scrape(app: &TestApp) -> String {
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_holding_every_slot_delay_a_new_client_by_at_most_the_header_timeout() {
    const SLOTS: usize = 8;
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.server.max_connections = SLOTS;
        s.server.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    let header_timeout = Duration::from_secs(1);
    let started = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..SLOTS {
        idle.push(connect(app.addr).await);
    }

    let mut client = connect(app.addr).await;
    let sent = Instant::now();
    let response = exchange(&mut client, HEALTHZ).await;
    let served = Instant::now();

    assert_eq!(response.status, 200, "{:?}", response.head);
    // Not before a slot was free: the idle sockets did hold every one.
    assert!(served - started >= header_timeout, "{:?}", served - started);
    assert!(
        served - sent <= header_timeout + Duration::from_secs(1),
        "the new client waited {:?}",
        served - sent
    );
    for stream in &mut idle {
        let closed = closed_at(stream, MARGIN).await;
        assert!(closed.is_some(), "an idle socket is still open");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_request_line_or_http2_preface_that_stalls_is_closed_after_the_header_timeout() {
    for http2_enabled in [false, true] {
        let app = TestApp::spawn_with(Backend::Sqlite, |s| {
            s.server.header_read_timeout = Duration::from_secs(1);
            s.server.http2_enabled = http2_enabled;
        })
        .await;
        let mut stalls = Vec::new();
        for partial in [&b"GET /healthz HT"[..], &HTTP2_PREFACE[..10]] {
            let connected = Instant::now();
            let mut stream = connect(app.addr).await;
            stream.write_all(partial).await.unwrap();
            stalls.push((partial, connected, stream));
        }

        for (partial, connected, stream) in &mut stalls {
            let closed = closed_at(stream, Duration::from_secs(1) + MARGIN).await;

            let what = format!(
                "{:?} (HTTP/2 {http2_enabled})",
                String::from_utf8_lossy(partial)
            );
            let closed = closed.unwrap_or_else(|| panic!("{what} is still open"));
            let after = closed - *connected;
            assert!(
                after >= Duration::from_secs(1),
                "{what} closed after {after:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_that_never_sends_a_request_is_closed_after_the_header_timeout() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.server.header_read_timeout = Duration::from_secs(1);
        s.server.keep_alive_idle = Duration::from_secs(600);
        s.server.http2_enabled = true;
    })
    .await;
    let connected = Instant::now();
    let mut stream = connect(app.addr).await;

    stream.write_all(HTTP2_PREFACE).await.unwrap();
    stream.write_all(EMPTY_SETTINGS).await.unwrap();
    let closed = closed_at(&mut stream, Duration::from_secs(1) + MARGIN).await;

    let after = closed.expect("the connection is closed") - connected;
    assert!(after >= Duration::from_secs(1), "closed after {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_outlives_the_header_timeout_and_is_closed_after_the_idle_timeout()
{
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.server.header_read_timeout = Duration::from_secs(1);
        s.server.keep_alive_idle = Duration::from_secs(3);
    })
    .await;
    let idle_closes =
        |scrape: &str| sample(scrape, "analytics_connections_closed_total", Some("idle"));
    let before = idle_closes(&scrape(&app).await);
    let mut stream = connect(app.addr).await;
    let first = exchange(&mut stream, HEALTHZ).await;
    // Idle for longer than the header timeout, shorter than the idle timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let sent = Instant::now();
    let second = exchange(&mut stream, HEALTHZ).await;
    let closed = closed_at(&mut stream, Duration::from_secs(3) + MARGIN).await;

    assert_eq!((first.status, second.status), (200, 200));
    let after = closed.expect("the idle connection is closed") - sent;
    assert!(after >= Duration::from_secs(3), "closed after {after:?}");
    // Other tests may close idle connections too: at least this one is counted.
    assert!(idle_closes(&scrape(&app).await) >= before + 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_http1_a_later_request_head_that_stalls_is_closed_after_the_header_timeout() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.server.header_read_timeout = Duration::from_secs(1);
        s.server.keep_alive_idle = Duration::from_secs(600);
    })
    .await;
    let mut stream = connect(app.addr).await;
    let first = exchange(&mut stream, HEALTHZ).await;

    let written = Instant::now();
    stream.write_all(b"GET /heal").await.unwrap();
    let closed = closed_at(&mut stream, Duration::from_secs(1) + MARGIN).await;

    assert_eq!(first.status, 200);
    let after =
        closed.expect("the stalled connection is closed well before the idle timeout") - written;
    assert!(after >= Duration::from_secs(1), "closed after {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_is_refused_by_default() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let mut stream = connect(app.addr).await;
    stream.write_all(HTTP2_PREFACE).await.unwrap();
    stream.write_all(EMPTY_SETTINGS).await.unwrap();

    let mut answer = Vec::new();
    let read = tokio::time::timeout(MARGIN, stream.read_to_end(&mut answer)).await;

    assert!(read.is_ok(), "the connection is closed at once");
    assert!(answer.is_empty(), "no HTTP/2 answer: {answer:?}");
}

/// The value of `id` in the server's first SETTINGS frame.
async fn server_setting(stream: &mut TcpStream, id: u16) -> Option<u32> {
    let mut header = [0u8; 9];
    stream.read_exact(&mut header).await.unwrap();
    assert_eq!(header[3], 4, "the server's first frame is SETTINGS");
    let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let mut payload = vec![0u8; length];
    stream.read_exact(&mut payload).await.unwrap();
    payload
        .chunks_exact(6)
        .find(|entry| u16::from_be_bytes([entry[0], entry[1]]) == id)
        .map(|entry| u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_when_enabled_serves_requests_and_caps_concurrent_streams() {
    const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.server.http2_enabled = true;
        s.server.http2_max_concurrent_streams = 7;
    })
    .await;
    let http2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let mut stream = connect(app.addr).await;

    let response = http2.get(app.url("/healthz")).send().await.unwrap();
    stream.write_all(HTTP2_PREFACE).await.unwrap();
    stream.write_all(EMPTY_SETTINGS).await.unwrap();
    let streams = tokio::time::timeout(MARGIN, server_setting(&mut stream, MAX_CONCURRENT_STREAMS))
        .await
        .expect("the server's SETTINGS frame");

    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(streams, Some(7));
}

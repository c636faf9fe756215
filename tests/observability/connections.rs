//! The connection metrics, counted exactly: here no other test's connections run at the
//! same time (the API tests share the process-global counters with parallel tests).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{Backend, TestApp, eventually};
use crate::prometheus::{parse, value};
use crate::support::serial;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Counts {
    open: f64,
    header_timeout: f64,
    idle: f64,
    limit_reached: f64,
}

/// Scrapes `/metrics` on a connection of its own that the server closes after answering,
/// so the scrape never idles and its connection is gone before the next one.
async fn counts(addr: SocketAddr) -> Counts {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the scrape is answered within 10 s")
        .unwrap();
    let text = String::from_utf8(answer).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let scrape = parse(body);
    let closed = |reason| {
        value(
            &scrape,
            "analytics_connections_closed_total",
            &[("reason", reason)],
        )
        .unwrap_or(0.0)
    };
    Counts {
        open: value(&scrape, "analytics_connections_open", &[]).expect("the open gauge"),
        header_timeout: closed("header_timeout"),
        idle: closed("idle"),
        limit_reached: value(&scrape, "analytics_connections_limit_reached_total", &[])
            .unwrap_or(0.0),
    }
}

/// Scrapes until `expected` holds (a connection's task ends a moment after its socket
/// closes), for at most 5 s; returns the last counts.
async fn counts_once(addr: SocketAddr, expected: Counts) -> Counts {
    let what = format!("the connection counts {expected:?}");
    eventually(&what, Duration::from_secs(5), async || {
        let last = counts(addr).await;
        (last == expected).then_some(last)
    })
    .await
}

async fn wait_for_close(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .expect("the server closes the connection within 10 s")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_and_those_closed_for_a_late_head_or_idleness_are_counted() {
    let _serial = serial().await;
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.server.header_read_timeout = Duration::from_secs(1);
        s.server.keep_alive_idle = Duration::from_secs(2);
    })
    .await;
    let before = counts(app.addr).await;
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(app.addr).await.unwrap());
    }
    let mut kept_alive = TcpStream::connect(app.addr).await.unwrap();
    kept_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 12];
    kept_alive.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");

    let four_more_open = Counts {
        open: before.open + 4.0,
        ..before
    };
    let while_open = counts_once(app.addr, four_more_open).await;
    for stream in silent.iter_mut().chain([&mut kept_alive]) {
        wait_for_close(stream).await;
    }
    let expected = Counts {
        header_timeout: before.header_timeout + 3.0,
        idle: before.idle + 1.0,
        ..before
    };
    let after = counts_once(app.addr, expected).await;

    assert_eq!(while_open, four_more_open);
    assert_eq!(after, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_finds_every_slot_taken_is_counted() {
    let _serial = serial().await;
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.server.header_read_timeout = Duration::from_secs(1);
        s.server.max_connections = 2;
    })
    .await;
    let before = counts(app.addr).await;
    let _silent = [
        TcpStream::connect(app.addr).await.unwrap(),
        TcpStream::connect(app.addr).await.unwrap(),
    ];

    // Served once a silent connection is closed for its late head.
    let after = counts(app.addr).await;

    assert!(after.limit_reached > before.limit_reached, "{after:?}");
}

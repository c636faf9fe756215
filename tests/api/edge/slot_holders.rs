//! Slow requests cannot hold the connection slots (issue 20): a body that stalls or
//! trickles after its head is answered 408 and its connection closed once the body read
//! timeout (plus what the minimum rate earns) passes, and one client gets at most
//! `server.max_connections_per_client` connections, further ones closed at accept.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::raw::{RawResponse, connect, exchange, post_head, read_response};
use crate::helpers::{Backend, TestApp, eventually, metric_body};

const METRIC: &str = "/api/analytics/log_raw_metric";
const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n";
/// How long any outcome may take: far more than the deadlines the tests set (1 s).
const PATIENCE: Duration = Duration::from_secs(20);

/// A request head for a metric of `length` bytes, with a valid token.
fn metric_head(app: &TestApp, length: usize) -> Vec<u8> {
    post_head(
        METRIC,
        &[
            format!("Authorization: Bearer {}", app.token("user-slow")),
            "Content-Type: application/json".to_owned(),
            format!("Content-Length: {length}"),
        ],
    )
    .into_bytes()
}

/// Whether the server closed `stream` (end of stream, or a reset because the client had
/// sent bytes the server never read) within [`PATIENCE`]; the bytes read before.
async fn closed(stream: &mut TcpStream) -> (bool, Vec<u8>) {
    let mut read = Vec::new();
    let mut buffer = [0u8; 4096];
    let outcome = tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    (outcome.is_ok(), read)
}

fn assert_late(response: &RawResponse, what: &str) {
    assert_eq!(response.status, 408, "{what}: {}", response.head);
    assert_eq!(
        response.json(),
        json!({"detail": "Request body not received in time"}),
        "{what}"
    );
    let head = response.head.to_ascii_lowercase();
    assert!(head.contains("connection: close"), "{what}: {head}");
    // Answered inside the router, so the request metrics and CORS saw the 408.
    assert!(head.contains("x-request-id"), "{what}: {head}");
}

/// The value of `name{reason="…"}` in a scrape, 0 when absent.
fn sample(scrape: &str, name: &str, reason: &str) -> f64 {
    let prefix = format!("{name}{{reason=\"{reason}\"}} ");
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0.0, |value| value.trim().parse().expect("a number"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_trickled_bodies_holding_every_slot_get_408_and_are_closed_so_healthz_is_served()
 {
    const SLOTS: usize = 8;
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.server.max_connections = SLOTS;
        s.server.body_read_timeout = Duration::from_secs(1);
        s.server.body_min_rate_bytes_per_sec = 1024;
        // Neither the request timeout nor the header timeout can be what frees the slots.
        s.edge.requests.request_timeout = Duration::from_secs(120);
        s.server.header_read_timeout = Duration::from_secs(120);
    })
    .await;
    let closes =
        |scrape: &str| sample(scrape, "analytics_connections_closed_total", "body_timeout");
    let before = closes(&scrape(app.addr).await);
    let mut holders = Vec::new();
    for i in 0..SLOTS {
        let mut stream = connect(app.addr).await;
        let mut head = metric_head(&app, 1_000_000);
        head.push(b'{');
        stream.write_all(&head).await.unwrap();
        let (mut reader, mut writer) = stream.into_split();
        // Half stall after one byte, half trickle one every 100 ms (far under the rate):
        // a per-frame idle timeout would let the trickles through. The stalled ones keep
        // their write half (dropping it would half-close, which hyper takes as the client
        // gone).
        let (trickle, stalled) = if i % 2 == 1 {
            let trickle = tokio::spawn(async move {
                while writer.write_all(b" ").await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
            (Some(trickle), None)
        } else {
            (None, Some(writer))
        };
        let answer = tokio::spawn(async move {
            let mut buffer = Vec::new();
            let outcome = tokio::time::timeout(PATIENCE, reader.read_to_end(&mut buffer)).await;
            (outcome.is_ok(), buffer)
        });
        holders.push((answer, trickle, stalled));
    }

    let mut client = connect(app.addr).await;
    let healthz = exchange(&mut client, HEALTHZ).await;
    let metric = app
        .post_json(
            METRIC,
            &metric_body("m", 1, "normal"),
            Some(&app.token("user-slow")),
        )
        .await;

    assert_eq!(healthz.status, 200, "{}", healthz.head);
    assert_eq!(metric.status(), 200, "a normal body is unaffected");
    for (i, (answer, trickle, _stalled)) in holders.into_iter().enumerate() {
        let (closed, bytes) = answer.await.unwrap();
        let what = if trickle.is_some() {
            "a trickled body"
        } else {
            "a stalled body"
        };
        assert!(closed, "{what} ({i}): its connection is still open");
        let text = String::from_utf8_lossy(&bytes);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("{what} ({i}) was not answered: {text:?}"));
        let response = RawResponse {
            status: head[9..12].parse().expect("a status"),
            head: head.to_owned(),
            body: body.as_bytes().to_vec(),
        };
        assert_late(&response, what);
        if let Some(trickle) = trickle {
            trickle.await.unwrap();
        }
    }
    // Counters are shared by the tests of this process: at least these were counted.
    let after = closes(&scrape(app.addr).await);
    assert!(after >= before + SLOTS as f64, "{before} → {after}");
}

/// The metrics, on a connection of its own that the server closes after answering.
async fn scrape(addr: SocketAddr) -> String {
    let mut stream = connect(addr).await;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut stream).await;
    assert_eq!(response.status, 200, "{}", response.head);
    String::from_utf8(response.body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_slower_than_the_timeout_but_faster_than_the_minimum_rate_is_served() {
    // 3000 bytes in six parts 300 ms apart: 1.8 s, past the 1 s timeout, at ~1.7 KB/s.
    let data = "x".repeat(3000 - r#"{"metric_name":"m","metric_value":1,"data_string":""}"#.len());
    let body = serde_json::to_vec(&metric_body("m", 1, data)).unwrap();
    assert_eq!(body.len(), 3000);
    for (min_rate, expected) in [(256, 200), (0, 408)] {
        let app = TestApp::spawn_with(Backend::Sqlite, |s| {
            s.server.body_read_timeout = Duration::from_secs(1);
            s.server.body_min_rate_bytes_per_sec = min_rate;
        })
        .await;
        let stream = connect(app.addr).await;
        let (mut reader, mut writer) = stream.into_split();
        writer
            .write_all(&metric_head(&app, body.len()))
            .await
            .unwrap();
        let parts: Vec<Vec<u8>> = body.chunks(500).map(<[u8]>::to_vec).collect();
        let sender = tokio::spawn(async move {
            for part in parts {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if writer.write_all(&part).await.is_err() {
                    break; // cut off: the answer says why
                }
            }
            // Dropping it would half-close the connection, which hyper takes as the
            // client gone.
            writer
        });

        let mut answer = Vec::new();
        let read = tokio::time::timeout(PATIENCE, async {
            let mut buffer = [0u8; 4096];
            while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
                match reader.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buffer[..n]),
                }
            }
        })
        .await;
        let writer = sender.await.unwrap();
        drop((reader, writer));

        assert!(read.is_ok(), "min rate {min_rate}: no answer");
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.starts_with(&format!("HTTP/1.1 {expected} ")),
            "min rate {min_rate}: {text}"
        );
    }
}

/// A connection from `local` (any 127/8 address reaches the 127.0.0.1 listener).
async fn connect_from(local: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.expect("the server accepts")
}

/// Sends `request` and reads the answer (a `Content-Length` body); `None` when the server
/// closed the connection instead of answering.
async fn try_exchange(stream: &mut TcpStream, request: &[u8]) -> Option<RawResponse> {
    stream.write_all(request).await.ok()?;
    let mut read = Vec::new();
    let mut buffer = [0u8; 8192];
    tokio::time::timeout(PATIENCE, async {
        loop {
            let text = String::from_utf8_lossy(&read);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length: usize = head
                    .lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                if body.len() >= length {
                    return Some(RawResponse {
                        status: head.get(9..12)?.parse().ok()?,
                        head: head.to_owned(),
                        body: body.as_bytes()[..length].to_vec(),
                    });
                }
            }
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => read.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await
    .ok()
    .flatten()
}

/// A connection from `local` that the server admitted (it answered `/healthz` on it);
/// `None` when the server closed it instead.
async fn admitted(local: &str, addr: SocketAddr) -> Option<TcpStream> {
    let mut stream = connect_from(local, addr).await;
    let answer = try_exchange(&mut stream, HEALTHZ).await?;
    (answer.status == 200).then_some(stream)
}

/// The per-client refusals counted, scraped from `local`; `None` when refused.
async fn refusals_from(local: &str, addr: SocketAddr) -> Option<f64> {
    let mut stream = connect_from(local, addr).await;
    let scrape = b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";
    let answer = try_exchange(&mut stream, scrape).await?;
    assert_eq!(answer.status, 200, "{}", answer.head);
    let text = String::from_utf8(answer.body).unwrap();
    Some(sample(
        &text,
        "analytics_connections_refused_total",
        "per_client",
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_connection_cap_is_closed_at_accept_and_counted_while_others_are_served()
{
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.server.max_connections_per_client = 2;
    })
    .await;
    let before = refusals_from("127.0.0.1", app.addr)
        .await
        .expect("the first connection is admitted");
    // The scrape's connection may still count for a moment after it closed.
    let first = eventually("a first connection", PATIENCE, async || {
        admitted("127.0.0.1", app.addr).await
    })
    .await;
    let second = eventually("a second connection", PATIENCE, async || {
        admitted("127.0.0.1", app.addr).await
    })
    .await;

    let mut third = connect_from("127.0.0.1", app.addr).await;
    let _ = third.write_all(HEALTHZ).await;
    let (third_closed, third_read) = closed(&mut third).await;
    let other_client = admitted("127.0.0.2", app.addr).await;
    drop(first);
    let after_one_closed = eventually(
        "a place freed by a closed connection",
        PATIENCE,
        async || admitted("127.0.0.1", app.addr).await,
    )
    .await;
    drop(after_one_closed);
    drop(second);
    let after = eventually("a scrape once the places are free", PATIENCE, async || {
        refusals_from("127.0.0.1", app.addr).await
    })
    .await;

    assert!(third_closed, "the third connection is still open");
    assert!(
        third_read.is_empty(),
        "the third connection was answered: {:?}",
        String::from_utf8_lossy(&third_read)
    );
    assert!(other_client.is_some(), "another client is served");
    assert!(after >= before + 1.0, "{before} → {after}");
}

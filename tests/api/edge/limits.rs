//! Body limits (with and without `Content-Length`, compressed or not), keep-alive after a
//! 413, the request timeout's answer, and slow clients.

use std::io::Write;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::raw::{chunked, connect, exchange, post_head, read_response};
use crate::helpers::{Backend, TestApp, event_body, metric_body};
use crate::on_both_backends;

/// Every route that reads a body, with a valid body of exactly `size` bytes for it.
const BODY_ROUTES: &[(&str, &str, &str)] = &[
    (
        "/api/analytics/log_raw_metric",
        r#"{"metric_name":"m","metric_value":1,"data_string":""#,
        r#""}"#,
    ),
    (
        "/api/analytics/log_raw_analytics",
        r#"{"type":"t","data_index":"i","data":{"padding":""#,
        r#""}}"#,
    ),
];

fn padded(prefix: &str, suffix: &str, size: usize) -> Vec<u8> {
    let filler = size - prefix.len() - suffix.len();
    let mut body = prefix.as_bytes().to_vec();
    body.resize(body.len() + filler, b'x');
    body.extend_from_slice(suffix.as_bytes());
    assert_eq!(body.len(), size);
    body
}

fn auth_lines(app: &TestApp, extra: &[&str]) -> Vec<String> {
    let mut lines = vec![
        format!("Authorization: Bearer {}", app.token("user-limits")),
        "Content-Type: application/json".to_owned(),
    ];
    lines.extend(extra.iter().map(|l| l.to_string()));
    lines
}

fn too_large(limit: usize) -> Value {
    json!({ "detail": format!("Request body too large: the limit is {limit} bytes") })
}

async fn every_body_route_takes_exactly_the_limit_and_refuses_one_byte_more(app: TestApp) {
    let limit = app.settings.edge.requests.body_limit_bytes;
    assert_eq!(limit, 1024 * 1024, "the default limit is 1 MiB");
    for (path, prefix, suffix) in BODY_ROUTES {
        let mut stream = connect(app.addr).await;
        let at_limit = padded(prefix, suffix, limit);
        let over = padded(prefix, suffix, limit + 1);

        let mut request = post_head(
            path,
            &auth_lines(&app, &[&format!("Content-Length: {}", over.len())]),
        )
        .into_bytes();
        request.extend_from_slice(&over);
        let refused = exchange(&mut stream, &request).await;
        // The same keep-alive connection serves the next request.
        let mut request = post_head(
            path,
            &auth_lines(&app, &[&format!("Content-Length: {}", at_limit.len())]),
        )
        .into_bytes();
        request.extend_from_slice(&at_limit);
        let accepted = exchange(&mut stream, &request).await;

        assert_eq!(refused.status, 413, "{path}");
        assert_eq!(refused.json(), too_large(limit), "{path}");
        assert_eq!(accepted.status, 200, "{path}: {:?}", accepted.head);
        assert!(accepted.json().is_string(), "{path}");
    }
}

async fn a_chunked_body_over_the_limit_gets_413(app: TestApp) {
    let limit = app.settings.edge.requests.body_limit_bytes;
    for (path, prefix, suffix) in BODY_ROUTES {
        let mut stream = connect(app.addr).await;
        let mut request =
            post_head(path, &auth_lines(&app, &["Transfer-Encoding: chunked"])).into_bytes();
        request.extend_from_slice(&chunked(&padded(prefix, suffix, limit + 1)));
        let mut small =
            post_head(path, &auth_lines(&app, &["Transfer-Encoding: chunked"])).into_bytes();
        small.extend_from_slice(&chunked(&padded(prefix, suffix, 100)));

        let refused = exchange(&mut stream, &request).await;
        let accepted = exchange(&mut stream, &small).await;

        assert_eq!(refused.status, 413, "{path}");
        assert_eq!(refused.json(), too_large(limit), "{path}");
        assert_eq!(accepted.status, 200, "{path}");
    }
}

on_both_backends!(
    every_body_route_takes_exactly_the_limit_and_refuses_one_byte_more,
    a_chunked_body_over_the_limit_gets_413,
);

type Encoder = fn(&[u8]) -> Vec<u8>;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// HTTP's `deflate` is the zlib format (RFC 9110 §8.4.1.2), not a raw deflate stream.
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn brotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut writer = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        writer.write_all(data).unwrap();
    }
    out
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_deflate_brotli_and_zstd_bodies_are_decompressed_and_stored() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let token = app.token("user-enc");
    let encoders: [(&str, Encoder); 4] = [
        ("gzip", gzip),
        ("deflate", deflate),
        ("br", brotli),
        ("zstd", zstd),
    ];
    for (encoding, encode) in encoders {
        let body = event_body(encoding, json!({"k": "v"}), "i");

        let response = app
            .client
            .post(app.url("/api/analytics/log_raw_analytics"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .header("content-encoding", encoding)
            .body(encode(body.to_string().as_bytes()))
            .send()
            .await
            .unwrap();

        assert_eq!(response.status(), 200, "{encoding}");
        let id: String = response.json().await.unwrap();
        let row = app.store.event_by_id(&id).await.unwrap().unwrap();
        assert_eq!(row.event_type, encoding);
        assert_eq!(row.data.unwrap()["k"], "v");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_content_encoding_gets_415_with_a_detail() {
    let app = TestApp::spawn(Backend::Sqlite).await;

    let response = app
        .client
        .post(app.url("/api/analytics/log_raw_metric"))
        .bearer_auth(app.token("u"))
        .header("content-encoding", "snappy")
        .body("{}")
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 415);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"detail": "Unsupported Media Type"}));
}

/// Resident set size of this process, from /proc.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_gets_413_and_memory_stays_bounded() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    const INFLATED: usize = 50 * 1024 * 1024;
    let mut json = br#"{"type":"t","data":{},"data_index":""#.to_vec();
    json.resize(json.len() + INFLATED, b'0');
    json.extend_from_slice(br#""}"#);
    let bomb = gzip(&json);
    drop(json);
    assert!(
        bomb.len() < 100 * 1024,
        "compressed to {} bytes",
        bomb.len()
    );
    let before = rss_bytes();

    let response = app
        .client
        .post(app.url("/api/analytics/log_raw_analytics"))
        .bearer_auth(app.token("u"))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 413);
    let limit = app.settings.edge.requests.body_limit_bytes;
    assert_eq!(response.json::<Value>().await.unwrap(), too_large(limit));
    let growth = rss_bytes().saturating_sub(before);
    // Inflating it all would take 50 MB; reading stops just past the 1 MiB limit.
    assert!(
        growth < 25 * 1024 * 1024,
        "memory grew by {growth} bytes while refusing the bomb"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_timeout_gets_503_in_the_storage_error_shape() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.edge.requests.request_timeout = Duration::from_secs(1)
    })
    .await;
    let mut stream = connect(app.addr).await;
    // The body never arrives in full, so the handler outlives the timeout.
    let head = post_head(
        "/api/analytics/log_raw_metric",
        &auth_lines(&app, &["Content-Length: 100"]),
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(b"{\"metric_name\"").await.unwrap();

    let response = read_response(&mut stream).await;

    assert_eq!(response.status, 503);
    assert!(
        response
            .head
            .to_ascii_lowercase()
            .contains("retry-after: 1")
    );
    assert_eq!(
        response.json(),
        json!({"detail": {"message": "Request timed out", "hint": "Retry the request later."}})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_clients_trickling_headers_are_closed_while_others_are_served() {
    const SLOW: usize = 200;
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.server.header_read_timeout = Duration::from_secs(1);
        s.edge.rate_limit.ip_per_second = 0.0;
    })
    .await;
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let mut stream = connect(app.addr).await;
        stream
            .write_all(b"POST /api/analytics/log_raw_metric HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(stream);
    }
    let trickle = tokio::spawn(async move {
        // One header line per connection every 200 ms, never finishing the head; each
        // connection reports whether the server closed it.
        let mut closed = vec![false; slow.len()];
        for _ in 0..50 {
            for (i, stream) in slow.iter_mut().enumerate() {
                if !closed[i] && stream.write_all(b"X-Slow: 1\r\n").await.is_err() {
                    closed[i] = true;
                }
            }
            for (i, stream) in slow.iter_mut().enumerate() {
                if closed[i] {
                    continue;
                }
                let mut byte = [0u8; 512];
                match tokio::time::timeout(Duration::from_millis(1), stream.read(&mut byte)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => closed[i] = true,
                    _ => {}
                }
            }
            if closed.iter().all(|c| *c) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        closed.iter().filter(|c| **c).count()
    });

    for i in 0..20 {
        let body = metric_body("m", i, "d");
        let response = app
            .post_json(
                "/api/analytics/log_raw_metric",
                &body,
                Some(&app.token("u")),
            )
            .await;
        assert_eq!(response.status(), 200, "request {i} among slow clients");
    }
    let closed = trickle.await.unwrap();

    assert_eq!(
        closed, SLOW,
        "every slow connection is closed by the server"
    );
}

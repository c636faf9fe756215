//! A minimal HTTP/1.1 client over one TCP connection, for what reqwest hides: chunked
//! bodies, keep-alive reuse, and clients that stall.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response read off the wire.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

pub async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("the server accepts")
}

/// A request head for `POST path` with the given extra header lines.
pub fn post_head(path: &str, headers: &[String]) -> String {
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: test\r\n");
    for line in headers {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head
}

/// The body as one chunk of chunked transfer coding, plus the last chunk.
pub fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n0\r\n\r\n");
    out
}

/// Reads one response with a `Content-Length` body (what the service always sends),
/// waiting at most 20 s.
pub async fn read_response(stream: &mut TcpStream) -> RawResponse {
    tokio::time::timeout(Duration::from_secs(20), read_response_inner(stream))
        .await
        .expect("a response within 20 s")
}

async fn read_response_inner(stream: &mut TcpStream) -> RawResponse {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).await.expect("reading the response");
        assert!(n > 0, "connection closed before a response: {buffer:?}");
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let status = head[9..12].parse().expect("a status code");
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        let n = stream.read(&mut chunk).await.expect("reading the body");
        assert!(n > 0, "connection closed mid-body");
        buffer.extend_from_slice(&chunk[..n]);
    }
    RawResponse {
        status,
        head,
        body: buffer[head_end..head_end + length].to_vec(),
    }
}

/// Sends `bytes` and reads the response.
pub async fn exchange(stream: &mut TcpStream, bytes: &[u8]) -> RawResponse {
    stream.write_all(bytes).await.expect("sending the request");
    read_response(stream).await
}

//! Where and how the HTTP server listens (`[server]`, except the request limits, which
//! are the edge's).

use std::time::Duration;

use serde::Deserialize;
use serde_with::{DurationSeconds, serde_as};

use super::ConnectionLimits;

/// Where and how the HTTP server listens.
#[serde_as]
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// Interface to bind (`HOST`).
    pub host: String,
    /// Port to bind (`PORT`); 0 picks a free one.
    pub port: u16,
    /// How long in-flight requests may run after a shutdown signal.
    #[serde_as(as = "DurationSeconds<u64>")]
    #[serde(rename = "shutdown_timeout_secs")]
    pub shutdown_timeout: Duration,
    /// A client must send its whole request head within this time (slowloris).
    #[serde_as(as = "DurationSeconds<u64>")]
    #[serde(
        rename = "header_read_timeout_secs",
        default = "default_header_read_timeout"
    )]
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed.
    #[serde_as(as = "DurationSeconds<u64>")]
    #[serde(rename = "keep_alive_idle_secs", default = "default_keep_alive_idle")]
    pub keep_alive_idle: Duration,
    /// A request body must arrive within this of the server starting to read it (plus
    /// what `body_min_rate_bytes_per_sec` earns), else 408 and the connection is closed.
    #[serde_as(as = "DurationSeconds<u64>")]
    #[serde(
        rename = "body_read_timeout_secs",
        default = "default_body_read_timeout"
    )]
    pub body_read_timeout: Duration,
    /// Every this many body bytes received extend the body's deadline by one second, so a
    /// large body on a slow link is not cut; 0: no extension.
    #[serde(default = "default_body_min_rate")]
    pub body_min_rate_bytes_per_sec: u64,
    /// Most connections open at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most connections open at once from one client (IPv4 address, IPv6 /64); 0: no cap.
    #[serde(default)]
    pub max_connections_per_client: usize,
    /// Largest request head (request line and headers), in bytes.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Also serve cleartext HTTP/2 (h2c, prior knowledge); off: HTTP/1.1 only.
    #[serde(default)]
    pub http2_enabled: bool,
    /// With HTTP/2: most requests (streams) one connection may have open at once.
    #[serde(default = "default_http2_max_concurrent_streams")]
    pub http2_max_concurrent_streams: u32,
}

fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_keep_alive_idle() -> Duration {
    Duration::from_secs(75)
}

fn default_body_read_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_body_min_rate() -> u64 {
    16 * 1024
}

fn default_max_connections() -> usize {
    4096
}

fn default_max_header_bytes() -> usize {
    64 * 1024
}

fn default_http2_max_concurrent_streams() -> u32 {
    100
}

impl Default for Config {
    /// The values of `config/default.toml`.
    fn default() -> Self {
        Config {
            host: "127.0.0.1".to_owned(),
            port: 8006,
            shutdown_timeout: Duration::from_secs(20),
            header_read_timeout: default_header_read_timeout(),
            keep_alive_idle: default_keep_alive_idle(),
            body_read_timeout: default_body_read_timeout(),
            body_min_rate_bytes_per_sec: default_body_min_rate(),
            max_connections: default_max_connections(),
            max_connections_per_client: 0,
            max_header_bytes: default_max_header_bytes(),
            http2_enabled: false,
            http2_max_concurrent_streams: default_http2_max_concurrent_streams(),
        }
    }
}

impl Config {
    /// The protections each accepted connection gets.
    pub fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            header_read_timeout: self.header_read_timeout,
            keep_alive_idle: self.keep_alive_idle,
            body_read_timeout: self.body_read_timeout,
            body_min_rate: self.body_min_rate_bytes_per_sec,
            max_connections: self.max_connections,
            max_connections_per_client: self.max_connections_per_client,
            max_header_bytes: self.max_header_bytes,
            http2_max_concurrent_streams: self
                .http2_enabled
                .then_some(self.http2_max_concurrent_streams),
        }
    }

    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.header_read_timeout.is_zero() || self.max_connections == 0 {
            return Err(
                "server.header_read_timeout_secs and server.max_connections must be at least 1"
                    .to_owned(),
            );
        }
        if self.body_read_timeout.is_zero() {
            return Err("server.body_read_timeout_secs must be at least 1".to_owned());
        }
        if self.keep_alive_idle.is_zero() || self.http2_max_concurrent_streams == 0 {
            return Err(
                "server.keep_alive_idle_secs and server.http2_max_concurrent_streams \
                        must be at least 1"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http2_streams_are_capped_only_when_http2_is_on() {
        let off = Config::default();
        let on = Config {
            http2_enabled: true,
            ..Config::default()
        };

        assert_eq!(off.connection_limits().http2_max_concurrent_streams, None);
        assert_eq!(
            on.connection_limits().http2_max_concurrent_streams,
            Some(100)
        );
        assert!(
            Config {
                keep_alive_idle: Duration::ZERO,
                ..Config::default()
            }
            .validate()
            .unwrap_err()
            .contains("keep_alive_idle_secs")
        );
    }
}

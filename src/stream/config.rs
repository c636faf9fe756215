//! Stream-mode settings: `[nats]` (the servers, the streams, publishing) and `[loader]`.

use std::time::Duration;

use serde::Deserialize;
use serde_with::{DurationMilliSeconds, DurationSeconds, serde_as};

/// The NATS servers and the JetStream streams and buckets the service uses (`[nats]`).
#[serde_as]
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Config {
    /// Servers, comma-separated (`NATS_URL`); the client fails over between them.
    pub url: String,
    /// A `.creds` file (JWT and NKey) to authenticate with; empty: none.
    #[serde(default)]
    pub credentials_file: String,
    /// A PEM file of CA certificates to trust for TLS; empty: the system's. Setting it
    /// also makes TLS required.
    #[serde(default)]
    pub tls_ca_file: String,
    /// Require TLS even without a CA file.
    #[serde(default)]
    pub tls_required: bool,
    /// Copies of each stream and bucket in the NATS cluster (1, 3 or 5).
    pub stream_replicas: usize,
    /// Messages older than this are dropped from the streams, loaded or not.
    #[serde_as(as = "DurationSeconds<u64>")]
    #[serde(rename = "stream_max_age_secs")]
    pub stream_max_age: Duration,
    /// Most bytes per stream; -1: no limit. When full, new publishes are refused (503),
    /// never old rows dropped.
    pub stream_max_bytes: i64,
    /// A publish not acknowledged by the stream within this is answered 503.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    #[serde(rename = "publish_timeout_ms")]
    pub publish_timeout: Duration,
    /// How long start-up waits for a server to answer.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    #[serde(rename = "connect_timeout_ms")]
    pub connect_timeout: Duration,
}

impl Default for Config {
    /// The values of `config/default.toml`.
    fn default() -> Self {
        Config {
            url: "nats://127.0.0.1:4222".to_owned(),
            credentials_file: String::new(),
            tls_ca_file: String::new(),
            tls_required: false,
            stream_replicas: 1,
            stream_max_age: Duration::from_secs(7 * 24 * 3600),
            stream_max_bytes: 10 * 1024 * 1024 * 1024,
            publish_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl Config {
    /// The servers of `url`, trimmed, empty entries left out.
    pub fn servers(&self) -> Vec<String> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// What the server URLs carry that must not be logged: a password, or a user name
    /// given alone (NATS reads that as a token).
    pub fn secrets(&self) -> Vec<String> {
        let urls = self.servers().into_iter();
        let parsed = urls.filter_map(|server| url::Url::parse(&server).ok());
        parsed
            .filter_map(|url| match url.password() {
                Some(password) => Some(password.to_owned()),
                None => Some(url.username().to_owned()).filter(|token| !token.is_empty()),
            })
            .collect()
    }

    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.servers().is_empty() {
            return Err("nats.url (NATS_URL) must name at least one server".to_owned());
        }
        if !matches!(self.stream_replicas, 1..=5) {
            return Err("nats.stream_replicas must be 1 to 5".to_owned());
        }
        if self.stream_max_age.is_zero() || self.publish_timeout.is_zero() {
            return Err(
                "nats.stream_max_age_secs and nats.publish_timeout_ms must be at least 1"
                    .to_owned(),
            );
        }
        if self.stream_max_bytes == 0 || self.stream_max_bytes < -1 {
            return Err("nats.stream_max_bytes must be positive, or -1 for no limit".to_owned());
        }
        Ok(())
    }
}

/// The loader: from the streams into the database (`[loader]`).
#[serde_as]
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct LoaderConfig {
    /// Run a loader inside `serve` too (besides `analytics-service load`).
    pub enabled: bool,
    /// Most messages fetched at once by one worker.
    pub batch: usize,
    /// Most bytes one worker's pull asks for (the `max_bytes` of the pull request). A
    /// worker pulls again only once every message of its last pull is acknowledged, so
    /// this bounds both the bytes it buffers and its unacknowledged window; a message
    /// larger than this is pulled alone (see `loader.rs`).
    pub max_fetch_bytes: usize,
    /// Most bytes of row data in one insert statement (each row at its upper bound; a row
    /// alone always fits). Over TLS a statement larger than a TLS record stalls (see
    /// `ingest.max_batch_bytes`).
    pub max_statement_bytes: usize,
    /// Workers per table, each with its own database connection.
    pub workers_per_table: usize,
    /// How long one fetch waits for its batch to fill before taking what came.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    #[serde(rename = "fetch_wait_ms")]
    pub fetch_wait: Duration,
    /// A row the database refuses for a reason a retry will not fix goes to the dead-letter
    /// subject once it has been delivered this many times.
    pub max_deliver: i64,
    /// A message not acknowledged within this is delivered again (a loader that died).
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    #[serde(rename = "ack_wait_ms")]
    pub ack_wait: Duration,
    /// How long a refused batch waits before it is delivered again.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    #[serde(rename = "retry_delay_ms")]
    pub retry_delay: Duration,
    /// How often the lag gauges are read from the server.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    #[serde(rename = "lag_interval_ms")]
    pub lag_interval: Duration,
    /// One insert that takes longer is cut off (its connection dropped) and its rows
    /// delivered again; also the loader's `statement_timeout`.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    #[serde(rename = "insert_deadline_ms")]
    pub insert_deadline: Duration,
}

impl Default for LoaderConfig {
    /// The values of `config/default.toml`.
    fn default() -> Self {
        LoaderConfig {
            enabled: false,
            batch: 500,
            max_fetch_bytes: 4 * 1024 * 1024,
            max_statement_bytes: 15 * 1024,
            workers_per_table: 4,
            fetch_wait: Duration::from_millis(200),
            max_deliver: 5,
            ack_wait: Duration::from_secs(30),
            retry_delay: Duration::from_secs(1),
            lag_interval: Duration::from_secs(5),
            insert_deadline: Duration::from_secs(10),
        }
    }
}

impl LoaderConfig {
    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.batch == 0
            || self.max_deliver < 1
            || self.max_statement_bytes == 0
            || self.workers_per_table == 0
        {
            return Err(
                "loader.batch, loader.max_statement_bytes, loader.workers_per_table \
                        and loader.max_deliver must be at least 1"
                    .to_owned(),
            );
        }
        // 0 would be no limit at all in a pull request: the bound this setting exists for.
        if self.max_fetch_bytes == 0 {
            return Err(
                "loader.max_fetch_bytes must be at least 1 (bytes one worker's pull \
                        asks for; a message larger than it is still pulled, alone)"
                    .to_owned(),
            );
        }
        if self.fetch_wait.is_zero()
            || self.ack_wait.is_zero()
            || self.lag_interval.is_zero()
            || self.insert_deadline.is_zero()
        {
            return Err(
                "loader.fetch_wait_ms, loader.ack_wait_ms, loader.lag_interval_ms and \
                 loader.insert_deadline_ms must be at least 1"
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
    fn the_url_is_a_comma_separated_list() {
        let config = Config {
            url: " nats://a:4222, ,nats://b:4222 ".to_owned(),
            ..Config::default()
        };

        assert_eq!(config.servers(), ["nats://a:4222", "nats://b:4222"]);
        assert!(config.validate().is_ok());
    }

    #[test]
    fn nonsense_is_refused() {
        let empty = Config {
            url: " , ".to_owned(),
            ..Config::default()
        };
        let replicas = Config {
            stream_replicas: 0,
            ..Config::default()
        };
        let no_batch = LoaderConfig {
            batch: 0,
            ..LoaderConfig::default()
        };
        let no_fetch_bytes = LoaderConfig {
            max_fetch_bytes: 0,
            ..LoaderConfig::default()
        };
        let tiny_fetch_bytes = LoaderConfig {
            max_fetch_bytes: 1,
            ..LoaderConfig::default()
        };

        assert!(empty.validate().unwrap_err().contains("NATS_URL"));
        assert!(replicas.validate().unwrap_err().contains("stream_replicas"));
        assert!(no_batch.validate().unwrap_err().contains("loader.batch"));
        let refused = no_fetch_bytes.validate().unwrap_err();
        assert!(refused.contains("loader.max_fetch_bytes"), "{refused}");
        assert!(tiny_fetch_bytes.validate().is_ok());
    }
}

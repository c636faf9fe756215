//! The connection to the NATS servers, and the streams and buckets made at start-up.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

use super::Config;
use super::message::{DEAD_LETTER_STREAM, DEAD_LETTER_SUBJECTS, Table};

/// How long start-up keeps asking for a stream that does not answer (a leader election
/// after a node's loss takes seconds).
const SETUP_RETRIES_FOR: Duration = Duration::from_secs(30);

/// Why stream mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The credentials file could not be read.
    #[error("NATS credentials file not usable: {0}")]
    Credentials(#[source] std::io::Error),
    /// No server answered.
    #[error("NATS servers not reachable")]
    Connect(#[source] async_nats::ConnectError),
    /// A stream or bucket could not be made or read.
    #[error("JetStream {what} {name:?} not usable: {reason}")]
    JetStream {
        /// `stream` or `key-value bucket`.
        what: &'static str,
        /// Its name.
        name: String,
        /// The server's or client's words.
        reason: String,
    },
}

/// A connection and its JetStream context, the streams known to exist.
#[derive(Clone)]
pub struct Nats {
    /// The client (reconnects on its own, to any of the servers).
    pub client: async_nats::Client,
    /// JetStream over it.
    pub jetstream: jetstream::Context,
    config: Config,
}

/// Connects to the configured servers and makes the streams (the tables' and the dead
/// letters') when missing; fails when no server answers within the connect timeout.
pub async fn connect(config: &Config) -> Result<Nats, SetupError> {
    let mut options = async_nats::ConnectOptions::new()
        .name("analytics-service")
        .connection_timeout(config.connect_timeout)
        // Reconnect for ever: a capture replica outlives a NATS node's restart.
        .max_reconnects(None);
    if !config.credentials_file.is_empty() {
        options = options
            .credentials_file(&config.credentials_file)
            .await
            .map_err(SetupError::Credentials)?;
    }
    if !config.tls_ca_file.is_empty() {
        options = options
            .add_root_certificates(PathBuf::from(&config.tls_ca_file))
            .require_tls(true);
    } else if config.tls_required {
        options = options.require_tls(true);
    }
    let client = options
        .connect(config.servers())
        .await
        .map_err(SetupError::Connect)?;
    let jetstream = jetstream::ContextBuilder::new()
        .timeout(config.publish_timeout)
        // An acknowledgement no longer awaited (its attempt timed out) holds an in-flight
        // slot until this passes.
        .ack_timeout(config.publish_timeout)
        .build(client.clone());
    let nats = Nats {
        client,
        jetstream,
        config: config.clone(),
    };
    for table in Table::ALL {
        let subjects = vec![table.subject().to_owned()];
        // A work queue: a row leaves the stream once a loader has acknowledged it, so the
        // byte limit bounds the rows not yet loaded.
        let retention = stream::RetentionPolicy::WorkQueue;
        nats.ensure_stream(table.stream(), subjects, retention)
            .await?;
    }
    // Dead letters stay (up to the age and byte limits) for an operator to read.
    let subjects = vec![DEAD_LETTER_SUBJECTS.to_owned()];
    (nats.ensure_stream(
        DEAD_LETTER_STREAM,
        subjects,
        stream::RetentionPolicy::Limits,
    ))
    .await?;
    Ok(nats)
}

impl Nats {
    async fn ensure_stream(
        &self,
        name: &str,
        subjects: Vec<String>,
        retention: stream::RetentionPolicy,
    ) -> Result<(), SetupError> {
        let config = stream::Config {
            name: name.to_owned(),
            subjects,
            retention,
            num_replicas: self.config.stream_replicas,
            max_age: self.config.stream_max_age,
            max_bytes: self.config.stream_max_bytes,
            // A full stream refuses new rows (503) rather than dropping rows not yet loaded.
            discard: stream::DiscardPolicy::New,
            storage: stream::StorageType::File,
            // A retried publish of the same row within this is stored once.
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        self.make_stream(config)
            .await
            .map_err(|reason| SetupError::JetStream {
                what: "stream",
                name: name.to_owned(),
                reason,
            })
    }

    /// Makes (or finds) the stream, trying again for [`SETUP_RETRIES_FOR`]: a cluster that
    /// just lost a node answers only once the stream has elected a new leader.
    async fn make_stream(&self, config: stream::Config) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + SETUP_RETRIES_FOR;
        loop {
            match self.jetstream.get_or_create_stream(config.clone()).await {
                Ok(_) => return Ok(()),
                Err(err) if tokio::time::Instant::now() >= deadline => return Err(err.to_string()),
                Err(err) => {
                    tracing::warn!(stream = %config.name, error = %err, "JetStream not answering yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// A key-value bucket whose entries live `ttl`, made when missing. `create` on it is
    /// atomic across every replica: the shared state of stream mode.
    pub async fn bucket(&self, name: &str, ttl: Duration) -> Result<kv::Store, SetupError> {
        // Made as the stream behind the bucket, as the client's `create_key_value` would
        // make it: that call first reads the account's info, which nats-server 2.9 answers
        // in a shape this client does not read.
        let config = stream::Config {
            name: format!("KV_{name}"),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            max_age: ttl,
            num_replicas: self.config.stream_replicas,
            storage: stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            duplicate_window: ttl.min(Duration::from_secs(120)),
            ..Default::default()
        };
        let error = |err: &dyn std::fmt::Display| SetupError::JetStream {
            what: "key-value bucket",
            name: name.to_owned(),
            reason: err.to_string(),
        };
        self.make_stream(config).await.map_err(|err| error(&err))?;
        self.jetstream
            .get_key_value(name)
            .await
            .map_err(|err| error(&err))
    }

    /// True while the client holds a connection to a server.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}

//! Alert de-duplication shared by every replica (stream mode): a NATS key-value bucket whose
//! entries live for the dedupe window. The replica whose `create` of the alert's entry
//! succeeds sends it; the others count it as suppressed. `create` is atomic across the
//! NATS cluster, so N replicas given the same alert post it once.

use async_nats::jetstream::kv::{self, CreateErrorKind};
use sha2::{Digest, Sha256};

use super::DiscordChannel;

/// The bucket's name.
pub const ALERT_BUCKET: &str = "analytics_alert_dedupe";

/// The claims of alerts sent within the window, shared by the replicas.
#[derive(Debug)]
pub struct SharedDedupe {
    bucket: kv::Store,
}

impl SharedDedupe {
    /// Claims in `bucket` (its entries must live for the dedupe window).
    pub fn new(bucket: kv::Store) -> Self {
        SharedDedupe { bucket }
    }

    /// True when this replica may send the alert: no replica claimed it within the window.
    /// A bucket that does not answer lets the alert through: better twice than never.
    pub async fn claim(&self, channel: DiscordChannel, content: &str) -> bool {
        match self.bucket.create(entry(channel, content), "".into()).await {
            Ok(_) => true,
            Err(err) if err.kind() == CreateErrorKind::AlreadyExists => false,
            Err(err) => {
                tracing::warn!(error = %err, "shared alert dedupe not answering; sending anyway");
                true
            }
        }
    }

    /// Gives the claim up after a failed send, so that the next identical alert is tried.
    pub async fn release(&self, channel: DiscordChannel, content: &str) {
        if let Err(err) = self.bucket.delete(entry(channel, content)).await {
            tracing::warn!(error = %err, "shared alert dedupe: claim not released");
        }
    }
}

/// Bucket keys allow only `[-/_=.a-zA-Z0-9]`: the channel and content are hashed.
fn entry(channel: DiscordChannel, content: &str) -> String {
    let digest = Sha256::new()
        .chain_update(channel.as_str())
        .chain_update([0])
        .chain_update(content)
        .finalize();
    format!("{digest:x}")
}

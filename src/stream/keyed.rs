//! `Idempotency-Key` in stream mode: the claim is a key-value bucket entry whose lifetime
//! is the retention, made with `create` (atomic across every replica and NATS node) before
//! the row is published. A replay answers the first request's id, and publishes the row
//! again under that id: should the first request's publish have failed after its claim was
//! seen, the replay's 200 still means "in the stream"; otherwise the stream's duplicate
//! window, then the loader's `on conflict do nothing`, keep the row once.

use async_nats::jetstream::kv::{self, CreateErrorKind};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Publisher;
use super::message::StreamRow;
use crate::idempotency::{IdempotencyHeader, Keyed, replay_or_conflict};
use crate::store::StoreError;

/// The bucket of stream mode's idempotency claims.
pub const IDEMPOTENCY_BUCKET: &str = "analytics_idempotency";

#[derive(Serialize, Deserialize)]
struct Claim {
    body_hash: String,
    row_id: uuid::Uuid,
}

/// Publishes rows, with or without an `Idempotency-Key`.
#[derive(Clone)]
pub struct KeyedPublisher {
    /// Publishes the rows.
    pub publisher: Publisher,
    claims: kv::Store,
}

impl KeyedPublisher {
    /// Claims in `claims` (a bucket whose entries live for the retention).
    pub fn new(publisher: Publisher, claims: kv::Store) -> Self {
        KeyedPublisher { publisher, claims }
    }

    /// Publishes `row` under the request's key (scoped to the user and `endpoint`), or
    /// finds the first request's id; `body_hash` is computed only when there is a key.
    pub async fn publish<R: StreamRow + Clone>(
        &self,
        header: &IdempotencyHeader,
        endpoint: &str,
        user_id: &str,
        row: &R,
        body_hash: impl FnOnce() -> String,
    ) -> Result<Keyed, StoreError> {
        let key = match header.key() {
            Ok(Some(key)) => key,
            Ok(None) => {
                self.publisher.publish(row).await?;
                return Ok(Keyed::NoKey);
            }
            Err(invalid) => return Ok(Keyed::Invalid(invalid)),
        };
        let entry = entry_name(user_id, endpoint, key);
        let claim = Claim {
            body_hash: body_hash(),
            row_id: row.id(),
        };
        let value = serde_json::to_vec(&claim).expect("a claim serializes");
        // A claim that expires between `create` and `get` is claimed again.
        for _ in 0..3 {
            match self.claims.create(&entry, value.clone().into()).await {
                Ok(_) => {
                    if let Err(err) = self.publisher.publish(row).await {
                        // Unclaimed, so that the client's retry can store the row.
                        let _ = self.claims.delete(&entry).await;
                        return Err(err);
                    }
                    return Ok(Keyed::Stored(claim.row_id.to_string()));
                }
                Err(err) if err.kind() == CreateErrorKind::AlreadyExists => {}
                Err(err) => return Err(unavailable(&err)),
            }
            let standing = self.claims.get(&entry).await.map_err(|e| unavailable(&e))?;
            let Some(standing) = standing else { continue };
            let standing: Claim = serde_json::from_slice(&standing)
                .map_err(|_| StoreError::StreamUnavailable("unreadable claim".to_owned()))?;
            let first_id = standing.row_id;
            let standing = (standing.body_hash, first_id.to_string());
            let keyed = replay_or_conflict(key, &claim.body_hash, standing);
            if let Keyed::Replayed(_) = &keyed {
                self.publisher
                    .publish(&row.clone().with_id(first_id))
                    .await?;
            }
            return Ok(keyed);
        }
        Err(StoreError::StreamUnavailable(
            "idempotency claim kept changing".to_owned(),
        ))
    }
}

/// Bucket keys allow only `[-/_=.a-zA-Z0-9]`: the user, endpoint and key are hashed.
fn entry_name(user_id: &str, endpoint: &str, key: &str) -> String {
    let mut hasher = Sha256::new();
    for part in [user_id, endpoint, key] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    format!("{:x}", hasher.finalize())
}

fn unavailable(err: &dyn std::fmt::Display) -> StoreError {
    StoreError::StreamUnavailable(format!("idempotency bucket: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_are_valid_bucket_keys_and_keep_the_parts_apart() {
        let name = entry_name("user", "log_raw_metric", "key with spaces/é");

        assert!(name.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(entry_name("ab", "c", "k"), entry_name("a", "bc", "k"));
    }
}

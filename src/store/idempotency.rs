//! Idempotency keys: the types the store methods take and return, and the SQL both
//! backends share (`$n` placeholders work in PostgreSQL and SQLite alike).
//!
//! The race is decided by the primary key `(user_id, endpoint, idempotency_key)`: the
//! claim is an `insert … on conflict do update … where <expired> returning row_id` in the
//! same transaction as the row's insert. Exactly one transaction gets a `row_id` back
//! (and inserts the row); every concurrent replay waits for it on the key's index entry
//! (PostgreSQL) or the write lock (SQLite), gets nothing back, and reads the winner's
//! committed claim.

use chrono::NaiveDateTime;

/// Which endpoint a key belongs to: a key is scoped to (user, endpoint).
pub const METRIC_ENDPOINT: &str = "log_raw_metric";
/// See [`METRIC_ENDPOINT`].
pub const EVENT_ENDPOINT: &str = "log_raw_analytics";

/// The key a request carries and what identifies its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyClaim {
    /// The client's `Idempotency-Key`.
    pub key: String,
    /// A hash of the validated body; a replay must carry the same.
    pub body_hash: String,
    /// Claims created before this instant have expired and count as absent.
    pub expired_before: NaiveDateTime,
}

/// What an idempotent insert did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotentInsert {
    /// The key was new (or expired): the row was stored and the key now names it.
    Stored,
    /// The key was used before with the same body: nothing was stored.
    Replayed {
        /// The id of the row the first request stored.
        row_id: String,
    },
    /// The key was used before with a different body: nothing was stored.
    Conflict,
}

/// Claims the key, or renews an expired claim; returns `row_id` only when this call won.
pub(super) const CLAIM_SQL: &str = "insert into analytics_idempotency_keys
        (user_id, endpoint, idempotency_key, body_hash, row_id, created_at)
    values ($1, $2, $3, $4, $5, $6)
    on conflict (user_id, endpoint, idempotency_key) do update
        set body_hash = excluded.body_hash, row_id = excluded.row_id, created_at = excluded.created_at
        where analytics_idempotency_keys.created_at < $7
    returning row_id";

/// The standing claim of a key, after `CLAIM_SQL` returned nothing.
pub(super) const EXISTING_SQL: &str = "select body_hash, row_id from analytics_idempotency_keys
    where user_id = $1 and endpoint = $2 and idempotency_key = $3";

/// Deletes expired claims.
pub(super) const PRUNE_SQL: &str = "delete from analytics_idempotency_keys where created_at < $1";

/// The outcome once the claim returned nothing: the standing claim decides.
pub(super) fn outcome_of_existing(
    claim: &IdempotencyClaim,
    existing: (String, String),
) -> IdempotentInsert {
    let (body_hash, row_id) = existing;
    if body_hash == claim.body_hash {
        IdempotentInsert::Replayed { row_id }
    } else {
        IdempotentInsert::Conflict
    }
}

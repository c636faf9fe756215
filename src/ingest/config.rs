//! Group-commit settings (`[ingest]`, except the batch endpoints' `batch_*` keys).

use std::time::Duration;

use serde::Deserialize;
use serde_with::{DurationMicroSeconds, DurationMilliSeconds, serde_as};

/// Where the single-event and batch endpoints put their rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// Straight into the database (group commit); a 200 means committed.
    #[default]
    Direct,
    /// Into NATS JetStream streams, loaded into the database by loaders; a 200 means the
    /// stream has the row (stored, replicated).
    Nats,
}

/// How the writers batch, how much may wait, and how long anything may take.
#[serde_as]
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Config {
    /// Where rows go (`APP_INGEST__SINK`): `direct` or `nats`.
    #[serde(default)]
    pub sink: SinkKind,
    /// Most rows in one transaction.
    pub max_batch: usize,
    /// Most (estimated) bytes of row data in one statement; a row alone always fits.
    pub max_batch_bytes: usize,
    /// How long a writer waits for more rows once it has one (zero: take what is queued).
    #[serde_as(as = "DurationMicroSeconds<u64>")]
    #[serde(rename = "max_wait_us")]
    pub max_wait: Duration,
    /// Rows that may wait per table before requests are refused with 503.
    pub queue_capacity: usize,
    /// Bytes of row data (each row at its upper bound) that may wait per table before
    /// requests are refused with 503; a row alone is always taken.
    pub queue_capacity_bytes: usize,
    /// Writers per table, i.e. transactions that may be in flight at once per table.
    pub writers_per_table: usize,
    /// Longest one batch may take, its split retries included: then its unanswered rows
    /// get 503 and its connection is dropped. Also the writers' `statement_timeout`.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    #[serde(rename = "batch_deadline_ms")]
    pub batch_deadline: Duration,
    /// A writer that has held rows this long without a commit counts as stalled.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    #[serde(rename = "stall_after_ms")]
    pub stall_after: Duration,
    /// At shutdown, after the HTTP drain, queued rows get this long to be written; the
    /// rest are answered 503.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    #[serde(rename = "shutdown_flush_ms")]
    pub shutdown_flush: Duration,
}

impl Default for Config {
    /// The values of `config/default.toml`.
    fn default() -> Self {
        Config {
            sink: SinkKind::Direct,
            max_batch: 500,
            max_batch_bytes: 15 * 1024,
            max_wait: Duration::ZERO,
            queue_capacity: 10_000,
            queue_capacity_bytes: 64 * 1024 * 1024,
            writers_per_table: 1,
            batch_deadline: Duration::from_secs(5),
            stall_after: Duration::from_secs(3),
            shutdown_flush: Duration::from_secs(5),
        }
    }
}

impl Config {
    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_batch == 0
            || self.queue_capacity == 0
            || self.queue_capacity_bytes == 0
            || self.writers_per_table == 0
        {
            return Err(
                "ingest.max_batch, ingest.queue_capacity, ingest.queue_capacity_bytes \
                        and ingest.writers_per_table must be at least 1"
                    .to_owned(),
            );
        }
        if self.batch_deadline.is_zero() || self.stall_after.is_zero() {
            return Err(
                "ingest.batch_deadline_ms and ingest.stall_after_ms must be at least 1".to_owned(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_capacities_and_deadlines_are_refused() {
        let no_queue = Config {
            queue_capacity: 0,
            ..Config::default()
        };
        let no_deadline = Config {
            batch_deadline: Duration::ZERO,
            ..Config::default()
        };

        assert!(Config::default().validate().is_ok());
        assert!(no_queue.validate().unwrap_err().contains("queue_capacity"));
        assert!(
            no_deadline
                .validate()
                .unwrap_err()
                .contains("batch_deadline_ms")
        );
    }
}

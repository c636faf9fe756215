//! Capture's side of stream mode: each row is published with its id as `Nats-Msg-Id`, and
//! the request is answered only once the stream has acknowledged it (stored, replicated).

use std::time::Duration;

use tokio::time::Instant;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self};

use super::message::{StreamRow, Table};
use crate::store::StoreError;

/// Rows published and acknowledged, by `table`.
pub const PUBLISHED: &str = "analytics_stream_published_total";
/// Publishes not acknowledged, by `table` and `reason` (`timeout`, `error`).
pub const PUBLISH_FAILED: &str = "analytics_stream_publish_failed_total";

/// Publishes rows to their table's stream.
#[derive(Clone)]
pub struct Publisher {
    jetstream: jetstream::Context,
    timeout: Duration,
}

impl Publisher {
    /// Publishes through `jetstream`; an acknowledgement later than `timeout` is a failure.
    pub fn new(jetstream: jetstream::Context, timeout: Duration) -> Self {
        Publisher { jetstream, timeout }
    }

    /// Publishes one row; returns once the stream has it.
    pub async fn publish<R: StreamRow>(&self, row: &R) -> Result<(), StoreError> {
        self.publish_all(std::slice::from_ref(row)).await
    }

    /// Publishes the rows, all sent before any acknowledgement is awaited; `Ok` once the
    /// stream has every one. A row not acknowledged within an attempt is sent again, under
    /// the same `Nats-Msg-Id`, until the timeout: a request in flight when its server died
    /// (its acknowledgement lost with the connection) or while the stream elected a new
    /// leader is stored once and answered 200. On `Err` some rows may be stored: a retry
    /// with the same rows stores nothing twice (the stream's duplicate window, then the
    /// loader's `on conflict do nothing`).
    pub async fn publish_all<R: StreamRow>(&self, rows: &[R]) -> Result<(), StoreError> {
        let table = R::TABLE;
        let deadline = Instant::now() + self.timeout;
        let attempt_length = (self.timeout / 3).max(MIN_ATTEMPT);
        let mut unacknowledged: Vec<&R> = rows.iter().collect();
        let outcome = loop {
            let attempt_deadline = deadline.min(Instant::now() + attempt_length);
            let (failed, error) = self.attempt(table, &unacknowledged, attempt_deadline).await;
            unacknowledged = failed;
            if unacknowledged.is_empty() {
                break Ok(());
            }
            if Instant::now() + RETRY_PAUSE >= deadline {
                break Err(error.unwrap_or(StoreError::TimedOut));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        };
        count(table, rows.len(), &outcome);
        outcome
    }

    /// Sends `rows` and waits for their acknowledgements until `deadline`; returns the rows
    /// not acknowledged and the last error other than a timeout.
    async fn attempt<'r, R: StreamRow>(
        &self,
        table: Table,
        rows: &[&'r R],
        deadline: Instant,
    ) -> (Vec<&'r R>, Option<StoreError>) {
        let mut failed = Vec::new();
        let mut error = None;
        let mut acks = Vec::with_capacity(rows.len());
        for &row in rows {
            let message = PublishMessage::build()
                .payload(row.encode())
                .message_id(row.id().to_string());
            let sent = self.jetstream.send_publish(table.subject(), message);
            match tokio::time::timeout_at(deadline, sent).await {
                Ok(Ok(ack)) => acks.push((row, ack)),
                Ok(Err(err)) => {
                    error = Some(unavailable(&err));
                    failed.push(row);
                }
                Err(_elapsed) => failed.push(row),
            }
        }
        for (row, ack) in acks {
            match tokio::time::timeout_at(deadline, ack).await {
                Ok(Ok(_)) => {}
                Ok(Err(err)) => {
                    if err.kind() != PublishErrorKind::TimedOut {
                        error = Some(unavailable(&err));
                    }
                    failed.push(row);
                }
                Err(_elapsed) => failed.push(row),
            }
        }
        (failed, error)
    }
}

/// The shortest attempt before a row is sent again.
const MIN_ATTEMPT: Duration = Duration::from_millis(500);
/// The pause between attempts (a reconnect, a leader election).
const RETRY_PAUSE: Duration = Duration::from_millis(100);

fn unavailable(err: &async_nats::jetstream::context::PublishError) -> StoreError {
    StoreError::StreamUnavailable(err.kind().to_string())
}

fn count(table: Table, rows: usize, outcome: &Result<(), StoreError>) {
    let label = table.name();
    match outcome {
        Ok(()) => metrics::counter!(PUBLISHED, "table" => label).increment(rows as u64),
        Err(err) => {
            let reason = if matches!(err, StoreError::TimedOut) {
                "timeout"
            } else {
                "error"
            };
            metrics::counter!(PUBLISH_FAILED, "table" => label, "reason" => reason)
                .increment(rows as u64);
        }
    }
}

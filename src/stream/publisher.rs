//! Capture's side of stream mode: each row is published with its id as `Nats-Msg-Id`, and
//! the request is answered only once the stream has acknowledged it (stored, replicated).

use std::time::Duration;

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
    /// stream has every one. On `Err` some may be stored: their ids are in the stream, and
    /// a retry with the same rows stores nothing twice (the stream's duplicate window, then
    /// the loader's `on conflict do nothing`).
    pub async fn publish_all<R: StreamRow>(&self, rows: &[R]) -> Result<(), StoreError> {
        let table = R::TABLE;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let sent = async {
            let mut acks = Vec::with_capacity(rows.len());
            for row in rows {
                let message = PublishMessage::build()
                    .payload(row.encode())
                    .message_id(row.id().to_string());
                acks.push(
                    self.jetstream
                        .send_publish(table.subject(), message)
                        .await?,
                );
            }
            for ack in acks {
                ack.await?;
            }
            Ok::<(), async_nats::jetstream::context::PublishError>(())
        };
        let outcome = match tokio::time::timeout_at(deadline, sent).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) if err.kind() == PublishErrorKind::TimedOut => Err(StoreError::TimedOut),
            Ok(Err(err)) => Err(StoreError::StreamUnavailable(err.kind().to_string())),
            Err(_elapsed) => Err(StoreError::TimedOut),
        };
        count(table, rows.len(), &outcome);
        outcome
    }
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

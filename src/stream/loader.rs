//! The loader: durable pull consumers (one per table, shared by every loader) whose
//! messages become multi-row inserts, acknowledged only after the insert has committed.
//!
//! A loader killed mid-batch leaves its messages unacknowledged: they are delivered again
//! after `ack_wait`, and the insert's `on conflict ("id") do nothing` keeps each row once.
//! A row the database refuses for a reason a retry will not fix is retried alone, and once
//! delivered `max_deliver` times it goes to the table's dead-letter subject with the reason;
//! the rows behind it are loaded meanwhile.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{AckKind, Message};
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::message::{StreamRow, Table};
use super::{LoaderConfig, Nats};
use crate::ingest::BatchRow;
use crate::store::{EventRow, MetricRow, RowWriter, Store, StoreError};

/// Rows inserted by the loader (duplicates included, stored once), by `table`.
pub const ROWS_LOADED: &str = "analytics_loader_rows_loaded_total";
/// Rows sent to the dead-letter subject, by `table` and `reason`.
pub const DEAD_LETTERS: &str = "analytics_loader_dead_letters_total";
/// Messages not yet acknowledged by a loader, by `table`.
pub const PENDING: &str = "analytics_loader_pending_messages";
/// Age of the oldest message not yet acknowledged, by `table` (0 when none).
pub const OLDEST_PENDING: &str = "analytics_loader_oldest_pending_seconds";

/// The durable consumer every loader shares.
const CONSUMER: &str = "loader";
/// The header that carries a dead letter's reason.
pub const REASON_HEADER: &str = "Analytics-Dead-Letter-Reason";

/// Loads both tables until stopped.
pub struct Loader {
    nats: Nats,
    store: Arc<dyn Store>,
    config: LoaderConfig,
    /// Reasons already reported to Sentry: each is reported once per process.
    reported: Arc<Mutex<HashSet<String>>>,
}

impl Loader {
    /// A loader from `nats`'s streams into `store`.
    pub fn new(nats: Nats, store: Arc<dyn Store>, config: LoaderConfig) -> Self {
        Loader {
            nats,
            store,
            config,
            reported: Arc::default(),
        }
    }

    /// Runs both tables' consumers and lag gauges until `stop` turns true; a batch being
    /// inserted then is finished (and acknowledged) first.
    pub async fn run(self, stop: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let mut tasks = JoinSet::new();
        // Several workers per table: while one waits for its commit, another inserts.
        for _ in 0..this.config.workers_per_table {
            tasks.spawn(this.clone().load::<MetricRow>(stop.clone()));
            tasks.spawn(this.clone().load::<EventRow>(stop.clone()));
        }
        for table in Table::ALL {
            tasks.spawn(this.clone().watch_lag(table, stop.clone()));
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn consumer(&self, table: Table) -> Result<PullConsumer, String> {
        let stream = self
            .nats
            .jetstream
            .get_stream(table.stream())
            .await
            .map_err(|e| e.to_string())?;
        let config = pull::Config {
            durable_name: Some(CONSUMER.to_owned()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.config.ack_wait,
            // Unbounded here: the loader decides when a row goes to the dead letters (after
            // `max_deliver` refusals), so the server never drops a message on its own.
            max_deliver: -1,
            max_ack_pending: (self.config.batch * 8 * self.config.workers_per_table) as i64,
            filter_subject: table.subject().to_owned(),
            ..Default::default()
        };
        stream
            .get_or_create_consumer(CONSUMER, config)
            .await
            .map_err(|e| e.to_string())
    }

    /// One table: fetch, insert, acknowledge; on any failure of the stream, start over.
    async fn load<R: StreamRow + BatchRow>(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let table = <R as StreamRow>::TABLE;
        let mut writer = self.store.writer(self.config.insert_deadline);
        while !*stop.borrow() {
            let messages = match self.consumer(table).await {
                Ok(consumer) => consumer
                    .stream()
                    .max_messages_per_batch(self.config.batch)
                    .expires(self.config.fetch_wait.max(Duration::from_secs(1)))
                    .messages()
                    .await
                    .map_err(|e| e.to_string()),
                Err(err) => Err(err),
            };
            let messages = match messages {
                Ok(messages) => messages,
                Err(err) => {
                    tracing::warn!(table = table.name(), error = %err, "loader: stream not readable; retrying");
                    self.pause(&mut stop).await;
                    continue;
                }
            };
            // Whatever has arrived, up to a batch: one insert.
            let mut batches = messages.ready_chunks(self.config.batch);
            loop {
                let next = tokio::select! {
                    biased;
                    _ = stop.wait_for(|stopped| *stopped) => break,
                    next = batches.next() => next,
                };
                let Some(batch) = next else { break };
                let (received, failed): (Vec<_>, Vec<_>) =
                    batch.into_iter().partition(Result::is_ok);
                let received: Vec<Message> = received.into_iter().flatten().collect();
                if !received.is_empty() {
                    self.load_batch::<R>(&mut *writer, received).await;
                }
                if let Some(Err(err)) = failed.into_iter().next() {
                    tracing::warn!(table = table.name(), error = %err, "loader: pull failed; starting over");
                    break;
                }
            }
        }
        writer.close().await;
    }

    async fn pause(&self, stop: &mut watch::Receiver<bool>) {
        let _ = tokio::time::timeout(self.config.retry_delay, stop.wait_for(|s| *s)).await;
    }

    /// Inserts the batch in one statement and acknowledges it; on a refusal, row by row.
    async fn load_batch<R: StreamRow + BatchRow>(
        &self,
        writer: &mut dyn RowWriter,
        messages: Vec<Message>,
    ) {
        let table = <R as StreamRow>::TABLE;
        let mut rows = Vec::with_capacity(messages.len());
        let mut decoded = Vec::with_capacity(messages.len());
        for message in messages {
            match R::decode(&message.payload) {
                Ok(row) => {
                    rows.push(row);
                    decoded.push(message);
                }
                // Not a row of ours: no number of deliveries will make it one.
                Err(_) => self.dead_letter(table, &message, "undecodable").await,
            }
        }
        // Statements of at most `max_statement_bytes`, each acknowledged once committed:
        // over TLS a larger statement stalls on a delayed ACK (sqlx sets no TCP_NODELAY;
        // see `ingest.max_batch_bytes`): 500-row statements loaded 2,700 rows/s.
        let mut chunks = statements(rows, decoded, self.config.max_statement_bytes).into_iter();
        while let Some((rows, messages)) = chunks.next() {
            if let Err(err) = self.load_chunk::<R>(writer, rows, &messages).await {
                tracing::warn!(table = table.name(), error = %err, "loader: database unavailable; rows delivered again later");
                let later = chunks.flat_map(|(_, messages)| messages);
                for message in messages.iter().chain(&later.collect::<Vec<_>>()) {
                    acknowledge(message, AckKind::Nak(Some(self.config.retry_delay))).await;
                }
                tokio::time::sleep(self.config.retry_delay).await;
                return;
            }
        }
    }

    /// Inserts one statement's rows and acknowledges them; when the database refuses the
    /// statement, row by row. `Err` (nothing acknowledged) when the database is unavailable.
    async fn load_chunk<R: StreamRow + BatchRow>(
        &self,
        writer: &mut dyn RowWriter,
        rows: Vec<R>,
        messages: &[Message],
    ) -> Result<(), StoreError> {
        let table = <R as StreamRow>::TABLE;
        match self.insert(writer, &rows).await {
            Ok(()) => {
                count_loaded(table, rows.len());
                for message in messages {
                    acknowledge(message, AckKind::Ack).await;
                }
            }
            Err(err) if err.is_unavailable() => return Err(err),
            Err(_) => {
                // Some row is refused: find it, load the others.
                for (row, message) in rows.into_iter().zip(messages) {
                    self.load_one::<R>(writer, row, message).await;
                }
            }
        }
        Ok(())
    }

    /// One insert, cut off at the deadline: a database that stops answering (no error,
    /// no reset) must not hold the loader; its connection is dropped, not reused.
    async fn insert<R: BatchRow>(
        &self,
        writer: &mut dyn RowWriter,
        rows: &[R],
    ) -> Result<(), StoreError> {
        match tokio::time::timeout(self.config.insert_deadline, R::insert_all(writer, rows)).await {
            Ok(result) => result,
            Err(_elapsed) => {
                writer.discard();
                Err(StoreError::TimedOut)
            }
        }
    }

    async fn load_one<R: StreamRow + BatchRow>(
        &self,
        writer: &mut dyn RowWriter,
        row: R,
        message: &Message,
    ) {
        let table = <R as StreamRow>::TABLE;
        match self.insert(writer, std::slice::from_ref(&row)).await {
            Ok(()) => {
                count_loaded(table, 1);
                acknowledge(message, AckKind::Ack).await;
            }
            Err(err) if err.is_unavailable() => {
                acknowledge(message, AckKind::Nak(Some(self.config.retry_delay))).await;
            }
            Err(err) => {
                let delivered = message.info().map_or(1, |info| info.delivered);
                if delivered >= self.config.max_deliver {
                    self.dead_letter(table, message, &refusal_reason(&err))
                        .await;
                } else {
                    acknowledge(message, AckKind::Nak(Some(self.config.retry_delay))).await;
                }
            }
        }
    }

    /// Publishes the message to the table's dead-letter subject with `reason`, then
    /// acknowledges it; if the dead letter is not stored, the message stays pending.
    async fn dead_letter(&self, table: Table, message: &Message, reason: &str) {
        let mut headers = HeaderMap::new();
        headers.insert(REASON_HEADER, reason);
        if let Some(id) = message
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        {
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        }
        let publish = PublishMessage::build()
            .payload(message.payload.clone())
            .headers(headers);
        let stored = async {
            self.nats
                .jetstream
                .send_publish(table.dead_letter_subject(), publish)
                .await?
                .await
        };
        if let Err(err) = stored.await {
            tracing::warn!(table = table.name(), error = %err, "loader: dead letter not stored; the row stays pending");
            acknowledge(message, AckKind::Nak(Some(self.config.retry_delay))).await;
            return;
        }
        acknowledge(message, AckKind::Term).await;
        metrics::counter!(DEAD_LETTERS, "table" => table.name(), "reason" => reason.to_owned())
            .increment(1);
        let first = self
            .reported
            .lock()
            .expect("reported reasons lock")
            .insert(format!("{}/{reason}", table.name()));
        if first {
            // ERROR: a Sentry issue, once per reason and table in this process.
            tracing::error!(
                table = table.name(),
                reason,
                subject = table.dead_letter_subject(),
                "loader: a row was sent to the dead letters"
            );
        } else {
            tracing::warn!(
                table = table.name(),
                reason,
                "loader: a row was sent to the dead letters"
            );
        }
    }

    /// Reads the backlog and the oldest waiting row's age, now and then.
    async fn watch_lag(self: Arc<Self>, table: Table, mut stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            if let Err(err) = self.read_lag(table).await {
                tracing::debug!(table = table.name(), error = %err, "loader: lag not read");
            }
            let _ = tokio::time::timeout(self.config.lag_interval, stop.wait_for(|s| *s)).await;
        }
    }

    async fn read_lag(&self, table: Table) -> Result<(), String> {
        let stream = self
            .nats
            .jetstream
            .get_stream_no_info(table.stream())
            .await
            .map_err(|e| e.to_string())?;
        // A work queue holds only the rows not yet acknowledged: its size is the backlog,
        // its first message the oldest row waiting.
        let state = stream.get_info().await.map_err(|e| e.to_string())?.state;
        let mut age = 0.0;
        if state.messages > 0 {
            let oldest = state.first_timestamp.unix_timestamp_nanos() as f64 / 1e9;
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            age = (now - oldest).max(0.0);
        }
        metrics::gauge!(PENDING, "table" => table.name()).set(state.messages as f64);
        metrics::gauge!(OLDEST_PENDING, "table" => table.name()).set(age);
        Ok(())
    }
}

/// The rows and their messages, cut into statements of at most `max_bytes` (each row at
/// its upper bound; a row alone always makes a statement).
fn statements<R: BatchRow, M>(
    rows: Vec<R>,
    messages: Vec<M>,
    max_bytes: usize,
) -> Vec<(Vec<R>, Vec<M>)> {
    let mut statements: Vec<(Vec<R>, Vec<M>)> = Vec::new();
    let mut bytes = 0;
    for (row, message) in rows.into_iter().zip(messages) {
        let size = row.approx_bytes();
        match statements.last_mut() {
            Some((rows, messages)) if bytes + size <= max_bytes => {
                rows.push(row);
                messages.push(message);
                bytes += size;
            }
            _ => {
                statements.push((vec![row], vec![message]));
                bytes = size;
            }
        }
    }
    statements
}

async fn acknowledge(message: &Message, kind: AckKind) {
    // A lost acknowledgement only means the row is delivered again, and stored once.
    if let Err(err) = message.ack_with(kind).await {
        tracing::debug!(error = %err, "loader: acknowledgement not sent");
    }
}

fn count_loaded(table: Table, rows: usize) {
    metrics::counter!(ROWS_LOADED, "table" => table.name()).increment(rows as u64);
}

/// A short, bounded reason (a metric label): the SQLSTATE, never the row's content.
fn refusal_reason(err: &StoreError) -> String {
    match err {
        StoreError::UnknownUser(_) => "unknown_user".to_owned(),
        StoreError::Database(source) => match source.as_database_error().and_then(|d| d.code()) {
            Some(code) => format!("sqlstate_{code}"),
            None => "database".to_owned(),
        },
        _ => "database".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::NewMetric;

    fn metric(data: &str) -> MetricRow {
        let body = serde_json::json!({"metric_name": "m", "metric_value": 1, "data_string": data});
        MetricRow::new(
            chrono::Utc::now(),
            "u".to_owned(),
            NewMetric::parse(&body).unwrap(),
        )
    }

    #[test]
    fn rows_are_cut_into_statements_within_the_byte_limit_in_order() {
        let rows: Vec<MetricRow> = (0..10).map(|_| metric(&"x".repeat(100))).collect();
        let size = rows[0].approx_bytes();
        let ids: Vec<usize> = (0..10).collect();

        let cut = statements(rows, ids, 3 * size);

        let groups: Vec<Vec<usize>> = cut.iter().map(|(_, ids)| ids.clone()).collect();
        assert_eq!(
            groups,
            [vec![0, 1, 2], vec![3, 4, 5], vec![6, 7, 8], vec![9]]
        );
        assert!(cut.iter().all(|(rows, ids)| rows.len() == ids.len()));
    }

    #[test]
    fn a_row_larger_than_the_limit_is_a_statement_of_its_own() {
        let rows = vec![metric("a"), metric(&"x".repeat(5000)), metric("b")];

        let cut = statements(rows, vec![0, 1, 2], 1000);

        let groups: Vec<Vec<usize>> = cut.into_iter().map(|(_, ids)| ids).collect();
        assert_eq!(groups, [vec![0], vec![1], vec![2]]);
    }
}

//! The loader: durable pull consumers (one per table, shared by every loader) whose
//! messages become multi-row inserts, acknowledged only after the insert has committed.
//!
//! A loader killed mid-batch leaves its messages unacknowledged: they are delivered again
//! after `ack_wait`, and the insert's `on conflict ("id") do nothing` keeps each row once.
//! A row the database refuses for a reason a retry will not fix is retried alone, and once
//! delivered `max_deliver` times it goes to the table's dead-letter subject with the reason;
//! the rows behind it are loaded meanwhile.
//!
//! A worker's memory is bounded by its fetch budget, not by the backlog: each pull asks for
//! at most `batch` messages and `max_fetch_bytes` bytes, and the next pull is sent only once
//! every message of the last is acknowledged (or handed back), so a worker holds, and leaves
//! unacknowledged, at most one pull. A message larger than the budget, which nats-server
//! never sends to such a pull (409 "Message Size Exceeds MaxBytes"), is pulled alone.

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
/// How nats-server ends a pull whose next message is larger than the bytes it has left.
const SIZE_EXCEEDS_MAX_BYTES: &str = "Message Size Exceeds MaxBytes";
/// How long past a pull's expiry its last messages are waited for.
const PULL_MARGIN: Duration = Duration::from_millis(500);

/// What the next pull asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Budget {
    /// `batch` messages, `max_fetch_bytes` bytes.
    Bytes,
    /// One message of any size: the last pull found the next one larger than the budget.
    OneMessage,
}

/// How a pull ended.
#[derive(Debug)]
enum Pulled {
    /// Every message loaded and acknowledged (or handed back); pull again.
    Done,
    /// Nothing came: the next message is larger than the byte budget.
    TooLarge,
    /// The loader is stopping.
    Stopped,
    /// The stream or the consumer failed; look the consumer up again.
    Failed(String),
}

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

    /// One table: pull, insert, acknowledge, pull again; on any failure of the stream, start
    /// over with a fresh look at the consumer.
    async fn load<R: StreamRow + BatchRow>(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let table = <R as StreamRow>::TABLE;
        let mut writer = self.store.writer(self.config.insert_deadline);
        let mut consumer = None;
        let mut budget = Budget::Bytes;
        while !*stop.borrow() {
            let pulled = match &consumer {
                Some(consumer) => {
                    self.pull::<R>(consumer, &mut *writer, budget, &mut stop)
                        .await
                }
                None => match self.consumer(table).await {
                    Ok(found) => {
                        consumer = Some(found);
                        continue;
                    }
                    Err(err) => Pulled::Failed(err),
                },
            };
            budget = match pulled {
                Pulled::Done => Budget::Bytes,
                Pulled::TooLarge => Budget::OneMessage,
                Pulled::Stopped => break,
                Pulled::Failed(err) => {
                    tracing::warn!(table = table.name(), error = %err, "loader: stream not readable; retrying");
                    consumer = None;
                    self.pause(&mut stop).await;
                    Budget::Bytes
                }
            };
        }
        writer.close().await;
    }

    /// One pull request, for at most `batch` messages and `max_fetch_bytes` bytes (or, after
    /// a message too large for that, for one message of any size): what has arrived is
    /// inserted and acknowledged at once, and every message of the pull is acknowledged (or
    /// handed back) before this returns, so a worker never holds more than one pull's bytes.
    async fn pull<R: StreamRow + BatchRow>(
        &self,
        consumer: &PullConsumer,
        writer: &mut dyn RowWriter,
        budget: Budget,
        stop: &mut watch::Receiver<bool>,
    ) -> Pulled {
        let expires = self.config.fetch_wait.max(Duration::from_secs(1));
        let request = consumer.batch().expires(expires);
        let request = match budget {
            Budget::Bytes => request
                .max_messages(self.config.batch)
                .max_bytes(self.config.max_fetch_bytes),
            // No byte limit, one message: at most the server's max_payload (1 MiB unless
            // raised), whatever the budget.
            Budget::OneMessage => request.max_messages(1),
        };
        let messages = match request.messages().await {
            Ok(messages) => messages,
            Err(err) => return Pulled::Failed(err.to_string()),
        };
        // A request whose bytes ran out exactly may end without a word from the server:
        // past its expiry nothing more is waited for (what has arrived is still taken).
        let deadline = tokio::time::Instant::now() + expires + PULL_MARGIN;
        let mut chunks = messages.ready_chunks(self.config.batch);
        let mut received = 0;
        loop {
            let next = tokio::select! {
                biased;
                _ = stop.wait_for(|stopped| *stopped) => return Pulled::Stopped,
                next = tokio::time::timeout_at(deadline, chunks.next()) => next,
            };
            let Ok(Some(chunk)) = next else {
                return Pulled::Done;
            };
            let mut failure = None;
            let mut arrived = Vec::with_capacity(chunk.len());
            for item in chunk {
                match item {
                    Ok(message) => arrived.push(message),
                    Err(err) => failure = Some(err.to_string()),
                }
            }
            received += arrived.len();
            if !arrived.is_empty() {
                self.load_batch::<R>(writer, arrived).await;
            }
            match failure {
                None => {}
                // The server ends a pull whose next message does not fit what is left of its
                // bytes with a 409 (the client's error carries its description). Nothing
                // received: the next message alone is larger than the budget.
                Some(err) if err.contains(SIZE_EXCEEDS_MAX_BYTES) && received == 0 => {
                    return Pulled::TooLarge;
                }
                Some(err) if err.contains(SIZE_EXCEEDS_MAX_BYTES) => return Pulled::Done,
                Some(err) => return Pulled::Failed(err),
            }
        }
    }

    async fn pause(&self, stop: &mut watch::Receiver<bool>) {
        let _ = tokio::time::timeout(self.config.retry_delay, stop.wait_for(|s| *s)).await;
    }

    /// Inserts the messages' rows in statements, each acknowledged once committed; on a
    /// refusal, row by row. When the database is unavailable, the rest are handed back.
    async fn load_batch<R: StreamRow + BatchRow>(
        &self,
        writer: &mut dyn RowWriter,
        messages: Vec<Message>,
    ) {
        let table = <R as StreamRow>::TABLE;
        // Statements of at most `max_statement_bytes`, each acknowledged once committed:
        // over TLS a larger statement stalls on a delayed ACK (sqlx sets no TCP_NODELAY;
        // see `ingest.max_batch_bytes`): 500-row statements loaded 2,700 rows/s. Rows are
        // decoded a statement at a time: a pull's messages are held until acknowledged,
        // their rows (as large again) only one statement's worth.
        let mut statements = Statements::new(self.config.max_statement_bytes);
        let mut messages = messages.into_iter();
        let mut ended = false;
        while !ended {
            let statement = match messages.next() {
                Some(message) => match R::decode(&message.payload) {
                    Ok(row) => statements.push(row, message),
                    // Not a row of ours: no number of deliveries will make it one.
                    Err(_) => {
                        self.dead_letter(table, &message, "undecodable").await;
                        None
                    }
                },
                None => {
                    ended = true;
                    statements.finish()
                }
            };
            let Some((rows, taken)) = statement else {
                continue;
            };
            if let Err(err) = self.load_chunk::<R>(writer, rows, &taken).await {
                tracing::warn!(table = table.name(), error = %err, "loader: database unavailable; rows delivered again later");
                let gathered = statements.finish().into_iter().flat_map(|(_, m)| m);
                let later: Vec<Message> = gathered.chain(messages).collect();
                for message in taken.iter().chain(&later) {
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

/// Rows and their messages gathered into statements of at most `max_bytes` (each row at
/// its upper bound; a row alone always makes a statement), one statement at a time.
struct Statements<R, M> {
    max_bytes: usize,
    rows: Vec<R>,
    messages: Vec<M>,
    bytes: usize,
}

impl<R: BatchRow, M> Statements<R, M> {
    fn new(max_bytes: usize) -> Self {
        Statements {
            max_bytes,
            rows: Vec::new(),
            messages: Vec::new(),
            bytes: 0,
        }
    }

    /// Adds a row; returns the statement gathered so far when the row does not fit in it.
    fn push(&mut self, row: R, message: M) -> Option<(Vec<R>, Vec<M>)> {
        let size = row.approx_bytes();
        let full = !self.rows.is_empty() && self.bytes + size > self.max_bytes;
        let closed = full.then(|| self.take());
        self.rows.push(row);
        self.messages.push(message);
        self.bytes += size;
        closed
    }

    /// The last statement, if any row is left.
    fn finish(&mut self) -> Option<(Vec<R>, Vec<M>)> {
        (!self.rows.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> (Vec<R>, Vec<M>) {
        self.bytes = 0;
        (
            std::mem::take(&mut self.rows),
            std::mem::take(&mut self.messages),
        )
    }
}

/// The rows and their messages cut into statements (in the tests: all at once).
#[cfg(test)]
fn statements<R: BatchRow, M>(
    rows: Vec<R>,
    messages: Vec<M>,
    max_bytes: usize,
) -> Vec<(Vec<R>, Vec<M>)> {
    let mut statements = Statements::new(max_bytes);
    let mut cut: Vec<_> = (rows.into_iter().zip(messages))
        .filter_map(|(row, message)| statements.push(row, message))
        .collect();
    cut.extend(statements.finish());
    cut
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

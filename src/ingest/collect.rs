//! Taking rows off a table's queue into the next batch.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::{BatchRow, Config, Pending};
use crate::store::RowWriter;

/// Rows dropped before a batch was built because their requester had gone, by `table`.
const ABANDONED_ROWS: &str = "analytics_group_commit_abandoned_rows_total";

/// The writers' end of a table's queue; it keeps the queue's byte count.
pub(super) struct Intake<R> {
    receiver: mpsc::Receiver<Pending<R>>,
    bytes: Arc<AtomicUsize>,
}

impl<R> Intake<R> {
    pub(super) fn new(receiver: mpsc::Receiver<Pending<R>>, bytes: Arc<AtomicUsize>) -> Self {
        Intake { receiver, bytes }
    }

    fn taken(&self, pending: Pending<R>) -> Pending<R> {
        self.bytes.fetch_sub(pending.bytes, Ordering::Relaxed);
        pending
    }

    /// The next row, waiting for one; `None` once the queue is closed and empty. Cancel-safe.
    async fn recv(&mut self) -> Option<Pending<R>> {
        let pending = self.receiver.recv().await?;
        Some(self.taken(pending))
    }

    /// The next row if one is queued.
    pub(super) fn try_recv(&mut self) -> Option<Pending<R>> {
        let pending = self.receiver.try_recv().ok()?;
        Some(self.taken(pending))
    }

    /// Takes no new rows; those queued can still be received.
    pub(super) fn close(&mut self) {
        self.receiver.close();
    }

    pub(super) fn is_empty(&self) -> bool {
        self.receiver.is_empty()
    }
}

/// The rows of the next transaction, and the row that did not fit in the last one.
pub(super) struct Batch<R> {
    rows: Vec<Pending<R>>,
    bytes: usize,
    /// Taken off the queue but over the byte limit: it opens the next batch.
    held_over: Option<Pending<R>>,
    config: Config,
}

impl<R: BatchRow> Batch<R> {
    pub(super) fn new(config: Config) -> Self {
        Batch {
            rows: Vec::new(),
            bytes: 0,
            held_over: None,
            config,
        }
    }

    /// Adds the row, or holds it over for the next batch when it would pass the byte limit.
    /// A row alone always fits: a batch is never empty, and only a lone row can be larger.
    /// A row whose requester has gone (timed out, disconnected) is dropped: it was answered
    /// 503, so storing it now would turn the client's retry into a duplicate.
    fn offer(&mut self, pending: Pending<R>) {
        if pending.done.is_closed() {
            metrics::counter!(ABANDONED_ROWS, "table" => R::TABLE).increment(1);
            return;
        }
        if !self.rows.is_empty() && self.bytes + pending.bytes > self.config.max_batch_bytes {
            self.held_over = Some(pending);
            return;
        }
        self.bytes += pending.bytes;
        self.rows.push(pending);
    }

    fn has_room(&self) -> bool {
        self.held_over.is_none()
            && self.rows.len() < self.config.max_batch
            && self.bytes < self.config.max_batch_bytes
    }

    /// True while rows are collected or one is held over.
    pub(super) fn holds_a_row(&self) -> bool {
        !self.rows.is_empty() || self.held_over.is_some()
    }

    /// The collected rows; the held-over row stays for the next batch.
    pub(super) fn take_rows(&mut self) -> Vec<Pending<R>> {
        self.bytes = 0;
        std::mem::take(&mut self.rows)
    }

    /// Every row the batch holds, the held-over one included.
    pub(super) fn into_pending(self) -> impl Iterator<Item = Pending<R>> {
        self.rows.into_iter().chain(self.held_over)
    }
}

/// A writer idle for this long gives its connection back to the pool.
const RELEASE_IDLE_CONNECTION_AFTER: Duration = Duration::from_millis(100);

/// Fills `batch` (it may stay empty when every requester had gone); false when the queue is
/// closed and empty and no row is held over (time to exit).
pub(super) async fn collect<R: BatchRow>(
    intake: &mut Intake<R>,
    batch: &mut Batch<R>,
    stopped: &mut watch::Receiver<bool>,
    writer: &mut dyn RowWriter,
) -> bool {
    let first = match batch.held_over.take() {
        Some(held_over) => held_over,
        None => match wait_for_row(intake, stopped, writer).await {
            Some(first) => first,
            None => return false,
        },
    };
    batch.offer(first);
    while batch.has_room() {
        match intake.try_recv() {
            Some(pending) => batch.offer(pending),
            None => break,
        }
    }
    let max_wait = batch.config.max_wait;
    if batch.has_room() && !max_wait.is_zero() {
        let deadline = tokio::time::sleep(max_wait);
        tokio::pin!(deadline);
        while batch.has_room() {
            tokio::select! {
                pending = intake.recv() => match pending {
                    Some(pending) => batch.offer(pending),
                    None => break,
                },
                () = &mut deadline => break,
            }
        }
    }
    true
}

/// The next queued row, however long it takes; a writer idle for a while gives its
/// connection back meanwhile. `None` as for `next_row`.
async fn wait_for_row<R>(
    intake: &mut Intake<R>,
    stopped: &mut watch::Receiver<bool>,
    writer: &mut dyn RowWriter,
) -> Option<Pending<R>> {
    let waited = tokio::time::timeout(RELEASE_IDLE_CONNECTION_AFTER, next_row(intake, stopped));
    match waited.await {
        Ok(row) => row,
        Err(_idle) => {
            writer.release();
            next_row(intake, stopped).await
        }
    }
}

/// The next queued row; after a stop request, `None` once the queue is empty. Cancel-safe.
async fn next_row<R>(
    intake: &mut Intake<R>,
    stopped: &mut watch::Receiver<bool>,
) -> Option<Pending<R>> {
    tokio::select! {
        biased;
        pending = intake.recv() => pending,
        () = async { let _ = stopped.wait_for(|stop| *stop).await; } => {
            // No new rows from now on; what is queued is still written.
            intake.close();
            intake.recv().await
        }
    }
}

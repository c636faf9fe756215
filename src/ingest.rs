//! Group commit: single-event requests hand their row to a writer and wait; a writer takes
//! every row that has arrived (up to `max_batch`) and stores them in one transaction.
//!
//! A request is answered only after the transaction holding its row commits, so a 200
//! still means "durably stored"; the database just sees one commit per batch instead of
//! one per request. The queue is bounded: when it is full the request is refused (503)
//! instead of waiting without bound.
//!
//! The writers run on a thread of their own, with a single-threaded runtime and their own
//! connections. Every single-event request waits for a writer, and PostgreSQL waits for it
//! between batches; on the request runtime its wake-ups queued behind request tasks.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::store::{EventRow, MetricRow, RowWriter, Store, StoreError};

/// How the writers batch.
#[derive(Debug, Clone, Copy)]
pub struct GroupCommitSettings {
    /// Most rows in one transaction.
    pub max_batch: usize,
    /// Most (estimated) bytes of row data in one statement; a row alone always fits.
    pub max_batch_bytes: usize,
    /// How long a writer waits for more rows once it has one (zero: take what is queued).
    pub max_wait: Duration,
    /// Rows that may wait per table before requests are refused with 503.
    pub queue_capacity: usize,
    /// Writers per table, i.e. transactions that may be in flight at once per table.
    pub writers_per_table: usize,
}

/// The outcome a waiting request receives; shared because one failure answers many.
pub type WriteResult = Result<(), Arc<StoreError>>;

/// A row type the writers know how to store.
#[async_trait]
pub trait BatchRow: Send + Sync + Sized + 'static {
    /// The table, for metric labels.
    const TABLE: &'static str;
    /// How many bytes the row adds to the insert statement, at most (PostgreSQL's binary
    /// arrays; SQLite's statement is no larger).
    fn approx_bytes(&self) -> usize;
    /// Stores all rows in one transaction.
    async fn insert_all(writer: &mut dyn RowWriter, rows: &[Self]) -> Result<(), StoreError>;
}

#[async_trait]
impl BatchRow for MetricRow {
    const TABLE: &'static str = "AnalyticsMetrics";
    fn approx_bytes(&self) -> usize {
        ROW_OVERHEAD_BYTES
            + self.user_id.len()
            + self.metric.metric_name.len()
            + self.metric.data_string.len()
    }
    async fn insert_all(writer: &mut dyn RowWriter, rows: &[Self]) -> Result<(), StoreError> {
        writer.insert_metrics(rows).await
    }
}

#[async_trait]
impl BatchRow for EventRow {
    const TABLE: &'static str = "AnalyticsDetails";
    fn approx_bytes(&self) -> usize {
        ROW_OVERHEAD_BYTES
            + self.user_id.len()
            + self.event.event_type.len()
            + self.event.data_index.len()
            + self.event.data_json.len()
    }
    async fn insert_all(writer: &mut dyn RowWriter, rows: &[Self]) -> Result<(), StoreError> {
        writer.insert_events(rows).await
    }
}

/// A row's bytes besides its strings: the 36-byte id, the 8-byte timestamp and value, and
/// a 4-byte length before each field.
const ROW_OVERHEAD_BYTES: usize = 80;

struct Pending<R> {
    row: R,
    done: oneshot::Sender<WriteResult>,
}

/// The queue of one table, shared by its writers.
struct Queue<R> {
    sender: mpsc::Sender<Pending<R>>,
}

impl<R: BatchRow> Queue<R> {
    /// The queue and the receiving end its writers share.
    fn new(settings: GroupCommitSettings) -> (Self, mpsc::Receiver<Pending<R>>) {
        let (sender, receiver) = mpsc::channel(settings.queue_capacity.max(1));
        (Queue { sender }, receiver)
    }

    /// Rows in the queue, not yet taken by a writer.
    fn waiting(&self) -> usize {
        self.sender.max_capacity() - self.sender.capacity()
    }

    async fn submit(&self, row: R) -> WriteResult {
        let (done, outcome) = oneshot::channel();
        self.sender
            .try_send(Pending { row, done })
            .map_err(|err| match err {
                mpsc::error::TrySendError::Full(_) => Arc::new(StoreError::QueueFull),
                mpsc::error::TrySendError::Closed(_) => Arc::new(StoreError::ShuttingDown),
            })?;
        outcome
            .await
            .unwrap_or_else(|_| Err(Arc::new(StoreError::ShuttingDown)))
    }
}

/// The writers of both tables; `shutdown` drains them.
pub struct GroupCommit {
    metrics: Queue<MetricRow>,
    events: Queue<EventRow>,
    stop: watch::Sender<bool>,
    /// Resolves (or is dropped) when the writers' thread ends.
    ended: std::sync::Mutex<Option<oneshot::Receiver<()>>>,
}

impl GroupCommit {
    /// Starts the writers of both tables on one thread of their own; fails only when the OS
    /// refuses the thread or its runtime.
    pub fn start(store: Arc<dyn Store>, settings: GroupCommitSettings) -> std::io::Result<Self> {
        let (stop, stopped) = watch::channel(false);
        let (metrics, metric_rows) = Queue::new(settings);
        let (events, event_rows) = Queue::new(settings);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (end, ended) = oneshot::channel();
        std::thread::Builder::new()
            .name("group-commit".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    let mut writers = JoinSet::new();
                    spawn_writers(&mut writers, &store, metric_rows, settings, &stopped);
                    spawn_writers(&mut writers, &store, event_rows, settings, &stopped);
                    // A writer that panicked is over too; the others still drain.
                    while writers.join_next().await.is_some() {}
                });
                let _ = end.send(());
            })?;
        Ok(GroupCommit {
            metrics,
            events,
            stop,
            ended: std::sync::Mutex::new(Some(ended)),
        })
    }

    /// Stores one metric; returns once its transaction has committed.
    pub async fn store_metric(&self, row: MetricRow) -> WriteResult {
        self.metrics.submit(row).await
    }

    /// Stores one event; returns once its transaction has committed.
    pub async fn store_event(&self, row: EventRow) -> WriteResult {
        self.events.submit(row).await
    }

    /// Rows waiting for a writer, per table.
    pub fn waiting_rows(&self) -> [(&'static str, usize); 2] {
        [
            (MetricRow::TABLE, self.metrics.waiting()),
            (EventRow::TABLE, self.events.waiting()),
        ]
    }

    /// Refuses new rows, writes every queued one, and waits for the writers to finish.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let ended = self.ended.lock().expect("writer thread lock").take();
        if let Some(ended) = ended {
            // An error means the thread ended without saying so (a panic): it is over too.
            let _ = ended.await;
        }
    }
}

/// Starts `writers_per_table` writers of one table on the current (writer) runtime.
fn spawn_writers<R: BatchRow>(
    writers: &mut JoinSet<()>,
    store: &Arc<dyn Store>,
    rows: mpsc::Receiver<Pending<R>>,
    settings: GroupCommitSettings,
    stopped: &watch::Receiver<bool>,
) {
    let rows = Arc::new(Mutex::new(rows));
    for _ in 0..settings.writers_per_table.max(1) {
        let (store, rows, stopped) = (store.clone(), rows.clone(), stopped.clone());
        writers.spawn(async move {
            // Made here, so that its connection belongs to this runtime.
            let mut writer = store.writer();
            write_loop(&mut *writer, rows, settings, stopped).await;
            writer.close().await;
        });
    }
}

async fn write_loop<R: BatchRow>(
    writer: &mut dyn RowWriter,
    receiver: Arc<Mutex<mpsc::Receiver<Pending<R>>>>,
    settings: GroupCommitSettings,
    mut stopped: watch::Receiver<bool>,
) {
    let mut batch = Batch::new(settings);
    loop {
        {
            // The lock is held only while collecting: other writers commit meanwhile.
            let mut receiver = receiver.lock().await;
            if !collect(&mut receiver, &mut batch, &mut stopped, writer).await {
                return;
            }
        }
        commit(writer, batch.take_rows()).await;
    }
}

/// The rows of the next transaction, and the row that did not fit in the last one.
struct Batch<R> {
    rows: Vec<Pending<R>>,
    bytes: usize,
    /// Taken off the queue but over the byte limit: it opens the next batch.
    held_over: Option<Pending<R>>,
    settings: GroupCommitSettings,
}

impl<R: BatchRow> Batch<R> {
    fn new(settings: GroupCommitSettings) -> Self {
        Batch {
            rows: Vec::new(),
            bytes: 0,
            held_over: None,
            settings,
        }
    }

    /// Adds the row, or holds it over for the next batch when it would pass the byte limit.
    /// A row alone always fits: a batch is never empty, and only a lone row can be larger.
    fn offer(&mut self, pending: Pending<R>) {
        let bytes = pending.row.approx_bytes();
        if !self.rows.is_empty() && self.bytes + bytes > self.settings.max_batch_bytes {
            self.held_over = Some(pending);
            return;
        }
        self.bytes += bytes;
        self.rows.push(pending);
    }

    fn has_room(&self) -> bool {
        self.held_over.is_none()
            && self.rows.len() < self.settings.max_batch
            && self.bytes < self.settings.max_batch_bytes
    }

    /// The collected rows; the held-over row stays for the next batch.
    fn take_rows(&mut self) -> Vec<Pending<R>> {
        self.bytes = 0;
        std::mem::take(&mut self.rows)
    }
}

/// A writer idle for this long gives its connection back to the pool.
const RELEASE_IDLE_CONNECTION_AFTER: Duration = Duration::from_millis(100);

/// Fills `batch`; false when the queue is closed and empty and no row is held over (time to
/// exit).
async fn collect<R: BatchRow>(
    receiver: &mut mpsc::Receiver<Pending<R>>,
    batch: &mut Batch<R>,
    stopped: &mut watch::Receiver<bool>,
    writer: &mut dyn RowWriter,
) -> bool {
    let first = match batch.held_over.take() {
        Some(held_over) => held_over,
        None => match wait_for_row(receiver, stopped, writer).await {
            Some(first) => first,
            None => return false,
        },
    };
    batch.offer(first);
    while batch.has_room() {
        match receiver.try_recv() {
            Ok(pending) => batch.offer(pending),
            Err(_) => break,
        }
    }
    let max_wait = batch.settings.max_wait;
    if batch.has_room() && !max_wait.is_zero() {
        let deadline = tokio::time::sleep(max_wait);
        tokio::pin!(deadline);
        while batch.has_room() {
            tokio::select! {
                pending = receiver.recv() => match pending {
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
    receiver: &mut mpsc::Receiver<Pending<R>>,
    stopped: &mut watch::Receiver<bool>,
    writer: &mut dyn RowWriter,
) -> Option<Pending<R>> {
    let waited = tokio::time::timeout(RELEASE_IDLE_CONNECTION_AFTER, next_row(receiver, stopped));
    match waited.await {
        Ok(row) => row,
        Err(_idle) => {
            writer.release();
            next_row(receiver, stopped).await
        }
    }
}

/// The next queued row; after a stop request, `None` once the queue is empty. Cancel-safe.
async fn next_row<R>(
    receiver: &mut mpsc::Receiver<Pending<R>>,
    stopped: &mut watch::Receiver<bool>,
) -> Option<Pending<R>> {
    tokio::select! {
        biased;
        pending = receiver.recv() => pending,
        () = async { let _ = stopped.wait_for(|stop| *stop).await; } => {
            // No new rows from now on; what is queued is still written.
            receiver.close();
            receiver.recv().await
        }
    }
}

/// One transaction for the batch; if it fails for a reason a retry will not fix, each row
/// is retried alone so that one bad row fails only its own request.
async fn commit<R: BatchRow>(writer: &mut dyn RowWriter, batch: Vec<Pending<R>>) {
    let (rows, waiters): (Vec<R>, Vec<_>) = batch.into_iter().map(|p| (p.row, p.done)).unzip();
    metrics::histogram!("analytics_group_commit_batch_rows", "table" => R::TABLE)
        .record(rows.len() as f64);
    match insert(writer, &rows).await {
        Ok(()) => waiters.into_iter().for_each(|w| {
            let _ = w.send(Ok(()));
        }),
        Err(err) if err.is_unavailable() || rows.len() == 1 => {
            let err = Arc::new(err);
            waiters.into_iter().for_each(|w| {
                let _ = w.send(Err(err.clone()));
            });
        }
        Err(err) => {
            tracing::warn!(error = ?err, rows = rows.len(), table = R::TABLE, "batch insert failed; retrying row by row");
            for (row, waiter) in rows.iter().zip(waiters) {
                let outcome = insert(writer, std::slice::from_ref(row))
                    .await
                    .map_err(Arc::new);
                let _ = waiter.send(outcome);
            }
        }
    }
}

async fn insert<R: BatchRow>(writer: &mut dyn RowWriter, rows: &[R]) -> Result<(), StoreError> {
    metrics::counter!("analytics_store_transactions_total", "table" => R::TABLE).increment(1);
    R::insert_all(writer, rows).await
}

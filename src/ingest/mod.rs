//! Group commit: single-event requests hand their row to a writer and wait; a writer takes
//! every row that has arrived (up to `max_batch`) and stores them in one transaction.
//!
//! A request is answered only after the transaction holding its row commits, so a 200
//! still means "durably stored"; the database just sees one commit per batch instead of
//! one per request. The queue is bounded in rows and in bytes: when it is full the request
//! is refused (503) instead of waiting without bound.
//!
//! The writers run on a thread of their own, with a single-threaded runtime and their own
//! connections. Every single-event request waits for a writer, and PostgreSQL waits for it
//! between batches; on the request runtime its wake-ups queued behind request tasks.
//!
//! A writer never hangs: each batch has a deadline (its rows get 503, its connection is
//! dropped), a writer holding rows without committing shows as stalled in `/readyz`, and at
//! shutdown whatever is not written by the deadline is answered 503.

mod collect;
mod commit;
mod config;
mod progress;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::store::{EventRow, MetricRow, RowWriter, Store, StoreError};
use collect::{Batch, Intake, collect};
use commit::{Waiter, commit};
use progress::Progress;

pub use config::{Config, SinkKind};

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
    /// `row.approx_bytes()`, counted in the queue's bytes until a writer takes the row.
    bytes: usize,
    done: oneshot::Sender<WriteResult>,
}

/// The queue of one table, shared by its writers.
struct Queue<R> {
    sender: mpsc::Sender<Pending<R>>,
    /// Bytes queued; the writers subtract what they take (see [`Intake`]).
    bytes: Arc<AtomicUsize>,
    capacity_bytes: usize,
}

impl<R: BatchRow> Queue<R> {
    /// The queue and the receiving end its writers share.
    fn new(config: Config) -> (Self, Intake<R>) {
        let (sender, receiver) = mpsc::channel(config.queue_capacity.max(1));
        let bytes = Arc::new(AtomicUsize::new(0));
        let intake = Intake::new(receiver, bytes.clone());
        let queue = Queue {
            sender,
            bytes,
            capacity_bytes: config.queue_capacity_bytes,
        };
        (queue, intake)
    }

    /// Rows in the queue, not yet taken by a writer.
    fn waiting(&self) -> usize {
        self.sender.max_capacity() - self.sender.capacity()
    }

    async fn submit(&self, row: R) -> WriteResult {
        let bytes = row.approx_bytes();
        self.reserve(bytes)?;
        let (done, outcome) = oneshot::channel();
        if let Err(err) = self.sender.try_send(Pending { row, bytes, done }) {
            self.bytes.fetch_sub(bytes, Ordering::Relaxed);
            return Err(Arc::new(match err {
                mpsc::error::TrySendError::Full(_) => StoreError::QueueFull,
                mpsc::error::TrySendError::Closed(_) => StoreError::ShuttingDown,
            }));
        }
        outcome
            .await
            .unwrap_or_else(|_| Err(Arc::new(StoreError::ShuttingDown)))
    }

    /// Counts `bytes` as queued, or refuses when they would pass the byte capacity. An
    /// empty queue takes any row, so no row is too large ever to be stored.
    fn reserve(&self, bytes: usize) -> Result<(), Arc<StoreError>> {
        let before = self.bytes.fetch_add(bytes, Ordering::Relaxed);
        if before > 0 && before + bytes > self.capacity_bytes {
            self.bytes.fetch_sub(bytes, Ordering::Relaxed);
            return Err(Arc::new(StoreError::QueueFull));
        }
        Ok(())
    }
}

/// The writers of both tables; `shutdown` drains them.
pub struct GroupCommit {
    metrics: Queue<MetricRow>,
    events: Queue<EventRow>,
    stop: watch::Sender<bool>,
    /// Set when the shutdown deadline passes: the writers answer what is left with 503.
    abort: watch::Sender<bool>,
    /// One per writer, both tables.
    progress: Vec<Arc<Progress>>,
    stall_after: Duration,
    /// Rows answered 503 because the shutdown deadline passed before they were written.
    unwritten: Arc<AtomicUsize>,
    /// Resolves (or is dropped) when the writers' thread ends.
    ended: std::sync::Mutex<Option<oneshot::Receiver<()>>>,
}

/// What every writer watches, and where it counts the rows it gave up on.
#[derive(Clone)]
struct Signals {
    stopped: watch::Receiver<bool>,
    aborted: watch::Receiver<bool>,
    unwritten: Arc<AtomicUsize>,
}

impl GroupCommit {
    /// Starts the writers of both tables on one thread of their own; fails only when the OS
    /// refuses the thread or its runtime.
    pub fn start(store: Arc<dyn Store>, config: Config) -> std::io::Result<Self> {
        let (stop, stopped) = watch::channel(false);
        let (abort, aborted) = watch::channel(false);
        let unwritten = Arc::new(AtomicUsize::new(0));
        let signals = Signals {
            stopped,
            aborted,
            unwritten: unwritten.clone(),
        };
        let (metrics, metric_rows) = Queue::new(config);
        let (events, event_rows) = Queue::new(config);
        let per_table = config.writers_per_table.max(1);
        let progress: Vec<Arc<Progress>> = (0..2 * per_table)
            .map(|_| Arc::new(Progress::default()))
            .collect();
        let (metric_progress, event_progress) = progress.split_at(per_table);
        let (metric_progress, event_progress) = (metric_progress.to_vec(), event_progress.to_vec());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (end, ended) = oneshot::channel();
        std::thread::Builder::new()
            .name("group-commit".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    let mut writers = JoinSet::new();
                    let (s, w) = (config, &mut writers);
                    spawn_writers(w, &store, metric_rows, &metric_progress, s, &signals);
                    spawn_writers(w, &store, event_rows, &event_progress, s, &signals);
                    // A writer that panicked is over too; the others still drain.
                    while writers.join_next().await.is_some() {}
                });
                let _ = end.send(());
            })?;
        Ok(GroupCommit {
            metrics,
            events,
            stop,
            abort,
            progress,
            stall_after: config.stall_after,
            unwritten,
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

    /// True when a writer has held rows for longer than `stall_after` without a commit:
    /// the database takes no writes, whatever a ping on another connection says.
    pub fn stalled(&self) -> bool {
        self.progress.iter().any(|p| p.stalled(self.stall_after))
    }

    /// Refuses new rows and writes the queued ones for at most `deadline`; rows not written
    /// by then are answered 503 (never stored later) and counted in the log.
    pub async fn shutdown(&self, deadline: Duration) {
        let _ = self.stop.send(true);
        let ended = self.ended.lock().expect("writer thread lock").take();
        if let Some(mut ended) = ended {
            // An error means the thread ended without saying so (a panic): it is over too.
            if tokio::time::timeout(deadline, &mut ended).await.is_err() {
                let _ = self.abort.send(true);
                let _ = ended.await;
            }
        }
        let unwritten = self.unwritten.load(Ordering::Relaxed);
        if unwritten > 0 {
            tracing::warn!(
                rows = unwritten,
                ?deadline,
                "shutdown deadline passed: rows not written were answered 503"
            );
        }
    }
}

/// Starts one writer of a table per `progress` entry on the current (writer) runtime.
fn spawn_writers<R: BatchRow>(
    writers: &mut JoinSet<()>,
    store: &Arc<dyn Store>,
    intake: Intake<R>,
    progress: &[Arc<Progress>],
    config: Config,
    signals: &Signals,
) {
    let intake = Arc::new(Mutex::new(intake));
    for progress in progress {
        let store = store.clone();
        let task = Writer {
            intake: intake.clone(),
            config,
            signals: signals.clone(),
            progress: progress.clone(),
        };
        writers.spawn(async move {
            // Made here, so that its connection belongs to this runtime.
            let mut connection = store.writer(config.batch_deadline);
            let mut aborted = task.signals.aborted.clone();
            let finished = task.run(&mut *connection).await;
            let stuck = match finished {
                Finished::Aborted => true,
                Finished::Drained => tokio::select! {
                    () = connection.close() => false,
                    () = abort_requested(&mut aborted) => true,
                },
            };
            if stuck {
                // Its connection may be mid-statement on a server that stopped answering.
                connection.discard();
            }
        });
    }
}

/// How a writer ended.
enum Finished {
    /// The queue was closed and everything in it answered.
    Drained,
    /// The shutdown deadline passed; what was left was answered 503.
    Aborted,
}

/// One writer of one table.
struct Writer<R> {
    intake: Arc<Mutex<Intake<R>>>,
    config: Config,
    signals: Signals,
    progress: Arc<Progress>,
}

impl<R: BatchRow> Writer<R> {
    async fn run(mut self, connection: &mut dyn RowWriter) -> Finished {
        let mut batch = Batch::new(self.config);
        let mut aborted = self.signals.aborted.clone();
        loop {
            let collected = {
                // The lock is held only while collecting: other writers commit meanwhile.
                let mut intake = self.intake.lock().await;
                if !batch.holds_a_row() && intake.is_empty() {
                    self.progress.idle();
                }
                let stopped = &mut self.signals.stopped;
                tokio::select! {
                    biased;
                    () = abort_requested(&mut aborted) => None,
                    more = collect(&mut intake, &mut batch, stopped, connection) => Some(more),
                }
            };
            match collected {
                None => return self.give_up(batch, Vec::new()).await,
                Some(false) => return Finished::Drained,
                Some(true) => {}
            }
            let (rows, mut waiters): (Vec<R>, Vec<Waiter>) = batch
                .take_rows()
                .into_iter()
                .map(|p| (p.row, Some(p.done)))
                .unzip();
            if rows.is_empty() {
                // Every requester of the batch had gone.
                continue;
            }
            self.progress.working();
            let deadline = tokio::time::Instant::now() + self.config.batch_deadline;
            let committed = tokio::select! {
                biased;
                () = abort_requested(&mut aborted) => None,
                committed = commit(connection, &rows, &mut waiters, deadline) => Some(committed),
            };
            match committed {
                None => return self.give_up(batch, waiters).await,
                Some(true) => self.progress.committed(R::TABLE),
                Some(false) => {}
            }
        }
    }

    /// Answers 503 to every row this writer holds or finds queued, and counts them.
    async fn give_up(&self, batch: Batch<R>, waiters: Vec<Waiter>) -> Finished {
        let mut intake = self.intake.lock().await;
        intake.close();
        let queued: Vec<Pending<R>> = std::iter::from_fn(|| intake.try_recv()).collect();
        let shutting_down = Arc::new(StoreError::ShuttingDown);
        let mut unanswered = 0;
        let held = batch.into_pending().chain(queued).map(|p| p.done);
        for done in waiters.into_iter().flatten().chain(held) {
            unanswered += 1;
            let _ = done.send(Err(shutting_down.clone()));
        }
        self.signals
            .unwritten
            .fetch_add(unanswered, Ordering::Relaxed);
        Finished::Aborted
    }
}

/// Resolves once the shutdown deadline has passed (or the service is gone). Cancel-safe.
async fn abort_requested(aborted: &mut watch::Receiver<bool>) {
    let _ = aborted.wait_for(|abort| *abort).await;
}

//! One batch's transactions. All rows go in one; if that fails for a reason a retry will
//! not fix, the batch is halved until the refused rows stand alone, so one bad row among n
//! costs about 2·log2(n) transactions instead of n. A transient failure (connection lost,
//! deadline passed) answers every row still waiting at once.

use std::ops::Range;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{BatchRow, WriteResult};
use crate::store::{RowWriter, StoreError};

/// A request waiting for its row; `None` once answered.
pub(super) type Waiter = Option<oneshot::Sender<WriteResult>>;

/// Stores `rows` before `deadline`, answering each row's waiter (same index) as soon as its
/// fate is known; true when at least one transaction committed. If the future is dropped,
/// the waiters still `Some` are those not answered.
pub(super) async fn commit<R: BatchRow>(
    writer: &mut dyn RowWriter,
    rows: &[R],
    waiters: &mut [Waiter],
    deadline: Instant,
) -> bool {
    metrics::histogram!("analytics_group_commit_batch_rows", "table" => R::TABLE)
        .record(rows.len() as f64);
    let mut committed = false;
    // Row ranges still to store; the next one on top.
    let mut todo: Vec<Range<usize>> = Vec::with_capacity(8);
    todo.push(0..rows.len());
    while let Some(range) = todo.pop() {
        match insert(writer, &rows[range.clone()], deadline).await {
            Ok(()) => {
                committed = true;
                answer(&mut waiters[range], &Ok(()));
            }
            Err(err) if err.is_unavailable() => {
                answer(waiters, &Err(Arc::new(err)));
                return committed;
            }
            Err(err) if range.len() == 1 => answer(&mut waiters[range], &Err(Arc::new(err))),
            Err(err) => {
                // Each refused row is logged when its request is answered.
                tracing::info!(error = %err, rows = range.len(), table = R::TABLE,
                    "batch insert refused; splitting it to isolate the refused rows");
                let middle = range.start + range.len() / 2;
                todo.push(middle..range.end);
                todo.push(range.start..middle);
            }
        }
    }
    committed
}

/// Sends `outcome` to every waiter not answered yet.
fn answer(waiters: &mut [Waiter], outcome: &WriteResult) {
    for waiter in waiters.iter_mut().filter_map(Option::take) {
        let _ = waiter.send(outcome.clone());
    }
}

/// One transaction, cut off at `deadline`.
async fn insert<R: BatchRow>(
    writer: &mut dyn RowWriter,
    rows: &[R],
    deadline: Instant,
) -> Result<(), StoreError> {
    metrics::counter!("analytics_store_transactions_total", "table" => R::TABLE).increment(1);
    match tokio::time::timeout_at(deadline, R::insert_all(writer, rows)).await {
        Ok(result) => result,
        Err(_elapsed) => {
            // The connection never answered: it must not be reused (nor pinged on its way
            // back to the pool, which would hang too); the next batch opens a fresh one.
            writer.discard();
            crate::store::count_storage_error("unavailable");
            Err(StoreError::TimedOut)
        }
    }
}

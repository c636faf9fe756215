//! Whether a writer is getting anywhere: `/readyz` must fail while rows wait behind a
//! database that takes no writes, even when a ping on another connection succeeds.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Unix time of the last group-commit transaction that committed, by `table`.
const LAST_COMMIT: &str = "analytics_group_commit_last_commit_timestamp_seconds";

/// Since when one writer has held rows without a commit (`None`: it waits for rows).
#[derive(Debug, Default)]
pub(super) struct Progress {
    working_since: Mutex<Option<Instant>>,
}

impl Progress {
    fn with<T>(&self, f: impl FnOnce(&mut Option<Instant>) -> T) -> T {
        f(&mut self
            .working_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner))
    }

    /// The writer has no rows: it cannot be stalled.
    pub(super) fn idle(&self) {
        self.with(|since| *since = None);
    }

    /// The writer took rows; the clock runs from now unless it already did.
    pub(super) fn working(&self) {
        self.with(|since| {
            since.get_or_insert_with(Instant::now);
        });
    }

    /// A transaction of `table` committed: the writer moves.
    pub(super) fn committed(&self, table: &'static str) {
        self.with(|since| *since = Some(Instant::now()));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        metrics::gauge!(LAST_COMMIT, "table" => table).set(now.as_secs_f64());
    }

    /// True when the writer has held rows for longer than `limit` without a commit.
    pub(super) fn stalled(&self, limit: Duration) -> bool {
        self.with(|since| since.is_some_and(|since| since.elapsed() > limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writer_is_stalled_only_while_it_holds_rows_past_the_limit() {
        let progress = Progress::default();
        let (hour, short) = (Duration::from_secs(3600), Duration::from_millis(1));

        progress.working();
        let fresh = progress.stalled(hour);
        std::thread::sleep(Duration::from_millis(10));
        progress.working();
        let held = progress.stalled(short);
        progress.committed("t");
        let after_commit = progress.stalled(hour);
        progress.idle();
        let idle = progress.stalled(Duration::ZERO);

        assert!(!fresh, "stalled at once");
        assert!(held, "taking more rows restarted the clock");
        assert!(!after_commit, "a commit is progress");
        assert!(!idle, "a writer without rows is never stalled");
    }
}

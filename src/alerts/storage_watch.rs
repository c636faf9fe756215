//! Storage health as seen by requests: how long writes have been failing, and whether
//! that is worth a platform alert yet (at most one per window).

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct Streak {
    failing_since: Option<Instant>,
    failures: u64,
    last_alert: Option<Instant>,
}

/// Counts storage failures since the last success.
#[derive(Debug)]
pub struct StorageWatch {
    threshold: Duration,
    window: Duration,
    streak: Mutex<Streak>,
}

impl StorageWatch {
    /// Alerts once storage has failed for `threshold`, then at most once per `window`.
    pub fn new(threshold: Duration, window: Duration) -> Self {
        StorageWatch {
            threshold,
            window,
            streak: Mutex::new(Streak::default()),
        }
    }

    /// A storage write succeeded: the streak ends.
    pub fn record_success(&self) {
        let mut streak = self.streak.lock().unwrap_or_else(|e| e.into_inner());
        streak.failing_since = None;
        streak.failures = 0;
    }

    /// A storage call failed with `summary` (a safe text, no URLs); returns the alert to
    /// send when the failures have lasted past the threshold and none went out this window.
    pub fn record_failure(&self, summary: &str) -> Option<String> {
        let now = Instant::now();
        let mut streak = self.streak.lock().unwrap_or_else(|e| e.into_inner());
        let since = *streak.failing_since.get_or_insert(now);
        streak.failures += 1;
        let failing_for = now.duration_since(since);
        let alerted_recently = streak
            .last_alert
            .is_some_and(|at| now.duration_since(at) < self.window);
        if failing_for < self.threshold || alerted_recently {
            return None;
        }
        streak.last_alert = Some(now);
        Some(format!(
            "analytics-service: storage has been failing for {:.0} s ({} failed requests; last: {summary})",
            failing_for.as_secs_f64(),
            streak.failures,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_alert_before_the_threshold_one_after_and_none_again_within_the_window() {
        let watch = StorageWatch::new(Duration::from_millis(30), Duration::from_secs(60));

        let early = watch.record_failure("database error");
        std::thread::sleep(Duration::from_millis(40));
        let late = watch.record_failure("database error");
        let again = watch.record_failure("database error");

        assert_eq!(early, None);
        let text = late.expect("an alert after the threshold");
        assert!(
            text.contains("2 failed requests; last: database error"),
            "{text}"
        );
        assert_eq!(again, None);
    }

    #[test]
    fn a_success_restarts_the_streak() {
        let watch = StorageWatch::new(Duration::from_millis(30), Duration::ZERO);
        watch.record_failure("database error");
        std::thread::sleep(Duration::from_millis(40));

        watch.record_success();

        assert_eq!(watch.record_failure("database error"), None);
    }
}

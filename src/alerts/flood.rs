//! Flood control: an alert identical to one sent within the window is counted, not sent.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::DiscordChannel;

/// What to do with an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Send it; `repeated` identical alerts were suppressed since the last one went out.
    Send {
        /// How many were suppressed.
        repeated: u64,
    },
    /// The same alert went out within the window: drop this one.
    Suppress,
}

/// How many distinct alerts the gate remembers; past that the least recently seen is
/// forgotten, so alerts with ever-new content (ids, timestamps) cannot grow it without bound.
pub const MAX_REMEMBERED_ALERTS: usize = 1024;

#[derive(Debug)]
struct Entry {
    /// When it last went out successfully; `None` until then and after a failed send, so
    /// that an alert whose first send failed (or is still in flight) is not suppressed.
    sent_at: Option<Instant>,
    /// Suppressed since then.
    suppressed: u64,
    /// When it was last admitted or reported (a tick of the gate's counter), to pick the
    /// entry to forget when the map is full.
    touched: u64,
}

type Key = (DiscordChannel, String);

/// Remembers recent alerts by channel and content.
#[derive(Debug)]
pub struct FloodGate {
    window: Duration,
    capacity: usize,
    seen: Mutex<HashMap<Key, Entry>>,
    ticks: AtomicU64,
}

impl FloodGate {
    /// A gate with the given dedupe window (zero: nothing is suppressed).
    pub fn new(window: Duration) -> Self {
        Self::with_capacity(window, MAX_REMEMBERED_ALERTS)
    }

    fn with_capacity(window: Duration, capacity: usize) -> Self {
        FloodGate {
            window,
            capacity: capacity.max(1),
            seen: Mutex::new(HashMap::new()),
            ticks: AtomicU64::new(0),
        }
    }

    /// Decides whether this alert goes out; counts it when it does not. An alert is
    /// suppressed only while an identical one that was [`sent`](Self::sent) is in the window.
    pub fn admit(&self, channel: DiscordChannel, content: &str) -> Admission {
        let now = Instant::now();
        let in_window = |entry: &Entry| {
            entry
                .sent_at
                .is_some_and(|sent| now.duration_since(sent) < self.window)
        };
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        // Forget what can no longer suppress anything and has nothing to report.
        seen.retain(|_, entry| entry.suppressed > 0 || in_window(entry));
        let entry = self.entry(&mut seen, channel, content);
        if in_window(entry) {
            entry.suppressed += 1;
            return Admission::Suppress;
        }
        Admission::Send {
            repeated: std::mem::take(&mut entry.suppressed),
        }
    }

    /// The admitted send succeeded: identical alerts are suppressed for the window.
    pub fn sent(&self, channel: DiscordChannel, content: &str) {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        self.entry(&mut seen, channel, content).sent_at = Some(now);
    }

    /// The admitted send failed: the next identical alert is tried again and still reports
    /// the `repeated` count this one carried.
    pub fn failed(&self, channel: DiscordChannel, content: &str, repeated: u64) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let entry = self.entry(&mut seen, channel, content);
        entry.sent_at = None;
        entry.suppressed += repeated;
    }

    /// The entry for this alert, made room for when the map is full.
    fn entry<'m>(
        &self,
        seen: &'m mut HashMap<Key, Entry>,
        channel: DiscordChannel,
        content: &str,
    ) -> &'m mut Entry {
        let now = self.ticks.fetch_add(1, Ordering::Relaxed);
        let key = (channel, content.to_owned());
        if !seen.contains_key(&key) && seen.len() >= self.capacity {
            let least_recent = seen
                .iter()
                .min_by_key(|(_, entry)| entry.touched)
                .map(|(key, _)| key.clone());
            if let Some(least_recent) = least_recent {
                seen.remove(&least_recent);
            }
        }
        let entry = seen.entry(key).or_insert(Entry {
            sent_at: None,
            suppressed: 0,
            touched: now,
        });
        entry.touched = now;
        entry
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: DiscordChannel = DiscordChannel::Platform;

    #[test]
    fn identical_alerts_within_the_window_are_suppressed_and_then_counted() {
        let gate = FloodGate::new(Duration::from_millis(50));

        let first = gate.admit(P, "db down");
        gate.sent(P, "db down");
        let repeats: Vec<_> = (0..3).map(|_| gate.admit(P, "db down")).collect();
        std::thread::sleep(Duration::from_millis(60));
        let after_window = gate.admit(P, "db down");

        assert_eq!(first, Admission::Send { repeated: 0 });
        assert!(repeats.iter().all(|a| *a == Admission::Suppress));
        assert_eq!(after_window, Admission::Send { repeated: 3 });
    }

    #[test]
    fn other_content_and_other_channels_are_not_suppressed() {
        let gate = FloodGate::new(Duration::from_secs(60));

        gate.admit(P, "a");
        gate.sent(P, "a");

        assert_eq!(gate.admit(P, "b"), Admission::Send { repeated: 0 });
        assert_eq!(
            gate.admit(DiscordChannel::Product, "a"),
            Admission::Send { repeated: 0 }
        );
    }

    #[test]
    fn after_a_failed_send_the_next_alert_is_tried_and_keeps_the_count() {
        let gate = FloodGate::new(Duration::from_secs(60));
        gate.admit(P, "x");
        gate.sent(P, "x");
        gate.admit(P, "x");

        gate.failed(P, "x", 4);

        assert_eq!(gate.admit(P, "x"), Admission::Send { repeated: 5 });
    }

    #[test]
    fn a_duplicate_is_sent_while_the_first_send_has_not_succeeded() {
        let gate = FloodGate::new(Duration::from_secs(60));

        let first = gate.admit(P, "x");
        let while_in_flight = gate.admit(P, "x");
        gate.failed(P, "x", 0);
        let after_failure = gate.admit(P, "x");
        gate.sent(P, "x");
        let after_success = gate.admit(P, "x");

        assert_eq!(first, Admission::Send { repeated: 0 });
        assert_eq!(while_in_flight, Admission::Send { repeated: 0 });
        assert_eq!(after_failure, Admission::Send { repeated: 0 });
        assert_eq!(after_success, Admission::Suppress);
    }

    #[test]
    fn the_gate_forgets_the_least_recent_alert_when_full() {
        let gate = FloodGate::with_capacity(Duration::from_secs(60), 3);
        for content in ["a", "b", "c"] {
            gate.admit(P, content);
            gate.sent(P, content);
        }
        gate.admit(P, "a");

        gate.admit(P, "d");
        gate.sent(P, "d");

        assert_eq!(gate.remembered(), 3);
        assert_eq!(gate.admit(P, "a"), Admission::Suppress);
        assert_eq!(gate.admit(P, "b"), Admission::Send { repeated: 0 });
    }

    #[test]
    fn distinct_alerts_beyond_the_cap_keep_the_map_bounded() {
        let gate = FloodGate::new(Duration::from_secs(60));

        for n in 0..MAX_REMEMBERED_ALERTS * 3 {
            let content = format!("disk full on node {n}");
            gate.admit(P, &content);
            gate.sent(P, &content);
        }

        assert_eq!(gate.remembered(), MAX_REMEMBERED_ALERTS);
    }

    #[test]
    fn a_zero_window_suppresses_nothing() {
        let gate = FloodGate::new(Duration::ZERO);

        gate.admit(P, "x");

        assert_eq!(gate.admit(P, "x"), Admission::Send { repeated: 0 });
    }
}

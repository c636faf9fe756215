//! Flood control: an alert identical to one sent within the window is counted, not sent.

use std::collections::HashMap;
use std::sync::Mutex;
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

#[derive(Debug)]
struct Entry {
    /// When it last went out; `None` after a failed send, so the next one is tried.
    sent_at: Option<Instant>,
    /// Suppressed since then.
    suppressed: u64,
}

/// Remembers recent alerts by channel and content.
#[derive(Debug)]
pub struct FloodGate {
    window: Duration,
    seen: Mutex<HashMap<(DiscordChannel, String), Entry>>,
}

impl FloodGate {
    /// A gate with the given dedupe window (zero: nothing is suppressed).
    pub fn new(window: Duration) -> Self {
        FloodGate {
            window,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Decides whether this alert goes out; counts it when it does not.
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
        let entry = seen.entry((channel, content.to_owned())).or_insert(Entry {
            sent_at: None,
            suppressed: 0,
        });
        if in_window(entry) {
            entry.suppressed += 1;
            return Admission::Suppress;
        }
        entry.sent_at = Some(now);
        Admission::Send {
            repeated: std::mem::take(&mut entry.suppressed),
        }
    }

    /// The admitted send failed: the next identical alert is tried again and still reports
    /// the `repeated` count this one carried.
    pub fn failed(&self, channel: DiscordChannel, content: &str, repeated: u64) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let entry = seen.entry((channel, content.to_owned())).or_insert(Entry {
            sent_at: None,
            suppressed: 0,
        });
        entry.sent_at = None;
        entry.suppressed += repeated;
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
        gate.admit(P, "x");

        gate.failed(P, "x", 4);

        assert_eq!(gate.admit(P, "x"), Admission::Send { repeated: 5 });
    }

    #[test]
    fn a_zero_window_suppresses_nothing() {
        let gate = FloodGate::new(Duration::ZERO);

        gate.admit(P, "x");

        assert_eq!(gate.admit(P, "x"), Admission::Send { repeated: 0 });
    }
}

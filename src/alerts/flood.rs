//! Flood control: an alert identical to one sent within the window is counted, not sent.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::DiscordChannel;

/// What to do with an alert.
#[derive(Debug)]
pub enum Admission {
    /// Send it; `repeated` identical alerts were suppressed since the last one went out.
    /// Report the outcome with [`FloodGate::sent`] or [`FloodGate::failed`].
    Send {
        /// How many were suppressed.
        repeated: u64,
        /// Held while the send runs; identical alerts wait for it.
        ticket: SendTicket,
    },
    /// The same alert went out within the window: drop this one.
    Suppress,
    /// The same alert is being sent: wait until it has settled, then ask again.
    Wait(InFlight),
}

/// Held by the one task sending an alert. Dropped without a report (the task was
/// cancelled), it wakes the waiters, and one of them sends instead.
#[derive(Debug)]
pub struct SendTicket {
    _dropping_wakes_the_waiters: watch::Sender<()>,
}

impl SendTicket {
    fn new(sender: watch::Sender<()>) -> Self {
        SendTicket {
            _dropping_wakes_the_waiters: sender,
        }
    }
}

/// An identical alert's send, still running.
#[derive(Debug)]
pub struct InFlight(watch::Receiver<()>);

impl InFlight {
    /// Resolves once that send succeeded, failed or was abandoned.
    pub async fn settled(mut self) {
        // Nothing is ever sent on the channel: `changed` returns when the ticket drops.
        let _ = self.0.changed().await;
    }
}

/// How many distinct alerts the gate remembers; past that the least recently seen is
/// forgotten, so alerts with ever-new content (ids, timestamps) cannot grow it without bound.
pub const MAX_REMEMBERED_ALERTS: usize = 1024;

#[derive(Debug)]
struct Entry {
    /// When it last went out successfully; `None` until then and after a failed send, so
    /// that an alert whose first send failed is not suppressed.
    sent_at: Option<Instant>,
    /// Suppressed since then.
    suppressed: u64,
    /// The send now running, if any.
    in_flight: Option<watch::Receiver<()>>,
    /// When it was last admitted or reported (a tick of the gate's counter), to pick the
    /// entry to forget when the map is full.
    touched: u64,
}

impl Entry {
    fn is_in_flight(&self) -> bool {
        // `has_changed` fails once the ticket is dropped.
        self.in_flight
            .as_ref()
            .is_some_and(|receiver| receiver.has_changed().is_ok())
    }
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
    /// suppressed only while an identical one that was [`sent`](Self::sent) is in the
    /// window; while an identical one is being sent, it waits for the outcome.
    pub fn admit(&self, channel: DiscordChannel, content: &str) -> Admission {
        let (sender, receiver) = watch::channel(());
        if self.window.is_zero() {
            return Admission::Send {
                repeated: 0,
                ticket: SendTicket::new(sender),
            };
        }
        let now = Instant::now();
        let in_window = |entry: &Entry| {
            entry
                .sent_at
                .is_some_and(|sent| now.duration_since(sent) < self.window)
        };
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        // Forget what can no longer suppress anything and has nothing to report.
        seen.retain(|_, entry| entry.suppressed > 0 || in_window(entry) || entry.is_in_flight());
        let entry = self.entry(&mut seen, channel, content);
        if in_window(entry) {
            entry.suppressed += 1;
            return Admission::Suppress;
        }
        if entry.is_in_flight() {
            let receiver = entry
                .in_flight
                .clone()
                .expect("an entry in flight has a receiver");
            return Admission::Wait(InFlight(receiver));
        }
        entry.in_flight = Some(receiver);
        Admission::Send {
            repeated: std::mem::take(&mut entry.suppressed),
            ticket: SendTicket::new(sender),
        }
    }

    /// The admitted send succeeded: identical alerts are suppressed for the window.
    pub fn sent(&self, channel: DiscordChannel, content: &str, ticket: SendTicket) {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        self.entry(&mut seen, channel, content).sent_at = Some(now);
        // Waiters wake only now, with the send on record.
        drop(ticket);
    }

    /// The admitted send failed: the next identical alert is tried again and still reports
    /// the `repeated` count this one carried.
    pub fn failed(
        &self,
        channel: DiscordChannel,
        content: &str,
        repeated: u64,
        ticket: SendTicket,
    ) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let entry = self.entry(&mut seen, channel, content);
        entry.sent_at = None;
        entry.suppressed += repeated;
        drop(ticket);
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
            in_flight: None,
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

    /// Admits and reports success at once, as a send that went out.
    fn send_ok(gate: &FloodGate, content: &str) -> Option<u64> {
        match gate.admit(P, content) {
            Admission::Send { repeated, ticket } => {
                gate.sent(P, content, ticket);
                Some(repeated)
            }
            Admission::Suppress => None,
            Admission::Wait(_) => panic!("nothing is in flight"),
        }
    }

    fn is_suppressed(admission: &Admission) -> bool {
        matches!(admission, Admission::Suppress)
    }

    fn repeated(admission: &Admission) -> Option<u64> {
        match admission {
            Admission::Send { repeated, .. } => Some(*repeated),
            _ => None,
        }
    }

    #[test]
    fn identical_alerts_within_the_window_are_suppressed_and_then_counted() {
        let gate = FloodGate::new(Duration::from_millis(50));

        let first = send_ok(&gate, "db down");
        let repeats: Vec<_> = (0..3).map(|_| gate.admit(P, "db down")).collect();
        std::thread::sleep(Duration::from_millis(60));
        let after_window = gate.admit(P, "db down");

        assert_eq!(first, Some(0));
        assert!(repeats.iter().all(is_suppressed));
        assert_eq!(repeated(&after_window), Some(3));
    }

    #[test]
    fn other_content_and_other_channels_are_not_suppressed() {
        let gate = FloodGate::new(Duration::from_secs(60));

        send_ok(&gate, "a");

        assert_eq!(repeated(&gate.admit(P, "b")), Some(0));
        assert_eq!(repeated(&gate.admit(DiscordChannel::Product, "a")), Some(0));
    }

    #[test]
    fn after_a_failed_send_the_next_alert_is_tried_and_keeps_the_count() {
        let gate = FloodGate::new(Duration::from_millis(50));
        send_ok(&gate, "x");
        gate.admit(P, "x");
        std::thread::sleep(Duration::from_millis(60));
        let Admission::Send {
            repeated: carried,
            ticket,
        } = gate.admit(P, "x")
        else {
            panic!("after the window the alert is sent");
        };

        gate.failed(P, "x", carried, ticket);

        assert_eq!(carried, 1);
        assert_eq!(repeated(&gate.admit(P, "x")), Some(1));
    }

    #[tokio::test]
    async fn a_duplicate_waits_for_the_first_send_and_is_suppressed_only_if_it_succeeded() {
        let gate = FloodGate::new(Duration::from_secs(60));
        let Admission::Send { ticket, .. } = gate.admit(P, "x") else {
            panic!("the first alert is sent");
        };

        let Admission::Wait(while_failing) = gate.admit(P, "x") else {
            panic!("a duplicate waits while the first is in flight");
        };
        gate.failed(P, "x", 0, ticket);
        while_failing.settled().await;
        let after_failure = gate.admit(P, "x");
        let Admission::Send { ticket, .. } = after_failure else {
            panic!("after a failure the duplicate is sent");
        };
        let Admission::Wait(while_sending) = gate.admit(P, "x") else {
            panic!("a duplicate waits while the retry is in flight");
        };
        gate.sent(P, "x", ticket);
        while_sending.settled().await;

        assert!(is_suppressed(&gate.admit(P, "x")));
    }

    #[tokio::test]
    async fn an_abandoned_send_lets_a_waiting_duplicate_go_out() {
        let gate = FloodGate::new(Duration::from_secs(60));
        let first = gate.admit(P, "x");
        let Admission::Wait(waiting) = gate.admit(P, "x") else {
            panic!("a duplicate waits while the first is in flight");
        };

        drop(first);
        waiting.settled().await;

        assert_eq!(repeated(&gate.admit(P, "x")), Some(0));
    }

    #[test]
    fn a_zero_window_suppresses_nothing() {
        let gate = FloodGate::new(Duration::ZERO);

        send_ok(&gate, "x");

        assert_eq!(repeated(&gate.admit(P, "x")), Some(0));
    }

    #[test]
    fn the_gate_forgets_the_least_recent_alert_when_full() {
        let gate = FloodGate::with_capacity(Duration::from_secs(60), 3);
        for content in ["a", "b", "c"] {
            send_ok(&gate, content);
        }
        gate.admit(P, "a");

        send_ok(&gate, "d");

        assert_eq!(gate.remembered(), 3);
        assert!(is_suppressed(&gate.admit(P, "a")));
        assert_eq!(repeated(&gate.admit(P, "b")), Some(0));
    }

    #[test]
    fn distinct_alerts_beyond_the_cap_keep_the_map_bounded() {
        let gate = FloodGate::new(Duration::from_secs(60));

        for n in 0..MAX_REMEMBERED_ALERTS * 3 {
            send_ok(&gate, &format!("disk full on node {n}"));
        }

        assert_eq!(gate.remembered(), MAX_REMEMBERED_ALERTS);
    }
}

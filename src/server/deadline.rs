//! The deadline every connection lives under, whatever protocol it turns out to speak: a
//! complete request head within the header timeout of being accepted, and after the last
//! answer the next request within the keep-alive idle timeout.
//!
//! hyper-util's protocol sniffing reads without a timer and HTTP/2 has no idle timeout, so
//! the deadline sits in the socket ([`DeadlineIo`]): a read that would wait past it fails,
//! which ends the connection. The service marks requests in flight ([`Activity::request_started`]);
//! while one is, there is no deadline (the request timeout bounds the handler).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::Version;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How long a connection may wait for a request head and for its next request.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// A request head must be complete within this, from accept (or, on HTTP/1, from the
    /// first byte after an idle spell).
    pub header: Duration,
    /// After the last answer, the next request must start within this.
    pub idle: Duration,
}

/// Why the server closed a connection on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// No complete request head in time: a client that never sent one, or a slow one.
    HeaderTimeout,
    /// A keep-alive connection with no request for the idle timeout.
    Idle,
    /// An HTTP/1 request body not received in time (`server/body_deadline.rs`): answered
    /// 408, then closed.
    BodyTimeout,
}

/// What one connection is doing, shared by its socket and its service.
#[derive(Debug)]
pub struct Activity {
    timeouts: Timeouts,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    in_flight: usize,
    /// Set by the first request: on HTTP/1 bytes after an idle spell begin a request head;
    /// on HTTP/2 they may be pings or window updates.
    http1: bool,
    phase: Phase,
    closed: Option<CloseReason>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A request head must be complete by then.
    Head(Instant),
    /// Requests are being answered.
    Busy,
    /// Everything answered; the next request must start by then.
    Idle(Instant),
}

impl Phase {
    fn deadline(self) -> Option<Instant> {
        match self {
            Phase::Head(at) | Phase::Idle(at) => Some(at),
            Phase::Busy => None,
        }
    }
}

impl Activity {
    /// A connection just accepted: its first request head is due within the header timeout.
    pub fn new(timeouts: Timeouts) -> Arc<Self> {
        Arc::new(Activity {
            timeouts,
            state: Mutex::new(State {
                in_flight: 0,
                http1: false,
                phase: Phase::Head(Instant::now() + timeouts.header),
                closed: None,
            }),
        })
    }

    /// A request head arrived; the deadline is off until the returned guard drops.
    pub fn request_started(self: &Arc<Self>, version: Version) -> InFlight {
        let mut state = self.state();
        state.in_flight += 1;
        state.http1 = version < Version::HTTP_2;
        state.phase = Phase::Busy;
        InFlight(self.clone())
    }

    /// The connection is closed after the answer now being written, for `reason`.
    pub fn closing_for(&self, reason: CloseReason) {
        self.state().closed = Some(reason);
    }

    /// Why the server closed the connection, if it did.
    pub fn closed_by(&self) -> Option<CloseReason> {
        self.state().closed
    }

    fn bytes_arrived(&self) {
        let mut state = self.state();
        if state.http1 && matches!(state.phase, Phase::Idle(_)) {
            state.phase = Phase::Head(Instant::now() + self.timeouts.header);
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.state().phase.deadline()
    }

    /// Closes on `deadline` if it is still the one in force (a request may just have begun).
    fn close_if_still_due(&self, deadline: Instant) -> Option<CloseReason> {
        let mut state = self.state();
        let reason = match state.phase {
            Phase::Head(at) if at == deadline => CloseReason::HeaderTimeout,
            Phase::Idle(at) if at == deadline => CloseReason::Idle,
            _ => return None,
        };
        state.closed = Some(reason);
        Some(reason)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A request being answered; dropping it (the answer is ready) may start the idle timeout.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.in_flight -= 1;
        if state.in_flight == 0 {
            state.phase = Phase::Idle(Instant::now() + self.0.timeouts.idle);
        }
    }
}

/// A socket whose reads fail with `TimedOut` once its connection's deadline passes.
pub struct DeadlineIo<I> {
    inner: I,
    activity: Arc<Activity>,
    timer: Pin<Box<Sleep>>,
}

impl<I> DeadlineIo<I> {
    /// Wraps `inner`, the socket of the connection `activity` tracks.
    pub fn new(inner: I, activity: Arc<Activity>) -> Self {
        let first = activity.deadline().unwrap_or_else(Instant::now);
        DeadlineIo {
            inner,
            activity,
            timer: Box::pin(tokio::time::sleep_until(first)),
        }
    }

    /// Called when a read would wait: ready with an error once the deadline has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        // The deadline can move while the timer runs (another task starts a request), so a
        // timer that fired is checked against the deadline now in force.
        loop {
            let Some(deadline) = self.activity.deadline() else {
                return Poll::Pending;
            };
            if self.timer.deadline() != deadline {
                self.timer.as_mut().reset(deadline);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if let Some(reason) = self.activity.close_if_still_due(deadline) {
                let what = match reason {
                    CloseReason::HeaderTimeout => "no complete request head in time",
                    CloseReason::Idle => "idle keep-alive connection",
                    CloseReason::BodyTimeout => "request body not received in time",
                };
                return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, what));
            }
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for DeadlineIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        // Bytes already waiting are delivered even past the deadline: a request that made it
        // in time is served.
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.activity.bytes_arrived();
                Poll::Ready(Ok(()))
            }
            Poll::Pending => this.poll_deadline(cx).map(Err),
            other => other,
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for DeadlineIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: Timeouts = Timeouts {
        header: Duration::from_secs(10),
        idle: Duration::from_secs(60),
    };

    /// True when `deadline` is `timeout` after some instant between `from` and now.
    fn due_after(deadline: Option<Instant>, from: Instant, timeout: Duration) -> bool {
        deadline.is_some_and(|at| at >= from + timeout && at <= Instant::now() + timeout)
    }

    #[tokio::test]
    async fn the_deadline_is_the_header_timeout_then_off_then_the_idle_timeout() {
        let accepted = Instant::now();
        let activity = Activity::new(TIMEOUTS);

        let first = activity.deadline();
        let request = activity.request_started(Version::HTTP_11);
        let busy = activity.deadline();
        let answered = Instant::now();
        drop(request);

        assert!(due_after(first, accepted, TIMEOUTS.header), "{first:?}");
        assert_eq!(busy, None);
        assert!(due_after(activity.deadline(), answered, TIMEOUTS.idle));
    }

    #[tokio::test]
    async fn on_http1_a_byte_after_an_idle_spell_starts_the_header_timeout() {
        let http1 = Activity::new(TIMEOUTS);
        let http2 = Activity::new(TIMEOUTS);
        let answered = Instant::now();
        drop(http1.request_started(Version::HTTP_11));
        drop(http2.request_started(Version::HTTP_2));

        http1.bytes_arrived();
        http2.bytes_arrived();

        assert!(due_after(http1.deadline(), answered, TIMEOUTS.header));
        // On HTTP/2 bytes may be a ping's acknowledgement, no request: still idle.
        assert!(due_after(http2.deadline(), answered, TIMEOUTS.idle));
    }

    #[tokio::test]
    async fn a_deadline_replaced_by_a_request_does_not_close() {
        let activity = Activity::new(TIMEOUTS);
        let due = activity
            .deadline()
            .expect("a new connection has a deadline");
        let _request = activity.request_started(Version::HTTP_2);

        assert_eq!(activity.close_if_still_due(due), None);
        assert_eq!(activity.closed_by(), None);
    }
}

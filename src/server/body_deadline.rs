//! A request body must arrive in time: within the body read timeout of the server starting
//! to read it, plus one second for every `min_rate` bytes received. A body that falls behind
//! is answered 408 `{"detail": "Request body not received in time"}` and, on HTTP/1, its
//! connection is closed, so a client that sends a head and then stalls or trickles its body
//! cannot hold a connection slot for longer than the grace.
//!
//! The deadline is on the body, not the socket ([`DeadlineBody`]): the handler that reads it
//! gets an error frame, and the answer it gives about a cut-off body is replaced by the 408,
//! in the router ([`answer_late_bodies`], so CORS and the request metrics see the 408) and
//! again in the accept loop for routers without that layer. A per-frame idle timeout
//! (`tower_http`'s `RequestBodyTimeoutLayer`) would not do: one byte every few seconds
//! passes it, and that is the attack.
//!
//! The clock starts when the body is first read, not when the head arrived: a handler may
//! wait for a batch turn first, and a body that sat in the socket meanwhile is not late.

use std::error::Error;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, Version, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::wire::Detail;

/// What the client is told, in the `{"detail": …}` shape of the other 4xx.
pub const LATE_BODY_DETAIL: &str = "Request body not received in time";

/// How fast a body must arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyPace {
    /// The whole body is due within this of the server starting to read it…
    pub timeout: Duration,
    /// …plus one second for every this many bytes received; 0: no extension.
    pub min_rate: u64,
}

impl BodyPace {
    /// When a body whose reading started at `started` and that has sent `received` bytes is
    /// due.
    fn deadline(self, started: Instant, received: u64) -> Instant {
        let earned = if self.min_rate == 0 {
            Duration::ZERO
        } else {
            // At most ~31 years: far past any request timeout, and no overflow.
            Duration::from_secs_f64((received as f64 / self.min_rate as f64).min(1e9))
        };
        let due = started + self.timeout;
        due.checked_add(earned).unwrap_or(due)
    }
}

/// Set once a request's body missed its deadline; the request carries it in its extensions.
#[derive(Debug, Clone, Default)]
pub struct LateBody(Arc<AtomicBool>);

impl LateBody {
    /// Whether the body missed its deadline.
    pub fn is_late(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn mark(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// The error a late body ends with.
#[derive(Debug)]
pub struct BodyTooSlow;

impl fmt::Display for BodyTooSlow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(LATE_BODY_DETAIL)
    }
}

impl Error for BodyTooSlow {}

/// A request body that fails with [`BodyTooSlow`] once it falls behind its [`BodyPace`].
pub struct DeadlineBody<B> {
    inner: B,
    pace: BodyPace,
    late: LateBody,
    /// When the body was first polled.
    started: Option<Instant>,
    received: u64,
    /// Made only when the body first has to wait: most bodies arrive with their head.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> DeadlineBody<B> {
    /// Wraps `inner`; `late` is set when the deadline passes.
    pub fn new(inner: B, pace: BodyPace, late: LateBody) -> Self {
        DeadlineBody {
            inner,
            pace,
            late,
            started: None,
            received: 0,
            timer: None,
        }
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.late.is_late() {
            return Poll::Ready(Some(Err(Box::new(BodyTooSlow))));
        }
        let started = *this.started.get_or_insert_with(Instant::now);
        // Bytes already here are delivered even past the deadline, as in `DeadlineIo`.
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received = this.received.saturating_add(data.len() as u64);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let deadline = this.pace.deadline(started, this.received);
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.late.mark();
                Poll::Ready(Some(Err(Box::new(BodyTooSlow))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The answer to a request whose body came too slowly: 408, and on HTTP/1
/// `Connection: close` (RFC 9110 §15.5.9), since the rest of the body is never read.
pub fn late_body_answer(version: Version) -> Response {
    let mut response = (
        StatusCode::REQUEST_TIMEOUT,
        Json(Detail::new(LATE_BODY_DETAIL)),
    )
        .into_response();
    if version < Version::HTTP_2 {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Middleware: a request whose body missed its deadline is answered [`late_body_answer`],
/// whatever the handler made of the cut-off body. Requests not served by
/// [`serve`](super::serve) pass through.
pub async fn answer_late_bodies(request: Request, next: Next) -> Response {
    let late = request.extensions().get::<LateBody>().cloned();
    let version = request.version();
    let response = next.run(request).await;
    match late {
        Some(late) if late.is_late() => {
            tracing::info!("request body not received in time; answered 408");
            late_body_answer(version)
        }
        _ => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use http_body_util::{BodyExt, StreamBody};

    const PACE: BodyPace = BodyPace {
        timeout: Duration::from_secs(10),
        min_rate: 1000,
    };

    #[test]
    fn every_min_rate_bytes_received_buy_one_more_second() {
        let started = Instant::now();

        assert_eq!(PACE.deadline(started, 0), started + PACE.timeout);
        assert_eq!(
            PACE.deadline(started, 2500),
            started + PACE.timeout + Duration::from_millis(2500)
        );
        let no_extension = BodyPace {
            min_rate: 0,
            ..PACE
        };
        assert_eq!(
            no_extension.deadline(started, 1 << 40),
            started + PACE.timeout
        );
        // Absurd counts do not overflow.
        assert!(PACE.deadline(started, u64::MAX) > started + PACE.timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_fails_after_the_timeout_and_is_marked_late() {
        let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BodyTooSlow>>(1);
        let stream = tokio_stream_from(receiver);
        let late = LateBody::default();
        let mut body = DeadlineBody::new(StreamBody::new(stream), PACE, late.clone());
        sender
            .send(Ok(Frame::data(Bytes::from_static(b"{"))))
            .await
            .unwrap();

        let first = body
            .frame()
            .await
            .expect("a frame")
            .expect("the first byte");
        let second = body.frame().await.expect("an error frame");

        assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"{"));
        assert!(second.unwrap_err().is::<BodyTooSlow>());
        assert!(late.is_late());
        drop(sender);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_arrives_whole_is_never_late() {
        let late = LateBody::default();
        let mut body = DeadlineBody::new(
            http_body_util::Full::new(Bytes::from_static(b"{}")),
            PACE,
            late.clone(),
        );

        let bytes = (&mut body).collect().await.unwrap().to_bytes();
        tokio::time::sleep(PACE.timeout * 2).await;

        assert_eq!(bytes, Bytes::from_static(b"{}"));
        assert!(!late.is_late());
        assert!(body.frame().await.is_none());
    }

    /// A stream of the frames sent on `receiver`.
    fn tokio_stream_from<T>(
        receiver: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Unpin {
        Box::pin(futures_util::stream::unfold(
            receiver,
            |mut receiver| async move { receiver.recv().await.map(|item| (item, receiver)) },
        ))
    }
}

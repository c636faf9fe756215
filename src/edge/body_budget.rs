//! A budget of request-body bytes held in memory at once, shared by all routes.
//!
//! Each body is charged as it is read, decompressed bytes counted (a compressed body is
//! charged for what it becomes), and keeps its charge until the request is done with it,
//! parsed tree included. A body that would pass the budget waits briefly for others to
//! finish, then is refused with 503 and `Retry-After`: memory stays bounded however many
//! clients send at once. Requests whose caller was not authenticated draw on a smaller
//! budget of their own, so anonymous senders cannot crowd out signed-in ones.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use bytes::BytesMut;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes charged at least per reservation, so a body sent in small chunks takes few.
const MIN_RESERVATION: usize = 16 * 1024;

/// The budgets, from `[server]` settings.
#[derive(Debug)]
pub struct BodyBudget {
    signed_in: Arc<Semaphore>,
    anonymous: Arc<Semaphore>,
    wait: Duration,
}

/// Why a body was not read.
#[derive(Debug)]
pub enum BodyError {
    /// Over the route's limit.
    TooLarge,
    /// The budget stayed spent for the whole wait.
    Busy,
    /// The client broke off, or sent a malformed body.
    Unreadable(String),
}

/// A body read within the budget; the charge is released when this is dropped.
#[derive(Debug)]
pub struct HeldBody {
    /// The body as sent (decompressed).
    pub bytes: Bytes,
    /// The charge, passed on to what is built from the bytes.
    pub charge: Option<OwnedSemaphorePermit>,
}

impl BodyBudget {
    /// `signed_in_bytes` for authenticated requests, `anonymous_bytes` for the others; a body
    /// waits at most `wait` for room.
    pub fn new(signed_in_bytes: usize, anonymous_bytes: usize, wait: Duration) -> Self {
        BodyBudget {
            signed_in: Arc::new(Semaphore::new(signed_in_bytes.min(Semaphore::MAX_PERMITS))),
            anonymous: Arc::new(Semaphore::new(anonymous_bytes.min(Semaphore::MAX_PERMITS))),
            wait,
        }
    }

    /// Bytes of the signed-in budget not charged now (for tests).
    pub fn available(&self) -> usize {
        self.signed_in.available_permits()
    }

    /// Bytes of the anonymous budget not charged now (for tests).
    pub fn anonymous_available(&self) -> usize {
        self.anonymous.available_permits()
    }

    /// Reads `body` (at most `limit` bytes; `expected` from `Content-Length`) charging
    /// the budget as it arrives.
    pub async fn read(
        &self,
        body: Body,
        limit: usize,
        expected: Option<usize>,
        anonymous: bool,
    ) -> Result<HeldBody, BodyError> {
        let pool = if anonymous {
            &self.anonymous
        } else {
            &self.signed_in
        };
        let mut charge = Charge::default();
        let mut body = Limited::new(body, limit);
        if let Some(expected) = expected {
            // A body announced over the limit is still read up to it, so that the 413
            // leaves the keep-alive connection clean for the next request.
            if let Err(busy) = charge.cover(expected.min(limit), pool, self.wait).await {
                drain(&mut body).await;
                return Err(busy);
            }
        }
        let mut read = Read::Nothing;
        let capacity = expected.unwrap_or(0).min(limit);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|err| {
                if err.downcast_ref::<LengthLimitError>().is_some() {
                    BodyError::TooLarge
                } else {
                    BodyError::Unreadable(err.to_string())
                }
            })?;
            let Ok(chunk) = frame.into_data() else {
                continue; // trailers
            };
            if let Err(busy) = charge
                .cover(read.len() + chunk.len(), pool, self.wait)
                .await
            {
                drop(read);
                drain(&mut body).await;
                return Err(busy);
            }
            read.push(chunk, capacity);
        }
        Ok(HeldBody {
            bytes: read.into_bytes(),
            charge: charge.permit,
        })
    }
}

/// Reads the rest of a refused body without keeping it, so that the client, still
/// sending, reads the 503 instead of a reset connection (the route's limit and the
/// request timeout bound the time this takes).
async fn drain(body: &mut Limited<Body>) {
    while let Some(Ok(_)) = body.frame().await {}
}

/// What a body has been charged so far.
#[derive(Default)]
struct Charge {
    permit: Option<OwnedSemaphorePermit>,
    bytes: usize,
}

impl Charge {
    /// Charges more, if needed, so that `bytes` are covered.
    async fn cover(
        &mut self,
        bytes: usize,
        pool: &Arc<Semaphore>,
        wait: Duration,
    ) -> Result<(), BodyError> {
        if bytes <= self.bytes {
            return Ok(());
        }
        let more = (bytes - self.bytes).max(MIN_RESERVATION);
        let more_permits = u32::try_from(more).map_err(|_| BodyError::Busy)?;
        let permit = match pool.clone().try_acquire_many_owned(more_permits) {
            Ok(permit) => permit,
            Err(_) => {
                let acquire = pool.clone().acquire_many_owned(more_permits);
                match tokio::time::timeout(wait, acquire).await {
                    Ok(Ok(permit)) => permit,
                    _ => {
                        metrics::counter!(BODY_BUDGET_REFUSED).increment(1);
                        return Err(BodyError::Busy);
                    }
                }
            }
        };
        match &mut self.permit {
            Some(held) => held.merge(permit),
            None => self.permit = Some(permit),
        }
        self.bytes += more;
        Ok(())
    }
}

/// Requests refused because the body budget stayed spent.
pub const BODY_BUDGET_REFUSED: &str = "analytics_body_budget_refused_total";

/// The chunks read so far: one chunk is kept as it came, more are copied together.
enum Read {
    Nothing,
    One(Bytes),
    Many(BytesMut),
}

impl Read {
    fn len(&self) -> usize {
        match self {
            Read::Nothing => 0,
            Read::One(bytes) => bytes.len(),
            Read::Many(bytes) => bytes.len(),
        }
    }

    /// Adds `chunk`; `capacity` is the whole body's expected size, if known.
    fn push(&mut self, chunk: Bytes, capacity: usize) {
        *self = match std::mem::replace(self, Read::Nothing) {
            Read::Nothing => Read::One(chunk),
            Read::One(first) => {
                let mut joined = BytesMut::with_capacity(capacity.max(first.len() + chunk.len()));
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&chunk);
                Read::Many(joined)
            }
            Read::Many(mut joined) => {
                joined.extend_from_slice(&chunk);
                Read::Many(joined)
            }
        };
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Read::Nothing => Bytes::new(),
            Read::One(bytes) => bytes,
            Read::Many(bytes) => bytes.freeze(),
        }
    }
}

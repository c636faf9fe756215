//! Request bodies read the way FastAPI reads them.
//!
//! `CheckedBody` checks only the JSON syntax, without building a tree: a body that is not
//! JSON is a 422 before auth runs, as in the original, but nothing is built for a request
//! that auth then refuses. After auth, `CheckedBody::read` hands the body's text to the
//! domain validators, which read it in one pass without a tree either.

use std::panic::AssertUnwindSafe;
use std::sync::{LazyLock, mpsc};

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, Method, Uri, header};
use serde_json::{Map, Value};
use thread_priority::{ThreadPriority, ThreadPriorityValue, set_current_thread_priority};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::AppState;
use crate::auth::Unauthenticated;
use crate::domain::{Body, FieldError, pyjson};
use crate::edge::body_budget::BodyError;
use crate::error::ApiError;

/// Bodies larger than this are checked and parsed on a thread of their own, one at a time:
/// a megabyte of JSON can cost tens of milliseconds of CPU (the 805 KB document of 200,000
/// `NaN`s: ~20 ms), which on an async worker would stall every request queued behind it.
const HEAVY_BODY_BYTES: usize = 64 * 1024;

/// The heavy-body thread's CPU priority: nice 10 in thread-priority's cross-platform scale
/// (0-99, mapped linearly onto nice 19 to -20 on Linux; a test checks the niceness). When
/// the cores are busy, the small requests browsers send (on the async workers, nice 0) go
/// first, so a flood of large or hostile bodies slows down itself rather than everyone
/// (bench/abuse.sh, docs/PERFORMANCE.md).
const HEAVY_PRIORITY: u8 = 22;

/// One heavy body at a time: waiting for the turn can be cancelled (a client that went
/// away leaves no work behind), and at most one body is being decoded.
static HEAVY_TURN: Semaphore = Semaphore::const_new(1);

type HeavyJob = Box<dyn FnOnce() + Send>;

/// The heavy-body thread, started on first use.
static HEAVY_THREAD: LazyLock<mpsc::Sender<HeavyJob>> = LazyLock::new(|| {
    let (jobs, queue) = mpsc::channel::<HeavyJob>();
    std::thread::Builder::new()
        .name("heavy-bodies".to_owned())
        .spawn(move || {
            let priority = ThreadPriorityValue::try_from(HEAVY_PRIORITY).expect("within 0-99");
            if let Err(err) = set_current_thread_priority(ThreadPriority::Crossplatform(priority)) {
                tracing::warn!(?err, "the heavy-body thread keeps the normal CPU priority");
            }
            for job in queue {
                job();
            }
        })
        .expect("the OS starts one more thread at start-up");
    jobs
});

/// Runs `work` on `bytes`: at once when the body is small, else on the heavy-body thread
/// once it has the heavy turn.
async fn decode<T: Send + 'static>(
    bytes: &Bytes,
    work: impl FnOnce(&Bytes) -> T + Send + 'static,
) -> T {
    if bytes.len() <= HEAVY_BODY_BYTES {
        return work(bytes);
    }
    let _turn = HEAVY_TURN
        .acquire()
        .await
        .expect("the heavy turn is never closed");
    let (done, answer) = oneshot::channel();
    let bytes = bytes.clone();
    let job: HeavyJob = Box::new(move || {
        let _ = done.send(std::panic::catch_unwind(AssertUnwindSafe(|| work(&bytes))));
    });
    HEAVY_THREAD
        .send(job)
        .expect("the heavy-body thread runs for the life of the process");
    match answer
        .await
        .expect("the heavy-body thread answers every job")
    {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// What a 422 names (`POST /path`), kept unformatted so that valid requests never pay for
/// the text.
#[derive(Debug)]
pub struct RequestLine {
    method: Method,
    uri: Uri,
}

impl RequestLine {
    /// The 422 for these field errors, naming this request.
    pub fn invalid(&self, errors: Vec<FieldError>) -> ApiError {
        ApiError::Invalid {
            request_line: format!("{} {}", self.method, self.uri.path()),
            errors,
        }
    }
}

/// A body read within the route's limit but not parsed yet.
#[derive(Debug)]
pub struct BufferedBody {
    /// The body as sent.
    pub bytes: Bytes,
    /// Its charge on the body budget, held until the request is done with the body (and
    /// with what validation built from it).
    _charge: Option<OwnedSemaphorePermit>,
    /// Whether FastAPI would have parsed it as JSON (by its content type).
    pub json: bool,
    /// What its 422 names.
    pub request: RequestLine,
}

/// A body whose JSON syntax was checked, not yet validated.
#[derive(Debug)]
pub struct CheckedBody {
    body: BufferedBody,
    /// Whether it holds Python's non-finite tokens (read as markers).
    has_non_finite: bool,
}

impl CheckedBody {
    /// The body as sent.
    pub fn bytes(&self) -> &Bytes {
        &self.body.bytes
    }

    /// What its 422 names.
    pub fn request(&self) -> &RequestLine {
        &self.body.request
    }

    /// The 422 for these field errors, naming this request.
    pub fn invalid(&self, errors: Vec<FieldError>) -> ApiError {
        self.body.request.invalid(errors)
    }

    /// Runs `work` on the body as FastAPI reads it (`{}` when empty, a string when not sent
    /// as JSON), where every decoding of a body runs: at once when it is small, else on the
    /// heavy-body thread (see `decode`). The body's budget charge is kept by `self`.
    pub async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(Body<'_>) -> T + Send + 'static,
    ) -> T {
        let (json, has_non_finite) = (self.body.json, self.has_non_finite);
        decode(&self.body.bytes, move |bytes| {
            with_body(bytes, json, has_non_finite, work)
        })
        .await
    }
}

/// Runs `work` on `bytes` as FastAPI reads a body (see [`CheckedBody::read`]); `bytes`
/// passed [`check`], which said whether it holds non-finite tokens. Pure, so the memory
/// test (`tests/memory.rs`) measures exactly what a request allocates.
pub fn with_body<T>(
    bytes: &[u8],
    json: bool,
    has_non_finite: bool,
    work: impl FnOnce(Body<'_>) -> T,
) -> T {
    // An empty body is `{}` whatever its content type, as FastAPI read it.
    if !json && !bytes.is_empty() {
        return work(Body::Text(&String::from_utf8_lossy(bytes)));
    }
    let text = pyjson::marked(bytes, has_non_finite);
    let text = std::str::from_utf8(&text).expect("a checked body is UTF-8");
    work(Body::json(text, has_non_finite))
}

impl FromRequest<AppState> for CheckedBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let body = BufferedBody::from_request(request, state).await?;
        let json = body.json;
        match decode(&body.bytes, move |bytes| check(bytes, json)).await {
            Ok(has_non_finite) => Ok(CheckedBody {
                body,
                has_non_finite,
            }),
            Err(error) => Err(body.request.invalid(vec![error])),
        }
    }
}

/// FastAPI parses a body as JSON when there is no content type or it is `application/json`
/// or `application/*+json`; any other body reaches validation as a string.
pub fn is_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return true;
    };
    let essence = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The byte offset of a serde_json error, as Python's `JSONDecodeError.pos` would give it.
fn error_offset(body: &[u8], err: &serde_json::Error) -> usize {
    let mut line = 1;
    let mut offset = 0;
    for (i, b) in body.iter().enumerate() {
        if line == err.line() {
            offset = i;
            break;
        }
        if *b == b'\n' {
            line += 1;
        }
    }
    (offset + err.column().saturating_sub(1)).min(body.len())
}

/// `Ok` when [`parse`] can read `body`, found without building a tree; else the 422 error
/// `parse` gives. `Ok(true)`: the body holds Python's non-finite tokens.
pub fn check(body: &Bytes, json: bool) -> Result<bool, FieldError> {
    if body.is_empty() || !json {
        return Ok(false);
    }
    if let Err(err) = std::str::from_utf8(body) {
        return Err(FieldError::json_invalid(
            err.valid_up_to(),
            "invalid unicode code point",
        ));
    }
    pyjson::check(body).map_err(|err| json_invalid(body, &err))
}

/// The 422 error for serde_json's `err` on `body`, in Python's words and offsets.
fn json_invalid(body: &[u8], err: &serde_json::Error) -> FieldError {
    let reason = err.to_string();
    let reason = reason.split(" at line ").next().unwrap_or_default();
    FieldError::json_invalid(error_offset(body, err), reason)
}

/// The body as FastAPI reads it, as a tree: empty → `{}`, JSON when `json`, else a string.
/// The reference reading for tests and fuzz targets; requests are read with
/// [`CheckedBody::read`], which builds no tree.
pub fn parse(body: &Bytes, json: bool) -> Result<Value, FieldError> {
    if body.is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    if !json {
        return Ok(Value::String(String::from_utf8_lossy(body).into_owned()));
    }
    pyjson::parse(body).map_err(|err| json_invalid(body, &err))
}

impl FromRequest<AppState> for BufferedBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let line = RequestLine {
            method: request.method().clone(),
            uri: request.uri().clone(),
        };
        let json = is_json_content_type(request.headers());
        let limit = request
            .extensions()
            .get::<crate::edge::limits::RouteBodyLimit>()
            .map_or(state.edge.body_limit, |limit| limit.0);
        let anonymous = request.extensions().get::<Unauthenticated>().is_some();
        // A compressed body's length says nothing of what it becomes.
        let expected = (!request.headers().contains_key(header::CONTENT_ENCODING))
            .then(|| request.headers().get(header::CONTENT_LENGTH))
            .flatten()
            .and_then(|value| value.to_str().ok()?.parse().ok());
        let held = state
            .edge
            .body_budget
            .read(request.into_body(), limit, expected, anonymous)
            .await
            .map_err(|err| match err {
                BodyError::TooLarge => ApiError::PayloadTooLarge { limit },
                BodyError::Busy => ApiError::Busy,
                BodyError::Unreadable(reason) => ApiError::BodyUnreadable(reason),
            })?;
        Ok(BufferedBody {
            bytes: held.bytes,
            _charge: held.charge,
            json,
            request: line,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_error_offset_counts_bytes_across_lines() {
        let body = b"{\n  \"a\": ,\n}";
        let err = serde_json::from_slice::<Value>(body).unwrap_err();

        assert_eq!(error_offset(body, &err), 9);
    }

    #[test]
    fn empty_body_is_an_empty_object() {
        assert_eq!(
            parse(&Bytes::new(), true).unwrap(),
            Value::Object(Map::new())
        );
    }

    #[test]
    fn an_empty_body_reads_as_an_empty_object_whatever_its_content_type() {
        for json in [true, false] {
            let errors =
                with_body(b"", json, false, crate::domain::NewMetric::from_body).unwrap_err();
            let kinds: Vec<_> = errors.iter().map(|e| e.kind).collect();
            assert_eq!(kinds, ["missing"; 3], "json: {json}");
        }
        let errors =
            with_body(b"x", false, false, crate::domain::NewMetric::from_body).unwrap_err();
        assert_eq!(errors[0].kind, "model_type");
    }

    /// The niceness of the calling thread (field 19 of its `stat`, counted after the
    /// parenthesised command name, which may hold spaces).
    fn current_niceness() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let after_name = stat.rsplit(')').next().unwrap();
        after_name
            .split_whitespace()
            .nth(16)
            .unwrap()
            .parse()
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_bodies_are_decoded_on_the_niced_thread_one_at_a_time() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        let thread_name = || std::thread::current().name().map(str::to_owned);
        let small = Bytes::from(vec![b' '; 16]);
        let large = Bytes::from(vec![b' '; HEAVY_BODY_BYTES + 1]);
        let (running, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let (running, peak, large) = (running.clone(), peak.clone(), large.clone());
            tasks.spawn(async move {
                decode(&large, move |_| {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    running.fetch_sub(1, Ordering::SeqCst);
                })
                .await
            });
        }

        let inline = decode(&small, move |_| thread_name()).await;
        let heavy = decode(&large, move |_| (thread_name(), current_niceness())).await;
        tasks.join_all().await;

        assert_eq!(inline, thread_name(), "a small body is decoded where it is");
        assert_eq!(
            heavy,
            (Some("heavy-bodies".to_owned()), 10),
            "a large one on the niced thread"
        );
        assert_eq!(peak.load(Ordering::SeqCst), 1, "one at a time");
    }

    #[test]
    fn malformed_json_is_json_invalid() {
        let err = parse(&Bytes::from_static(b"{not json"), true).unwrap_err();

        assert_eq!(err.kind, "json_invalid");
        assert_eq!(err.msg, "JSON decode error");
    }
}

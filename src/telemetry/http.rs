//! The observability middleware of every route: request id, Sentry hub and transaction
//! (continuing `sentry-trace` or W3C `traceparent`), the request span, the access line,
//! the request metrics and a 500 for a panicking handler.

use std::any::Any;
use std::time::{Duration, Instant};

use crate::wire::StorageErrorBody;
use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, Response, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use sentry::integrations::tower::{NewSentryLayer, SentryHttpLayer};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tracing::Instrument;

use super::{ACCESS_TARGET, REPORTED_TARGET, prometheus};

/// The request id header, taken from the client or generated (UUID v4), and returned.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The level of the per-request access line: below the default filter's `info`.
const ACCESS_LEVEL: tracing::Level = tracing::Level::DEBUG;

/// The route label of requests no route matched (keeps label values bounded).
const UNMATCHED: &str = "unmatched";

/// Wraps every route of `router` in the observability middleware. Call after all routes
/// are added; the Sentry client (if any) must be initialised before.
pub fn instrument<S>(router: Router<S>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    prometheus::install();
    // One `Router::layer` call for the whole stack: axum boxes and clones each layer it is
    // given per request, which showed in `perf`; a `ServiceBuilder` stack is composed once.
    // Still a router layer (not around the router) so that `MatchedPath` is known.
    // Without a Sentry client the hub and transaction layers would only cost time.
    let sentry_on = sentry::Hub::current().client().is_some();
    let sentry = sentry_on.then(|| {
        ServiceBuilder::new()
            .layer(middleware::map_request(continue_w3c_trace))
            .layer(NewSentryLayer::<Request>::new_from_top())
            .layer(SentryHttpLayer::new().enable_transaction())
            .into_inner()
    });
    router.layer(
        ServiceBuilder::new()
            .layer(middleware::map_request(drop_unusable_request_id))
            .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
            .layer(PropagateRequestIdLayer::new(REQUEST_ID))
            .layer(SetSensitiveRequestHeadersLayer::new([
                header::AUTHORIZATION,
                header::COOKIE,
                HeaderName::from_static("x-api-key"),
            ]))
            .option_layer(sentry)
            .layer(middleware::from_fn_with_state(sentry_on, observe_request))
            .layer(CatchPanicLayer::custom(panic_response)),
    )
}

/// A client's request id is kept only when it is short printable ASCII without spaces;
/// otherwise a fresh one is generated (it goes into every log line and Sentry tag).
async fn drop_unusable_request_id(mut request: Request) -> Request {
    let usable = request.headers().get(&REQUEST_ID).is_none_or(|id| {
        let id = id.as_bytes();
        !id.is_empty() && id.len() <= 128 && id.iter().all(|b| b.is_ascii_graphic())
    });
    if !usable {
        request.headers_mut().remove(&REQUEST_ID);
    }
    request
}

fn route_of<B>(request: &axum::http::Request<B>) -> Option<&str> {
    request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
}

fn request_id_of<B>(request: &axum::http::Request<B>) -> &str {
    request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// Opens the `http.request` span (method, route template, never the raw URI, request id),
/// tags the request's Sentry scope, records the request metrics and logs the access line.
// The span is opened here, inside the Sentry transaction, so that it becomes one of its
// child spans (tower-http's TraceLayer opens its span before the transaction starts).
async fn observe_request(
    State(sentry_on): State<bool>,
    request: Request,
    next: Next,
) -> Response<Body> {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = route_of(&request).unwrap_or(UNMATCHED).to_owned();
    let request_id = request_id_of(&request).to_owned();
    // Before the span is entered: entering it switches to a copy of the request's hub.
    if sentry_on {
        tag_scope(method, &route, &request_id);
    }
    let span = tracing::info_span!(
        "http.request",
        http.method = method,
        http.route = route.as_str(),
        request_id = request_id.as_str(),
    );
    async move {
        let response = next.run(request).await;
        record(method, &route, response.status(), started.elapsed());
        response
    }
    .instrument(span)
    .await
}

fn tag_scope(method: &str, route: &str, request_id: &str) {
    sentry::configure_scope(|scope| {
        scope.set_tag("request_id", request_id);
        // Names the transaction and the request's events by route template; unmatched
        // paths (scanners, typos) share one name instead of each raw path.
        scope.set_transaction(Some(&format!("{method} {route}")));
    });
}

fn record(method: &'static str, route: &str, status: StatusCode, elapsed: Duration) {
    let status = status.as_u16();
    prometheus::http_request(method, route, status, elapsed);
    // DEBUG: off by default, as a line per request costs the hot path; the request
    // metrics above count every request anyway.
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    tracing::event!(target: ACCESS_TARGET, ACCESS_LEVEL, status, latency_ms, "request finished");
}

/// Standard methods by name; anything else is one label value.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// A W3C `traceparent` becomes the `sentry-trace` header the Sentry layer continues, unless
/// the caller sent `sentry-trace` itself.
async fn continue_w3c_trace(mut request: Request) -> Request {
    let headers = request.headers();
    if !headers.contains_key("sentry-trace") {
        let converted = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(sentry_trace_from_traceparent)
            .and_then(|v| HeaderValue::from_str(&v).ok());
        if let Some(value) = converted {
            request.headers_mut().insert("sentry-trace", value);
        }
    }
    request
}

/// `00-<trace id>-<parent id>-<flags>` → `<trace id>-<parent id>-<sampled>`; `None` when
/// the header is not a valid W3C trace context.
pub fn sentry_trace_from_traceparent(traceparent: &str) -> Option<String> {
    let parts: Vec<&str> = traceparent.trim().split('-').collect();
    let [version, trace_id, parent_id, flags, ..] = parts[..] else {
        return None;
    };
    let is_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = is_hex(version, 2)
        && version != "ff"
        && (version != "00" || parts.len() == 4)
        && is_hex(trace_id, 32)
        && trace_id.bytes().any(|b| b != b'0')
        && is_hex(parent_id, 16)
        && parent_id.bytes().any(|b| b != b'0')
        && is_hex(flags, 2);
    if !valid {
        return None;
    }
    let sampled = u8::from_str_radix(flags, 16).ok()? & 1;
    Some(format!("{trace_id}-{parent_id}-{sampled}"))
}

/// A panicking handler answers 500 in the contract's shape. The panic itself reached Sentry
/// through the panic hook, so this line is not reported again.
fn panic_response(_payload: Box<dyn Any + Send + 'static>) -> Response<Body> {
    tracing::error!(target: REPORTED_TARGET, "request handler panicked");
    let body = StorageErrorBody::new(
        "Internal server error",
        "The error was reported; retry later.",
    );
    (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    fn access_line_enabled(filter: &str) -> bool {
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber =
            tracing_subscriber::registry().with(tracing_subscriber::EnvFilter::new(filter));
        tracing::subscriber::with_default(
            subscriber,
            || tracing::enabled!(target: ACCESS_TARGET, ACCESS_LEVEL),
        )
    }

    #[test]
    fn the_access_line_is_off_under_the_default_filter_and_can_be_turned_on() {
        let defaults = config::Config::builder()
            .add_source(config::File::from_str(
                include_str!("../../config/default.toml"),
                config::FileFormat::Toml,
            ))
            .build()
            .unwrap();
        let default_filter = defaults.get_string("log.filter").unwrap();

        assert!(!access_line_enabled(&default_filter));
        assert!(access_line_enabled("info,analytics_service::access=debug"));
    }

    #[test]
    fn a_w3c_traceparent_becomes_a_sentry_trace() {
        let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

        assert_eq!(
            sentry_trace_from_traceparent(sampled).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1")
        );
        assert_eq!(
            sentry_trace_from_traceparent(unsampled).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0")
        );
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(sentry_trace_from_traceparent(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn an_unusable_client_request_id_is_replaced_and_a_good_one_kept() {
        let router = instrument(Router::new().route("/ok", get(|| async { "ok" })));
        let call = |id: &str| {
            let request = Request::get("/ok")
                .header(&REQUEST_ID, id)
                .body(Body::empty())
                .unwrap();
            router.clone().oneshot(request)
        };

        let kept = call("req-42").await.unwrap();
        let replaced = call(&"x".repeat(200)).await.unwrap();

        assert_eq!(kept.headers()[&REQUEST_ID], "req-42");
        let new_id = replaced.headers()[&REQUEST_ID].to_str().unwrap();
        assert!(uuid::Uuid::parse_str(new_id).is_ok(), "{new_id}");
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_in_the_contract_shape_with_a_request_id() {
        let router = instrument(Router::new().route(
            "/boom",
            get(|| async {
                if true {
                    panic!("handler bug");
                }
            }),
        ));

        let response = router
            .oneshot(Request::get("/boom").body(Body::empty()).unwrap())
            .await
            .unwrap();

        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(response.headers().contains_key(&REQUEST_ID));
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["detail"]["message"], "Internal server error");
    }
}

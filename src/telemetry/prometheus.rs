//! The Prometheus recorder behind the `metrics` facade, and the service's own metrics.
//!
//! The recorder is process-global: `install` sets it once and later calls (a second
//! `Application` in tests) share it. Other modules emit through `metrics::counter!` etc.

use std::sync::{OnceLock, PoisonError, RwLock};
use std::time::Duration;

use metrics::{
    Counter, Histogram, counter, describe_counter, describe_gauge, describe_histogram, gauge,
    histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::store::PoolStats;

/// Requests answered, by `method`, `route` (template) and `status`.
pub const HTTP_REQUESTS: &str = "http_requests_total";
/// Request latency in seconds, by `method` and `route`.
pub const HTTP_DURATION: &str = "http_request_duration_seconds";
pub use crate::store::{ROWS_STORED, STORAGE_ERRORS};
/// Connections the database pool holds open now.
pub const DB_POOL_SIZE: &str = "analytics_db_pool_size";
/// Open connections not in use.
pub const DB_POOL_IDLE: &str = "analytics_db_pool_idle";
/// Most connections the pool may open.
pub const DB_POOL_MAX: &str = "analytics_db_pool_max";
/// Single-event rows waiting for a group-commit writer, by `table`.
pub const GROUP_COMMIT_WAITING: &str = "analytics_group_commit_waiting_rows";
/// Always 1, labelled with the `version`.
pub const BUILD_INFO: &str = "analytics_build_info";

/// Latency buckets from 1 ms to 10 s: inserts take milliseconds, the timeout is 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often histogram samples are folded in when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder on first call and returns the handle that renders it.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.to_owned()), LATENCY_BUCKETS)
                .expect("the latency buckets are not empty")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed; /metrics will be empty");
            }
            describe();
            gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".to_owned())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_INTERVAL);
                        upkeep.run_upkeep();
                    }
                })
                .expect("spawning the metrics upkeep thread");
            handle
        })
        .clone()
}

fn describe() {
    describe_counter!(HTTP_REQUESTS, "HTTP requests answered");
    describe_histogram!(
        HTTP_DURATION,
        metrics::Unit::Seconds,
        "HTTP request latency"
    );
    describe_counter!(ROWS_STORED, "Rows committed to the database");
    describe_counter!(STORAGE_ERRORS, "Failed database calls");
    describe_counter!(
        crate::edge::body_budget::BODY_BUDGET_REFUSED,
        "Requests refused (503) because the request-body budget stayed spent"
    );
    describe_gauge!(DB_POOL_SIZE, "Open database connections");
    describe_gauge!(DB_POOL_IDLE, "Open database connections not in use");
    describe_gauge!(DB_POOL_MAX, "Most database connections the pool may open");
    describe_gauge!(
        GROUP_COMMIT_WAITING,
        "Single-event rows waiting for a group-commit writer"
    );
    describe_counter!(
        crate::stream::PUBLISHED,
        "Rows the stream acknowledged (stream mode)"
    );
    describe_counter!(
        crate::stream::PUBLISH_FAILED,
        "Rows answered 503 because the stream did not acknowledge them"
    );
    describe_counter!(crate::stream::ROWS_LOADED, "Rows the loader inserted");
    describe_counter!(
        crate::stream::DEAD_LETTERS,
        "Rows sent to the dead-letter subject"
    );
    describe_gauge!(
        crate::stream::PENDING,
        "Messages not yet acknowledged by a loader"
    );
    describe_gauge!(
        crate::stream::OLDEST_PENDING,
        metrics::Unit::Seconds,
        "Age of the oldest message not yet acknowledged by a loader"
    );
    describe_gauge!(BUILD_INFO, "Build information");
}

/// The Prometheus text for a scrape, with the pool and group-commit queue gauges read now.
pub fn render(pool: PoolStats, waiting_rows: &[(&'static str, usize)]) -> String {
    gauge!(DB_POOL_SIZE).set(f64::from(pool.size));
    gauge!(DB_POOL_IDLE).set(f64::from(pool.idle));
    gauge!(DB_POOL_MAX).set(f64::from(pool.max));
    for &(table, rows) in waiting_rows {
        gauge!(GROUP_COMMIT_WAITING, "table" => table).set(rows as f64);
    }
    install().render()
}

/// One answered request.
pub fn http_request(method: &'static str, route: &str, status: u16, elapsed: Duration) {
    let seconds = elapsed.as_secs_f64();
    let cached = REQUEST_METRICS
        .read()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(metrics) = cached.iter().find(|m| m.is(method, route, status)) {
        metrics.observe(seconds);
        return;
    }
    drop(cached);
    let metrics = RequestMetrics::register(method, route, status);
    metrics.observe(seconds);
    let mut cached = REQUEST_METRICS
        .write()
        .unwrap_or_else(PoisonError::into_inner);
    if cached.len() < MAX_CACHED_LABEL_SETS && !cached.iter().any(|m| m.is(method, route, status)) {
        cached.push(metrics);
    }
}

/// The request metrics' handles per label set, each registered once: `counter!` and
/// `histogram!` allocate and hash their labels on every call, ~3 % of a request's CPU in
/// the profile. Methods, route templates and statuses are few; a list is scanned faster
/// than the labels are hashed. Sound because the recorder is global and installed before
/// the first request (`install`).
static REQUEST_METRICS: RwLock<Vec<RequestMetrics>> = RwLock::new(Vec::new());

/// Label sets kept; beyond (unusual traffic) handles are registered per call again.
const MAX_CACHED_LABEL_SETS: usize = 256;

struct RequestMetrics {
    method: &'static str,
    route: Box<str>,
    status: u16,
    requests: Counter,
    duration: Histogram,
}

impl RequestMetrics {
    fn register(method: &'static str, route: &str, status: u16) -> Self {
        let route_label = route.to_owned();
        RequestMetrics {
            method,
            route: route.into(),
            status,
            requests: counter!(HTTP_REQUESTS, "method" => method, "route" => route_label.clone(), "status" => status.to_string()),
            duration: histogram!(HTTP_DURATION, "method" => method, "route" => route_label),
        }
    }

    fn observe(&self, seconds: f64) {
        self.requests.increment(1);
        self.duration.record(seconds);
    }

    fn is(&self, method: &str, route: &str, status: u16) -> bool {
        self.status == status && self.method == method && &*self.route == route
    }
}

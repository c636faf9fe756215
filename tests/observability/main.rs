//! Observability: Sentry against a fake ingest server, log lines, Prometheus `/metrics`.
//!
//! A test binary of its own, run serially: the Sentry client, the log subscriber and the
//! metrics recorder are process-global, so each test takes `support::serial()` first and
//! (re)starts telemetry with its own settings. The API tests in `tests/api` run in parallel
//! without any of these.

#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;

mod connections;
mod fake_sentry;
mod logs;
mod prometheus;
mod sentry_events;
mod support;

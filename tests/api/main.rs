//! One integration-test binary: every module starts the real service.

mod helpers;

mod alerts;
mod analytics;
mod auth;
mod batch;
mod edge;
mod group_commit;
mod hostile;
mod http_errors;
mod idempotency;
mod jwks;
mod lifecycle;
mod memory_bounds;
mod metrics;
mod pg_proxy;
mod process;
mod properties;
mod stream;
mod writer_faults;

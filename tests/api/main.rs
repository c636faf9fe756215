//! One integration-test binary: every module starts the real service.

mod helpers;

mod analytics;
mod auth;
mod http_errors;
mod idempotency;
mod jwks;
mod lifecycle;
mod metrics;
mod properties;

//! One integration-test binary: every module starts the real service.

mod helpers;

mod analytics;
mod auth;
mod edge;
mod http_errors;
mod lifecycle;
mod metrics;

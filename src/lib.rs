//! analytics-service: the AutoGPT platform's analytics ingestion and Discord alerts.

pub mod alerts;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod domain;
pub mod edge;
pub mod error;
pub mod idempotency;
pub mod ingest;
pub mod routes;
pub mod server;
pub mod settings;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod wire;

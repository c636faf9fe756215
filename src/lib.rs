//! analytics-service: the AutoGPT platform's analytics ingestion and Discord alerts.
//!
//! Where to start reading, top layer first (a module imports only its own layer and those
//! below; `tests/architecture.rs` checks it, docs/ARCHITECTURE.md draws it):
//!
//! - [`cli`] → [`startup`]: the commands, and `Application::build` / `run_until`, which wire
//!   every component from [`settings`] (config files and environment, composed from each
//!   component's own `Config`).
//! - [`routes`] (with [`error`], the HTTP error): the router, the handlers and the OpenAPI
//!   document; `routes::json` reads bodies the way FastAPI did.
//! - The components: [`auth`] (JWTs, the `Caller` extractor), [`edge`] (limits, body
//!   budget, rate limits, CORS), [`idempotency`], [`ingest`] (group commit), [`alerts`]
//!   (Discord), [`telemetry`] (logs, Sentry, Prometheus).
//! - [`store`]: PostgreSQL and SQLite behind one trait.
//! - At the bottom: [`domain`] (validation as pydantic did it, no I/O), [`wire`] (the answer
//!   bodies), [`clock`], [`server`] (the accept loop and its connection limits).

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
pub mod sink;
pub mod startup;
pub mod store;
pub mod stream;
pub mod telemetry;
pub mod wire;

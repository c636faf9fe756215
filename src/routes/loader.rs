//! The routes of `analytics-service load`: `GET /healthz`, `GET /readyz` (the database
//! answers) and `GET /metrics` (the loader's counters and lag gauges, the pool).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::health::{healthz, ready, unavailable};
use crate::store::Store;
use crate::telemetry::prometheus;

/// A probe must answer while the database is silent.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// The loader's router.
pub fn router(store: Arc<dyn Store>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(store)
}

async fn readyz(State(store): State<Arc<dyn Store>>) -> Response {
    match tokio::time::timeout(PING_TIMEOUT, store.ping()).await {
        Ok(Ok(())) => ready(),
        _ => unavailable("Database unavailable"),
    }
}

async fn metrics(State(store): State<Arc<dyn Store>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        prometheus::render(store.pool_stats(), &[]),
    )
}

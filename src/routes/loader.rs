//! The routes of `analytics-service load`: `GET /healthz`, `GET /readyz` (the database
//! answers) and `GET /metrics` (the loader's counters and lag gauges, the pool).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::health::{healthz, ready, unavailable};
use super::metrics::scrape;
use crate::sink::database_ready;
use crate::store::Store;

/// The loader's router.
pub fn router(store: Arc<dyn Store>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(store)
}

async fn readyz(State(store): State<Arc<dyn Store>>) -> Response {
    match database_ready(store.as_ref()).await {
        Ok(()) => ready(),
        Err(detail) => unavailable(detail),
    }
}

async fn metrics(State(store): State<Arc<dyn Store>>) -> impl IntoResponse {
    scrape(store.as_ref(), &[])
}

//! `GET /metrics`: Prometheus text format.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::AppState;
use crate::ingest::GroupCommit;
use crate::store::Store;
use crate::telemetry::prometheus;

/// The scrape route, for the main router or the admin listener.
pub fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

/// Every metric in the Prometheus text format, the pool and queue gauges read at this moment.
pub async fn metrics(
    State(store): State<Arc<dyn Store>>,
    State(ingest): State<Arc<GroupCommit>>,
) -> impl IntoResponse {
    scrape(store.as_ref(), &ingest.waiting_rows())
}

/// The scrape's answer: every metric, with the pool and the group-commit queues read now.
pub(super) fn scrape(
    store: &dyn Store,
    waiting_rows: &[(&'static str, usize)],
) -> impl IntoResponse + use<> {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        prometheus::render(store.pool_stats(), waiting_rows),
    )
}

/// The admin listener's router: only `GET /metrics`.
pub fn admin_router(state: AppState) -> Router {
    routes().with_state(state)
}

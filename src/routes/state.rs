//! `AppState`: the handles every handler may use.

use std::sync::Arc;

use axum::extract::FromRef;
use secrecy::SecretString;

use crate::alerts::Alerter;
use crate::auth::Authenticator;
use crate::clock::Clock;
use crate::edge::Edge;
use crate::ingest::GroupCommit;
use crate::sink::Sink;
use crate::store::Store;

/// Shared handler state: one `Arc`, because axum clones the state for every extractor
/// and middleware of every request (cloning the fields one by one showed in `perf`).
#[derive(Clone)]
pub struct AppState(Arc<Handles>);

impl AppState {
    /// Wraps the handles.
    pub fn new(handles: Handles) -> Self {
        AppState(Arc::new(handles))
    }
}

impl std::ops::Deref for AppState {
    type Target = Handles;

    fn deref(&self) -> &Handles {
        &self.0
    }
}

/// What the handlers use.
pub struct Handles {
    /// Where rows go (batch endpoints, readiness).
    pub store: Arc<dyn Store>,
    /// Group commit's writers (metrics, readiness).
    pub ingest: Arc<GroupCommit>,
    /// Where the analytics endpoints put their rows (direct or stream mode).
    pub sink: Arc<Sink>,
    /// Bearer-token verification.
    pub authenticator: Arc<Authenticator>,
    /// "Now", injectable for tests.
    pub clock: Arc<dyn Clock>,
    /// Most items in one batch-endpoint request.
    pub batch_max_items: usize,
    /// Turns for batch-endpoint requests (see `batch::BatchTurn`).
    pub batch_turns: Arc<tokio::sync::Semaphore>,
    /// How long a batch request waits for a turn before 503.
    pub batch_turn_wait: std::time::Duration,
    /// Discord alerts; `None` when no bot token is configured.
    pub alerts: Option<Arc<Alerter>>,
    /// `X-API-Key` accepted by the alerts endpoint; `None` when not configured.
    pub alerts_api_key: Option<SecretString>,
    /// Rate limits, browser settings, body limits and budget.
    pub edge: Arc<Edge>,
}

/// The store alone, for handlers that need nothing else.
impl FromRef<AppState> for Arc<dyn Store> {
    fn from_ref(state: &AppState) -> Self {
        state.store.clone()
    }
}

/// The group-commit writers alone.
impl FromRef<AppState> for Arc<GroupCommit> {
    fn from_ref(state: &AppState) -> Self {
        state.ingest.clone()
    }
}

/// The `Caller` extractor's view of the state.
impl FromRef<AppState> for Arc<Authenticator> {
    fn from_ref(state: &AppState) -> Self {
        state.authenticator.clone()
    }
}

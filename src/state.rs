//! `AppState`: the handles every handler may use.

use std::sync::Arc;

use crate::auth::Authenticator;
use crate::clock::Clock;
use crate::idempotency::Idempotency;
use crate::store::Store;

/// Shared, cheaply cloned handler state.
#[derive(Clone)]
pub struct AppState {
    /// Where rows go.
    pub store: Arc<dyn Store>,
    /// Bearer-token verification.
    pub authenticator: Arc<Authenticator>,
    /// "Now", injectable for tests.
    pub clock: Arc<dyn Clock>,
    /// Largest accepted request body, in bytes (named in the 413).
    pub body_limit: usize,
    /// `Idempotency-Key` handling: retention and clock.
    pub idempotency: Idempotency,
}

//! The `Caller` extractor, for any router state that holds the `Authenticator`.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;

use super::{AuthError, Authenticator, Caller};

/// Marks a request whose caller failed authentication, for the body reader: such a body
/// draws on the smaller anonymous body budget.
#[derive(Debug, Clone, Copy)]
pub struct Unauthenticated;

/// Rejects with the `AuthError`, which renders the original's 401/403/503. A failed
/// caller is marked [`Unauthenticated`] for the body reader, also when the handler takes
/// `Result<Caller, AuthError>` (a body that is not JSON is a 422 before auth is looked at).
impl<S> FromRequestParts<S> for Caller
where
    Arc<Authenticator>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AuthError> {
        let authenticator = Arc::<Authenticator>::from_ref(state);
        let caller = authenticator.authenticate(&parts.headers).await;
        if caller.is_err() {
            parts.extensions.insert(Unauthenticated);
        }
        caller
    }
}

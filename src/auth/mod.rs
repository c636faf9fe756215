//! Bearer JWTs as `autogpt_libs.auth` verifies them: one HMAC algorithm, audience
//! `authenticated`, `sub` as the user id, `role == "admin"` for admins. With
//! `JWT_JWKS_URL`, asymmetric tokens (ES256, RS256, EdDSA, …) are verified against the key
//! set too (see `jwks`); a token's `alg` picks the key kind, so an HMAC token is only ever
//! checked with the configured secret and never with a public key.

mod authenticator;
mod config;
mod extractor;
pub mod jwks;
mod token;
mod verified;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

pub use authenticator::Authenticator;
pub use config::{Config, LOCAL_DEV_JWT_KEY};
pub use extractor::Unauthenticated;
pub use token::mint_token;

use crate::wire::Detail;

/// The audience every accepted token must carry.
pub const AUDIENCE: &str = "authenticated";
/// Header an admin sets to act as another user.
pub const ACT_AS_HEADER: &str = "x-act-as-user-id";

/// Who is calling, after verification and impersonation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The user the request acts for: `sub`, or the impersonated user.
    pub user_id: String,
    /// `role == "admin"` in the token.
    pub is_admin: bool,
}

/// Why a request is not authenticated; the texts are the original's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No header, a non-Bearer scheme, or an empty token.
    #[error("Authorization header is missing")]
    Missing,
    /// `exp` has passed.
    #[error("Token has expired")]
    Expired,
    /// Any other verification failure.
    #[error("Invalid token: {0}")]
    Invalid(String),
    /// `sub` absent or empty.
    #[error("User ID not found in token")]
    NoUserId,
    /// `X-Act-As-User-Id` from someone who is not an admin.
    #[error("Only admin users can impersonate other users")]
    ImpersonationForbidden,
    /// The JWKS could not be fetched and the token's key is not cached (a retry helps).
    #[error("Signing keys are unavailable; retry later")]
    KeysUnavailable {
        /// Seconds until the next fetch is allowed (`Retry-After`).
        retry_after_secs: u64,
    },
}

/// The original's answers: 403 for impersonation, 503 with `Retry-After` when the signing
/// keys cannot be fetched, else 401 with `WWW-Authenticate: Bearer`; body `{"detail": …}`.
impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let status = match self {
            AuthError::ImpersonationForbidden => StatusCode::FORBIDDEN,
            AuthError::KeysUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        };
        let mut response = (status, Json(Detail::new(self.to_string()))).into_response();
        let headers = response.headers_mut();
        match self {
            AuthError::ImpersonationForbidden => {}
            AuthError::KeysUnavailable { retry_after_secs } => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_secs.max(1)),
                );
            }
            _ => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
        }
        response
    }
}

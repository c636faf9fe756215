//! `Authenticator`: verifies a request's bearer token and applies impersonation.

use std::collections::HashSet;

use axum::http::HeaderMap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::Deserialize;

use super::jwks::{self, JwksCache};
use super::verified::VerifiedTokens;
use super::{ACT_AS_HEADER, AUDIENCE, AuthError, Caller, Config};

/// Asymmetric algorithms accepted from the JWKS (the key's own `alg` narrows further).
const ASYMMETRIC: &[Algorithm] = &[
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::EdDSA,
];

#[derive(Debug, Clone, Deserialize)]
pub(super) struct Claims {
    #[serde(default)]
    pub(super) sub: Option<String>,
    #[serde(default)]
    pub(super) role: Option<String>,
    #[serde(default)]
    pub(super) iat: Option<f64>,
    /// Kept loose (jsonwebtoken judges its format); read by the verified-token cache.
    #[serde(default)]
    pub(super) exp: Option<serde_json::Value>,
}

/// Verifies bearer tokens with the configured key and/or key set; built once at start-up.
pub struct Authenticator {
    hmac: Option<DecodingKey>,
    validation: Validation,
    jwks: Option<JwksCache>,
    verified: VerifiedTokens,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("algorithms", &self.validation.algorithms)
            .field("jwks", &self.jwks)
            .finish_non_exhaustive()
    }
}

/// Which key verifies a token, chosen by its header alone.
enum KeyRoute {
    /// The configured HMAC secret.
    Hmac,
    /// The JWKS key named `kid`, for asymmetric `alg`.
    Jwks { kid: String, alg: Algorithm },
}

impl Authenticator {
    /// A verifier for the settings' key, algorithm and key set (validated settings
    /// required); the key set is fetched later (`prefetch_keys` or the first token).
    pub fn new(config: &Config) -> Self {
        let mut validation = Validation::new(config.algorithm());
        validation.set_audience(&[AUDIENCE]);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.required_spec_claims = if config.require_exp {
            HashSet::from(["exp".to_owned(), "aud".to_owned()])
        } else {
            HashSet::from(["aud".to_owned()])
        };
        let jwks = config.jwks_url().map(|url| JwksCache::new(url, config));
        Authenticator {
            hmac: config.key().map(|k| DecodingKey::from_secret(k.as_bytes())),
            validation,
            jwks,
            verified: VerifiedTokens::default(),
        }
    }

    /// Loads the key set at start-up when one is configured; a failure is only logged.
    pub async fn prefetch_keys(&self) {
        if let Some(jwks) = &self.jwks {
            jwks.prefetch().await;
        }
    }

    /// The caller behind the request's headers, impersonation applied. An asymmetric
    /// token whose `kid` is not cached (or whose keys are old) fetches the key set, at
    /// most once per `jwks_min_refresh`; held keys are served while a refresh runs.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, AuthError> {
        let token = bearer_token(headers).ok_or(AuthError::Missing)?;
        if let Some(claims) = self.verified.get(token, now()) {
            return self.caller(headers, claims);
        }
        let claims = match self.route(token)? {
            KeyRoute::Hmac => self.verify_hmac(token)?,
            KeyRoute::Jwks { kid, alg } => {
                let jwks = self
                    .jwks
                    .as_ref()
                    .expect("routed to JWKS only when configured");
                let key = jwks.key(&kid).await?;
                self.verify_jwks(token, &key, alg)?
            }
        };
        self.caller(headers, claims)
    }

    /// Picks the key kind from the token's header: HMAC only with our secret, asymmetric
    /// only from the key set.
    fn route(&self, token: &str) -> Result<KeyRoute, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(reason(e.kind())))?;
        let not_allowed = || AuthError::Invalid(reason(&ErrorKind::InvalidAlgorithm));
        if header.alg.family() == AlgorithmFamily::Hmac {
            return self
                .hmac
                .as_ref()
                .map(|_| KeyRoute::Hmac)
                .ok_or_else(not_allowed);
        }
        if self.jwks.is_none() || !ASYMMETRIC.contains(&header.alg) {
            return Err(not_allowed());
        }
        let kid = header
            .kid
            .filter(|k| !k.is_empty())
            .ok_or_else(|| AuthError::Invalid("Token has no key id (kid)".to_owned()))?;
        Ok(KeyRoute::Jwks {
            kid,
            alg: header.alg,
        })
    }

    fn verify_hmac(&self, token: &str) -> Result<Claims, AuthError> {
        let key = self.hmac.as_ref().expect("routed to HMAC only with a key");
        let claims = self.verify(token, key, &self.validation)?;
        self.verified.insert(token, &claims);
        Ok(claims)
    }

    fn verify_jwks(
        &self,
        token: &str,
        key: &jwks::JwksKey,
        alg: Algorithm,
    ) -> Result<Claims, AuthError> {
        if !key.accepts(alg) {
            return Err(AuthError::Invalid(reason(&ErrorKind::InvalidAlgorithm)));
        }
        let mut validation = self.validation.clone();
        validation.algorithms = vec![alg];
        self.verify(token, &key.key, &validation)
    }

    fn caller(&self, headers: &HeaderMap, claims: Claims) -> Result<Caller, AuthError> {
        let user_id = claims
            .sub
            .filter(|s| !s.is_empty())
            .ok_or(AuthError::NoUserId)?;
        let is_admin = claims.role.as_deref() == Some("admin");
        let act_as = headers
            .get(ACT_AS_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty());
        match act_as {
            None => Ok(Caller { user_id, is_admin }),
            Some(_) if !is_admin => Err(AuthError::ImpersonationForbidden),
            Some(target) => {
                tracing::info!(
                    admin.id = %user_id,
                    target.id = %target,
                    "admin impersonation: acting as another user"
                );
                Ok(Caller {
                    user_id: target.to_owned(),
                    is_admin,
                })
            }
        }
    }

    fn verify(
        &self,
        token: &str,
        key: &DecodingKey,
        validation: &Validation,
    ) -> Result<Claims, AuthError> {
        let data =
            jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                kind => AuthError::Invalid(reason(kind)),
            })?;
        // jsonwebtoken does not look at `iat`; PyJWT refuses one in the future.
        if data.claims.iat.is_some_and(|iat| iat > now()) {
            return Err(AuthError::Invalid(
                "The token is not yet valid (iat)".to_owned(),
            ));
        }
        Ok(data.claims)
    }
}

/// Unix seconds, as jsonwebtoken compares `exp` and `nbf`.
fn now() -> f64 {
    jsonwebtoken::get_current_timestamp() as f64
}

/// PyJWT's wording for each failure, which the original put after "Invalid token: ".
fn reason(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::InvalidSignature => "Signature verification failed".to_owned(),
        ErrorKind::InvalidAudience => "Audience doesn't match".to_owned(),
        ErrorKind::MissingRequiredClaim(claim) => {
            format!("Token is missing the \"{claim}\" claim")
        }
        ErrorKind::ImmatureSignature => "The token is not yet valid (nbf)".to_owned(),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "The specified alg value is not allowed".to_owned()
        }
        ErrorKind::InvalidToken => "Not enough segments".to_owned(),
        ErrorKind::Base64(_) | ErrorKind::Utf8(_) => "Invalid token encoding".to_owned(),
        ErrorKind::Json(_) => "Invalid header or payload".to_owned(),
        _ => "Token verification failed".to_owned(),
    }
}

/// The token of `Authorization: Bearer <token>`; the scheme word is case-insensitive.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_needs_a_token() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("authorization", HeaderValue::from_static(v));
            h
        };

        assert_eq!(bearer_token(&with("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&with("bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&with("Bearer ")), None);
        assert_eq!(bearer_token(&with("Basic abc")), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }
}

//! Minting tokens the service accepts: `analytics-service token` and tests.

use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header};
use serde::Serialize;

use super::{AUDIENCE, Config};

#[derive(Serialize)]
struct MintedClaims<'a> {
    sub: &'a str,
    aud: &'a str,
    role: &'a str,
    iat: u64,
    exp: u64,
}

/// Signs a token the service accepts, for `analytics-service token` and tests; needs the
/// HMAC key (`Config::key`), which a JWKS-only set-up does not have.
pub fn mint_token(config: &Config, user_id: &str, admin: bool, ttl: Duration) -> String {
    let iat = jsonwebtoken::get_current_timestamp();
    let claims = MintedClaims {
        sub: user_id,
        aud: AUDIENCE,
        role: if admin { "admin" } else { "authenticated" },
        iat,
        exp: iat + ttl.as_secs(),
    };
    jsonwebtoken::encode(
        &Header::new(config.algorithm()),
        &claims,
        &EncodingKey::from_secret(
            config
                .key()
                .expect("mint_token needs the HMAC key: callers check `Config::key` first")
                .as_bytes(),
        ),
    )
    .expect("HMAC signing of serializable claims cannot fail")
}

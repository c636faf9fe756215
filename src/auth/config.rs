//! JWT verification settings (`[auth]`), as `autogpt_libs.auth` reads them.

use std::time::Duration;

use jsonwebtoken::Algorithm;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_with::{DurationMilliSeconds, DurationSeconds, serde_as};

/// The development key shipped in `config/local.toml`; refused outside `APP_ENV=local`.
pub const LOCAL_DEV_JWT_KEY: &str = "LOCAL-DEVELOPMENT-ONLY-insecure-jwt-key-do-not-deploy";

/// Shortest HMAC key accepted outside the local profile (RFC 7518 §3.2 for HS256).
const MIN_KEY_BYTES: usize = 32;

/// JWT verification, as `autogpt_libs.auth`.
#[serde_as]
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// HMAC key (`JWT_VERIFY_KEY`, else `SUPABASE_JWT_SECRET`).
    #[serde(default)]
    pub jwt_verify_key: Option<SecretString>,
    /// The one accepted HMAC algorithm (`JWT_SIGN_ALGORITHM`).
    pub jwt_sign_algorithm: String,
    /// Refuse tokens without `exp` (`JWT_REQUIRE_EXP`).
    pub require_exp: bool,
    /// Key set for asymmetric tokens (`JWT_JWKS_URL`); unset or empty: HMAC only.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Timeout of one key-set fetch.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    #[serde(rename = "jwks_timeout_ms")]
    pub jwks_timeout: Duration,
    /// Least time between two fetches caused by tokens (unknown `kid`, old keys).
    #[serde_as(as = "DurationSeconds<u64>")]
    #[serde(rename = "jwks_min_refresh_secs")]
    pub jwks_min_refresh: Duration,
    /// Keys older than this are fetched again on the next asymmetric token.
    #[serde_as(as = "DurationSeconds<u64>")]
    #[serde(rename = "jwks_max_age_secs")]
    pub jwks_max_age: Duration,
    /// Largest key-set answer read; a larger one is a failed fetch.
    pub jwks_max_bytes: usize,
}

impl Config {
    /// HMAC tokens signed with `key` (HS256, `exp` required), no key set.
    pub fn hmac(key: &str) -> Self {
        Config {
            jwt_verify_key: Some(SecretString::from(key.to_owned())),
            jwt_sign_algorithm: "HS256".to_owned(),
            require_exp: true,
            jwks_url: None,
            jwks_timeout: Duration::from_secs(5),
            jwks_min_refresh: Duration::from_secs(60),
            jwks_max_age: Duration::from_secs(600),
            jwks_max_bytes: 1024 * 1024,
        }
    }

    /// The verification key with surrounding whitespace trimmed, if one is set.
    pub fn key(&self) -> Option<&str> {
        self.jwt_verify_key
            .as_ref()
            .map(|k| k.expose_secret().trim())
            .filter(|k| !k.is_empty())
    }

    /// The JWKS URL, trimmed, if one is set.
    pub fn jwks_url(&self) -> Option<&str> {
        self.jwks_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
    }

    /// The configured HMAC algorithm (`validate` has checked the name).
    pub fn algorithm(&self) -> Algorithm {
        match self.jwt_sign_algorithm.as_str() {
            "HS384" => Algorithm::HS384,
            "HS512" => Algorithm::HS512,
            _ => Algorithm::HS256,
        }
    }

    /// Checks keys, URL and algorithm. `allow_dev_key`: the local profile, where the
    /// shipped development key and short keys are accepted.
    pub fn validate(&self, allow_dev_key: bool) -> Result<(), String> {
        if let Some(url) = self.jwks_url() {
            check_jwks_url(url)?;
            if self.jwks_timeout.is_zero() {
                return Err("auth.jwks_timeout_ms must be at least 1".to_owned());
            }
            if self.jwks_max_bytes == 0 {
                return Err("auth.jwks_max_bytes must be at least 1".to_owned());
            }
        }
        let key = match (self.key(), self.jwks_url()) {
            (Some(key), _) => Some(key),
            (None, Some(_)) => None,
            (None, None) => {
                return Err(
                    "no JWT key: set JWT_VERIFY_KEY (or SUPABASE_JWT_SECRET) or JWT_JWKS_URL"
                        .to_owned(),
                );
            }
        };
        if let Some(key) = key.filter(|_| !allow_dev_key) {
            if key == LOCAL_DEV_JWT_KEY {
                return Err(
                    "the local development JWT key is refused outside APP_ENV=local: set JWT_VERIFY_KEY"
                        .to_owned(),
                );
            }
            if key.len() < MIN_KEY_BYTES {
                return Err("JWT_VERIFY_KEY is shorter than 32 bytes".to_owned());
            }
        }
        if !matches!(
            self.jwt_sign_algorithm.as_str(),
            "HS256" | "HS384" | "HS512"
        ) {
            return Err("JWT_SIGN_ALGORITHM must be HS256, HS384 or HS512".to_owned());
        }
        Ok(())
    }
}

/// An `https://` URL, or `http://` to a loopback host (tests, sidecars).
fn check_jwks_url(url: &str) -> Result<(), String> {
    let refused = || "JWT_JWKS_URL must be an https:// URL (http:// only for localhost)".to_owned();
    let parsed = url::Url::parse(url).map_err(|_| refused())?;
    let loopback = match parsed.host() {
        Some(url::Host::Domain(name)) => name == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match parsed.scheme() {
        "https" if parsed.host().is_some() => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(refused()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_local_the_development_key_and_short_keys_are_refused() {
        let dev = Config::hmac(LOCAL_DEV_JWT_KEY);
        let short = Config::hmac("short");

        assert!(dev.validate(true).is_ok());
        assert!(
            dev.validate(false)
                .unwrap_err()
                .contains("development JWT key")
        );
        assert!(
            short
                .validate(false)
                .unwrap_err()
                .contains("shorter than 32 bytes")
        );
    }

    #[test]
    fn a_jwks_url_must_be_https_except_on_loopback() {
        let with_url = |url: &str| Config {
            jwt_verify_key: None,
            jwks_url: Some(url.to_owned()),
            ..Config::hmac("")
        };

        assert!(
            with_url("http://keys.example.com/j")
                .validate(false)
                .is_err()
        );
        assert!(with_url("not a url").validate(false).is_err());
        assert!(with_url("http://127.0.0.1:9/j").validate(false).is_ok());
        assert!(
            with_url("https://keys.example.com/j")
                .validate(false)
                .is_ok()
        );
    }

    #[test]
    fn only_hmac_algorithms_are_accepted() {
        let none = Config {
            jwt_sign_algorithm: "none".to_owned(),
            ..Config::hmac(LOCAL_DEV_JWT_KEY)
        };

        assert!(none.validate(true).is_err());
    }
}

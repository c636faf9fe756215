//! The JWKS key cache: public keys for asymmetric tokens (ES256, RS256, EdDSA, …), fetched
//! from `JWT_JWKS_URL` with a timeout, kept by `kid`, refreshed when a token names a `kid`
//! we do not know (at most once per `min_refresh`) or when the keys are older than
//! `max_age`. Old keys are still served while one background fetch replaces them: only a
//! request with no key for its `kid` waits on the key server. Symmetric (`oct`) keys in the set are ignored: a JWKS is public, so an HMAC
//! key from it would let anyone sign. An answer is read up to `jwks_max_bytes`; a larger
//! one is a failed fetch, never buffered whole.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde::Deserialize;

use super::AuthError;

/// One verification key of the set.
#[derive(Clone)]
pub struct JwksKey {
    /// The public key.
    pub key: DecodingKey,
    /// RSA, EC or Ed; a token's `alg` must be of this family.
    pub family: AlgorithmFamily,
    /// The JWK's `alg`, when it names one: then a token's `alg` must be exactly this.
    pub algorithm: Option<Algorithm>,
}

impl JwksKey {
    /// True when a token signed with `alg` may be verified with this key.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        alg.family() == self.family && self.algorithm.is_none_or(|a| a == alg)
    }

    fn from_jwk(jwk: &Jwk) -> Option<(String, JwksKey)> {
        let kid = jwk.common.key_id.clone()?;
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            return None;
        }
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
            AlgorithmParameters::EllipticCurve(_) => AlgorithmFamily::Ec,
            AlgorithmParameters::OctetKeyPair(_) => AlgorithmFamily::Ed,
            // `oct` (a shared secret, public here) and unknown key types are never used.
            _ => return None,
        };
        let algorithm = match jwk.common.key_algorithm {
            Some(alg) => Some(Algorithm::try_from(alg).ok()?),
            None => None,
        };
        let key = DecodingKey::from_jwk(jwk).ok()?;
        Some((
            kid,
            JwksKey {
                key,
                family,
                algorithm,
            },
        ))
    }
}

/// Why a key-set fetch failed (logged; the URL is left out).
#[derive(Debug, thiserror::Error)]
enum FetchError {
    /// Connect, status or read failure.
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    /// The answer is larger than `auth.jwks_max_bytes`.
    #[error("the key set answer is larger than {limit} bytes (auth.jwks_max_bytes)")]
    TooLarge { limit: usize },
    /// Not a JSON key set.
    #[error("the key set is not a JSON object with \"keys\": {0}")]
    Json(#[from] serde_json::Error),
}

/// The set as served; keys are parsed one by one so one odd key does not hide the rest.
#[derive(Deserialize)]
struct RawKeySet {
    keys: Vec<serde_json::Value>,
}

#[derive(Default)]
struct Cached {
    keys: Arc<HashMap<String, JwksKey>>,
    fetched_at: Option<Instant>,
    last_fetch_failed: bool,
}

/// Where the keys come from, and the keys we hold; cheap to clone (one shared set).
#[derive(Clone)]
pub struct JwksCache {
    keys: Arc<KeySet>,
}

struct KeySet {
    url: String,
    client: reqwest::Client,
    max_bytes: usize,
    min_refresh: Duration,
    max_age: Duration,
    cached: RwLock<Cached>,
    // Held while fetching, so concurrent requests with the same unknown `kid` cause one
    // fetch; holds the time of the last fetch a token caused.
    refresh_gate: tokio::sync::Mutex<Option<Instant>>,
    /// A background refresh of old keys is running: no second one starts.
    refreshing: AtomicBool,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache")
            .field("min_refresh", &self.keys.min_refresh)
            .field("max_age", &self.keys.max_age)
            .finish_non_exhaustive()
    }
}

impl JwksCache {
    /// A cache for `url` with the `jwks_*` limits of `config`; fetches nothing yet.
    pub fn new(url: &str, config: &super::Config) -> Self {
        let client = reqwest::Client::builder()
            .timeout(config.jwks_timeout)
            .connect_timeout(config.jwks_timeout)
            .user_agent(concat!("analytics-service/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a reqwest client with a timeout always builds");
        let keys = KeySet {
            url: url.to_owned(),
            client,
            max_bytes: config.jwks_max_bytes,
            min_refresh: config.jwks_min_refresh,
            max_age: config.jwks_max_age,
            cached: RwLock::new(Cached::default()),
            refresh_gate: tokio::sync::Mutex::new(None),
            refreshing: AtomicBool::new(false),
        };
        JwksCache {
            keys: Arc::new(keys),
        }
    }

    /// The key for `kid` if we hold it; never fetches.
    pub fn cached(&self, kid: &str) -> Option<JwksKey> {
        self.keys.cached(kid)
    }

    /// The key for `kid`. A key we hold is answered at once, old or not (old keys start a
    /// background refresh); an unknown `kid` waits for a fetch, when the last fetch a token
    /// caused was at least `min_refresh` ago.
    pub async fn key(&self, kid: &str) -> Result<JwksKey, AuthError> {
        match self.keys.cached(kid) {
            Some(key) => {
                if !self.keys.is_fresh() {
                    self.refresh_in_background();
                }
                Ok(key)
            }
            None => self.keys.fetch_for(kid).await,
        }
    }

    /// Fetches the set now (start-up); a failure is logged and the next token retries.
    pub async fn prefetch(&self) {
        self.keys.refresh().await;
    }

    /// Starts one refresh of old keys, unless one is running.
    fn refresh_in_background(&self) {
        if self.keys.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let keys = Arc::clone(&self.keys);
        tokio::spawn(async move {
            // Cleared on drop, so a refresh that panics does not stop all later ones.
            let _running = RefreshRunning(&keys.refreshing);
            keys.refresh_if_old().await;
        });
    }
}

/// Clears the "refreshing" flag when the background refresh ends, however it ends.
struct RefreshRunning<'a>(&'a AtomicBool);

impl Drop for RefreshRunning<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl KeySet {
    fn cached(&self, kid: &str) -> Option<JwksKey> {
        self.cached
            .read()
            .expect("the key cache lock is never poisoned")
            .keys
            .get(kid)
            .cloned()
    }

    fn is_fresh(&self) -> bool {
        let cached = self
            .cached
            .read()
            .expect("the key cache lock is never poisoned");
        cached
            .fetched_at
            .is_some_and(|t| t.elapsed() < self.max_age)
    }

    /// The background refresh: at most one fetch per `min_refresh`, also while the key
    /// server fails, so requests with old keys do not hammer it.
    async fn refresh_if_old(&self) {
        let mut last_refresh = self.refresh_gate.lock().await;
        if self.is_fresh() || last_refresh.is_some_and(|t| t.elapsed() < self.min_refresh) {
            return;
        }
        *last_refresh = Some(Instant::now());
        self.refresh().await;
    }

    /// A key we do not hold: fetches the set (once for concurrent callers, at most once
    /// per `min_refresh`) and looks again.
    async fn fetch_for(&self, kid: &str) -> Result<JwksKey, AuthError> {
        let mut last_refresh = self.refresh_gate.lock().await;
        if let Some(key) = self.cached(kid) {
            return Ok(key);
        }
        if last_refresh.is_none_or(|t| t.elapsed() >= self.min_refresh) {
            *last_refresh = Some(Instant::now());
            self.refresh().await;
        }
        let next_fetch_in = last_refresh.map_or(Duration::ZERO, |t| {
            self.min_refresh.saturating_sub(t.elapsed())
        });
        drop(last_refresh);
        self.cached(kid)
            .ok_or_else(|| self.unknown(kid, next_fetch_in))
    }

    fn unknown(&self, kid: &str, next_fetch_in: Duration) -> AuthError {
        let failed = self
            .cached
            .read()
            .expect("the key cache lock is never poisoned")
            .last_fetch_failed;
        if failed {
            AuthError::KeysUnavailable {
                retry_after_secs: next_fetch_in.as_secs_f64().ceil() as u64,
            }
        } else {
            AuthError::Invalid(format!(
                "Unable to find a signing key that matches: {kid:?}"
            ))
        }
    }

    /// Fetches and replaces the set; on failure the keys we hold stay in use.
    async fn refresh(&self) {
        let fetched = self.fetch().await;
        let mut cached = self
            .cached
            .write()
            .expect("the key cache lock is never poisoned");
        match fetched {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), "JWKS signing keys loaded");
                *cached = Cached {
                    keys: Arc::new(keys),
                    fetched_at: Some(Instant::now()),
                    last_fetch_failed: false,
                };
            }
            Err(err) => {
                tracing::warn!(error = %err, "fetching the JWKS signing keys failed");
                cached.last_fetch_failed = true;
            }
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, JwksKey>, FetchError> {
        let mut response = self
            .client
            .get(&self.url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| e.without_url())?;
        let too_large = FetchError::TooLarge {
            limit: self.max_bytes,
        };
        // Refused before reading when the server says so; else counted chunk by chunk.
        if response
            .content_length()
            .is_some_and(|len| len > self.max_bytes as u64)
        {
            return Err(too_large);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.without_url())? {
            if body.len() + chunk.len() > self.max_bytes {
                return Err(too_large);
            }
            body.extend_from_slice(&chunk);
        }
        let raw: RawKeySet = serde_json::from_slice(&body)?;
        Ok(raw
            .keys
            .iter()
            .filter_map(|value| serde_json::from_value::<Jwk>(value.clone()).ok())
            .filter_map(|jwk| JwksKey::from_jwk(&jwk))
            .collect())
    }
}

//! HMAC tokens already verified, remembered until they expire.
//!
//! A signed-in browser sends the same token with every event; verifying it again (two
//! base64 decodes, the HMAC, two JSON parses) was the largest cost of the request path
//! after HTTP itself. Only HMAC tokens are kept: a key-set (JWKS) token must stop working
//! as soon as its key is rotated out, an HMAC secret does not change while we run.
//!
//! Entries are keyed by the token's SHA-256, not the token (which may be 64 KiB), and the
//! cache is bounded by the bytes its entries hold; when full it evicts one entry at a time,
//! so a flood of distinct tokens cannot empty it for the browsers that send theirs again.

use quick_cache::Weighter;
use quick_cache::sync::Cache;
use sha2::{Digest, Sha256};

use super::authenticator::Claims;

/// Most bytes the remembered entries may hold (claims, key and bookkeeping).
pub(super) const MAX_BYTES: u64 = 4 * 1024 * 1024;
/// What an entry costs beyond its claims' text: the digest, the tuple, the table slot.
const ENTRY_OVERHEAD: u64 = 128;
/// A typical entry (a short `sub`), for the cache's initial sizing only.
const TYPICAL_ENTRY: u64 = 192;

/// A verified token's claims and its `exp` (None: the token does not expire).
type Verified = (Claims, Option<f64>);

/// The key: the token's SHA-256.
type TokenDigest = [u8; 32];

/// Weighs an entry by the bytes it holds.
#[derive(Debug, Clone, Copy)]
struct ByBytes;

impl Weighter<TokenDigest, Verified> for ByBytes {
    fn weight(&self, _: &TokenDigest, (claims, _): &Verified) -> u64 {
        let text = claims.sub.as_ref().map_or(0, String::len)
            + claims.role.as_ref().map_or(0, String::len);
        ENTRY_OVERHEAD + text as u64
    }
}

/// Verified tokens and their claims.
pub(super) struct VerifiedTokens {
    entries: Cache<TokenDigest, Verified, ByBytes>,
}

impl Default for VerifiedTokens {
    fn default() -> Self {
        VerifiedTokens {
            entries: Cache::with_weighter((MAX_BYTES / TYPICAL_ENTRY) as usize, MAX_BYTES, ByBytes),
        }
    }
}

fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

impl VerifiedTokens {
    /// The claims of `token` if it was verified before and has not expired at `now` (Unix
    /// seconds). Expiry is the only check whose answer changes with time against a valid
    /// token (`nbf` and `iat` only become valid), so nothing else needs repeating.
    pub(super) fn get(&self, token: &str, now: f64) -> Option<Claims> {
        let (claims, exp) = self.entries.get(&digest(token))?;
        exp.is_none_or(|exp| now < exp).then_some(claims)
    }

    /// Remembers a token that has just passed full verification. One whose `exp` is there
    /// but not a number is not remembered: its expiry would be unknown.
    pub(super) fn insert(&self, token: &str, claims: &Claims) {
        let exp = match &claims.exp {
            None => None,
            Some(exp) => match exp.as_f64() {
                Some(exp) => Some(exp),
                None => return,
            },
        };
        self.entries.insert(digest(token), (claims.clone(), exp));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn claims(exp: Option<Value>) -> Claims {
        Claims {
            sub: Some("user-1".to_owned()),
            role: None,
            iat: None,
            exp,
        }
    }

    #[test]
    fn a_token_is_remembered_until_its_expiry() {
        let tokens = VerifiedTokens::default();
        tokens.insert("t", &claims(Some(Value::from(100))));

        assert_eq!(
            tokens.get("t", 99.0).and_then(|c| c.sub),
            Some("user-1".into())
        );
        assert!(tokens.get("t", 100.0).is_none(), "expired at exp");
        assert!(tokens.get("other", 50.0).is_none());
    }

    #[test]
    fn a_token_without_expiry_stays() {
        let tokens = VerifiedTokens::default();

        tokens.insert("forever", &claims(None));

        assert!(tokens.get("forever", f64::MAX).is_some());
    }

    #[test]
    fn many_large_tokens_stay_within_the_byte_bound_and_one_more_evicts_little() {
        let tokens = VerifiedTokens::default();
        let large = |i: usize| {
            let sub = format!("user-{i}-{}", "x".repeat(2048));
            let token = format!("header.{sub}.signature");
            let claims = Claims {
                sub: Some(sub),
                ..claims(None)
            };
            (token, claims)
        };
        for i in 0..5000 {
            let (token, claims) = large(i);
            tokens.insert(&token, &claims);
        }
        let before = tokens.entries.len();

        let (token, claims) = large(5000);
        tokens.insert(&token, &claims);

        let after = tokens.entries.len();
        eprintln!(
            "measured: 5001 tokens with 2 KiB subjects: {after} kept, {} of {MAX_BYTES} bytes",
            tokens.entries.weight()
        );
        assert!(tokens.entries.weight() <= MAX_BYTES);
        assert!(before > 1000, "{before}");
        assert!(
            after + 2 >= before,
            "{before} → {after}: one more evicts little"
        );
        assert!(tokens.get(&token, 0.0).is_some());
    }

    #[test]
    fn a_token_whose_expiry_is_not_a_number_is_not_remembered() {
        let tokens = VerifiedTokens::default();

        tokens.insert("t", &claims(Some(Value::from("tomorrow"))));

        assert!(tokens.get("t", 0.0).is_none());
    }
}

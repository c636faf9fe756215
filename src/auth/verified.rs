//! HMAC tokens already verified, remembered until they expire.
//!
//! A signed-in browser sends the same token with every event; verifying it again (two
//! base64 decodes, the HMAC, two JSON parses) was the largest cost of the request path
//! after HTTP itself. Only HMAC tokens are kept: a key-set (JWKS) token must stop working
//! as soon as its key is rotated out, an HMAC secret does not change while we run.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use super::Claims;

/// Most tokens remembered; when full, all are forgotten (verifying again is always correct).
const CAPACITY: usize = 4096;

/// A verified token's claims and its `exp` (None: the token does not expire).
type Verified = (Claims, Option<f64>);

/// Verified tokens and their claims.
#[derive(Default)]
pub(super) struct VerifiedTokens {
    entries: Mutex<HashMap<Box<str>, Verified>>,
}

impl VerifiedTokens {
    /// The claims of `token` if it was verified before and has not expired at `now` (Unix
    /// seconds). Expiry is the only check whose answer changes with time against a valid
    /// token (`nbf` and `iat` only become valid), so nothing else needs repeating.
    pub(super) fn get(&self, token: &str, now: f64) -> Option<Claims> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let (claims, exp) = entries.get(token)?;
        exp.is_none_or(|exp| now < exp).then(|| claims.clone())
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
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= CAPACITY {
            entries.clear();
        }
        entries.insert(token.into(), (claims.clone(), exp));
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
    fn a_token_without_expiry_stays_and_a_full_cache_starts_over() {
        let tokens = VerifiedTokens::default();
        tokens.insert("forever", &claims(None));
        assert!(tokens.get("forever", f64::MAX).is_some());

        for i in 0..CAPACITY {
            tokens.insert(&format!("t{i}"), &claims(None));
        }

        assert!(tokens.get("forever", 0.0).is_none(), "cleared when full");
        assert!(tokens.get(&format!("t{}", CAPACITY - 1), 0.0).is_some());
    }

    #[test]
    fn a_token_whose_expiry_is_not_a_number_is_not_remembered() {
        let tokens = VerifiedTokens::default();

        tokens.insert("t", &claims(Some(Value::from("tomorrow"))));

        assert!(tokens.get("t", 0.0).is_none());
    }
}

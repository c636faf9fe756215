//! JWT header and claims parsing: any bytes as a bearer token, and any header/claims JSON
//! signed with the service's own HMAC key (so parsing runs past the signature check).
//! Nothing may panic; an accepted token names a user.
#![no_main]

use std::pin::pin;
use std::sync::LazyLock;
use std::task::{Context, Poll, Waker};

use analytics_service::auth::{self, Authenticator};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, HeaderValue, header};
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;

const KEY: &str = "fuzz-only-hmac-key-0123456789abcdef";

// HMAC only: with no key set to fetch, verification never waits, so one poll decides.
static AUTHENTICATOR: LazyLock<Authenticator> =
    LazyLock::new(|| Authenticator::new(&auth::Config::hmac(KEY)));

static SIGNING_KEY: LazyLock<EncodingKey> = LazyLock::new(|| EncodingKey::from_secret(KEY.as_bytes()));

fn check(token: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(&[b"Bearer ".as_slice(), token].concat()) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::AUTHORIZATION, value);
    let mut verdict = pin!(AUTHENTICATOR.authenticate(&headers));
    let Poll::Ready(verdict) = verdict.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    else {
        panic!("HMAC verification waited on something");
    };
    match verdict {
        Ok(caller) => assert!(!caller.user_id.is_empty(), "accepted without a user id"),
        Err(err) => assert!(!err.to_string().is_empty()),
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = jsonwebtoken::decode_header(data);
    check(data);
    let (header_json, claims_json) = match data.iter().position(|b| *b == 0xff) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (br#"{"alg":"HS256","typ":"JWT"}"#.as_slice(), data),
    };
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header_json),
        URL_SAFE_NO_PAD.encode(claims_json)
    );
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &SIGNING_KEY, Algorithm::HS256)
        .expect("HMAC signing cannot fail");
    check(format!("{message}.{signature}").as_bytes());
});

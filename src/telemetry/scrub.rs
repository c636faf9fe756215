//! What never leaves the process: credentials in headers, tokens, keys and passwords in any
//! text of an event, log or breadcrumb; and the list of known noise that is not reported.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;
use sentry::protocol::{Breadcrumb, Event, Log, Request, Transaction, Value};

/// What a removed value is replaced with (Sentry's own marker).
pub const FILTERED: &str = "[Filtered]";

/// Known noise: an error event whose message or exception contains one of these
/// (case-insensitive) is dropped. Add to the list; each entry says why it is noise.
pub const NOISE: &[&str] = &[
    // A retried insert of a row that is already stored: the client's data is safe.
    "duplicate key value violates unique constraint",
    "unique constraint failed",
    // Credential mistakes are the client's (401/403), never ours to fix.
    "token has expired",
    "invalid token",
    "authorization header is missing",
    "user id not found in token",
    "only admin users can impersonate",
];

/// Keys whose values are dropped wherever they appear (headers, fields, extra data);
/// compared lower-case with `-` read as `_`.
const SENSITIVE_KEYS: &[&str] = &[
    "authorization",
    "proxy_authorization",
    "cookie",
    "set_cookie",
    "x_api_key",
    "api_key",
    "alerts_api_key",
    "password",
    "passwd",
    "secret",
    "token",
    "access_token",
    "refresh_token",
    "bot_token",
    "jwt",
    "jwt_verify_key",
    "database_url",
];

/// Patterns of secrets inside free text, with their replacement.
static PATTERNS: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    [
        // A JWT: base64url JSON header (`{"` encodes as `eyJ`), payload and signature.
        (
            r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*",
            FILTERED,
        ),
        // A Discord bot token: id, timestamp and HMAC parts in base64url.
        (
            r"[A-Za-z0-9_-]{23,28}\.[A-Za-z0-9_-]{6,7}\.[A-Za-z0-9_-]{27,}",
            FILTERED,
        ),
        // The password in any URL's user info (`postgres://user:pw@host`).
        (
            r"([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):[^@/\s]*@",
            "${1}:[Filtered]@",
        ),
        // Credentials after an auth scheme word.
        (
            r"(?i)\b(bearer|bot|basic)\s+[A-Za-z0-9._~+/=-]{8,}",
            "${1} [Filtered]",
        ),
        // `password=…`, `token=…` in query strings and connection strings.
        (
            r"(?i)\b(password|passwd|pwd|secret|token|api_?key|sslpassword)=[^&\s]+",
            "${1}=[Filtered]",
        ),
    ]
    .into_iter()
    .map(|(pattern, replacement)| {
        (
            Regex::new(pattern).expect("the scrub patterns are valid regexes"),
            replacement,
        )
    })
    .collect()
});

/// Scrubs Sentry payloads: the `before_send`, `before_send_log` and `before_breadcrumb`
/// hooks. Besides the patterns, the configured secrets are removed wherever they appear.
#[derive(Debug, Clone, Default)]
pub struct Scrubber {
    secrets: Vec<String>,
}

impl Scrubber {
    /// Knows these secret values; short ones (under 8 bytes) are left to the patterns,
    /// since replacing them would garble ordinary text.
    pub fn with_secrets(secrets: impl IntoIterator<Item = String>) -> Self {
        let mut secrets: Vec<String> = secrets
            .into_iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| s.len() >= 8)
            .collect();
        // Longest first, so a secret containing another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Scrubber { secrets }
    }

    /// `before_send`: drops noise, then removes credentials from every part of the event.
    pub fn event(&self, mut event: Event<'static>) -> Option<Event<'static>> {
        if is_noise(&event) {
            return None;
        }
        if let Some(request) = event.request.as_mut() {
            strip_request(request);
        }
        self.rebuilt(&event)
    }

    /// The transport's stand-in for the `before_send_transaction` hook sentry 0.49 lacks:
    /// removes credentials from the request, tags, extra data and spans.
    pub fn transaction(
        &self,
        mut transaction: Transaction<'static>,
    ) -> Option<Transaction<'static>> {
        if let Some(request) = transaction.request.as_mut() {
            strip_request(request);
        }
        self.rebuilt(&transaction)
    }

    /// `payload` with every part scrubbed, or `None` (dropped rather than sent unscrubbed)
    /// when it cannot be rebuilt.
    fn rebuilt<T>(&self, payload: &T) -> Option<T>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
    {
        let mut tree = serde_json::to_value(payload).ok()?;
        self.value(None, &mut tree);
        serde_json::from_value(tree).ok()
    }

    /// `before_send_log`: removes credentials from the body and attributes.
    pub fn log(&self, mut log: Log) -> Option<Log> {
        log.body = self.text(&log.body).into_owned();
        for (key, attribute) in log.attributes.iter_mut() {
            self.value(Some(key), &mut attribute.0);
        }
        Some(log)
    }

    /// `before_breadcrumb`: removes credentials from the message and data.
    pub fn breadcrumb(&self, mut crumb: Breadcrumb) -> Option<Breadcrumb> {
        crumb.message = crumb.message.map(|m| self.text(&m).into_owned());
        for (key, value) in crumb.data.iter_mut() {
            self.value(Some(key), value);
        }
        Some(crumb)
    }

    /// Free text with every known secret and secret-looking token replaced.
    pub fn text<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let mut out = Cow::Borrowed(text);
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), FILTERED));
            }
        }
        for (pattern, replacement) in PATTERNS.iter() {
            if let Cow::Owned(replaced) = pattern.replace_all(&out, *replacement) {
                out = Cow::Owned(replaced);
            }
        }
        out
    }

    fn value(&self, key: Option<&str>, value: &mut Value) {
        if key.is_some_and(is_sensitive_key) && !value.is_null() {
            *value = Value::String(FILTERED.to_owned());
            return;
        }
        match value {
            Value::String(text) => {
                if let Cow::Owned(scrubbed) = self.text(text) {
                    *text = scrubbed;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|item| self.value(None, item)),
            Value::Object(map) => {
                for (key, item) in map.iter_mut() {
                    self.value(Some(key), item);
                }
            }
            _ => {}
        }
    }
}

/// Bodies, cookies and query strings are never sent, whatever they hold: a query may carry
/// a token (`?token=eyJ…`) in a shape no pattern knows.
fn strip_request(request: &mut Request) {
    request.data = None;
    request.cookies = None;
    request.query_string = None;
    if let Some(url) = request.url.as_mut() {
        url.set_query(None);
    }
}

fn is_sensitive_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase().replace('-', "_");
    SENSITIVE_KEYS.contains(&key.as_str())
}

fn is_noise(event: &Event<'_>) -> bool {
    let texts = event
        .message
        .iter()
        .map(|m| m.as_str())
        .chain(event.logentry.iter().map(|l| l.message.as_str()))
        .chain(
            event
                .exception
                .values
                .iter()
                .filter_map(|e| e.value.as_deref()),
        );
    texts.into_iter().any(|text| {
        let text = text.to_lowercase();
        NOISE.iter().any(|noise| text.contains(noise))
    })
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;
    use sentry::protocol::{Exception, Request};

    use super::*;
    use crate::telemetry::{Config, client_options};

    const BOT_TOKEN: &str =
        "MTA5ODc2NTQzMjEwOTg3NjU0Mw.GhIjKl.abcdefghijklmnopqrstuvwxyz0123456789";
    const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEifQ.c2lnbmF0dXJlLWJ5dGVz";
    const DB_PASSWORD: &str = "hunter2-db-password";
    const API_KEY: &str = "alerts-api-key-0123456789";

    /// Sentry on (a DSN that is never reached).
    fn config() -> Config {
        let mut config = Config::for_tests();
        config.sentry.dsn = SecretString::from("https://public@sentry.invalid/1".to_owned());
        config
    }

    /// Knows the secrets the service passes in (see `Settings::secrets`).
    fn scrubber() -> Scrubber {
        Scrubber::with_secrets([BOT_TOKEN, API_KEY, DB_PASSWORD].map(str::to_owned))
    }

    fn capture(f: impl FnOnce()) -> Vec<Event<'static>> {
        let options = client_options(&config(), scrubber()).expect("a DSN is set");
        sentry::test::with_captured_events_options(f, options)
    }

    #[test]
    fn credentials_in_headers_and_text_never_reach_sentry() {
        let request = Request {
            headers: [
                ("Authorization", format!("Bearer {JWT}")),
                ("Cookie", "session=abc123secretcookie".to_owned()),
                ("X-API-Key", API_KEY.to_owned()),
                ("User-Agent", "curl/8".to_owned()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
            cookies: Some("session=abc123secretcookie".to_owned()),
            data: Some(r#"{"metric_name": "m"}"#.to_owned()),
            ..Default::default()
        };
        let message = format!(
            "connect to postgres://app:{DB_PASSWORD}@db/x failed; token {JWT}; bot {BOT_TOKEN}"
        );

        let events = capture(|| {
            sentry::capture_event(Event {
                message: Some(message),
                request: Some(request),
                ..Default::default()
            });
        });

        assert_eq!(events.len(), 1);
        let sent = serde_json::to_string(&events[0]).unwrap();
        for secret in [JWT, BOT_TOKEN, DB_PASSWORD, API_KEY, "abc123secretcookie"] {
            assert!(!sent.contains(secret), "{secret} leaked: {sent}");
        }
        let request = events[0].request.as_ref().unwrap();
        assert_eq!(request.headers["Authorization"], FILTERED);
        assert_eq!(request.headers["User-Agent"], "curl/8");
        assert_eq!(request.data, None);
        assert!(sent.contains("postgres://app:[Filtered]@db/x"), "{sent}");
    }

    #[test]
    fn secrets_in_an_exception_chain_are_removed_and_the_chain_kept() {
        let err = std::io::Error::other(format!("pool: postgresql://u:{DB_PASSWORD}@h/d"));
        let outer = anyhow::Error::new(err).context("database not usable");

        let events = capture(|| {
            sentry::capture_error(outer.as_ref() as &dyn std::error::Error);
        });

        assert_eq!(events.len(), 1);
        let values = &events[0].exception.values;
        assert_eq!(values.len(), 2, "{values:?}");
        let sent = serde_json::to_string(&events[0]).unwrap();
        assert!(!sent.contains(DB_PASSWORD), "{sent}");
    }

    #[test]
    fn known_noise_is_not_reported() {
        let events = capture(|| {
            sentry::capture_event(Event {
                exception: vec![Exception {
                    ty: "Database".to_owned(),
                    value: Some(
                        "duplicate key value violates unique constraint \"AnalyticsMetrics_pkey\""
                            .to_owned(),
                    ),
                    ..Default::default()
                }]
                .into(),
                ..Default::default()
            });
            sentry::capture_message("Token has expired", sentry::Level::Error);
            sentry::capture_message("a real failure", sentry::Level::Error);
        });

        assert_eq!(events.len(), 1);
        assert_eq!(events[0].message.as_deref(), Some("a real failure"));
    }

    #[test]
    fn logs_and_breadcrumbs_are_scrubbed_too() {
        let scrubber = scrubber();
        let crumb = Breadcrumb {
            message: Some(format!("calling discord with Bot {BOT_TOKEN}")),
            data: [("password".to_owned(), Value::from("pw-in-data-123"))]
                .into_iter()
                .collect(),
            ..Default::default()
        };

        let crumb = scrubber.breadcrumb(crumb).unwrap();

        let sent = serde_json::to_string(&crumb).unwrap();
        assert!(!sent.contains(BOT_TOKEN), "{sent}");
        assert!(!sent.contains("pw-in-data-123"), "{sent}");
        assert_eq!(scrubber.text("plain text stays"), "plain text stays");
    }
}

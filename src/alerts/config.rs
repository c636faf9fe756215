//! The alert settings (`[discord]`): the bot, the two channels, the client's timeouts and
//! the flood control.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_with::{DurationMilliSeconds, serde_as};

/// Shortest `ALERTS_API_KEY` production accepts: guessing it must stay infeasible, since
/// the right key is never locked out (`edge::api_key_guard`).
pub const MIN_API_KEY_BYTES: usize = 32;

/// The placeholder of the deployment examples (`deploy/k8s/secret.yaml`).
const PLACEHOLDER: &str = "change-me";

/// Discord alerts.
#[serde_as]
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// Empty: alerts are off and the endpoint answers 503.
    pub bot_token: SecretString,
    /// Discord's REST base URL; tests point it at a fake server.
    pub api_base_url: String,
    /// Channel name or id for `platform` alerts.
    pub platform_channel: String,
    /// Channel name or id for `product` alerts.
    pub product_channel: String,
    /// Key for `X-API-Key` on the alerts endpoint; empty: admin JWTs only.
    pub alerts_api_key: SecretString,
    /// TCP connect timeout for Discord.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    #[serde(rename = "connect_timeout_ms")]
    pub connect_timeout: Duration,
    /// Timeout of one Discord request.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    #[serde(rename = "request_timeout_ms")]
    pub request_timeout: Duration,
    /// Longest one alert may wait on 429s, backoff and pacing before giving up (503).
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    #[serde(rename = "wait_budget_ms")]
    pub wait_budget: Duration,
    /// Retries after a Discord 5xx or timeout.
    pub max_retries: u32,
    /// Identical alerts within this window are sent once (zero: no dedupe).
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    #[serde(rename = "dedupe_window_ms")]
    pub dedupe_window: Duration,
    /// Messages a channel may receive at once before pacing starts.
    pub channel_burst: u32,
    /// Then one message per channel per this interval (zero: no pacing).
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    #[serde(rename = "channel_interval_ms")]
    pub channel_interval: Duration,
    /// Storage failing for longer than this sends a platform alert (once per dedupe window).
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    #[serde(rename = "storage_alert_after_ms")]
    pub storage_alert_after: Duration,
}

impl Config {
    /// Alerts through a bot with `token` at `api_base_url` (a fake Discord in tests), with
    /// the defaults of `config/default.toml`.
    pub fn new(token: &str, api_base_url: &str) -> Self {
        Config {
            bot_token: SecretString::from(token.to_owned()),
            api_base_url: api_base_url.to_owned(),
            platform_channel: "local-alerts".to_owned(),
            product_channel: "product-alerts".to_owned(),
            alerts_api_key: SecretString::from(String::new()),
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            wait_budget: Duration::from_secs(10),
            max_retries: 3,
            dedupe_window: Duration::from_secs(60),
            channel_burst: 5,
            channel_interval: Duration::from_secs(1),
            storage_alert_after: Duration::from_secs(300),
        }
    }

    /// The bot token, trimmed; `None` when blank (alerts off).
    pub fn bot_token(&self) -> Option<&str> {
        Some(self.bot_token.expose_secret().trim()).filter(|t| !t.is_empty())
    }

    /// The `X-API-Key` the alerts endpoint accepts, trimmed; `None` when blank.
    pub fn alerts_api_key(&self) -> Option<&str> {
        Some(self.alerts_api_key.expose_secret().trim()).filter(|k| !k.is_empty())
    }

    /// The REST base without a trailing slash.
    pub fn base_url(&self) -> &str {
        self.api_base_url.trim().trim_end_matches('/')
    }

    /// Checks what the types cannot. `production` (`APP_ENV=prod`): the alerts API key,
    /// when set, is at least 32 bytes and not the placeholder. Errors name the setting,
    /// never its value.
    pub fn validate(&self, production: bool) -> Result<(), String> {
        if self.bot_token().is_some() && url::Url::parse(self.base_url()).is_err() {
            return Err("DISCORD_API_BASE_URL is not a URL".to_owned());
        }
        if let Some(key) = self.alerts_api_key().filter(|_| production) {
            if key.to_ascii_lowercase().contains(PLACEHOLDER) {
                return Err(format!(
                    "ALERTS_API_KEY holds the {PLACEHOLDER} placeholder: set a random key of at \
                     least {MIN_API_KEY_BYTES} bytes (openssl rand -hex 32), or leave it empty"
                ));
            }
            if key.len() < MIN_API_KEY_BYTES {
                return Err(format!(
                    "ALERTS_API_KEY is shorter than {MIN_API_KEY_BYTES} bytes: with APP_ENV=prod \
                     set a random key of at least {MIN_API_KEY_BYTES} bytes (openssl rand -hex \
                     32), or leave it empty"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_secrets_are_unset_and_the_base_url_is_checked() {
        let blank = Config::new("  ", "not a url");
        let bad_url = Config::new("token", "not a url");

        assert_eq!(blank.bot_token(), None);
        assert_eq!(blank.alerts_api_key(), None);
        assert!(
            blank.validate(true).is_ok(),
            "alerts off: the URL is not used"
        );
        assert!(bad_url.validate(false).is_err());
        assert_eq!(Config::new("t", "http://x/api/").base_url(), "http://x/api");
    }

    #[test]
    fn production_refuses_short_and_placeholder_api_keys_without_naming_them() {
        let with_key = |key: &str| Config {
            alerts_api_key: SecretString::from(key.to_owned()),
            ..Config::new("", "https://discord.com/api/v10")
        };
        let short = with_key("short-key-0123456789");
        let padded_placeholder = with_key("CHANGE-ME-change-me-change-me-change-me");
        let long = with_key("0123456789abcdef0123456789abcdef");

        let short_error = short.validate(true).unwrap_err();
        let placeholder_error = with_key(" change-me ").validate(true).unwrap_err();

        assert!(short_error.contains("ALERTS_API_KEY is shorter than 32 bytes"));
        assert!(!short_error.contains("short-key"), "{short_error}");
        assert!(placeholder_error.contains("ALERTS_API_KEY holds the change-me placeholder"));
        assert!(padded_placeholder.validate(true).is_err());
        assert!(long.validate(true).is_ok());
        assert!(
            with_key("").validate(true).is_ok(),
            "no key: admin JWTs only"
        );
        assert!(short.validate(false).is_ok(), "only production insists");
    }
}

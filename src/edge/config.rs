//! Settings of the edge protections: `[rate_limit]`, `[browser]`, and the request limits
//! of `[server]` (body sizes, the body budget, the request timeout).

use std::time::Duration;

use serde::Deserialize;
use serde_with::{DurationMilliSeconds, DurationSeconds, serde_as};

/// Everything the edge is built from.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[rate_limit]`.
    pub rate_limit: RateLimitConfig,
    /// `[browser]`.
    pub browser: BrowserConfig,
    /// The request limits of `[server]`.
    pub requests: RequestLimits,
}

/// What one request may hold and take (`[server]`).
#[serde_as]
#[derive(Debug, Clone, Deserialize)]
pub struct RequestLimits {
    /// Largest accepted request body of the single-event routes, in bytes.
    pub body_limit_bytes: usize,
    /// Request-body bytes (decompressed) held in memory at once by authenticated requests.
    pub body_budget_bytes: usize,
    /// The same for requests whose caller failed authentication.
    pub anonymous_body_budget_bytes: usize,
    /// How long a body waits for room in its budget before the request gets 503.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    #[serde(rename = "body_budget_wait_ms")]
    pub body_budget_wait: Duration,
    /// A request running longer than this is answered 503.
    #[serde_as(as = "DurationSeconds<u64>")]
    #[serde(rename = "request_timeout_secs")]
    pub request_timeout: Duration,
}

/// Token-bucket rate limits (`[rate_limit]`); a rate of 0 turns that limit off.
#[serde_as]
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RateLimitConfig {
    /// Count would-be refusals in the metrics but let every request through.
    pub dry_run: bool,
    /// Requests per second refilled per client IP (before auth).
    pub ip_per_second: f64,
    /// Requests a client IP may make at once.
    pub ip_burst: u32,
    /// Requests per second refilled per user id (after auth).
    pub user_per_second: f64,
    /// Requests a user may make at once.
    pub user_burst: u32,
    /// How many reverse proxies in front of the service append to `X-Forwarded-For`;
    /// 0 means none: the TCP peer is the client.
    pub trusted_proxy_hops: usize,
    /// Failed `X-API-Key` attempts a client may make at once (0: unlimited).
    pub api_key_failure_burst: u32,
    /// Then one more failure per this interval.
    #[serde_as(as = "DurationSeconds<u64>")]
    #[serde(rename = "api_key_failure_interval_secs")]
    pub api_key_failure_interval: Duration,
}

impl Default for RateLimitConfig {
    /// The values of `config/default.toml`: the per-IP limit is off (behind a load balancer
    /// every client would share one address until `trusted_proxy_hops` is set).
    fn default() -> Self {
        RateLimitConfig {
            dry_run: false,
            ip_per_second: 0.0,
            ip_burst: 400,
            user_per_second: 50.0,
            user_burst: 1000,
            trusted_proxy_hops: 0,
            api_key_failure_burst: 10,
            api_key_failure_interval: Duration::from_secs(6),
        }
    }
}

/// Browser ingestion (`[browser]`): CORS and `navigator.sendBeacon`.
#[serde_as]
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct BrowserConfig {
    /// Comma-separated origins allowed to call with credentials, e.g.
    /// `https://platform.agpt.co,http://localhost:3000`; empty: no CORS headers at all.
    pub allowed_origins: String,
    /// How long browsers may cache a preflight answer (`Access-Control-Max-Age`).
    #[serde_as(as = "DurationSeconds<u64>")]
    #[serde(rename = "preflight_max_age_secs")]
    pub preflight_max_age: Duration,
    /// `log_raw_analytics` also accepts a `text/plain` JSON body carrying the JWT in `token`.
    pub beacon_enabled: bool,
}

impl Default for BrowserConfig {
    /// The values of `config/default.toml`.
    fn default() -> Self {
        BrowserConfig {
            allowed_origins: String::new(),
            preflight_max_age: Duration::from_secs(600),
            beacon_enabled: false,
        }
    }
}

impl BrowserConfig {
    /// The allowed origins, trimmed, without empty entries.
    pub fn origins(&self) -> Vec<&str> {
        self.allowed_origins
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .collect()
    }
}

impl Config {
    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), String> {
        validate(&self.rate_limit, &self.browser)?;
        let requests = &self.requests;
        if requests.body_limit_bytes == 0 {
            return Err("server.body_limit_bytes must be at least 1".to_owned());
        }
        // A budget smaller than one allowed body would refuse that body forever.
        if requests.anonymous_body_budget_bytes < requests.body_limit_bytes {
            return Err(
                "server.anonymous_body_budget_bytes must hold server.body_limit_bytes".to_owned(),
            );
        }
        if requests.request_timeout.is_zero() {
            return Err("server.request_timeout_secs must be at least 1".to_owned());
        }
        Ok(())
    }
}

/// Checks the rate limits and browser origins.
fn validate(rate: &RateLimitConfig, browser: &BrowserConfig) -> Result<(), String> {
    let invalid = |msg: String| Err(msg);
    for (name, per_second, burst) in [
        ("ip", rate.ip_per_second, rate.ip_burst),
        ("user", rate.user_per_second, rate.user_burst),
    ] {
        if !per_second.is_finite() || per_second < 0.0 {
            return invalid(format!("rate_limit.{name}_per_second must be 0 or more"));
        }
        if per_second > 0.0 && burst == 0 {
            return invalid(format!("rate_limit.{name}_burst must be at least 1"));
        }
    }
    for origin in browser.origins() {
        let parsed = url::Url::parse(origin).ok();
        let is_origin = parsed.as_ref().is_some_and(|u| {
            matches!(u.scheme(), "http" | "https")
                && u.path() == "/"
                && !origin.ends_with('/')
                && u.query().is_none()
        });
        if origin == "*" || !is_origin || axum::http::HeaderValue::from_str(origin).is_err() {
            return invalid(format!(
                "browser.allowed_origins: {origin:?} is not an origin like https://example.com"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn browser(origins: &str) -> BrowserConfig {
        BrowserConfig {
            allowed_origins: origins.to_owned(),
            ..BrowserConfig::default()
        }
    }

    #[test]
    fn origins_are_split_trimmed_and_checked() {
        let ok = browser(" https://a.example.com , http://localhost:3000,");

        assert_eq!(
            ok.origins(),
            ["https://a.example.com", "http://localhost:3000"]
        );
        assert!(validate(&RateLimitConfig::default(), &ok).is_ok());
        for bad in [
            "*",
            "a.example.com",
            "https://a.example.com/",
            "https://a.example.com/x",
            "ftp://a.example.com",
        ] {
            assert!(
                validate(&RateLimitConfig::default(), &browser(bad)).is_err(),
                "{bad} is refused"
            );
        }
    }

    #[test]
    fn negative_rates_and_empty_buckets_are_refused() {
        let negative = RateLimitConfig {
            ip_per_second: -1.0,
            ..RateLimitConfig::default()
        };
        let no_burst = RateLimitConfig {
            user_burst: 0,
            ..RateLimitConfig::default()
        };
        let off = RateLimitConfig {
            user_per_second: 0.0,
            user_burst: 0,
            ..RateLimitConfig::default()
        };

        assert!(validate(&negative, &browser("")).is_err());
        assert!(validate(&no_burst, &browser("")).is_err());
        assert!(validate(&off, &browser("")).is_ok());
    }
}

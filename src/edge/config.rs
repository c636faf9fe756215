//! Settings of the edge protections: `[rate_limit]` and `[browser]`.

use serde::Deserialize;

use crate::settings::SettingsError;

/// Token-bucket rate limits (`[rate_limit]`); a rate of 0 turns that limit off.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RateLimitSettings {
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
    /// Then one more failure per this many seconds.
    pub api_key_failure_interval_secs: u64,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        RateLimitSettings {
            dry_run: false,
            ip_per_second: 200.0,
            ip_burst: 400,
            user_per_second: 50.0,
            user_burst: 1000,
            trusted_proxy_hops: 0,
            api_key_failure_burst: 10,
            api_key_failure_interval_secs: 6,
        }
    }
}

/// Browser ingestion (`[browser]`): CORS and `navigator.sendBeacon`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct BrowserSettings {
    /// Comma-separated origins allowed to call with credentials, e.g.
    /// `https://platform.agpt.co,http://localhost:3000`; empty: no CORS headers at all.
    pub allowed_origins: String,
    /// How long browsers may cache a preflight answer (`Access-Control-Max-Age`).
    pub preflight_max_age_secs: u64,
    /// `log_raw_analytics` also accepts a `text/plain` JSON body carrying the JWT in `token`.
    pub beacon_enabled: bool,
}

impl Default for BrowserSettings {
    fn default() -> Self {
        BrowserSettings {
            allowed_origins: String::new(),
            preflight_max_age_secs: 600,
            beacon_enabled: false,
        }
    }
}

impl BrowserSettings {
    /// The allowed origins, trimmed, without empty entries.
    pub fn origins(&self) -> Vec<&str> {
        self.allowed_origins
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .collect()
    }
}

/// Checks the edge settings; called from `Settings::validate`.
pub fn validate(rate: &RateLimitSettings, browser: &BrowserSettings) -> Result<(), SettingsError> {
    let invalid = |msg: String| Err(SettingsError::Invalid(msg));
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

    fn browser(origins: &str) -> BrowserSettings {
        BrowserSettings {
            allowed_origins: origins.to_owned(),
            ..BrowserSettings::default()
        }
    }

    #[test]
    fn origins_are_split_trimmed_and_checked() {
        let ok = browser(" https://a.example.com , http://localhost:3000,");

        assert_eq!(
            ok.origins(),
            ["https://a.example.com", "http://localhost:3000"]
        );
        assert!(validate(&RateLimitSettings::default(), &ok).is_ok());
        for bad in [
            "*",
            "a.example.com",
            "https://a.example.com/",
            "https://a.example.com/x",
            "ftp://a.example.com",
        ] {
            assert!(
                validate(&RateLimitSettings::default(), &browser(bad)).is_err(),
                "{bad} is refused"
            );
        }
    }

    #[test]
    fn negative_rates_and_empty_buckets_are_refused() {
        let negative = RateLimitSettings {
            ip_per_second: -1.0,
            ..RateLimitSettings::default()
        };
        let no_burst = RateLimitSettings {
            user_burst: 0,
            ..RateLimitSettings::default()
        };
        let off = RateLimitSettings {
            user_per_second: 0.0,
            user_burst: 0,
            ..RateLimitSettings::default()
        };

        assert!(validate(&negative, &browser("")).is_err());
        assert!(validate(&no_burst, &browser("")).is_err());
        assert!(validate(&off, &browser("")).is_ok());
    }
}

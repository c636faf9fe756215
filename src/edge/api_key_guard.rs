//! Wrong `X-API-Key` attempts on the alerts route, limited per client (an IPv6 client per
//! /64): `burst` failures at once, then one per interval; past that a wrong key is answered
//! 429 instead of 401 until a token is back.
//!
//! Only wrong keys are limited. The right key (compared in constant time by the route) is
//! accepted whatever the failures before it: the client key is an address, and behind a
//! load balancer (or a shared NAT) everyone shares one, so a lockout of all attempts let
//! anyone lock the real key holder out with a few wrong keys. Guessing is kept infeasible by
//! the key itself (production refuses keys under 32 bytes, `alerts::Config::validate`), not
//! by this guard, which keeps floods of wrong keys cheap and visible
//! (`analytics_rate_limited_total{reason="api_key"}`). See docs/OPERATIONS.md, "Discord
//! alerts".

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use super::rate_limit::{LimitKind, RateLimited};

/// Forget idle failure buckets after this many failures, so the key table stays bounded.
const SWEEP_EVERY: u64 = 1024;

/// Failed-key limits for the alerts route.
pub struct ApiKeyGuard {
    failures: Option<DefaultKeyedRateLimiter<String>>,
    burst: u32,
    failed: AtomicU64,
}

impl std::fmt::Debug for ApiKeyGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyGuard")
            .field("burst", &self.burst)
            .finish_non_exhaustive()
    }
}

impl ApiKeyGuard {
    /// `burst` failures at once, then one per `interval`; a burst of 0 turns it off.
    pub fn new(burst: u32, interval: Duration) -> Self {
        let quota = NonZeroU32::new(burst).and_then(|burst| {
            Some(Quota::with_period(interval.max(Duration::from_millis(1)))?.allow_burst(burst))
        });
        ApiKeyGuard {
            failures: quota.map(DefaultKeyedRateLimiter::keyed),
            burst,
            failed: AtomicU64::new(0),
        }
    }

    /// After a wrong key from `client`: takes a failure token; with none left this attempt
    /// is refused (429, counted) until one is back. Never called for the right key.
    pub fn failed(&self, client: &str) -> Result<(), RateLimited> {
        let Some(failures) = &self.failures else {
            return Ok(());
        };
        if self.failed.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            failures.retain_recent();
            failures.shrink_to_fit();
        }
        let Err(not_until) = failures.check_key(&client.to_owned()) else {
            return Ok(());
        };
        metrics::counter!(
            super::rate_limit::RATE_LIMITED_METRIC,
            "reason" => LimitKind::ApiKey.label(),
            "dry_run" => "false",
        )
        .increment(1);
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        Err(RateLimited {
            kind: LimitKind::ApiKey,
            retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
            burst: self.burst,
            over_burst: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_out_of_failures_is_refused_and_others_are_not() {
        let guard = ApiKeyGuard::new(2, Duration::from_secs(60));

        assert!(guard.failed("a").is_ok());
        assert!(guard.failed("a").is_ok());
        let refused = guard.failed("a").unwrap_err();
        let again = guard.failed("a").unwrap_err();

        assert_eq!(refused.kind, LimitKind::ApiKey);
        assert!(refused.retry_after_secs >= 59, "{refused:?}");
        assert!(again.retry_after_secs >= 59, "refusals take no token back");
        assert!(guard.failed("b").is_ok(), "clients have their own buckets");
    }

    #[test]
    fn failures_are_allowed_again_when_a_token_is_back() {
        let guard = ApiKeyGuard::new(1, Duration::from_millis(50));
        assert!(guard.failed("a").is_ok());
        assert!(guard.failed("a").is_err());

        std::thread::sleep(Duration::from_millis(120));

        assert!(guard.failed("a").is_ok());
    }

    #[test]
    fn a_burst_of_zero_turns_it_off() {
        let guard = ApiKeyGuard::new(0, Duration::from_secs(1));

        for _ in 0..100 {
            assert!(guard.failed("a").is_ok());
        }
    }
}

//! Token-bucket rate limits per client IP (before auth) and per user id (after auth),
//! with governor's GCRA. A refusal is a 429 with `Retry-After` and `RateLimit-*` headers;
//! in dry-run mode refusals are only counted (`analytics_rate_limited_total`).
//!
//! A batch takes one token per item. A batch larger than the bucket could ever hold (more
//! items than the burst) is refused as it is, charged nothing, with the time a drained
//! bucket takes to fill: no batch setting has to match the burst, so any burst starts.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::wire::Detail;
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::{DefaultKeyedRateLimiter, Quota};

use super::config::RateLimitConfig;
use crate::auth::Caller;

/// The metric counting refused (or, in dry-run, would-be refused) requests.
pub const RATE_LIMITED_METRIC: &str = "analytics_rate_limited_total";

/// Forget idle keys after this many checks, so the key tables stay bounded.
const SWEEP_EVERY: u64 = 4096;

type KeyedLimiter = DefaultKeyedRateLimiter<String, StateInformationMiddleware>;

/// Which limit refused a request (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// Per client IP, before auth.
    Ip,
    /// Per user id, after auth.
    User,
    /// Failed `X-API-Key` attempts per client (see `api_key_guard`).
    ApiKey,
}

impl LimitKind {
    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            LimitKind::Ip => "ip",
            LimitKind::User => "user",
            LimitKind::ApiKey => "api_key",
        }
    }
}

/// A 429: which limit, and when to come back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rate limit ({kind:?}) exceeded; retry in {retry_after_secs} s")]
pub struct RateLimited {
    /// The limit that refused.
    pub kind: LimitKind,
    /// Whole seconds until a request will be admitted (at least 1).
    pub retry_after_secs: u64,
    /// The bucket size (`RateLimit-Limit`).
    pub burst: u32,
    /// The request asked for more tokens than the bucket holds (a batch of more items than
    /// the burst): it can never pass as it is, only split.
    pub over_burst: bool,
}

impl RateLimited {
    /// The `reason` label of `analytics_rate_limited_total`.
    pub fn reason(&self) -> &'static str {
        if self.over_burst {
            "user_over_burst"
        } else {
            self.kind.label()
        }
    }
}

impl IntoResponse for RateLimited {
    fn into_response(self) -> Response {
        let detail = if self.over_burst {
            format!(
                "Too many items: the rate limit admits at most {} at once; split the batch \
                 and retry in {} seconds",
                self.burst, self.retry_after_secs
            )
        } else {
            format!(
                "Too many requests: retry in {} seconds",
                self.retry_after_secs
            )
        };
        let mut response =
            (StatusCode::TOO_MANY_REQUESTS, Json(Detail::new(detail))).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from(self.retry_after_secs),
        );
        headers.insert("ratelimit-limit", HeaderValue::from(self.burst));
        headers.insert("ratelimit-remaining", HeaderValue::from(0));
        headers.insert("ratelimit-reset", HeaderValue::from(self.retry_after_secs));
        response
    }
}

struct Bucket {
    kind: LimitKind,
    limiter: KeyedLimiter,
    burst: u32,
    /// How long a drained bucket takes to fill again.
    refill: Duration,
}

impl Bucket {
    fn new(kind: LimitKind, per_second: f64, burst: u32) -> Option<Self> {
        let burst_nz = NonZeroU32::new(burst)?;
        if per_second <= 0.0 {
            return None;
        }
        let period = Duration::from_secs_f64(1.0 / per_second).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)?.allow_burst(burst_nz);
        Some(Bucket {
            kind,
            limiter: DefaultKeyedRateLimiter::<String>::keyed(quota)
                .with_middleware::<StateInformationMiddleware>(),
            burst,
            refill: period.saturating_mul(burst),
        })
    }

    /// Takes `n` tokens (at least 1). More than the burst can never be taken: that is
    /// refused at once, nothing taken, with `Retry-After` the time a drained bucket takes to
    /// fill, after which a batch of up to `burst` items passes.
    fn check(&self, key: &str, n: usize) -> Result<(), RateLimited> {
        let n = NonZeroU32::new(u32::try_from(n).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
        let refused = |wait: Duration, over_burst| RateLimited {
            kind: self.kind,
            retry_after_secs: whole_seconds(wait),
            burst: self.burst,
            over_burst,
        };
        match self.limiter.check_key_n(&key.to_owned(), n) {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(not_until)) => Err(refused(
                not_until.wait_time_from(DefaultClock::default().now()),
                false,
            )),
            Err(governor::InsufficientCapacity(_)) => Err(refused(self.refill, true)),
        }
    }
}

/// Seconds for `Retry-After`: rounded up, at least 1.
fn whole_seconds(wait: Duration) -> u64 {
    // `as` saturates: a wait beyond u64 seconds (a rate near 0) becomes u64::MAX.
    wait.as_secs_f64().ceil().max(1.0) as u64
}

/// Both limits, built once from the settings.
pub struct RateLimits {
    ip: Option<Bucket>,
    user: Option<Bucket>,
    dry_run: bool,
    /// Proxies trusted to append to `X-Forwarded-For`.
    pub trusted_proxy_hops: usize,
    checks: AtomicU64,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("ip", &self.ip.as_ref().map(|b| b.burst))
            .field("user", &self.user.as_ref().map(|b| b.burst))
            .field("dry_run", &self.dry_run)
            .finish_non_exhaustive()
    }
}

impl RateLimits {
    /// Limits as configured; a rate of 0 disables that limit.
    pub fn new(config: &RateLimitConfig) -> Self {
        RateLimits {
            ip: Bucket::new(LimitKind::Ip, config.ip_per_second, config.ip_burst),
            user: Bucket::new(LimitKind::User, config.user_per_second, config.user_burst),
            dry_run: config.dry_run,
            trusted_proxy_hops: config.trusted_proxy_hops,
            checks: AtomicU64::new(0),
        }
    }

    /// True when per-IP limiting is configured (else its middleware is not installed).
    pub fn limits_ips(&self) -> bool {
        self.ip.is_some()
    }

    /// Takes a token from the client IP's bucket (key: [`super::limit_key`]).
    pub fn check_ip(&self, ip: &str) -> Result<(), RateLimited> {
        self.check(self.ip.as_ref(), ip, 1)
    }

    /// After auth: takes one token per row the request stores from the caller's bucket,
    /// so that the limit counts what is stored (429 when empty).
    pub fn admit(&self, caller: Caller, rows: usize) -> Result<Caller, RateLimited> {
        self.check_user_n(&caller.user_id, rows)?;
        Ok(caller)
    }

    /// Takes a token from the user's bucket.
    pub fn check_user(&self, user_id: &str) -> Result<(), RateLimited> {
        self.check(self.user.as_ref(), user_id, 1)
    }

    /// Takes `n` tokens from the user's bucket: one per row a request stores.
    pub fn check_user_n(&self, user_id: &str, n: usize) -> Result<(), RateLimited> {
        self.check(self.user.as_ref(), user_id, n)
    }

    fn check(&self, bucket: Option<&Bucket>, key: &str, n: usize) -> Result<(), RateLimited> {
        let Some(bucket) = bucket else {
            return Ok(());
        };
        self.sweep_now_and_then();
        let Err(limited) = bucket.check(key, n) else {
            return Ok(());
        };
        // Labels stay low-cardinality and free of user ids and addresses.
        metrics::counter!(
            RATE_LIMITED_METRIC,
            "reason" => limited.reason(),
            "dry_run" => if self.dry_run { "true" } else { "false" },
        )
        .increment(1);
        if self.dry_run {
            tracing::debug!(reason = limited.reason(), "rate limit exceeded (dry run)");
            Ok(())
        } else {
            Err(limited)
        }
    }

    fn sweep_now_and_then(&self) {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            for bucket in [&self.ip, &self.user].into_iter().flatten() {
                bucket.limiter.retain_recent();
                bucket.limiter.shrink_to_fit();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(dry_run: bool) -> RateLimits {
        RateLimits::new(&RateLimitConfig {
            dry_run,
            ip_per_second: 0.001,
            ip_burst: 2,
            user_per_second: 0.0,
            user_burst: 0,
            ..RateLimitConfig::default()
        })
    }

    #[test]
    fn the_request_after_the_burst_is_refused_with_a_wait() {
        let limits = limits(false);

        assert!(limits.check_ip("a").is_ok());
        assert!(limits.check_ip("a").is_ok());
        let refused = limits.check_ip("a").unwrap_err();

        assert_eq!(refused.kind, LimitKind::Ip);
        assert_eq!(refused.burst, 2);
        assert!(refused.retry_after_secs >= 1);
        assert!(limits.check_ip("b").is_ok(), "keys have their own buckets");
    }

    #[test]
    fn a_batch_takes_one_token_per_row() {
        let limits = RateLimits::new(&RateLimitConfig {
            user_per_second: 0.001,
            user_burst: 10,
            ..RateLimitConfig::default()
        });

        assert!(limits.check_user_n("u", 7).is_ok());
        assert!(limits.check_user_n("u", 4).is_err(), "3 tokens left");
        assert!(limits.check_user_n("u", 3).is_ok());
        assert!(limits.check_user("u").is_err());
    }

    #[test]
    fn a_batch_larger_than_the_burst_is_refused_at_once_and_charged_nothing() {
        let limits = RateLimits::new(&RateLimitConfig {
            user_per_second: 0.5,
            user_burst: 10,
            ..RateLimitConfig::default()
        });

        let refused = limits.check_user_n("u", 11).unwrap_err();
        let huge = limits.check_user_n("u", usize::MAX).unwrap_err();

        assert_eq!(refused.kind, LimitKind::User);
        assert!(refused.over_burst);
        assert_eq!(refused.reason(), "user_over_burst");
        assert_eq!(refused.retry_after_secs, 20, "10 tokens at 0.5 per second");
        assert_eq!(refused.burst, 10);
        assert!(huge.over_burst);
        assert!(limits.check_user_n("u", 10).is_ok(), "nothing was taken");
        let drained = limits.check_user("u").unwrap_err();
        assert!(!drained.over_burst, "an empty bucket is the usual 429");
        assert_eq!(drained.reason(), "user");
    }

    #[test]
    fn refusals_over_the_burst_are_counted_by_reason() {
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let limits = RateLimits::new(&RateLimitConfig {
            user_per_second: 0.001,
            user_burst: 1,
            ..RateLimitConfig::default()
        });

        metrics::with_local_recorder(&recorder, || {
            assert!(limits.check_user_n("u", 50).is_err());
            assert!(limits.check_user_n("u", 2).is_err());
            assert!(limits.check_user("u").is_ok());
            assert!(limits.check_user("u").is_err());
        });

        // One snapshot: taking it drains the counters.
        let snapshot = snapshotter.snapshot().into_vec();
        let counted = |reason: &str| {
            snapshot
                .iter()
                .filter(|(key, ..)| {
                    key.key().name() == RATE_LIMITED_METRIC
                        && key
                            .key()
                            .labels()
                            .any(|l| l.key() == "reason" && l.value() == reason)
                })
                .map(|(.., value)| match value {
                    metrics_util::debugging::DebugValue::Counter(n) => *n,
                    other => panic!("a counter, not {other:?}"),
                })
                .sum::<u64>()
        };
        assert_eq!(counted("user_over_burst"), 2);
        assert_eq!(counted("user"), 1);
    }

    #[test]
    fn a_request_of_zero_rows_takes_one_token() {
        let limits = RateLimits::new(&RateLimitConfig {
            user_per_second: 0.001,
            user_burst: 1,
            ..RateLimitConfig::default()
        });

        assert!(limits.check_user_n("u", 0).is_ok());
        assert!(limits.check_user_n("u", 0).is_err());
    }

    #[test]
    fn dry_run_never_refuses_and_a_zero_rate_is_off() {
        let limits = limits(true);

        for _ in 0..5 {
            assert!(limits.check_ip("a").is_ok());
            assert!(limits.check_user("u").is_ok());
        }
    }
}

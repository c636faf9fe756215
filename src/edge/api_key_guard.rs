//! Guessing the alerts API key: failed `X-API-Key` attempts are limited per client (an
//! IPv6 client per /64). A client gets `burst` failures at once, then one per interval;
//! once it runs out it is locked out until a token is back, and while locked out every
//! attempt is refused (429) before the key is compared, so a right guess cannot be told
//! from a wrong one at full speed.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use super::rate_limit::{LimitKind, RateLimited};

/// Most clients kept locked out at once; expired lockouts are dropped past this.
const MAX_LOCKED: usize = 10_000;
/// Forget idle failure buckets after this many failures.
const SWEEP_EVERY: u64 = 1024;

/// Failed-key limits for the alerts route.
pub struct ApiKeyGuard {
    failures: Option<DefaultKeyedRateLimiter<String>>,
    locked_until: Mutex<HashMap<String, Instant>>,
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
            locked_until: Mutex::new(HashMap::new()),
            burst,
            failed: AtomicU64::new(0),
        }
    }

    /// Before the key is compared: refused while `client` is locked out.
    pub fn check(&self, client: &str) -> Result<(), RateLimited> {
        let locked = self.lock_table();
        match locked.get(client) {
            Some(until) if *until > Instant::now() => Err(self.refusal(*until)),
            _ => Ok(()),
        }
    }

    /// After a wrong key from `client`: takes a failure token; with none left the client
    /// is locked out (and this attempt refused) until one is back.
    pub fn failed(&self, client: &str) -> Result<(), RateLimited> {
        let Some(failures) = &self.failures else {
            return Ok(());
        };
        if self.failed.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            failures.retain_recent();
        }
        let Err(not_until) = failures.check_key(&client.to_owned()) else {
            return Ok(());
        };
        let until = Instant::now() + not_until.wait_time_from(DefaultClock::default().now());
        let mut locked = self.lock_table();
        if locked.len() >= MAX_LOCKED {
            let now = Instant::now();
            locked.retain(|_, until| *until > now);
        }
        if locked.len() < MAX_LOCKED {
            locked.insert(client.to_owned(), until);
        }
        metrics::counter!(
            super::rate_limit::RATE_LIMITED_METRIC,
            "reason" => LimitKind::ApiKey.label(),
            "dry_run" => "false",
        )
        .increment(1);
        Err(self.refusal(until))
    }

    fn refusal(&self, until: Instant) -> RateLimited {
        let wait = until.saturating_duration_since(Instant::now());
        RateLimited {
            kind: LimitKind::ApiKey,
            retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
            burst: self.burst,
            over_burst: false,
        }
    }

    fn lock_table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.locked_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_out_of_failures_is_locked_out_and_others_are_not() {
        let guard = ApiKeyGuard::new(2, Duration::from_secs(60));

        assert!(guard.check("a").is_ok());
        assert!(guard.failed("a").is_ok());
        assert!(guard.failed("a").is_ok());
        let refused = guard.failed("a").unwrap_err();

        assert_eq!(refused.kind, LimitKind::ApiKey);
        assert!(refused.retry_after_secs >= 59);
        assert!(
            guard.check("a").is_err(),
            "locked out before the key is compared"
        );
        assert!(guard.check("b").is_ok());
        assert!(guard.failed("b").is_ok());
    }

    #[test]
    fn the_lockout_ends_when_a_token_is_back() {
        let guard = ApiKeyGuard::new(1, Duration::from_millis(50));
        assert!(guard.failed("a").is_ok());
        assert!(guard.failed("a").is_err());

        std::thread::sleep(Duration::from_millis(120));

        assert!(guard.check("a").is_ok());
    }

    #[test]
    fn a_burst_of_zero_turns_it_off() {
        let guard = ApiKeyGuard::new(0, Duration::from_secs(1));

        for _ in 0..100 {
            assert!(guard.failed("a").is_ok());
        }
        assert!(guard.check("a").is_ok());
    }
}

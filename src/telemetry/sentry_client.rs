//! The Sentry client's options: DSN, environment, release, sampling and the scrubbing hooks.

use std::sync::Arc;

use sentry::{ClientOptions, TransactionContext};

use super::Config;
use super::scrub::Scrubber;
use super::transport::ScrubbingTransportFactory;

/// The options for `sentry::init`, or `None` when `SENTRY_DSN` is empty (Sentry off) or
/// not a DSN (settings validation refuses that at start-up; `ClientOptions::dsn` would
/// panic). `scrubber` removes secrets from everything that leaves.
pub fn client_options(config: &Config, scrubber: Scrubber) -> Option<ClientOptions> {
    let dsn = config.sentry.parsed_dsn().ok().flatten()?;
    let scrubber = Arc::new(scrubber);
    let (for_events, for_logs, for_breadcrumbs) =
        (scrubber.clone(), scrubber.clone(), scrubber.clone());
    let sampling = Sampling {
        rate: config.sentry.traces_sample_rate,
        untraced: config.sentry.untraced_routes(),
        trust_incoming: config.sentry.trust_incoming_traces,
    };
    let transport = ScrubbingTransportFactory::new(
        Arc::new(sentry::transports::DefaultTransportFactory),
        scrubber,
    );
    let mut options = ClientOptions::new();
    options.dsn = Some(dsn);
    Some(
        options
            .environment(config.environment.clone())
            .release(concat!(
                env!("CARGO_PKG_NAME"),
                "@",
                env!("CARGO_PKG_VERSION")
            ))
            .send_default_pii(false)
            .traces_sampler(move |ctx| sampling.rate_for(ctx))
            .transport(transport)
            .before_send(move |event| for_events.event(event))
            .before_send_log(move |log| for_logs.log(log))
            .before_breadcrumb(move |crumb| for_breadcrumbs.breadcrumb(crumb)),
    )
}

/// How transactions are sampled.
#[derive(Debug, Clone)]
pub struct Sampling {
    /// Share of new traces kept, 0.0 to 1.0.
    pub rate: f32,
    /// Route templates never traced.
    pub untraced: Vec<String>,
    /// Whether an incoming `sentry-trace`/`traceparent` sampling decision is followed. Off,
    /// a caller cannot make us trace (and send to Sentry) every request it sends.
    pub trust_incoming: bool,
}

impl Sampling {
    /// The share of transactions like `ctx` to keep: none for the untraced routes, the
    /// caller's decision when an incoming trace carries one and it is trusted, else `rate`.
    pub fn rate_for(&self, ctx: &TransactionContext) -> f32 {
        // HTTP transactions are named "METHOD /route/template".
        let path = ctx.name().split_once(' ').map_or(ctx.name(), |(_, p)| p);
        if self.untraced.iter().any(|route| route == path) {
            return 0.0;
        }
        match ctx.sampled() {
            Some(sampled) if self.trust_incoming => f32::from(sampled),
            _ => self.rate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(rate: f32, trust_incoming: bool) -> Sampling {
        Sampling {
            rate,
            untraced: vec!["/healthz".to_owned(), "/metrics".to_owned()],
            trust_incoming,
        }
    }

    fn continued(flag: char) -> TransactionContext {
        let header = format!("4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flag}");
        TransactionContext::continue_from_headers(
            "POST /api/analytics/log_raw_metric",
            "http.server",
            [("sentry-trace", header.as_str())],
        )
    }

    #[test]
    fn a_dsn_that_does_not_parse_gives_no_client_rather_than_a_panic() {
        let mut config = Config::for_tests();
        config.sentry.dsn = secrecy::SecretString::from("http://".to_owned());

        let options = client_options(&config, Scrubber::with_secrets(Vec::new()));

        assert!(options.is_none());
        assert!(config.validate().unwrap_err().contains("SENTRY_DSN"));
    }

    #[test]
    fn probes_are_never_traced_and_other_routes_use_the_rate() {
        let probe = TransactionContext::new("GET /healthz", "http.server");
        let metric = TransactionContext::new("POST /api/analytics/log_raw_metric", "http.server");

        assert_eq!(sampling(1.0, true).rate_for(&probe), 0.0);
        assert_eq!(sampling(0.25, true).rate_for(&metric), 0.25);
    }

    #[test]
    fn a_trusted_incoming_sampling_decision_is_honoured() {
        assert_eq!(sampling(0.0, true).rate_for(&continued('1')), 1.0);
        assert_eq!(sampling(1.0, true).rate_for(&continued('0')), 0.0);
    }

    #[test]
    fn an_untrusted_incoming_sampling_decision_is_ignored() {
        assert_eq!(sampling(0.0, false).rate_for(&continued('1')), 0.0);
        assert_eq!(sampling(0.5, false).rate_for(&continued('0')), 0.5);
    }
}

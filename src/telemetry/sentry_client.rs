//! The Sentry client's options: DSN, environment, release, sampling and the scrubbing hooks.

use std::sync::Arc;

use secrecy::ExposeSecret;
use sentry::{ClientOptions, TransactionContext};

use super::scrub::Scrubber;
use crate::settings::Settings;

/// The options for `sentry::init`, or `None` when `SENTRY_DSN` is empty (Sentry off).
pub fn client_options(settings: &Settings) -> Option<ClientOptions> {
    let dsn = settings.sentry.dsn.expose_secret().trim();
    if dsn.is_empty() {
        return None;
    }
    let scrubber = Arc::new(Scrubber::from_settings(settings));
    let (for_events, for_logs, for_breadcrumbs) = (scrubber.clone(), scrubber.clone(), scrubber);
    let rate = settings.sentry.traces_sample_rate;
    let untraced: Vec<String> = settings.sentry.untraced_routes();
    Some(
        ClientOptions::new()
            .dsn(dsn)
            .environment(settings.sentry_environment())
            .release(concat!(
                env!("CARGO_PKG_NAME"),
                "@",
                env!("CARGO_PKG_VERSION")
            ))
            .send_default_pii(false)
            .traces_sampler(move |ctx| sample_rate_for(ctx, rate, &untraced))
            .before_send(move |event| for_events.event(event))
            .before_send_log(move |log| for_logs.log(log))
            .before_breadcrumb(move |crumb| for_breadcrumbs.breadcrumb(crumb)),
    )
}

/// The share of transactions like `ctx` to keep: none for the untraced routes, the
/// caller's decision when an incoming trace carries one, else `rate`.
pub fn sample_rate_for(ctx: &TransactionContext, rate: f32, untraced: &[String]) -> f32 {
    // HTTP transactions are named "METHOD /route/template".
    let path = ctx.name().split_once(' ').map_or(ctx.name(), |(_, p)| p);
    if untraced.iter().any(|route| route == path) {
        return 0.0;
    }
    ctx.sampled().map_or(rate, f32::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn untraced() -> Vec<String> {
        vec!["/healthz".to_owned(), "/metrics".to_owned()]
    }

    #[test]
    fn probes_are_never_traced_and_other_routes_use_the_rate() {
        let probe = TransactionContext::new("GET /healthz", "http.server");
        let metric = TransactionContext::new("POST /api/analytics/log_raw_metric", "http.server");

        assert_eq!(sample_rate_for(&probe, 1.0, &untraced()), 0.0);
        assert_eq!(sample_rate_for(&metric, 0.25, &untraced()), 0.25);
    }

    #[test]
    fn an_incoming_sampling_decision_is_honoured() {
        let sampled = TransactionContext::continue_from_headers(
            "POST /api/analytics/log_raw_metric",
            "http.server",
            [(
                "sentry-trace",
                "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            )],
        );
        let dropped = TransactionContext::continue_from_headers(
            "POST /api/analytics/log_raw_metric",
            "http.server",
            [(
                "sentry-trace",
                "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            )],
        );

        assert_eq!(sample_rate_for(&sampled, 0.0, &untraced()), 1.0);
        assert_eq!(sample_rate_for(&dropped, 1.0, &untraced()), 0.0);
    }
}

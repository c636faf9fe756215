//! Telemetry: the log subscriber (`RUST_LOG`, pretty locally, JSON in dev and prod), the
//! Sentry client with its tracing layers, and `capture_error` for code about to exit.

mod config;
pub mod http;
pub mod prometheus;
pub mod scrub;
mod sentry_client;
mod transport;

use std::fmt;
use std::time::Duration;

use sentry::integrations::tracing::{BreadcrumbLayer, ErrorLayer, LogLayer, SpanLayer};
use tracing::{Level, Metadata};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{LevelFilter, filter_fn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

pub use config::{Config, LogConfig, LogFormat, MetricsConfig, SentryConfig};
pub use scrub::Scrubber;
pub use sentry_client::{Sampling, client_options};

/// Log target of lines whose error already went to Sentry by other means (`capture_error`,
/// the panic hook): they are logged but not turned into a second Sentry event.
pub const REPORTED_TARGET: &str = "analytics_service::reported";

/// Log target of the one line per request (method, route, status, latency). Kept out of
/// Sentry logs and breadcrumbs: the transaction already holds the same facts.
pub const ACCESS_TARGET: &str = "analytics_service::access";

/// How long `capture_error` waits for the event to leave before the caller exits.
const CAPTURE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// What stays alive for the life of the process: the Sentry client, flushed on drop.
#[derive(Default)]
pub struct TelemetryGuard {
    sentry: Option<sentry::ClientInitGuard>,
}

impl fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelemetryGuard")
            .field("sentry_enabled", &self.sentry_enabled())
            .finish()
    }
}

impl TelemetryGuard {
    /// True when a DSN was set and events can leave the process.
    pub fn sentry_enabled(&self) -> bool {
        self.sentry.as_ref().is_some_and(|g| g.is_enabled())
    }

    /// Waits up to `timeout` for queued Sentry envelopes to be sent; true when all were.
    pub fn flush(&self, timeout: Duration) -> bool {
        sentry::Hub::main()
            .client()
            .is_none_or(|client| client.flush(Some(timeout)))
    }
}

/// Installs the global subscriber (logs to stdout) and starts Sentry when `SENTRY_DSN` is
/// set; `secrets` (keys, tokens, the database password) are scrubbed from everything sent.
/// Call before the Tokio runtime is built; keep the guard until the process exits.
pub fn init(config: &Config, secrets: Vec<String>) -> TelemetryGuard {
    init_with_writer(config, secrets, std::io::stdout)
}

/// As `init`, with log lines going to `writer` (tests capture them). A second call keeps
/// the first subscriber but replaces the Sentry client.
pub fn init_with_writer<W>(config: &Config, secrets: Vec<String>, writer: W) -> TelemetryGuard
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let guard = start_sentry(config, Scrubber::with_secrets(secrets));
    install_subscriber(config.log.format, &config.log.filter, writer);
    guard
}

fn start_sentry(config: &Config, scrubber: Scrubber) -> TelemetryGuard {
    let Some(options) = client_options(config, scrubber) else {
        // No DSN: no client at all, so nothing can be sent. Unbinding also retires a client
        // an earlier call bound (tests start several in one process).
        sentry::Hub::main().bind_client(None);
        sentry::Hub::current().bind_client(None);
        return TelemetryGuard::default();
    };
    let guard = sentry::init(options);
    // `sentry::init` binds the calling thread's hub. Binding the process hub as well makes
    // every thread started later (the runtime's workers) inherit the client, also when init
    // does not run on the main thread (tests).
    sentry::Hub::main().bind_client(sentry::Hub::current().client());
    TelemetryGuard {
        sentry: Some(guard),
    }
}

fn install_subscriber<W>(format: LogFormat, filter: &str, writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let fmt_layer = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(writer)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .compact()
            .with_writer(writer)
            .boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(SpanLayer::new().with_filter(LevelFilter::INFO))
        .with(
            ErrorLayer::new()
                .enable_span_attributes()
                .with_filter(filter_fn(|m| m.is_span() || is_error_event(m))),
        )
        .with(
            LogLayer::new()
                .enable_span_attributes()
                .with_filter(filter_fn(|m| m.is_span() || is_sentry_log(m))),
        )
        .with(BreadcrumbLayer::new().with_filter(filter_fn(|m| {
            is_sentry_log(m) && *m.level() != Level::ERROR
        })))
        .try_init();
}

/// ERROR events become Sentry issues, unless they were reported already.
fn is_error_event(meta: &Metadata<'_>) -> bool {
    *meta.level() == Level::ERROR && meta.target() != REPORTED_TARGET
}

/// INFO and above become Sentry logs (and WARN/INFO breadcrumbs), except the access line.
fn is_sentry_log(meta: &Metadata<'_>) -> bool {
    meta.is_event() && *meta.level() <= Level::INFO && meta.target() != ACCESS_TARGET
}

/// Reports `err` with its source chain to Sentry and waits (bounded) until it has left:
/// for code that is about to exit. Also logs it. Does nothing remote when Sentry is off.
pub fn capture_error(err: &(dyn std::error::Error + 'static)) {
    let chain: Vec<String> = std::iter::successors(Some(err), |e| e.source())
        .map(ToString::to_string)
        .collect();
    tracing::error!(target: REPORTED_TARGET, error = chain.join(": "), "fatal error");
    sentry::capture_error(err);
    if let Some(client) = sentry::Hub::current().client() {
        client.flush(Some(CAPTURE_FLUSH_TIMEOUT));
    }
}

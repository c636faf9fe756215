//! Logging: `RUST_LOG` filter, pretty lines locally, JSON lines in dev and prod.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::settings::{LogFormat, Settings};

/// What stays alive for the life of the process (flushes on drop).
#[derive(Debug, Default)]
pub struct TelemetryGuard {}

/// Installs the global subscriber. A second call (tests) keeps the first.
pub fn init(settings: &Settings) -> TelemetryGuard {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match settings.log.format {
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().flatten_event(true))
            .try_init(),
        LogFormat::Pretty => registry
            .with(tracing_subscriber::fmt::layer().compact())
            .try_init(),
    };
    TelemetryGuard {}
}

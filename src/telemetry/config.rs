//! Telemetry settings: `[log]`, `[sentry]` and `[metrics]`, and the Sentry environment.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// Everything telemetry is started from.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[log]`.
    pub log: LogConfig,
    /// `[sentry]`.
    pub sentry: SentryConfig,
    /// `[metrics]`.
    pub metrics: MetricsConfig,
    /// The Sentry environment, `app:{APP_ENV}-behave:{BEHAVE_AS}` as the original's.
    pub environment: String,
}

impl Config {
    /// Pretty logs at `info`, Sentry off, `/metrics` on the main port.
    pub fn for_tests() -> Self {
        Config {
            log: LogConfig {
                format: LogFormat::Pretty,
                filter: "info".to_owned(),
            },
            sentry: SentryConfig {
                dsn: SecretString::from(String::new()),
                traces_sample_rate: 1.0,
                untraced_routes: default_untraced_routes(),
                trust_incoming_traces: false,
            },
            metrics: MetricsConfig::default(),
            environment: "app:local-behave:local".to_owned(),
        }
    }

    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.sentry.traces_sample_rate) {
            return Err("SENTRY_TRACES_SAMPLE_RATE must be between 0.0 and 1.0".to_owned());
        }
        self.sentry.parsed_dsn()?;
        Ok(())
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Logging (`[log]`).
#[derive(Debug, Clone, Deserialize)]
pub struct LogConfig {
    /// `pretty` (local) or `json` (dev, prod).
    pub format: LogFormat,
    /// Which lines are written, as `RUST_LOG` (which wins when set) would say.
    pub filter: String,
}

/// The Sentry client (`[sentry]`).
#[derive(Debug, Clone, Deserialize)]
pub struct SentryConfig {
    /// Empty: Sentry is off and nothing is sent.
    pub dsn: SecretString,
    /// Share of requests traced, 0.0 to 1.0.
    pub traces_sample_rate: f32,
    /// Comma-separated route templates never traced (probes and the metrics scrape).
    #[serde(default = "default_untraced_routes")]
    pub untraced_routes: String,
    /// Whether an incoming `sentry-trace`/`traceparent` may decide that a request is
    /// traced; off, the trace is continued but sampled at `traces_sample_rate`.
    #[serde(default)]
    pub trust_incoming_traces: bool,
}

fn default_untraced_routes() -> String {
    "/healthz,/readyz,/metrics".to_owned()
}

impl SentryConfig {
    /// The DSN, trimmed; `None` when blank (Sentry off).
    pub fn dsn(&self) -> Option<&str> {
        Some(self.dsn.expose_secret().trim()).filter(|dsn| !dsn.is_empty())
    }

    /// The DSN parsed, `None` when blank. The error names the setting and what is wrong
    /// (the parser's reasons carry no part of the value), never the DSN: it holds a key.
    pub fn parsed_dsn(&self) -> Result<Option<sentry::types::Dsn>, String> {
        self.dsn()
            .map(|dsn| {
                dsn.parse::<sentry::types::Dsn>().map_err(|reason| {
                    format!(
                        "SENTRY_DSN is not a Sentry DSN ({reason}): expected \
                         https://<public key>@<host>/<project id>, or empty for no Sentry"
                    )
                })
            })
            .transpose()
    }

    /// `untraced_routes` as a list, blanks dropped.
    pub fn untraced_routes(&self) -> Vec<String> {
        self.untraced_routes
            .split(',')
            .map(str::trim)
            .filter(|route| !route.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// Prometheus metrics (`[metrics]`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MetricsConfig {
    /// Unset: `GET /metrics` is served on the main port. Set: only on this port (0 picks
    /// a free one), on the same host.
    #[serde(default)]
    pub admin_port: Option<u16>,
}

//! Settings: `config/default.toml` → `config/{APP_ENV}.toml` → environment.
//!
//! The original's flat variable names (`DATABASE_URL`, `JWT_VERIFY_KEY`, …) are mapped
//! explicitly onto the tree; everything else is `APP_<SECTION>__<KEY>`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The development key shipped in `config/local.toml`; refused outside `APP_ENV=local`.
pub const LOCAL_DEV_JWT_KEY: &str = "LOCAL-DEVELOPMENT-ONLY-insecure-jwt-key-do-not-deploy";

/// Shortest HMAC key accepted outside the local profile (RFC 7518 §3.2 for HS256).
const MIN_KEY_BYTES: usize = 32;

/// The original's environment names and where each lands in the settings tree.
/// `SUPABASE_JWT_SECRET` is only a fallback for `JWT_VERIFY_KEY`, handled in `load_from`.
const FLAT_NAMES: &[(&str, &str)] = &[
    ("APP_ENV", "app_env"),
    ("BEHAVE_AS", "behave_as"),
    ("HOST", "server.host"),
    ("PORT", "server.port"),
    ("DATABASE_URL", "database.url"),
    ("JWT_VERIFY_KEY", "auth.jwt_verify_key"),
    ("JWT_SIGN_ALGORITHM", "auth.jwt_sign_algorithm"),
    ("JWT_REQUIRE_EXP", "auth.require_exp"),
    ("JWT_JWKS_URL", "auth.jwks_url"),
    ("LOG_FORMAT", "log.format"),
    ("SENTRY_DSN", "sentry.dsn"),
    ("SENTRY_TRACES_SAMPLE_RATE", "sentry.traces_sample_rate"),
    ("DISCORD_BOT_TOKEN", "discord.bot_token"),
    ("DISCORD_API_BASE_URL", "discord.api_base_url"),
    ("PLATFORM_ALERT_DISCORD_CHANNEL", "discord.platform_channel"),
    ("PRODUCT_ALERT_DISCORD_CHANNEL", "discord.product_channel"),
    ("ALERTS_API_KEY", "discord.alerts_api_key"),
];

/// Which deployment profile is running (`APP_ENV`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppEnv {
    /// A developer's machine: the dev JWT key is allowed.
    Local,
    /// A shared development deployment.
    Dev,
    /// Production.
    Prod,
}

impl AppEnv {
    /// The name used in file names and in the Sentry environment.
    pub fn as_str(self) -> &'static str {
        match self {
            AppEnv::Local => "local",
            AppEnv::Dev => "dev",
            AppEnv::Prod => "prod",
        }
    }

    fn parse(value: &str) -> Result<Self, SettingsError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "local" => Ok(AppEnv::Local),
            "dev" => Ok(AppEnv::Dev),
            "prod" => Ok(AppEnv::Prod),
            other => Err(SettingsError::Invalid(format!(
                "APP_ENV must be local, dev or prod, not {other:?}"
            ))),
        }
    }
}

/// Everything the service reads at start-up.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// Deployment profile.
    pub app_env: AppEnv,
    /// `local` or `cloud`, as the original's `BEHAVE_AS`.
    pub behave_as: String,
    /// HTTP server.
    pub server: ServerSettings,
    /// PostgreSQL or SQLite.
    pub database: DatabaseSettings,
    /// JWT verification.
    pub auth: AuthSettings,
    /// Log output.
    pub log: LogSettings,
    /// Sentry client.
    pub sentry: SentrySettings,
    /// Prometheus metrics.
    #[serde(default)]
    pub metrics: MetricsSettings,
    /// Discord alerts.
    pub discord: DiscordSettings,
    /// Group commit and batch endpoints.
    pub ingest: IngestSettings,
    /// `Idempotency-Key` handling.
    pub idempotency: IdempotencySettings,
    /// Per-IP and per-user rate limits.
    #[serde(default)]
    pub rate_limit: crate::edge::RateLimitSettings,
    /// CORS and beacon mode.
    #[serde(default)]
    pub browser: crate::edge::BrowserSettings,
}

/// How single events are grouped into transactions, and the batch endpoints' limits.
#[derive(Debug, Clone, Deserialize)]
pub struct IngestSettings {
    /// Most rows one transaction takes.
    pub max_batch: usize,
    /// Most (estimated) bytes of row data one insert statement takes.
    pub max_batch_bytes: usize,
    /// How long a writer waits for more rows once it has one, in microseconds (0: none).
    pub max_wait_us: u64,
    /// Rows that may wait per table before requests get 503.
    pub queue_capacity: usize,
    /// Bytes of row data (each row at its upper bound) that may wait per table before 503.
    pub queue_capacity_bytes: usize,
    /// Writers (concurrent transactions) per table.
    pub writers_per_table: usize,
    /// Longest one group-commit batch may take before its rows get 503 and its connection
    /// is dropped, in milliseconds; also the writers' `statement_timeout`.
    pub batch_deadline_ms: u64,
    /// `/readyz` answers 503 while a writer has held rows this long without a commit (ms).
    pub stall_after_ms: u64,
    /// At shutdown, after the HTTP drain, queued rows get this long to be written; the rest
    /// are answered 503 (ms).
    pub shutdown_flush_ms: u64,
    /// Most items in one batch-endpoint request.
    pub batch_max_items: usize,
    /// Largest body of a batch-endpoint request, in bytes.
    pub batch_body_limit_bytes: usize,
    /// Batch-endpoint requests read and stored at once; more wait for a turn (bounds memory).
    pub batch_max_concurrent: usize,
}

/// Where and how the HTTP server listens.
#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    /// Interface to bind (`HOST`).
    pub host: String,
    /// Port to bind (`PORT`); 0 picks a free one.
    pub port: u16,
    /// Largest accepted request body, in bytes.
    pub body_limit_bytes: usize,
    /// Request-body bytes (decompressed) held in memory at once by authenticated requests.
    pub body_budget_bytes: usize,
    /// The same for requests whose caller failed authentication.
    pub anonymous_body_budget_bytes: usize,
    /// How long a body waits for room in its budget before the request gets 503.
    pub body_budget_wait_ms: u64,
    /// A request running longer than this is answered 503.
    pub request_timeout_secs: u64,
    /// How long in-flight requests may run after a shutdown signal.
    pub shutdown_timeout_secs: u64,
    /// A client must send its whole request head within this time (slowloris).
    #[serde(default = "default_header_read_timeout_secs")]
    pub header_read_timeout_secs: u64,
    /// Most connections open at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Largest request head (request line and headers), in bytes.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// A keep-alive connection with no request for this long is closed.
    #[serde(default = "default_keep_alive_idle_secs")]
    pub keep_alive_idle_secs: u64,
    /// Also serve cleartext HTTP/2 (h2c, prior knowledge); off: HTTP/1.1 only.
    #[serde(default)]
    pub http2_enabled: bool,
    /// With HTTP/2: most requests (streams) one connection may have open at once.
    #[serde(default = "default_http2_max_concurrent_streams")]
    pub http2_max_concurrent_streams: u32,
}

fn default_keep_alive_idle_secs() -> u64 {
    75
}

fn default_http2_max_concurrent_streams() -> u32 {
    100
}

fn default_header_read_timeout_secs() -> u64 {
    10
}

fn default_max_connections() -> usize {
    4096
}

fn default_max_header_bytes() -> usize {
    64 * 1024
}

/// Which database, and how the pool behaves.
#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    /// `postgres://…` or `sqlite://…`; unset means the SQLite file at `sqlite_path`.
    #[serde(default)]
    pub url: Option<SecretString>,
    /// The embedded default's file, relative to the working directory.
    pub sqlite_path: PathBuf,
    /// Most connections the pool opens.
    pub max_connections: u32,
    /// How long a request waits for a free connection before 503.
    pub acquire_timeout_ms: u64,
    /// How long start-up waits for the database (0: do not check at start-up).
    pub startup_timeout_secs: u64,
    /// Apply the embedded migrations at start-up.
    pub run_migrations: bool,
}

/// JWT verification, as `autogpt_libs.auth`.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    /// HMAC key (`JWT_VERIFY_KEY`, else `SUPABASE_JWT_SECRET`).
    #[serde(default)]
    pub jwt_verify_key: Option<SecretString>,
    /// The one accepted algorithm (`JWT_SIGN_ALGORITHM`).
    pub jwt_sign_algorithm: String,
    /// Refuse tokens without `exp` (`JWT_REQUIRE_EXP`).
    pub require_exp: bool,
    /// Key set for asymmetric tokens (`JWT_JWKS_URL`); unset or empty: HMAC only.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Timeout of one key-set fetch, in milliseconds.
    pub jwks_timeout_ms: u64,
    /// Least time between two fetches caused by tokens (unknown `kid`, old keys).
    pub jwks_min_refresh_secs: u64,
    /// Keys older than this are fetched again on the next asymmetric token.
    pub jwks_max_age_secs: u64,
}

/// `Idempotency-Key` handling on the analytics endpoints.
#[derive(Debug, Clone, Deserialize)]
pub struct IdempotencySettings {
    /// How long a key is remembered; afterwards the same key stores a new row.
    pub retention_secs: u64,
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

/// Logging.
#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    /// `pretty` (local) or `json` (dev, prod).
    pub format: LogFormat,
    /// Which lines are written, as `RUST_LOG` (which wins when set) would say.
    pub filter: String,
}

/// Sentry client.
#[derive(Debug, Clone, Deserialize)]
pub struct SentrySettings {
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

impl SentrySettings {
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

/// Prometheus metrics.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MetricsSettings {
    /// Unset: `GET /metrics` is served on the main port. Set: only on this port (0 picks
    /// a free one), on the same host.
    #[serde(default)]
    pub admin_port: Option<u16>,
}

/// Discord alerts.
#[derive(Debug, Clone, Deserialize)]
pub struct DiscordSettings {
    /// Empty: alerts are off and the endpoint answers 503.
    pub bot_token: SecretString,
    /// Discord's REST base URL; tests point it at a fake server.
    pub api_base_url: String,
    /// Channel name or id for `platform` alerts.
    pub platform_channel: String,
    /// Channel name or id for `product` alerts.
    pub product_channel: String,
    /// Key for `X-API-Key` on the alerts endpoint; empty: admin JWTs only.
    pub alerts_api_key: SecretString,
    /// TCP connect timeout for Discord, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Timeout of one Discord request, in milliseconds.
    pub request_timeout_ms: u64,
    /// Longest one alert may wait on 429s, backoff and pacing before giving up (503).
    pub wait_budget_ms: u64,
    /// Retries after a Discord 5xx or timeout.
    pub max_retries: u32,
    /// Identical alerts within this window are sent once (0: no dedupe).
    pub dedupe_window_ms: u64,
    /// Messages a channel may receive at once before pacing starts.
    pub channel_burst: u32,
    /// Then one message per channel per this interval (0: no pacing).
    pub channel_interval_ms: u64,
    /// Storage failing for longer than this sends a platform alert (once per dedupe window).
    pub storage_alert_after_ms: u64,
}

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A file or value could not be read or converted.
    #[error("configuration error: {0}")]
    Load(#[from] config::ConfigError),
    /// A value was read but is not acceptable.
    #[error("invalid setting: {0}")]
    Invalid(String),
}

/// Which database a URL (or its absence) selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseKind {
    /// `postgres://` or `postgresql://`.
    Postgres,
    /// `sqlite:` or the embedded default.
    Sqlite,
}

impl DatabaseSettings {
    /// The database the settings select; an unknown URL scheme is an error.
    pub fn kind(&self) -> Result<DatabaseKind, SettingsError> {
        let Some(url) = self.url.as_ref().map(|u| u.expose_secret().trim()) else {
            return Ok(DatabaseKind::Sqlite);
        };
        if url.is_empty() || url.starts_with("sqlite:") {
            Ok(DatabaseKind::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(DatabaseKind::Postgres)
        } else {
            // Only the scheme is echoed: the rest may hold a password.
            let scheme = url.split(':').next().unwrap_or_default();
            Err(SettingsError::Invalid(format!(
                "DATABASE_URL has an unknown scheme {scheme:?}: use postgres:// or sqlite://"
            )))
        }
    }

    /// The acquire timeout as a `Duration`.
    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.acquire_timeout_ms)
    }
}

impl AuthSettings {
    /// The verification key with surrounding whitespace trimmed, if one is set.
    pub fn key(&self) -> Option<&str> {
        self.jwt_verify_key
            .as_ref()
            .map(|k| k.expose_secret().trim())
            .filter(|k| !k.is_empty())
    }

    /// The JWKS URL, trimmed, if one is set.
    pub fn jwks_url(&self) -> Option<&str> {
        self.jwks_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
    }

    /// An `https://` URL, or `http://` to a loopback host (tests, sidecars).
    fn check_jwks_url(url: &str) -> Result<(), SettingsError> {
        let refused = || {
            SettingsError::Invalid(
                "JWT_JWKS_URL must be an https:// URL (http:// only for localhost)".to_owned(),
            )
        };
        let parsed = url::Url::parse(url).map_err(|_| refused())?;
        let loopback = match parsed.host() {
            Some(url::Host::Domain(name)) => name == "localhost",
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
        match parsed.scheme() {
            "https" if parsed.host().is_some() => Ok(()),
            "http" if loopback => Ok(()),
            _ => Err(refused()),
        }
    }
}

impl Settings {
    /// `app:{APP_ENV}-behave:{BEHAVE_AS}`, the Sentry environment of the original.
    pub fn sentry_environment(&self) -> String {
        format!("app:{}-behave:{}", self.app_env.as_str(), self.behave_as)
    }

    /// Checks what the types cannot: keys, URL schemes, ranges.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |msg: &str| Err(SettingsError::Invalid(msg.to_owned()));
        if let Some(url) = self.auth.jwks_url() {
            AuthSettings::check_jwks_url(url)?;
            if self.auth.jwks_timeout_ms == 0 {
                return invalid("auth.jwks_timeout_ms must be at least 1");
            }
        }
        let key = match (self.auth.key(), self.auth.jwks_url()) {
            (Some(key), _) => Some(key),
            (None, Some(_)) => None,
            (None, None) => {
                return invalid(
                    "no JWT key: set JWT_VERIFY_KEY (or SUPABASE_JWT_SECRET) or JWT_JWKS_URL",
                );
            }
        };
        if let Some(key) = key.filter(|_| self.app_env != AppEnv::Local) {
            if key == LOCAL_DEV_JWT_KEY {
                return invalid(
                    "the local development JWT key is refused outside APP_ENV=local: set JWT_VERIFY_KEY",
                );
            }
            if key.len() < MIN_KEY_BYTES {
                return invalid("JWT_VERIFY_KEY is shorter than 32 bytes");
            }
        }
        if !matches!(
            self.auth.jwt_sign_algorithm.as_str(),
            "HS256" | "HS384" | "HS512"
        ) {
            return invalid("JWT_SIGN_ALGORITHM must be HS256, HS384 or HS512");
        }
        self.database.kind()?;
        if self.database.max_connections == 0 {
            return invalid("database.max_connections must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.sentry.traces_sample_rate) {
            return invalid("SENTRY_TRACES_SAMPLE_RATE must be between 0.0 and 1.0");
        }
        if self.server.body_limit_bytes == 0 || self.ingest.batch_body_limit_bytes == 0 {
            return invalid("body limits must be at least 1 byte");
        }
        // A batch takes one token per item from the user's bucket: a bucket smaller than
        // the largest batch would refuse that batch forever.
        if self.rate_limit.user_per_second > 0.0
            && (self.rate_limit.user_burst as usize) < self.ingest.batch_max_items
        {
            return invalid(
                "rate_limit.user_burst must be at least ingest.batch_max_items (a batch takes one token per item)",
            );
        }
        // A budget smaller than one allowed body would refuse that body forever.
        let largest_body = self
            .server
            .body_limit_bytes
            .max(self.ingest.batch_body_limit_bytes);
        if self.server.body_budget_bytes < largest_body
            || self.server.anonymous_body_budget_bytes < self.server.body_limit_bytes
        {
            return invalid(
                "server.body_budget_bytes must hold the largest body limit, and \
                 server.anonymous_body_budget_bytes must hold server.body_limit_bytes",
            );
        }
        if self.ingest.max_batch == 0
            || self.ingest.queue_capacity == 0
            || self.ingest.queue_capacity_bytes == 0
        {
            return invalid(
                "ingest.max_batch, ingest.queue_capacity and ingest.queue_capacity_bytes must be at least 1",
            );
        }
        if self.ingest.batch_deadline_ms == 0 || self.ingest.stall_after_ms == 0 {
            return invalid(
                "ingest.batch_deadline_ms and ingest.stall_after_ms must be at least 1",
            );
        }
        if self.ingest.batch_max_items == 0
            || self.ingest.writers_per_table == 0
            || self.ingest.batch_max_concurrent == 0
        {
            return invalid(
                "ingest.batch_max_items, ingest.writers_per_table and ingest.batch_max_concurrent must be at least 1",
            );
        }
        if self.server.header_read_timeout_secs == 0 || self.server.max_connections == 0 {
            return invalid(
                "server.header_read_timeout_secs and server.max_connections must be at least 1",
            );
        }
        if self.server.keep_alive_idle_secs == 0 || self.server.http2_max_concurrent_streams == 0 {
            return invalid(
                "server.keep_alive_idle_secs and server.http2_max_concurrent_streams must be at least 1",
            );
        }
        crate::edge::config::validate(&self.rate_limit, &self.browser)?;
        if self.idempotency.retention_secs == 0 {
            return invalid("idempotency.retention_secs must be at least 1");
        }
        Ok(())
    }
}

/// Loads settings from `./config` (or `APP_CONFIG_DIR`) and the process environment.
pub fn load() -> Result<Settings, SettingsError> {
    let env: HashMap<String, String> = std::env::vars().collect();
    let dir = env
        .get("APP_CONFIG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("config"));
    load_from(&dir, &env)
}

/// Loads settings from `config_dir` and the given environment; tests pass their own map.
pub fn load_from(
    config_dir: &Path,
    env: &HashMap<String, String>,
) -> Result<Settings, SettingsError> {
    let app_env = AppEnv::parse(env.get("APP_ENV").map(String::as_str).unwrap_or(""))?;
    let default_file = config_dir.join("default.toml");
    if !default_file.is_file() {
        return Err(SettingsError::Invalid(format!(
            "{} not found: run from the project folder or set APP_CONFIG_DIR",
            default_file.display()
        )));
    }
    let nested: HashMap<String, String> = env
        .iter()
        .filter(|(k, _)| k.starts_with("APP_") && k.contains("__"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut builder = config::Config::builder()
        .add_source(config::File::from(default_file).format(config::FileFormat::Toml))
        .add_source(
            config::File::from(config_dir.join(format!("{}.toml", app_env.as_str())))
                .format(config::FileFormat::Toml)
                .required(false),
        )
        .add_source(
            config::Environment::with_prefix("APP")
                .prefix_separator("_")
                .separator("__")
                .source(Some(nested)),
        )
        .set_override("app_env", app_env.as_str())?;
    let key_fallback = env.get("SUPABASE_JWT_SECRET").filter(|_| {
        env.get("JWT_VERIFY_KEY")
            .is_none_or(|k| k.trim().is_empty())
    });
    if let Some(secret) = key_fallback {
        builder = builder.set_override("auth.jwt_verify_key", secret.as_str())?;
    }
    for (name, key) in FLAT_NAMES.iter().filter(|(name, _)| *name != "APP_ENV") {
        if let Some(value) = env.get(*name) {
            builder = builder.set_override(*key, value.as_str())?;
        }
    }
    let settings: Settings = builder.build()?.try_deserialize()?;
    settings.validate()?;
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config")
    }

    fn load_with(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let env = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        load_from(&config_dir(), &env)
    }

    #[test]
    fn local_profile_starts_with_no_environment() {
        let settings = load_with(&[]).expect("local defaults are valid");

        assert_eq!(settings.app_env, AppEnv::Local);
        assert_eq!(settings.server.port, 8006);
        assert_eq!(settings.server.host, "127.0.0.1");
        assert_eq!(settings.auth.key(), Some(LOCAL_DEV_JWT_KEY));
        assert_eq!(settings.database.kind().unwrap(), DatabaseKind::Sqlite);
        assert_eq!(settings.sentry_environment(), "app:local-behave:local");
    }

    #[test]
    fn flat_names_of_the_original_are_honoured() {
        let settings = load_with(&[
            ("PORT", "9001"),
            ("DATABASE_URL", "postgres://u:p@db/x"),
            ("JWT_SIGN_ALGORITHM", "HS512"),
            ("JWT_REQUIRE_EXP", "false"),
            ("BEHAVE_AS", "cloud"),
            ("PLATFORM_ALERT_DISCORD_CHANNEL", "ops"),
            ("APP_DATABASE__MAX_CONNECTIONS", "3"),
        ])
        .unwrap();

        assert_eq!(settings.server.port, 9001);
        assert_eq!(settings.database.kind().unwrap(), DatabaseKind::Postgres);
        assert_eq!(settings.auth.jwt_sign_algorithm, "HS512");
        assert!(!settings.auth.require_exp);
        assert_eq!(settings.discord.platform_channel, "ops");
        assert_eq!(settings.database.max_connections, 3);
        assert_eq!(settings.sentry_environment(), "app:local-behave:cloud");
    }

    #[test]
    fn supabase_secret_is_the_fallback_key_and_is_trimmed() {
        let key = "  0123456789abcdef0123456789abcdef  ";
        let settings = load_with(&[("APP_ENV", "prod"), ("SUPABASE_JWT_SECRET", key)]).unwrap();

        assert_eq!(settings.auth.key(), Some(key.trim()));
    }

    #[test]
    fn prod_refuses_the_development_key_and_short_keys() {
        let dev_key = load_with(&[("APP_ENV", "prod"), ("JWT_VERIFY_KEY", LOCAL_DEV_JWT_KEY)]);
        let short = load_with(&[("APP_ENV", "dev"), ("JWT_VERIFY_KEY", "short")]);
        let none = load_with(&[("APP_ENV", "prod")]);

        assert!(
            dev_key
                .unwrap_err()
                .to_string()
                .contains("development JWT key")
        );
        assert!(
            short
                .unwrap_err()
                .to_string()
                .contains("shorter than 32 bytes")
        );
        assert!(none.unwrap_err().to_string().contains("no JWT key"));
    }

    #[test]
    fn unknown_url_scheme_is_refused_without_echoing_the_url() {
        let err = load_with(&[("DATABASE_URL", "mysql://user:hunter2@db/x")]).unwrap_err();

        let text = err.to_string();
        assert!(text.contains("unknown scheme \"mysql\""), "{text}");
        assert!(!text.contains("hunter2"));
    }

    #[test]
    fn edge_settings_come_from_the_environment() {
        let settings = load_with(&[
            ("APP_RATE_LIMIT__DRY_RUN", "true"),
            ("APP_RATE_LIMIT__TRUSTED_PROXY_HOPS", "2"),
            ("APP_BROWSER__ALLOWED_ORIGINS", "https://a.example.com"),
            ("APP_BROWSER__BEACON_ENABLED", "true"),
            ("APP_SERVER__HEADER_READ_TIMEOUT_SECS", "3"),
        ])
        .unwrap();

        assert!(settings.rate_limit.dry_run);
        assert_eq!(settings.rate_limit.trusted_proxy_hops, 2);
        assert_eq!(settings.browser.origins(), ["https://a.example.com"]);
        assert!(settings.browser.beacon_enabled);
        assert_eq!(settings.server.header_read_timeout_secs, 3);
        assert!(load_with(&[("APP_BROWSER__ALLOWED_ORIGINS", "*")]).is_err());
    }

    #[test]
    fn prod_serves_metrics_on_the_admin_port_and_local_on_the_main_port() {
        let key = ("JWT_VERIFY_KEY", "0123456789abcdef0123456789abcdef");

        let prod = load_with(&[("APP_ENV", "prod"), key]).unwrap();
        let local = load_with(&[]).unwrap();

        assert_eq!(prod.metrics.admin_port, Some(9464));
        assert_eq!(local.metrics.admin_port, None);
    }

    #[test]
    fn connection_timeouts_default_to_a_short_head_and_a_longer_idle_spell() {
        let settings = load_with(&[]).unwrap();
        let zero_idle = load_with(&[("APP_SERVER__KEEP_ALIVE_IDLE_SECS", "0")]);

        assert_eq!(settings.server.header_read_timeout_secs, 10);
        assert_eq!(settings.server.keep_alive_idle_secs, 75);
        assert!(!settings.server.http2_enabled);
        assert_eq!(settings.server.http2_max_concurrent_streams, 100);
        assert!(
            zero_idle
                .unwrap_err()
                .to_string()
                .contains("keep_alive_idle_secs")
        );
    }

    #[test]
    fn bad_app_env_and_bad_numbers_are_refused() {
        assert!(load_with(&[("APP_ENV", "staging")]).is_err());
        assert!(load_with(&[("PORT", "eighty")]).is_err());
        assert!(load_with(&[("SENTRY_TRACES_SAMPLE_RATE", "2")]).is_err());
        assert!(load_with(&[("JWT_SIGN_ALGORITHM", "none")]).is_err());
    }

    #[test]
    fn a_jwks_url_makes_the_hmac_key_optional() {
        let settings = load_with(&[
            ("APP_ENV", "prod"),
            (
                "JWT_JWKS_URL",
                "https://project.supabase.co/auth/v1/.well-known/jwks.json",
            ),
        ])
        .unwrap();

        assert_eq!(settings.auth.key(), None);
        assert_eq!(
            settings.auth.jwks_url(),
            Some("https://project.supabase.co/auth/v1/.well-known/jwks.json")
        );
        assert_eq!(settings.auth.jwks_min_refresh_secs, 60);
    }

    #[test]
    fn a_jwks_url_must_be_https_except_on_loopback() {
        let plain = load_with(&[("JWT_JWKS_URL", "http://keys.example.com/jwks.json")]);
        let junk = load_with(&[("JWT_JWKS_URL", "not a url")]);
        let loopback = load_with(&[("JWT_JWKS_URL", "http://127.0.0.1:9999/jwks.json")]);

        assert!(plain.unwrap_err().to_string().contains("https://"));
        assert!(junk.is_err());
        assert!(loopback.is_ok());
    }
}

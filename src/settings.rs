//! Settings: `config/default.toml` → `config/{APP_ENV}.toml` → environment.
//!
//! This module only loads the layers and composes the components' own configs (each with
//! its `validate()`); it adds the checks that span components. The original's flat
//! variable names (`DATABASE_URL`, `JWT_VERIFY_KEY`, …) are mapped explicitly onto the
//! tree; everything else is `APP_<SECTION>__<KEY>`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::{alerts, auth, edge, idempotency, ingest, routes, server, store, stream, telemetry};

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
    ("NATS_URL", "nats.url"),
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

/// Everything the service reads at start-up, one config per component.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Deployment profile.
    pub app_env: AppEnv,
    /// `local` or `cloud`, as the original's `BEHAVE_AS`.
    pub behave_as: String,
    /// The listener and its connections (`[server]`).
    pub server: server::Config,
    /// PostgreSQL or SQLite (`[database]`).
    pub database: store::Config,
    /// JWT verification (`[auth]`).
    pub auth: auth::Config,
    /// Logs, Sentry and metrics (`[log]`, `[sentry]`, `[metrics]`).
    pub telemetry: telemetry::Config,
    /// Discord alerts (`[discord]`).
    pub alerts: alerts::Config,
    /// Group commit (`[ingest]`).
    pub ingest: ingest::Config,
    /// The batch endpoints (`[ingest]`'s `batch_*` keys).
    pub batch: routes::batch::Config,
    /// `Idempotency-Key` handling (`[idempotency]`).
    pub idempotency: idempotency::Config,
    /// NATS and its streams, for stream mode (`[nats]`).
    pub nats: stream::Config,
    /// The loader, from the streams into the database (`[loader]`).
    pub loader: stream::LoaderConfig,
    /// Rate limits, browser ingestion and request limits (`[rate_limit]`, `[browser]`,
    /// `[server]`'s body and timeout keys).
    pub edge: edge::Config,
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

impl Settings {
    /// `app:{APP_ENV}-behave:{BEHAVE_AS}`, the Sentry environment of the original (made
    /// once, in `compose`, for telemetry).
    pub fn sentry_environment(&self) -> &str {
        &self.telemetry.environment
    }

    /// Each component's own checks, then those that span components.
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.auth.validate(self.app_env == AppEnv::Local)?;
        self.database.validate()?;
        self.server.validate()?;
        self.telemetry.validate()?;
        self.alerts.validate(self.app_env == AppEnv::Prod)?;
        self.ingest.validate()?;
        self.batch.validate()?;
        self.idempotency.validate()?;
        self.nats.validate()?;
        self.loader.validate()?;
        self.edge.validate()?;
        // No check of rate_limit.user_burst against ingest.batch_max_items: a batch larger
        // than the user's bucket is answered 429 (edge::rate_limit), so any burst starts.
        // A budget smaller than one allowed body would refuse that body forever.
        let requests = &self.edge.requests;
        if requests.body_budget_bytes < requests.body_limit_bytes.max(self.batch.body_limit_bytes) {
            return Err(invalid(
                "server.body_budget_bytes must hold the largest body limit \
                 (server.body_limit_bytes and ingest.batch_body_limit_bytes)",
            ));
        }
        Ok(())
    }

    /// The secret values that must never leave the process (for the log and Sentry
    /// scrubbers): the JWT key, the bot token, the alerts API key, the database password,
    /// the NATS URLs' passwords and tokens.
    pub fn secrets(&self) -> Vec<String> {
        [
            self.auth.key().map(str::to_owned),
            self.alerts.bot_token().map(str::to_owned),
            self.alerts.alerts_api_key().map(str::to_owned),
            self.database.password(),
        ]
        .into_iter()
        .flatten()
        .chain(self.nats.secrets())
        .collect()
    }
}

impl From<String> for SettingsError {
    fn from(message: String) -> Self {
        SettingsError::Invalid(message)
    }
}

fn invalid(message: &str) -> SettingsError {
    SettingsError::Invalid(message.to_owned())
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
    let settings = compose(app_env, &builder.build()?)?;
    settings.validate()?;
    Ok(settings)
}

/// The components' configs, each read from its section(s) of the merged layers. A section
/// two components share (`[ingest]`, `[server]`) is read once for each, not split with
/// `#[serde(flatten)]`: through flatten, an environment value (always a string) is no longer
/// converted to the number its field wants.
fn compose(app_env: AppEnv, file: &config::Config) -> Result<Settings, SettingsError> {
    let behave_as: String = file.get("behave_as")?;
    let telemetry = telemetry::Config {
        log: file.get("log")?,
        sentry: file.get("sentry")?,
        metrics: section_or_default(file, "metrics")?,
        environment: format!("app:{}-behave:{behave_as}", app_env.as_str()),
    };
    Ok(Settings {
        app_env,
        behave_as,
        server: file.get("server")?,
        database: file.get("database")?,
        auth: file.get("auth")?,
        telemetry,
        alerts: file.get("discord")?,
        // `[ingest]` holds the writers' keys and the batch endpoints' `batch_*` keys.
        ingest: file.get("ingest")?,
        batch: file.get("ingest")?,
        idempotency: file.get("idempotency")?,
        nats: section_or_default(file, "nats")?,
        loader: section_or_default(file, "loader")?,
        edge: edge::Config {
            rate_limit: section_or_default(file, "rate_limit")?,
            browser: section_or_default(file, "browser")?,
            requests: file.get("server")?,
        },
    })
}

/// A section that may be left out of the files altogether.
fn section_or_default<T: DeserializeOwned + Default>(
    file: &config::Config,
    key: &str,
) -> Result<T, SettingsError> {
    match file.get(key) {
        Ok(value) => Ok(value),
        Err(config::ConfigError::NotFound(_)) => Ok(T::default()),
        Err(err) => Err(err.into()),
    }
}

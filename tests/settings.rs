//! Loading `config/*.toml` and the environment into the components' configs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use analytics_service::auth::LOCAL_DEV_JWT_KEY;
use analytics_service::settings::{AppEnv, Settings, SettingsError, load_from};
use analytics_service::store::DatabaseKind;

const PROD_KEY: (&str, &str) = ("JWT_VERIFY_KEY", "0123456789abcdef0123456789abcdef");

fn config_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config")
}

fn load_with(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
    let env: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    load_from(&config_dir(), &env)
}

fn error_of(vars: &[(&str, &str)]) -> String {
    load_with(vars).expect_err("refused").to_string()
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
    assert_eq!(settings.telemetry.environment, "app:local-behave:local");
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
    assert_eq!(settings.alerts.platform_channel, "ops");
    assert_eq!(settings.database.max_connections, 3);
    assert_eq!(settings.sentry_environment(), "app:local-behave:cloud");
    assert_eq!(settings.telemetry.environment, "app:local-behave:cloud");
}

#[test]
fn supabase_secret_is_the_fallback_key_and_is_trimmed() {
    let key = "  0123456789abcdef0123456789abcdef  ";
    let settings = load_with(&[("APP_ENV", "prod"), ("SUPABASE_JWT_SECRET", key)]).unwrap();

    assert_eq!(settings.auth.key(), Some(key.trim()));
}

#[test]
fn prod_refuses_the_development_key_and_short_keys() {
    let dev_key = error_of(&[("APP_ENV", "prod"), ("JWT_VERIFY_KEY", LOCAL_DEV_JWT_KEY)]);
    let short = error_of(&[("APP_ENV", "dev"), ("JWT_VERIFY_KEY", "short")]);
    let none = error_of(&[("APP_ENV", "prod")]);

    assert!(dev_key.contains("development JWT key"), "{dev_key}");
    assert!(short.contains("shorter than 32 bytes"), "{short}");
    assert!(none.contains("no JWT key"), "{none}");
}

#[test]
fn prod_refuses_a_short_or_placeholder_alerts_api_key_without_echoing_it() {
    let short_key = "short-alerts-key-31-bytes-long!";
    assert_eq!(short_key.len(), 31);
    let short = error_of(&[("APP_ENV", "prod"), PROD_KEY, ("ALERTS_API_KEY", short_key)]);
    let placeholder = error_of(&[
        ("APP_ENV", "prod"),
        PROD_KEY,
        ("ALERTS_API_KEY", "change-me"),
    ]);
    let long_key = "0123456789abcdef0123456789abcdef";
    let long = load_with(&[("APP_ENV", "prod"), PROD_KEY, ("ALERTS_API_KEY", long_key)]);
    let unset = load_with(&[("APP_ENV", "prod"), PROD_KEY, ("ALERTS_API_KEY", "")]);
    let local = load_with(&[("ALERTS_API_KEY", "change-me")]);

    assert!(
        short.contains("ALERTS_API_KEY is shorter than 32 bytes"),
        "{short}"
    );
    assert!(!short.contains(short_key), "{short}");
    assert!(
        placeholder.contains("ALERTS_API_KEY holds the change-me placeholder"),
        "{placeholder}"
    );
    assert_eq!(long.unwrap().alerts.alerts_api_key(), Some(long_key));
    assert_eq!(
        unset.unwrap().alerts.alerts_api_key(),
        None,
        "admin JWTs only"
    );
    assert!(local.is_ok(), "only APP_ENV=prod insists");
}

#[test]
fn an_invalid_sentry_dsn_is_a_settings_error_naming_the_setting_not_the_value() {
    for dsn in [
        "not a dsn",
        "http://",
        "https://dsn-public-key-7@sentry.example.com/",
        "ftp://dsn-public-key-7@sentry.example.com/1",
        "change-me",
    ] {
        let text = error_of(&[("SENTRY_DSN", dsn)]);

        assert!(
            text.contains("SENTRY_DSN is not a Sentry DSN"),
            "{dsn}: {text}"
        );
        assert!(!text.contains(dsn), "{text}");
        assert!(!text.contains("dsn-public-key-7"), "{text}");
    }
    let valid = load_with(&[("SENTRY_DSN", "https://key@sentry.example.com/42")]).unwrap();
    assert!(valid.telemetry.sentry.parsed_dsn().unwrap().is_some());
}

#[test]
fn unknown_url_scheme_is_refused_without_echoing_the_url() {
    let text = error_of(&[("DATABASE_URL", "mysql://user:hunter2@db/x")]);

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

    assert!(settings.edge.rate_limit.dry_run);
    assert_eq!(settings.edge.rate_limit.trusted_proxy_hops, 2);
    assert_eq!(settings.edge.browser.origins(), ["https://a.example.com"]);
    assert!(settings.edge.browser.beacon_enabled);
    assert_eq!(settings.server.header_read_timeout, Duration::from_secs(3));
    assert!(load_with(&[("APP_BROWSER__ALLOWED_ORIGINS", "*")]).is_err());
}

#[test]
fn prod_serves_metrics_on_the_admin_port_and_local_on_the_main_port() {
    let prod = load_with(&[("APP_ENV", "prod"), PROD_KEY]).unwrap();
    let local = load_with(&[]).unwrap();

    assert_eq!(prod.telemetry.metrics.admin_port, Some(9464));
    assert_eq!(local.telemetry.metrics.admin_port, None);
}

#[test]
fn connection_timeouts_default_to_a_short_head_and_a_longer_idle_spell() {
    let settings = load_with(&[]).unwrap();
    let zero_idle = error_of(&[("APP_SERVER__KEEP_ALIVE_IDLE_SECS", "0")]);

    assert_eq!(settings.server.header_read_timeout, Duration::from_secs(10));
    assert_eq!(settings.server.keep_alive_idle, Duration::from_secs(75));
    assert!(!settings.server.http2_enabled);
    assert_eq!(settings.server.http2_max_concurrent_streams, 100);
    assert!(zero_idle.contains("keep_alive_idle_secs"), "{zero_idle}");
}

#[test]
fn bad_app_env_and_bad_numbers_are_refused() {
    assert!(load_with(&[("APP_ENV", "staging")]).is_err());
    assert!(load_with(&[("PORT", "eighty")]).is_err());
    assert!(load_with(&[("SENTRY_TRACES_SAMPLE_RATE", "2")]).is_err());
    assert!(load_with(&[("JWT_SIGN_ALGORITHM", "none")]).is_err());
    assert!(load_with(&[("APP_INGEST__BATCH_DEADLINE_MS", "soon")]).is_err());
}

#[test]
fn a_jwks_url_makes_the_hmac_key_optional() {
    let url = "https://project.supabase.co/auth/v1/.well-known/jwks.json";
    let settings = load_with(&[("APP_ENV", "prod"), ("JWT_JWKS_URL", url)]).unwrap();

    assert_eq!(settings.auth.key(), None);
    assert_eq!(settings.auth.jwks_url(), Some(url));
    assert_eq!(settings.auth.jwks_min_refresh, Duration::from_secs(60));
}

#[test]
fn a_jwks_url_must_be_https_except_on_loopback() {
    let plain = error_of(&[("JWT_JWKS_URL", "http://keys.example.com/jwks.json")]);
    let junk = load_with(&[("JWT_JWKS_URL", "not a url")]);
    let loopback = load_with(&[("JWT_JWKS_URL", "http://127.0.0.1:9999/jwks.json")]);

    assert!(plain.contains("https://"), "{plain}");
    assert!(junk.is_err());
    assert!(loopback.is_ok());
}

#[test]
fn durations_are_read_once_in_the_unit_their_key_names() {
    let settings = load_with(&[
        ("APP_INGEST__MAX_WAIT_US", "250"),
        ("APP_INGEST__BATCH_DEADLINE_MS", "1500"),
        ("APP_DATABASE__ACQUIRE_TIMEOUT_MS", "700"),
        ("APP_SERVER__REQUEST_TIMEOUT_SECS", "9"),
        ("APP_IDEMPOTENCY__RETENTION_SECS", "60"),
        ("APP_DISCORD__DEDUPE_WINDOW_MS", "2000"),
    ])
    .unwrap();

    assert_eq!(settings.ingest.max_wait, Duration::from_micros(250));
    assert_eq!(settings.ingest.batch_deadline, Duration::from_millis(1500));
    assert_eq!(
        settings.database.acquire_timeout,
        Duration::from_millis(700)
    );
    assert_eq!(
        settings.edge.requests.request_timeout,
        Duration::from_secs(9)
    );
    assert_eq!(settings.idempotency.retention, Duration::from_secs(60));
    assert_eq!(settings.alerts.dedupe_window, Duration::from_secs(2));
}

#[test]
fn the_ingest_section_feeds_the_writers_and_the_batch_routes() {
    let settings = load_with(&[
        ("APP_INGEST__MAX_BATCH", "7"),
        ("APP_INGEST__BATCH_MAX_ITEMS", "9"),
        ("APP_RATE_LIMIT__USER_BURST", "9"),
    ])
    .unwrap();

    assert_eq!(settings.ingest.max_batch, 7);
    assert_eq!(settings.batch.max_items, 9);
    assert_eq!(settings.batch.max_concurrent, 4);
}

#[test]
fn checks_that_span_components_are_made() {
    let small_budget = error_of(&[("APP_SERVER__BODY_BUDGET_BYTES", "1024")]);

    assert!(small_budget.contains("body_budget_bytes"), "{small_budget}");
}

/// An operator who sets a per-user limit is not told to change a batch setting: a batch
/// larger than the bucket is answered 429 instead (tests/api/edge/rate_limits.rs).
#[test]
fn any_user_burst_of_at_least_one_starts() {
    for profile in ["local", "prod"] {
        let settings = load_with(&[
            ("APP_ENV", profile),
            PROD_KEY,
            ("APP_RATE_LIMIT__USER_PER_SECOND", "1"),
            ("APP_RATE_LIMIT__USER_BURST", "1"),
        ])
        .unwrap_or_else(|err| panic!("{profile} starts with a burst of 1: {err}"));

        assert_eq!(settings.edge.rate_limit.user_burst, 1);
        assert_eq!(settings.edge.rate_limit.user_per_second, 1.0);
        assert_eq!(
            settings.batch.max_items, 1000,
            "the batch setting is untouched"
        );
    }
    let no_burst = error_of(&[
        ("APP_RATE_LIMIT__USER_PER_SECOND", "1"),
        ("APP_RATE_LIMIT__USER_BURST", "0"),
    ]);
    assert!(
        no_burst.contains("user_burst must be at least 1"),
        "{no_burst}"
    );
}

#[test]
fn every_secret_is_known_to_the_scrubbers() {
    let settings = load_with(&[
        ("APP_ENV", "prod"),
        PROD_KEY,
        ("DISCORD_BOT_TOKEN", "bot-token-0123456789"),
        ("ALERTS_API_KEY", "alerts-key-0123456789abcdef0123456789"),
        (
            "DATABASE_URL",
            "postgresql://app:db-password-42@db:5432/postgres",
        ),
        (
            "NATS_URL",
            "nats://svc:nats-password-7@nats-1:4222, nats://nats-token-9@nats-2:4222",
        ),
    ])
    .unwrap();

    let secrets = settings.secrets();

    for secret in [
        PROD_KEY.1,
        "bot-token-0123456789",
        "alerts-key-0123456789abcdef0123456789",
        "db-password-42",
        "nats-password-7",
        "nats-token-9",
    ] {
        assert!(secrets.iter().any(|s| s == secret), "{secret} missing");
    }
}

#[test]
fn slow_bodies_are_cut_by_default_and_the_per_client_cap_is_off_until_set() {
    let settings = load_with(&[]).unwrap();
    let set = load_with(&[
        ("APP_SERVER__BODY_READ_TIMEOUT_SECS", "3"),
        ("APP_SERVER__BODY_MIN_RATE_BYTES_PER_SEC", "0"),
        ("APP_SERVER__MAX_CONNECTIONS_PER_CLIENT", "256"),
    ])
    .unwrap();
    let zero_timeout = error_of(&[("APP_SERVER__BODY_READ_TIMEOUT_SECS", "0")]);

    assert_eq!(settings.server.body_read_timeout, Duration::from_secs(10));
    assert_eq!(settings.server.body_min_rate_bytes_per_sec, 16384);
    assert_eq!(settings.server.max_connections_per_client, 0);
    let limits = set.server.connection_limits();
    assert_eq!(limits.body_read_timeout, Duration::from_secs(3));
    assert_eq!(limits.body_min_rate, 0);
    assert_eq!(limits.max_connections_per_client, 256);
    assert!(
        zero_timeout.contains("body_read_timeout_secs"),
        "{zero_timeout}"
    );
}

/// The configs built in code for unit tests (and the serde fallbacks of `[rate_limit]` and
/// `[browser]`) say they hold the values of `config/default.toml`: they must not drift.
#[test]
fn the_defaults_written_in_code_are_those_of_default_toml() {
    use analytics_service::{alerts, auth, edge, ingest, server, store, stream};

    let file = load_with(&[]).unwrap();
    let same = |code: &dyn std::fmt::Debug, loaded: &dyn std::fmt::Debug, what: &str| {
        assert_eq!(format!("{code:?}"), format!("{loaded:?}"), "{what}");
    };

    same(
        &ingest::Config::default(),
        &file.ingest,
        "ingest::Config::default",
    );
    same(
        &stream::Config::default(),
        &file.nats,
        "stream::Config::default",
    );
    same(
        &stream::LoaderConfig::default(),
        &file.loader,
        "stream::LoaderConfig::default",
    );
    same(
        &server::Config::default(),
        &file.server,
        "server::Config::default",
    );
    same(
        &store::Config::sqlite("data/analytics.db"),
        &file.database,
        "store::Config::sqlite",
    );
    same(
        &auth::Config::hmac(LOCAL_DEV_JWT_KEY),
        &file.auth,
        "auth::Config::hmac (the local profile's key)",
    );
    same(
        &alerts::Config::new("", "https://discord.com/api/v10"),
        &file.alerts,
        "alerts::Config::new",
    );
    same(
        &edge::RateLimitConfig::default(),
        &file.edge.rate_limit,
        "RateLimitConfig::default",
    );
    same(
        &edge::BrowserConfig::default(),
        &file.edge.browser,
        "BrowserConfig::default",
    );
}

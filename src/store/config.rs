//! The store's settings (`[database]`): which database, and how the pool behaves.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_with::{DurationMilliSeconds, DurationSeconds, serde_as};

/// Which database, and how the pool behaves.
#[serde_as]
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// `postgres://…` or `sqlite://…`; unset means the SQLite file at `sqlite_path`.
    #[serde(default)]
    pub url: Option<SecretString>,
    /// The embedded default's file, relative to the working directory.
    pub sqlite_path: PathBuf,
    /// Most connections the pool opens.
    pub max_connections: u32,
    /// How long a request waits for a free connection before 503.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    #[serde(rename = "acquire_timeout_ms")]
    pub acquire_timeout: Duration,
    /// How long start-up waits for the database (zero: do not check at start-up).
    #[serde_as(as = "DurationSeconds<u64>")]
    #[serde(rename = "startup_timeout_secs")]
    pub startup_timeout: Duration,
    /// Apply the embedded migrations at start-up.
    pub run_migrations: bool,
}

/// Which database a URL (or its absence) selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    /// `postgres://` or `postgresql://`.
    Postgres,
    /// `sqlite:` or the embedded default.
    Sqlite,
}

impl Config {
    /// The embedded SQLite file at `path`, with the defaults of `config/default.toml`.
    pub fn sqlite(path: impl Into<PathBuf>) -> Self {
        Config {
            url: None,
            sqlite_path: path.into(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(3),
            startup_timeout: Duration::from_secs(30),
            run_migrations: true,
        }
    }

    /// The URL, trimmed, when one is set and not blank.
    pub fn url(&self) -> Option<&str> {
        self.url
            .as_ref()
            .map(|u| u.expose_secret().trim())
            .filter(|u| !u.is_empty())
    }

    /// The database the URL selects; an unknown scheme is an error that names only the
    /// scheme (the rest may hold a password).
    pub fn kind(&self) -> Result<DatabaseKind, String> {
        let Some(url) = self.url() else {
            return Ok(DatabaseKind::Sqlite);
        };
        if url.starts_with("sqlite:") {
            Ok(DatabaseKind::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(DatabaseKind::Postgres)
        } else {
            let scheme = url.split(':').next().unwrap_or_default();
            Err(format!(
                "DATABASE_URL has an unknown scheme {scheme:?}: use postgres:// or sqlite://"
            ))
        }
    }

    /// The password in the URL, if any (for the log and Sentry scrubbers).
    pub fn password(&self) -> Option<String> {
        let url = url::Url::parse(self.url()?).ok()?;
        url.password().map(str::to_owned)
    }

    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), String> {
        self.kind()?;
        if self.max_connections == 0 {
            return Err("database.max_connections must be at least 1".to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_url(url: &str) -> Config {
        Config {
            url: Some(SecretString::from(url.to_owned())),
            ..Config::sqlite("unused.db")
        }
    }

    #[test]
    fn the_url_scheme_picks_the_database() {
        assert_eq!(Config::sqlite("a.db").kind(), Ok(DatabaseKind::Sqlite));
        assert_eq!(with_url(" ").kind(), Ok(DatabaseKind::Sqlite));
        assert_eq!(with_url("sqlite://x.db").kind(), Ok(DatabaseKind::Sqlite));
        assert_eq!(
            with_url("postgresql://u@h/d").kind(),
            Ok(DatabaseKind::Postgres)
        );
    }

    #[test]
    fn an_unknown_scheme_is_refused_without_echoing_the_url() {
        let err = with_url("mysql://user:hunter2@db/x")
            .validate()
            .unwrap_err();

        assert!(err.contains("unknown scheme \"mysql\""), "{err}");
        assert!(!err.contains("hunter2"));
    }

    #[test]
    fn the_password_is_read_from_the_url() {
        assert_eq!(
            with_url("postgres://app:pw%21@db/x").password().as_deref(),
            Some("pw%21")
        );
        assert_eq!(Config::sqlite("a.db").password(), None);
    }
}

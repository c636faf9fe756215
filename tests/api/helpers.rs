//! `TestApp`: the real service on port 0, against a fresh PostgreSQL database or a fresh
//! SQLite file, with a client and helpers to call it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use analytics_service::auth::mint_token;
use analytics_service::clock::{Clock, SystemClock};
use analytics_service::edge::body_budget::BodyBudget;
use analytics_service::ingest::GroupCommit;
use analytics_service::settings::{Settings, load_from};
use analytics_service::startup::Application;
use analytics_service::store::Store;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sqlx::{Connection, Executor};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Which database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The server the PostgreSQL tests use: `TEST_DATABASE_URL`, else the local default.
pub fn admin_pg_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned())
}

/// A database or file that exists for one test and is removed afterwards.
pub enum TestDatabase {
    Postgres {
        name: String,
    },
    Sqlite {
        _dir: tempfile::TempDir,
        path: PathBuf,
    },
}

impl TestDatabase {
    pub async fn create(backend: Backend) -> Self {
        match backend {
            Backend::Postgres => {
                let name = format!("analytics_test_{}", uuid::Uuid::new_v4().simple());
                let mut admin = connect_admin().await;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create database \"{name}\"")))
                    .execute(&mut admin)
                    .await
                    .expect("creating a test database");
                TestDatabase::Postgres { name }
            }
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("a temporary folder");
                let path = dir.path().join("nested").join("analytics.db");
                TestDatabase::Sqlite { _dir: dir, path }
            }
        }
    }

    pub fn url(&self) -> String {
        match self {
            TestDatabase::Postgres { name } => {
                let mut url = url::Url::parse(&admin_pg_url()).expect("TEST_DATABASE_URL is a URL");
                url.set_path(name);
                url.to_string()
            }
            TestDatabase::Sqlite { path, .. } => format!("sqlite://{}", path.display()),
        }
    }
}

async fn connect_admin() -> sqlx::PgConnection {
    let url = admin_pg_url();
    sqlx::PgConnection::connect(&url).await.unwrap_or_else(|err| {
        panic!(
            "PostgreSQL is not reachable at {url} ({err}). The PostgreSQL tests never skip: \
             start the local server with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` \
             (or run scripts/test, which does), or point TEST_DATABASE_URL at one."
        )
    })
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let TestDatabase::Postgres { name } = self {
            let name = name.clone();
            // Drop runs outside async; a short-lived runtime on its own thread does the I/O.
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for cleanup");
                runtime.block_on(async {
                    let mut admin = connect_admin().await;
                    let drop = format!("drop database if exists \"{name}\" with (force)");
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
                        .execute(&mut admin)
                        .await;
                });
            })
            .join();
        }
    }
}

/// Settings as the local profile gives them, pointed at `database_url`, on port 0.
pub fn test_settings(database_url: &str) -> Settings {
    let config_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut settings = load_from(&config_dir, &HashMap::new()).expect("local settings load");
    settings.server.port = 0;
    settings.database.url = Some(SecretString::from(database_url.to_owned()));
    settings.database.max_connections = 5;
    settings.database.startup_timeout = Duration::from_secs(10);
    settings
}

/// A running service and what a test needs to talk to it.
pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub settings: Settings,
    pub store: Arc<dyn Store>,
    pub group_commit: Arc<GroupCommit>,
    pub body_budget: Arc<BodyBudget>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    // Last: the database outlives the server and the store.
    _database: Option<TestDatabase>,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, |_| {}).await
    }

    /// Spawns with the settings adjusted by `tweak` (after the test database is set).
    pub async fn spawn_with(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> Self {
        Self::spawn_full(backend, tweak, Arc::new(SystemClock)).await
    }

    pub async fn spawn_full(
        backend: Backend,
        tweak: impl FnOnce(&mut Settings),
        clock: Arc<dyn Clock>,
    ) -> Self {
        init_test_logging();
        let database = TestDatabase::create(backend).await;
        let mut settings = test_settings(&database.url());
        tweak(&mut settings);
        Self::start(settings, Some(database), clock).await
    }

    /// Starts the service on settings the test built itself (no test database).
    pub async fn start(
        settings: Settings,
        database: Option<TestDatabase>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let app = Application::build_with_clock(&settings, clock)
            .await
            .expect("the application builds");
        let addr = app.local_addr();
        let store = app.store();
        let group_commit = app.group_commit();
        let body_budget = app.body_budget();
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async move {
            let _ = rx.await;
        }));
        TestApp {
            addr,
            client: reqwest::Client::new(),
            settings,
            store,
            group_commit,
            body_budget,
            shutdown: Some(tx),
            server: Some(server),
            _database: database,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A valid user token for `user_id`.
    pub fn token(&self, user_id: &str) -> String {
        mint_token(
            &self.settings.auth,
            user_id,
            false,
            Duration::from_secs(3600),
        )
    }

    /// A valid admin token for `user_id`.
    pub fn admin_token(&self, user_id: &str) -> String {
        mint_token(
            &self.settings.auth,
            user_id,
            true,
            Duration::from_secs(3600),
        )
    }

    /// A connection of its own to the app's PostgreSQL database.
    pub async fn pg(&self) -> sqlx::PgConnection {
        let url = self
            .settings
            .database
            .url
            .as_ref()
            .expect("a PostgreSQL app");
        sqlx::PgConnection::connect(url.expose_secret())
            .await
            .unwrap()
    }

    /// How many rows `table` (`"AnalyticsMetrics"` or `"AnalyticsDetails"`) holds, read
    /// on a connection of its own to either backend.
    pub async fn count_rows(&self, table: &str) -> i64 {
        let url = self.settings.database.url.as_ref().expect("a database URL");
        let sql = sqlx::AssertSqlSafe(format!("select count(*) from {table}"));
        let (count,): (i64,) = if url.expose_secret().starts_with("sqlite:") {
            let mut conn = sqlx::SqliteConnection::connect(url.expose_secret())
                .await
                .unwrap();
            sqlx::query_as(sql).fetch_one(&mut conn).await.unwrap()
        } else {
            sqlx::query_as(sql)
                .fetch_one(&mut self.pg().await)
                .await
                .unwrap()
        };
        count
    }

    /// Locks `"AnalyticsMetrics"` in an open transaction: metric writes wait until `commit`
    /// runs on the returned connection.
    pub async fn lock_metrics_table(&self) -> sqlx::PgConnection {
        let mut blocker = self.pg().await;
        blocker
            .execute(r#"begin; lock table "AnalyticsMetrics" in access exclusive mode"#)
            .await
            .unwrap();
        blocker
    }

    /// Gives `"AnalyticsMetrics"."userId"` AutoGPT's foreign key to a `"User"` table that
    /// holds only `known_users` (our migrations leave that key to Prisma).
    pub async fn require_known_users(&self, known_users: &[&str]) {
        let mut conn = self.pg().await;
        conn.execute(r#"create table "User" ("id" text primary key)"#)
            .await
            .unwrap();
        for user in known_users {
            sqlx::query(r#"insert into "User" ("id") values ($1)"#)
                .bind(user)
                .execute(&mut conn)
                .await
                .unwrap();
        }
        conn.execute(
            r#"alter table "AnalyticsMetrics" add constraint "AnalyticsMetrics_userId_fkey"
               foreign key ("userId") references "User" ("id")"#,
        )
        .await
        .unwrap();
    }

    /// Waits until some session waits on a lock, i.e. a request reached the database.
    pub async fn wait_for_lock_waiter(&self) {
        let mut conn = self.pg().await;
        eventually(
            "a request waiting on a lock in the database",
            Duration::from_secs(5),
            async || {
                let (waiting,): (i64,) = sqlx::query_as(
                    "select count(*) from pg_stat_activity where wait_event_type = 'Lock' and datname = current_database()",
                )
                .fetch_one(&mut conn)
                .await
                .unwrap();
                waiting > 0
            },
        )
        .await;
    }

    /// POSTs `body` as JSON with `Authorization: Bearer <token>` when a token is given.
    pub async fn post_json(
        &self,
        path: &str,
        body: &Value,
        token: Option<&str>,
    ) -> reqwest::Response {
        let json = serde_json::to_vec(body).expect("a JSON value serializes");
        self.post_raw(path, json, token).await
    }

    /// POSTs `body` as it is, declared as JSON: for bodies `post_json` cannot produce.
    pub async fn post_raw(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
        token: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request
            .send()
            .await
            .expect("the request reaches the server")
    }

    /// Signals shutdown and waits for the server to finish draining.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.server.take() {
            Some(server) => server.await.expect("the server task does not panic"),
            None => Ok(()),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// `TEST_LOG=1` shows the service's logs.
fn init_test_logging() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug,sqlx=warn,hyper=info")
            .with_test_writer()
            .try_init();
    }
}

/// Emits one `#[tokio::test]` per backend for each `async fn case(app: TestApp)` listed.
#[macro_export]
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let app = $crate::helpers::TestApp::spawn($crate::helpers::Backend::Postgres).await;
                    super::$case(app).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let app = $crate::helpers::TestApp::spawn($crate::helpers::Backend::Sqlite).await;
                    super::$case(app).await;
                }
            )*
        }
    };
}

/// Checks the storage 503 of the metric endpoints (`Retry-After: 1`, the original's hint)
/// and returns its body.
pub async fn metric_storage_503_body(response: reqwest::Response) -> Value {
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["detail"]["hint"],
        "Check analytics service connection and retry."
    );
    body
}

/// A body for `POST /api/analytics/log_raw_metric` (or one item of the metric batch).
pub fn metric_body(
    name: impl Into<Value>,
    value: impl Into<Value>,
    data: impl Into<Value>,
) -> Value {
    json!({"metric_name": name.into(), "metric_value": value.into(), "data_string": data.into()})
}

/// A body for `POST /api/analytics/log_raw_analytics` (or one item of the event batch).
pub fn event_body(
    kind: impl Into<Value>,
    data: impl Into<Value>,
    index: impl Into<Value>,
) -> Value {
    json!({"type": kind.into(), "data": data.into(), "data_index": index.into()})
}

/// What a check given to [`eventually`] answers: `true`/`Some(value)` once it holds.
pub trait Settled {
    type Value;
    fn settled(self) -> Option<Self::Value>;
}

impl Settled for bool {
    type Value = ();
    fn settled(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Settled for Option<T> {
    type Value = T;
    fn settled(self) -> Option<T> {
        self
    }
}

/// Runs `check` until it holds (`true`) or hands back a value (`Some`), pausing 10 ms after
/// the first try and up to 200 ms later on; returns that value. Panics naming `what` when
/// `timeout` passes first.
pub async fn eventually<R: Settled>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> R,
) -> R::Value {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(value) = check().await.settled() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// A free 127.0.0.1 port for a process the test starts later (a nats-server, the service
/// binary). Taken below Linux's ephemeral range (32768-60999), where the listeners other
/// tests bind to port 0 are placed, and never handed out twice: a port reserved then
/// released in the ephemeral range could be given to another test's listener before the
/// process bound it, and the two tests would talk to each other's servers.
pub fn free_port() -> u16 {
    use std::sync::Mutex;
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap();
    loop {
        let port = 20_000 + rand::random::<u16>() % 12_000;
        if handed_out.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.push(port);
            return port;
        }
    }
}

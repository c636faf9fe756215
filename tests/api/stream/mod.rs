//! Stream mode against real `nats-server` processes (started by the tests on free ports)
//! and a real PostgreSQL: capture replicas publish, loaders insert, and the faults an
//! operator meets (a NATS node killed, PostgreSQL silent, a loader killed, a poison row)
//! lose no acknowledged row and store none twice.

mod end_to_end;
mod faults;
mod memory;
pub mod nats;
mod poison;
mod replicas;
mod tls;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use analytics_service::clock::SystemClock;
use analytics_service::ingest::SinkKind;
use analytics_service::settings::Settings;
use analytics_service::{store, stream};
use serde_json::json;
use sqlx::Connection;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::helpers::{Backend, TestApp, TestDatabase, event_body, eventually, test_settings};
use crate::process::ServiceProcess;
pub use nats::NatsCluster;

/// What a stream test starts from: its own NATS servers, its own PostgreSQL database, and
/// the settings of a capture replica pointed at both.
pub struct Rig {
    pub nats: NatsCluster,
    pub database: TestDatabase,
    pub settings: Settings,
}

impl Rig {
    /// `nodes` nats-servers (a cluster when more than one), streams of `replicas` copies.
    pub async fn start(nodes: usize, replicas: usize) -> Self {
        Self::on(NatsCluster::start(nodes).await, replicas).await
    }

    /// As `start`, on servers the test started itself.
    pub async fn on(nats: NatsCluster, replicas: usize) -> Self {
        let database = TestDatabase::create(Backend::Postgres).await;
        let settings = stream_settings(&database.url(), &nats, replicas);
        Rig {
            nats,
            database,
            settings,
        }
    }
}

/// Settings of a capture replica in stream mode, its rows bound for `database_url`.
pub fn stream_settings(database_url: &str, nats: &NatsCluster, replicas: usize) -> Settings {
    let mut settings = test_settings(database_url);
    settings.ingest.sink = SinkKind::Nats;
    settings.nats.url = nats.urls();
    settings.nats.stream_replicas = replicas;
    settings.nats.publish_timeout = Duration::from_secs(5);
    // The tests send thousands of rows as one user.
    settings.edge.rate_limit.user_per_second = 0.0;
    settings.loader.retry_delay = Duration::from_millis(200);
    settings.loader.ack_wait = Duration::from_secs(3);
    settings.loader.lag_interval = Duration::from_millis(200);
    settings.loader.insert_deadline = Duration::from_secs(2);
    settings
}

/// A capture replica (no loader) in stream mode.
pub async fn capture(settings: &Settings) -> TestApp {
    TestApp::start(settings.clone(), None, Arc::new(SystemClock)).await
}

/// A loader running in this process until stopped.
pub struct InProcessLoader {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl InProcessLoader {
    pub async fn start(settings: &Settings) -> Self {
        let store = store::connect(&settings.database).await.unwrap();
        let nats = (stream::connect(&settings.nats).await)
            .unwrap_or_else(|err| panic!("the loader's NATS: {err:?}"));
        let (stop, stopped) = watch::channel(false);
        let loader = stream::Loader::new(nats, store, settings.loader);
        let task = tokio::spawn(loader.run(stopped));
        InProcessLoader { stop, task }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the loader stops")
            .unwrap();
    }
}

/// `analytics-service load` as a process of its own.
pub async fn loader_process(settings: &Settings) -> ServiceProcess {
    loader_process_with(settings, &[]).await
}

/// As `loader_process`, with more environment.
pub async fn loader_process_with(settings: &Settings, more: &[(&str, &str)]) -> ServiceProcess {
    let url = settings
        .database
        .url
        .as_ref()
        .map(secrecy::ExposeSecret::expose_secret);
    let replicas = settings.nats.stream_replicas.to_string();
    let mut env = vec![
        ("DATABASE_URL", url.expect("a database URL")),
        ("NATS_URL", settings.nats.url.as_str()),
        ("APP_NATS__STREAM_REPLICAS", replicas.as_str()),
        ("APP_LOADER__ACK_WAIT_MS", "3000"),
        ("APP_LOADER__RETRY_DELAY_MS", "200"),
    ];
    env.extend_from_slice(more);
    ServiceProcess::start_command(&["load"], &env).await
}

/// A gauge or counter of a Prometheus scrape, by its name and labels as written.
pub async fn scrape_value(metrics_url: &str, series: &str) -> Option<f64> {
    let text = reqwest::get(metrics_url).await.ok()?.text().await.ok()?;
    let line = text.lines().find(|l| l.starts_with(series))?;
    line.rsplit(' ').next()?.parse().ok()
}

/// What the clients were told: the ids answered 200, and how many requests were not.
#[derive(Debug, Default)]
pub struct Acknowledged {
    pub ids: Vec<String>,
    pub refused: usize,
}

impl Acknowledged {
    fn merge(&mut self, other: Acknowledged) {
        self.ids.extend(other.ids);
        self.refused += other.refused;
    }
}

/// Posts `count` events through `app`, `concurrency` at a time; every answer is counted,
/// and each is a 200 or a 503.
pub async fn post_events(app: &Arc<TestApp>, count: usize, concurrency: usize) -> Acknowledged {
    let mut clients = JoinSet::new();
    for client in 0..concurrency {
        let app = app.clone();
        let token = app.token("stream-user");
        clients.spawn(async move {
            let mut acked = Acknowledged::default();
            for i in (client..count).step_by(concurrency) {
                let body = event_body("stream_test", json!({"n": i}), format!("i{i}"));
                let path = "/api/analytics/log_raw_analytics";
                match app.post_json(path, &body, Some(&token)).await {
                    response if response.status() == 200 => {
                        acked.ids.push(response.json().await.unwrap());
                    }
                    response => {
                        // Refused, never failed: a retry later will be taken.
                        assert_eq!(response.status(), 503, "{:?}", response.text().await);
                        acked.refused += 1;
                    }
                }
            }
            acked
        });
    }
    let mut acked = Acknowledged::default();
    while let Some(part) = clients.join_next().await {
        acked.merge(part.unwrap());
    }
    acked
}

/// The ids in `"AnalyticsDetails"`, and how many rows it holds.
pub async fn stored_event_ids(database_url: &str) -> (HashSet<String>, usize) {
    let mut conn = sqlx::PgConnection::connect(database_url).await.unwrap();
    let ids: Vec<(String,)> = sqlx::query_as(r#"select "id" from "AnalyticsDetails""#)
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let rows = ids.len();
    (ids.into_iter().map(|(id,)| id).collect(), rows)
}

/// Waits until every acknowledged id is in the table, then checks that nothing else is
/// and that no id is there twice; returns the row count.
pub async fn assert_loaded_exactly_once(database_url: &str, acked: &Acknowledged) -> usize {
    let wanted: HashSet<String> = acked.ids.iter().cloned().collect();
    assert_eq!(wanted.len(), acked.ids.len(), "an id was answered twice");
    let (stored, rows) = eventually(
        "every acknowledged row to be loaded",
        Duration::from_secs(60),
        async || {
            let (stored, rows) = stored_event_ids(database_url).await;
            wanted.is_subset(&stored).then_some((stored, rows))
        },
    )
    .await;
    assert_eq!(rows, stored.len(), "a row is stored twice");
    // Rows the clients were not told about (a 503 whose publish reached the stream) may be
    // stored too, but no more rows than requests: a retry inside the service (a publish
    // sent again, a redelivery) must not store a row under a second id.
    assert!(
        rows <= acked.ids.len() + acked.refused,
        "{rows} rows stored for {} requests",
        acked.ids.len() + acked.refused
    );
    rows
}

/// `secs` as a `Duration`, for readability in the tests.
pub fn secs(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

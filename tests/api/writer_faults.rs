//! The group-commit writer against a PostgreSQL that stops answering (a TCP proxy that
//! black-holes its connections): requests get 503 within the batch deadline, `/readyz`
//! says so, the writer recovers by itself, and SIGTERM still ends the process in time.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use analytics_service::clock::SystemClock;
use serde_json::Value;
use sqlx::Connection;

use crate::helpers::{
    Backend, TestApp, TestDatabase, admin_pg_url, eventually, metric_body, metric_storage_503_body,
    test_settings,
};
use crate::pg_proxy::PgProxy;

const METRIC: &str = "/api/analytics/log_raw_metric";

/// The PostgreSQL server the tests use, for the proxy to forward to.
fn pg_server() -> SocketAddr {
    let url = url::Url::parse(&admin_pg_url()).unwrap();
    let address = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
    address
        .parse()
        .expect("TEST_DATABASE_URL names an IP address")
}

/// The ids of the stored metrics named `name`, read on a connection that bypasses the proxy.
async fn stored_ids(direct_url: &str, name: &str) -> Vec<String> {
    let mut conn = sqlx::PgConnection::connect(direct_url).await.unwrap();
    sqlx::query_scalar(r#"select "id" from "AnalyticsMetrics" where "analyticMetric" = $1"#)
        .bind(name)
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

/// Polls `/readyz` until it answers `status` (each call bounded by the service itself).
async fn readyz_until(app: &TestApp, status: u16) -> Value {
    let what = format!("/readyz to answer {status}");
    eventually(&what, Duration::from_secs(5), async || {
        let response = app.client.get(app.url("/readyz")).send().await.unwrap();
        let code = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        if code != status {
            eprintln!("/readyz answered {code}: {body}");
        }
        (code == status).then_some(body)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_stops_answering_mid_batch_is_detected_and_the_writer_recovers() {
    let proxy = PgProxy::start(pg_server()).await;
    let database = TestDatabase::create(Backend::Postgres).await;
    let direct_url = database.url();
    let mut settings = test_settings(&proxy.url(&direct_url));
    settings.edge.rate_limit.user_per_second = 0.0;
    settings.ingest.writers_per_table = 1;
    settings.ingest.batch_deadline = Duration::from_millis(3000);
    settings.ingest.stall_after = Duration::from_millis(200);
    settings.database.acquire_timeout = Duration::from_millis(1000);
    let app = TestApp::start(settings, Some(database), Arc::new(SystemClock)).await;
    let token = app.token("user-1");
    let before = app
        .post_json(METRIC, &metric_body("before", 1, "d"), Some(&token))
        .await;
    assert_eq!(before.status(), 200);

    proxy.black_hole_existing();
    let started = Instant::now();
    let stuck = tokio::spawn({
        let request = app.client.post(app.url(METRIC)).bearer_auth(&token);
        request.json(&metric_body("stuck", 1, "d")).send()
    });
    eventually("the writer to stall", Duration::from_secs(5), async || {
        app.group_commit.stalled()
    })
    .await;
    let ready_while_stuck = readyz_until(&app, 503).await;
    let stuck = stuck.await.unwrap().unwrap();
    let stuck_for = started.elapsed();
    let mut after = Vec::new();
    for i in 0..5 {
        let response = app
            .post_json(METRIC, &metric_body("after", 1, "d"), Some(&token))
            .await;
        let status = response.status().as_u16();
        after.push((status, response.json::<Value>().await.unwrap()));
        if status == 200 || i == 4 {
            break;
        }
    }
    let ready_after = readyz_until(&app, 200).await;

    assert_eq!(ready_while_stuck["detail"], "Database writes are stalled");
    metric_storage_503_body(stuck).await;
    assert!(
        stuck_for < Duration::from_secs(3 + 10),
        "answered only after {stuck_for:?}; the batch deadline is 3 s"
    );
    assert_eq!(
        after.last().map(|(status, _)| *status),
        Some(200),
        "{after:?}"
    );
    assert!(
        after.iter().all(|(s, _)| *s == 200 || *s == 503),
        "{after:?}"
    );
    assert_eq!(ready_after["status"], "ok");
    assert!(
        stored_ids(&direct_url, "stuck").await.is_empty(),
        "a row answered 503 was stored"
    );
    let after_id = after.last().unwrap().1.as_str().unwrap().to_owned();
    assert_eq!(stored_ids(&direct_url, "after").await, vec![after_id]);
    assert_eq!(stored_ids(&direct_url, "before").await.len(), 1);
}

/// The service binary, started on port 0 with `env`; its stdout lines are collected.
struct Process {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Process {
    fn start(env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_analytics-service"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("APP_ENV", "local")
            .env("PORT", "0")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the service binary starts");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let collected = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                collected.lock().unwrap().push(line);
            }
        });
        Process { child, lines }
    }

    fn log(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The address from the "listening" line, once it is logged.
    async fn address(&self) -> SocketAddr {
        let line = eventually(
            "the \"listening\" line",
            Duration::from_secs(30),
            async || self.log().into_iter().find(|l| l.contains("listening")),
        )
        .await;
        let line: Value = serde_json::from_str(&line).unwrap();
        line["address"].as_str().unwrap().parse().unwrap()
    }

    /// Waits up to `limit` for the process to exit; fails after that (the drop kills it).
    async fn exit_within(&mut self, limit: Duration) -> std::process::ExitStatus {
        let child = &mut self.child;
        eventually("the process to exit after SIGTERM", limit, async || {
            child.try_wait().unwrap()
        })
        .await
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("the service logged: {:?}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_database_black_holed_exits_within_the_shutdown_deadline() {
    let proxy = PgProxy::start(pg_server()).await;
    let database = TestDatabase::create(Backend::Postgres).await;
    let direct_url = database.url();
    let proxied_url = proxy.url(&direct_url);
    let mut service = Process::start(&[
        ("DATABASE_URL", proxied_url.as_str()),
        ("APP_SERVER__SHUTDOWN_TIMEOUT_SECS", "1"),
        ("APP_INGEST__SHUTDOWN_FLUSH_MS", "1000"),
        // Longer than the whole shutdown: only the shutdown deadline can end the batch.
        ("APP_INGEST__BATCH_DEADLINE_MS", "60000"),
        ("APP_INGEST__STALL_AFTER_MS", "100"),
        ("APP_RATE_LIMIT__USER_PER_SECOND", "0"),
    ]);
    let address = service.address().await;
    let settings = test_settings(&proxied_url);
    let token = analytics_service::auth::mint_token(
        &settings.auth,
        "user-1",
        false,
        Duration::from_secs(3600),
    );
    let client = reqwest::Client::new();
    let url = format!("http://{address}{METRIC}");
    let first = client
        .post(&url)
        .bearer_auth(&token)
        .json(&metric_body("first", 1, "d"));
    assert_eq!(first.send().await.unwrap().status(), 200);
    proxy.black_hole_all();
    let requests: Vec<_> = (0..3)
        .map(|_| {
            let request = client
                .post(&url)
                .bearer_auth(&token)
                .json(&metric_body("cut-off", 1, "d"));
            tokio::spawn(request.send())
        })
        .collect();
    eventually(
        "the requests to reach the writer (/readyz: writes stalled)",
        Duration::from_secs(10),
        async || {
            let ready = client.get(format!("http://{address}/readyz")).send().await;
            let body: Value = ready.unwrap().json().await.unwrap();
            body["detail"] == "Database writes are stalled"
        },
    )
    .await;

    let signalled = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &service.child.id().to_string()])
        .status()
        .unwrap();
    let status = service.exit_within(Duration::from_secs(2 + 10)).await;
    let took = signalled.elapsed();

    assert!(killed.success());
    assert!(status.success(), "{status:?}: {:?}", service.log());
    assert!(
        took >= Duration::from_secs(1),
        "exited after {took:?}, before the drain deadline"
    );
    for request in requests {
        // The process may exit before an answer leaves; one that left is a 503.
        if let Ok(response) = request.await.unwrap() {
            metric_storage_503_body(response).await;
        }
    }
    let log = service.log();
    let counted = log
        .iter()
        .filter(|line| line.contains("rows not written were answered 503"))
        .any(|line| line.contains(r#""rows":3"#));
    assert!(counted, "the unwritten rows were not counted: {log:#?}");
    assert!(stored_ids(&direct_url, "cut-off").await.is_empty());
}

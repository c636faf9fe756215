//! Bounds measured on the real service process (`target/…/analytics-service`), the way
//! an operator sees it: peak resident memory under hostile bodies.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use analytics_service::auth::mint_token;

use crate::helpers::{eventually, free_port, test_settings};

/// The service started as a process on a free port with an SQLite file of its own.
pub struct ServiceProcess {
    child: Child,
    pub base_url: String,
    _dir: tempfile::TempDir,
}

impl ServiceProcess {
    /// Starts the binary from the project folder (for `config/`) with `env` added, and
    /// waits until it answers `/healthz`.
    pub async fn start(env: &[(&str, &str)]) -> Self {
        Self::start_command(&[], env).await
    }

    /// As `start`, with a subcommand and its arguments (`load` serves `/healthz` too).
    pub async fn start_command(args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_analytics-service"))
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_clear()
            .env("APP_ENV", "local")
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("RUST_LOG", "warn")
            .env(
                "APP_DATABASE__SQLITE_PATH",
                dir.path().join("analytics.db").to_str().unwrap(),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the service binary starts");
        let service = ServiceProcess {
            child,
            base_url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let client = reqwest::Client::new();
        eventually(
            "the service to answer /healthz",
            Duration::from_secs(15),
            async || {
                let health = client.get(service.url("/healthz")).send().await;
                health.is_ok_and(|r| r.status() == 200)
            },
        )
        .await;
        service
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// A user token the process accepts (the local profile's key).
    pub fn token(&self, user_id: &str) -> String {
        let settings = test_settings("");
        mint_token(&settings.auth, user_id, false, Duration::from_secs(3600))
    }

    /// The process's peak resident memory so far (`VmHWM`), in MiB.
    pub fn peak_rss_mib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the process is alive");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status");
        kib / 1024
    }
}

impl ServiceProcess {
    /// Ends the process with SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The document from the issue that took the service to 5.3 GB: `data` 50 levels deep
/// under 100-byte keys, ending in 200,000 `NaN` tokens (805 KB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_of_nan_tokens_keeps_the_process_under_200_mib() {
    let service = ServiceProcess::start(&[]).await;
    let key = "k".repeat(100);
    let open = format!("{{\"{key}\":").repeat(50);
    let nans = vec!["NaN"; 200_000].join(",");
    let document = format!(
        r#"{{"type":"t","data":{open}[{nans}]{},"data_index":"i"}}"#,
        "}".repeat(50)
    );
    let client = reqwest::Client::new();

    for _ in 0..3 {
        let response = client
            .post(service.url("/api/analytics/log_raw_analytics"))
            .bearer_auth(service.token("attacker"))
            .header("content-type", "application/json")
            .body(document.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 422);
        assert!(response.bytes().await.unwrap().len() <= 64 * 1024);
    }

    let peak = service.peak_rss_mib();
    eprintln!("NaN document: peak RSS {peak} MiB");
    assert!(peak < 200, "peak RSS {peak} MiB");
}

/// 200 clients at once, each with a 1 MiB body and no token: anonymous bodies draw on
/// their own 32 MiB budget, so the process stays small; each gets 401 or, while that
/// budget is spent, 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_anonymous_megabyte_bodies_keep_the_process_under_256_mib() {
    let service = ServiceProcess::start(&[]).await;
    let padding = "x".repeat(1024 * 1024 - 100);
    let body = format!(r#"{{"metric_name":"m","metric_value":1,"data_string":"{padding}"}}"#);
    assert!(body.len() <= 1024 * 1024);
    let client = reqwest::Client::new();

    let mut sends = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let send = client
            .post(service.url("/api/analytics/log_raw_metric"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send();
        sends.spawn(send);
    }
    let mut statuses = Vec::new();
    while let Some(answered) = sends.join_next().await {
        let response = answered.unwrap().expect("every client is answered");
        statuses.push(response.status().as_u16());
    }
    statuses.sort_unstable();
    statuses.dedup();
    assert!(
        statuses.iter().all(|status| [401, 503].contains(status)),
        "{statuses:?}"
    );
    assert!(statuses.contains(&401));
    let peak = service.peak_rss_mib();
    eprintln!("200 anonymous 1 MiB bodies: peak RSS {peak} MiB, statuses {statuses:?}");
    assert!(peak < 256, "peak RSS {peak} MiB");
}

/// The README's "Try it": a token from `analytics-service token` (the local profile, no
/// set-up) is accepted by the running binary, which answers each body with the new id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_try_it_works_on_the_real_binary() {
    let minted = Command::new(env!("CARGO_BIN_EXE_analytics-service"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_clear()
        .args(["token", "--user-id", "2b7e1516-28ae-4d2a-abf7-158809cf4f3c"])
        .output()
        .expect("the token command runs");
    assert!(minted.status.success(), "{minted:?}");
    let token = String::from_utf8(minted.stdout).unwrap().trim().to_owned();
    let service = ServiceProcess::start(&[]).await;
    let client = reqwest::Client::new();

    for (path, body) in [
        (
            "/api/analytics/log_raw_metric",
            r#"{"metric_name": "page_load_ms", "metric_value": 123.4, "data_string": "/build"}"#,
        ),
        (
            "/api/analytics/log_raw_analytics",
            r#"{"type": "home_viewed", "data": {}, "data_index": "home_viewed"}"#,
        ),
    ] {
        let response = client
            .post(service.url(path))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();

        assert_eq!(response.status(), 200, "{path}");
        let id: String = response.json().await.expect("a JSON string");
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{path}: {id}");
    }
}

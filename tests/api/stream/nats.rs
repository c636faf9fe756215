//! Real `nats-server` processes with JetStream on free 127.0.0.1 ports, each with a
//! temporary store directory: one server, or a cluster whose nodes can be killed.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::helpers::{eventually, free_port};

/// Where Debian's package puts the server; `NATS_SERVER` picks another.
fn server_binary() -> String {
    std::env::var("NATS_SERVER").unwrap_or_else(|_| "/usr/sbin/nats-server".to_owned())
}

/// One server of a cluster (or a single server).
pub struct NatsNode {
    name: String,
    pub port: u16,
    monitor_port: u16,
    cluster_port: u16,
    routes: Vec<u16>,
    /// More arguments (TLS).
    extra: Vec<String>,
    store: tempfile::TempDir,
    child: Option<Child>,
}

impl NatsNode {
    fn command(&self) -> Command {
        let mut command = Command::new(server_binary());
        command
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string()])
            .args(["-js", "-sd", self.store.path().to_str().unwrap()])
            .args(["--server_name", &self.name])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if !self.routes.is_empty() {
            let routes: Vec<String> = (self.routes.iter())
                .map(|port| format!("nats://127.0.0.1:{port}"))
                .collect();
            command
                .args(["--cluster_name", "analytics-test"])
                .args([
                    "--cluster",
                    &format!("nats://127.0.0.1:{}", self.cluster_port),
                ])
                .args(["--routes", &routes.join(",")]);
        }
        command
    }

    fn spawn(&mut self) {
        let child = self.command().spawn().unwrap_or_else(|err| {
            panic!(
                "cannot start {}: {err}. Install it with `apt-get install -y nats-server` \
                 or set NATS_SERVER",
                server_binary()
            )
        });
        self.child = Some(child);
    }

    /// Ends the server with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the killed server again, on the same ports and store.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} is running", self.name);
        self.spawn();
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One server, or a cluster of them.
pub struct NatsCluster {
    pub nodes: Vec<NatsNode>,
}

impl NatsCluster {
    /// `size` servers (1: no clustering), answering and with JetStream ready.
    pub async fn start(size: usize) -> Self {
        Self::start_with(size, &[]).await
    }

    /// As `start`, each server with `extra` arguments.
    pub async fn start_with(size: usize, extra: &[&str]) -> Self {
        let cluster_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let mut nodes: Vec<NatsNode> = (0..size)
            .map(|i| NatsNode {
                name: format!("n{i}"),
                port: free_port(),
                monitor_port: free_port(),
                cluster_port: cluster_ports[i],
                extra: extra.iter().map(|a| a.to_string()).collect(),
                routes: if size > 1 {
                    cluster_ports.clone()
                } else {
                    Vec::new()
                },
                store: tempfile::tempdir().unwrap(),
                child: None,
            })
            .collect();
        for node in &mut nodes {
            node.spawn();
        }
        let cluster = NatsCluster { nodes };
        cluster.wait_ready().await;
        cluster
    }

    /// Waits until every running server says JetStream is ready (`/healthz`).
    pub async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let health = format!("http://127.0.0.1:{}/healthz", node.monitor_port);
            eventually(
                "nats-server to be ready",
                Duration::from_secs(30),
                async || {
                    let answer = client.get(&health).send().await;
                    answer.is_ok_and(|r| r.status() == 200)
                },
            )
            .await;
        }
    }

    /// Every server's URL, comma-separated (`NATS_URL`).
    pub fn urls(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(NatsNode::url).collect();
        urls.join(",")
    }
}

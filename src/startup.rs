//! `Application`: build (connect, bind) then run until a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;

use crate::alerts::{self, Alerter};
use crate::auth::Authenticator;
use crate::clock::{Clock, SystemClock};
use crate::edge::Edge;
use crate::edge::body_budget::BodyBudget;
use crate::idempotency::Idempotency;
use crate::ingest::{GroupCommit, GroupCommitSettings};
use crate::routes::{RouterLimits, router};
use crate::server::ConnectionLimits;
use crate::settings::Settings;
use crate::state::{AppState, Handles};
use crate::store::{self, Store};

/// A bound, ready-to-run service.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    store: Arc<dyn Store>,
    ingest: Arc<GroupCommit>,
    body_budget: Arc<BodyBudget>,
    shutdown_timeout: Duration,
    /// After the drain: how long queued rows (and the pool's close) may take.
    shutdown_flush: Duration,
    /// `GET /metrics` on its own port, when `metrics.admin_port` is set.
    admin: Option<(TcpListener, axum::Router)>,
    connection_limits: ConnectionLimits,
    idempotency: Idempotency,
}

impl Application {
    /// Connects the store and binds the listener, with the system clock.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        Self::build_with_clock(settings, Arc::new(SystemClock)).await
    }

    /// As `build`, with an injected clock (tests pin it to compare timestamps).
    pub async fn build_with_clock(
        settings: &Settings,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        let store = store::connect(&settings.database)
            .await
            .context("database not usable")?;
        let ingest = Arc::new(
            GroupCommit::start(
                store.clone(),
                GroupCommitSettings {
                    max_batch: settings.ingest.max_batch,
                    max_batch_bytes: settings.ingest.max_batch_bytes,
                    max_wait: Duration::from_micros(settings.ingest.max_wait_us),
                    queue_capacity: settings.ingest.queue_capacity,
                    queue_capacity_bytes: settings.ingest.queue_capacity_bytes,
                    writers_per_table: settings.ingest.writers_per_table,
                    batch_deadline: Duration::from_millis(settings.ingest.batch_deadline_ms),
                    stall_after: Duration::from_millis(settings.ingest.stall_after_ms),
                },
            )
            .context("group-commit writer threads not started")?,
        );
        let alerter = Alerter::from_settings(&settings.discord)
            .context("DISCORD_API_BASE_URL is not a URL")?
            .map(Arc::new);
        alerts::install(alerter.clone());
        let authenticator = Arc::new(Authenticator::new(&settings.auth));
        authenticator.prefetch_keys().await;
        let idempotency = Idempotency {
            retention: Duration::from_secs(settings.idempotency.retention_secs),
            clock: clock.clone(),
        };
        let body_budget = Arc::new(BodyBudget::new(
            settings.server.body_budget_bytes,
            settings.server.anonymous_body_budget_bytes,
            Duration::from_millis(settings.server.body_budget_wait_ms),
        ));
        let state = AppState::new(Handles {
            store: store.clone(),
            ingest: ingest.clone(),
            authenticator,
            clock,
            body_limit: settings.server.body_limit_bytes,
            body_budget: body_budget.clone(),
            batch_max_items: settings.ingest.batch_max_items,
            batch_turns: Arc::new(tokio::sync::Semaphore::new(
                settings.ingest.batch_max_concurrent,
            )),
            batch_turn_wait: settings.database.acquire_timeout(),
            alerts: alerter,
            alerts_api_key: Some(settings.discord.alerts_api_key.clone())
                .filter(|key| !key.expose_secret().trim().is_empty()),
            edge: Arc::new(Edge::new(&settings.rate_limit, &settings.browser)),
            idempotency: idempotency.clone(),
        });
        let limits = RouterLimits {
            request_timeout: Duration::from_secs(settings.server.request_timeout_secs),
            batch_body_limit: settings.ingest.batch_body_limit_bytes,
            serve_metrics: settings.metrics.admin_port.is_none(),
        };
        let address = format!("{}:{}", settings.server.host, settings.server.port);
        let listener = TcpListener::bind(&address)
            .await
            .with_context(|| format!("cannot listen on {address}"))?;
        let admin = match settings.metrics.admin_port {
            Some(port) => {
                let address = format!("{}:{port}", settings.server.host);
                let listener = TcpListener::bind(&address)
                    .await
                    .with_context(|| format!("cannot listen on {address}"))?;
                Some((
                    listener,
                    crate::routes::metrics::admin_router(state.clone()),
                ))
            }
            None => None,
        };
        Ok(Application {
            listener,
            router: router(state, limits),
            store,
            ingest,
            body_budget,
            shutdown_timeout: Duration::from_secs(settings.server.shutdown_timeout_secs),
            shutdown_flush: Duration::from_millis(settings.ingest.shutdown_flush_ms),
            admin,
            connection_limits: ConnectionLimits {
                header_read_timeout: Duration::from_secs(settings.server.header_read_timeout_secs),
                max_connections: settings.server.max_connections,
                max_header_bytes: settings.server.max_header_bytes,
                keep_alive_idle: Duration::from_secs(settings.server.keep_alive_idle_secs),
                http2_max_concurrent_streams: settings
                    .server
                    .http2_enabled
                    .then_some(settings.server.http2_max_concurrent_streams),
            },
            idempotency,
        })
    }

    /// The address actually bound (port 0 resolves here).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has a local address")
    }

    /// The admin (metrics) listener's address, when it has its own port.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        let (listener, _) = self.admin.as_ref()?;
        listener.local_addr().ok()
    }

    /// The store the service writes to (tests read rows back through it).
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// The request-body budget (tests read what is charged).
    pub fn body_budget(&self) -> Arc<BodyBudget> {
        self.body_budget.clone()
    }

    /// The group-commit writers (tests read their queues).
    pub fn group_commit(&self) -> Arc<GroupCommit> {
        self.ingest.clone()
    }

    /// Serves until `shutdown` resolves, lets in-flight requests finish within the
    /// shutdown timeout, writes the queued rows within the flush deadline (the rest get
    /// 503), then closes the pool.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(address = %self.local_addr(), "analytics-service listening");
        let pruner = self.idempotency.spawn_pruner(self.store.clone());
        let limits = self.connection_limits;
        let admin = self.admin.map(|(listener, router)| {
            tracing::info!(address = ?listener.local_addr(), "metrics listening");
            // The same connection limits as the main port: in prod it binds the same host.
            let forever = std::future::pending();
            tokio::spawn(crate::server::serve(listener, router, limits, forever))
        });
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let server = crate::server::serve(
            self.listener,
            self.router,
            self.connection_limits,
            async move {
                shutdown.await;
                tracing::info!("shutdown requested; finishing in-flight requests");
                let _ = stopping_tx.send(());
            },
        );
        let drain_deadline = async {
            if stopping_rx.await.is_ok() {
                tokio::time::sleep(self.shutdown_timeout).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            result = server => result.context("HTTP server failed")?,
            () = drain_deadline => {
                tracing::warn!(timeout = ?self.shutdown_timeout, "in-flight requests did not finish in time");
            }
        }
        // Rows already queued are written before the pool closes, within the flush
        // deadline; a database that stopped answering must not keep the process alive.
        let hard_deadline = tokio::time::Instant::now() + self.shutdown_flush;
        self.ingest.shutdown(self.shutdown_flush).await;
        if let Some(admin) = admin {
            admin.abort();
        }
        pruner.abort();
        if tokio::time::timeout_at(hard_deadline, self.store.close())
            .await
            .is_err()
        {
            tracing::warn!("database pool not closed by the shutdown deadline; dropping it");
        }
        tracing::info!("analytics-service stopped");
        Ok(())
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        tokio::signal::ctrl_c()
            .await
            .expect("installing the SIGINT handler cannot fail at start-up");
    };
    #[cfg(unix)]
    let terminate = async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler cannot fail at start-up")
            .recv()
            .await;
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

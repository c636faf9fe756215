//! `Application`: build (connect, bind) then run until a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::SecretString;
use tokio::net::TcpListener;

use crate::alerts::{ALERT_BUCKET, Alerter, SharedDedupe};
use crate::auth::Authenticator;
use crate::clock::{Clock, SystemClock};
use crate::edge::Edge;
use crate::edge::body_budget::BodyBudget;
use crate::idempotency::Idempotency;
use crate::ingest::{GroupCommit, SinkKind};
use crate::routes::{AppState, Handles, router};
use crate::server::ConnectionLimits;
use crate::settings::Settings;
use crate::sink::Sink;
use crate::store::{self, Store};
use crate::stream::{self, KeyedPublisher, Loader, Nats, Publisher};

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
    /// Prunes expired `Idempotency-Key` claims (direct mode).
    idempotency: Option<Idempotency>,
    /// A loader run inside `serve` (stream mode with `loader.enabled`).
    loader: Option<Loader>,
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
            GroupCommit::start(store.clone(), settings.ingest)
                .context("group-commit writer threads not started")?,
        );
        let idempotency = Idempotency::new(&settings.idempotency, clock.clone());
        let (sink, nats) = match settings.ingest.sink {
            SinkKind::Direct => {
                let sink = Sink::Direct {
                    store: store.clone(),
                    writers: ingest.clone(),
                    idempotency: idempotency.clone(),
                };
                (sink, None)
            }
            SinkKind::Nats => {
                let nats = stream::connect(&settings.nats)
                    .await
                    .context("stream mode: NATS not usable")?;
                let claims = nats
                    .bucket(stream::IDEMPOTENCY_BUCKET, settings.idempotency.retention)
                    .await?;
                let publisher =
                    Publisher::new(nats.jetstream.clone(), settings.nats.publish_timeout);
                let sink = Sink::Stream {
                    publisher: KeyedPublisher::new(publisher, claims),
                    nats: nats.clone(),
                };
                (sink, Some(nats))
            }
        };
        let authenticator = Arc::new(Authenticator::new(&settings.auth));
        authenticator.prefetch_keys().await;
        let edge = Arc::new(Edge::new(&settings.edge));
        let body_budget = edge.body_budget.clone();
        let state = AppState::new(Handles {
            store: store.clone(),
            ingest: ingest.clone(),
            sink: Arc::new(sink),
            authenticator,
            clock,
            batch_max_items: settings.batch.max_items,
            batch_turns: Arc::new(tokio::sync::Semaphore::new(settings.batch.max_concurrent)),
            batch_turn_wait: settings.database.acquire_timeout,
            alerts: alerter(settings, nats.as_ref()).await?.map(Arc::new),
            alerts_api_key: settings
                .alerts
                .alerts_api_key()
                .map(|key| SecretString::from(key.to_owned())),
            edge,
        });
        let listener = bind(&settings.server.host, settings.server.port).await?;
        let admin_port = settings.telemetry.metrics.admin_port;
        let admin = match admin_port {
            Some(port) => Some((
                bind(&settings.server.host, port).await?,
                crate::routes::metrics::admin_router(state.clone()),
            )),
            None => None,
        };
        // Direct mode's keys live in the database; stream mode's bucket expires its own.
        let idempotency = nats.is_none().then_some(idempotency);
        let loader = match nats {
            Some(nats) if settings.loader.enabled => {
                Some(Loader::new(nats, store.clone(), settings.loader))
            }
            _ => None,
        };
        Ok(Application {
            listener,
            router: router(state, settings.batch.body_limit_bytes, admin_port.is_none()),
            store,
            ingest,
            body_budget,
            shutdown_timeout: settings.server.shutdown_timeout,
            shutdown_flush: settings.ingest.shutdown_flush,
            admin,
            connection_limits: settings.server.connection_limits(),
            idempotency,
            loader,
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
        let pruner = (self.idempotency.as_ref()).map(|keys| keys.spawn_pruner(self.store.clone()));
        let (stop_loader, loader_stopped) = tokio::sync::watch::channel(false);
        let loader = self
            .loader
            .map(|loader| tokio::spawn(loader.run(loader_stopped)));
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
        if let Some(pruner) = pruner {
            pruner.abort();
        }
        if let Some(loader) = loader {
            // The batch being inserted is finished and acknowledged; the rest stay in the
            // stream for the next loader.
            let _ = stop_loader.send(true);
            if tokio::time::timeout_at(hard_deadline, loader)
                .await
                .is_err()
            {
                tracing::warn!("loader not stopped by the shutdown deadline");
            }
        }
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

/// The Discord alerter, `None` without a bot token; in stream mode its dedupe window is
/// shared by the replicas through a key-value bucket.
async fn alerter(settings: &Settings, nats: Option<&Nats>) -> anyhow::Result<Option<Alerter>> {
    let Some(alerter) = Alerter::new(&settings.alerts) else {
        return Ok(None);
    };
    let window = settings.alerts.dedupe_window;
    match nats {
        Some(nats) if !window.is_zero() => {
            let bucket = nats.bucket(ALERT_BUCKET, window).await?;
            Ok(Some(alerter.with_shared_dedupe(SharedDedupe::new(bucket))))
        }
        _ => Ok(Some(alerter)),
    }
}

/// A listener on `host:port`, naming the address when it cannot be bound.
async fn bind(host: &str, port: u16) -> anyhow::Result<TcpListener> {
    let address = format!("{host}:{port}");
    TcpListener::bind(&address)
        .await
        .with_context(|| format!("cannot listen on {address}"))
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

/// `analytics-service load`: a loader on its own, until `shutdown` resolves, with
/// `/healthz`, `/readyz` and `/metrics` on the server's address for the orchestrator.
pub async fn run_loader(
    settings: &Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Before the loader counts anything: without a recorder the counts would be lost.
    crate::telemetry::prometheus::install();
    let store = store::connect(&settings.database)
        .await
        .context("database not usable")?;
    let nats = stream::connect(&settings.nats)
        .await
        .context("NATS not usable")?;
    let listener = bind(&settings.server.host, settings.server.port).await?;
    tracing::info!(address = ?listener.local_addr(), "loader probes and metrics listening");
    let router = crate::routes::loader::router(store.clone());
    let limits = settings.server.connection_limits();
    let probes = tokio::spawn(crate::server::serve(
        listener,
        router,
        limits,
        std::future::pending(),
    ));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let loader = tokio::spawn(Loader::new(nats, store.clone(), settings.loader).run(stopped));
    tracing::info!("loader running");
    shutdown.await;
    tracing::info!("shutdown requested; finishing the batches in flight");
    let _ = stop.send(true);
    if tokio::time::timeout(settings.ingest.shutdown_flush, loader)
        .await
        .is_err()
    {
        tracing::warn!("loader not stopped by the shutdown deadline");
    }
    probes.abort();
    let _ = tokio::time::timeout(settings.ingest.shutdown_flush, store.close()).await;
    tracing::info!("loader stopped");
    Ok(())
}

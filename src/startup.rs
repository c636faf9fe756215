//! `Application`: build (connect, bind) then run until a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::auth::Authenticator;
use crate::clock::{Clock, SystemClock};
use crate::idempotency::Idempotency;
use crate::routes::{RouterLimits, router};
use crate::settings::Settings;
use crate::state::AppState;
use crate::store::{self, Store};

/// A bound, ready-to-run service.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    store: Arc<dyn Store>,
    shutdown_timeout: Duration,
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
        let authenticator = Arc::new(Authenticator::new(&settings.auth));
        authenticator.prefetch_keys().await;
        let idempotency = Idempotency {
            retention: Duration::from_secs(settings.idempotency.retention_secs),
            clock: clock.clone(),
        };
        let state = AppState {
            store: store.clone(),
            authenticator,
            clock,
            body_limit: settings.server.body_limit_bytes,
            idempotency: idempotency.clone(),
        };
        let limits = RouterLimits {
            request_timeout: Duration::from_secs(settings.server.request_timeout_secs),
        };
        let address = format!("{}:{}", settings.server.host, settings.server.port);
        let listener = TcpListener::bind(&address)
            .await
            .with_context(|| format!("cannot listen on {address}"))?;
        Ok(Application {
            listener,
            router: router(state, limits),
            store,
            shutdown_timeout: Duration::from_secs(settings.server.shutdown_timeout_secs),
            idempotency,
        })
    }

    /// The address actually bound (port 0 resolves here).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has a local address")
    }

    /// The store the service writes to (tests read rows back through it).
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// Serves until `shutdown` resolves, lets in-flight requests finish within the
    /// shutdown timeout, then closes the pool.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(address = %self.local_addr(), "analytics-service listening");
        let pruner = self.idempotency.spawn_pruner(self.store.clone());
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let server = axum::serve(self.listener, self.router).with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutdown requested; finishing in-flight requests");
            let _ = stopping_tx.send(());
        });
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
        pruner.abort();
        self.store.close().await;
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

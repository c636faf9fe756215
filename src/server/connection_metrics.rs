//! The accept loop's metrics: open connections, connections the server closed and why,
//! connections refused at accept, and how often every connection slot was taken. No label
//! ever carries an address.

use metrics::{Counter, Gauge, counter, describe_counter, describe_gauge, gauge};

use super::deadline::CloseReason;

/// Connections open now.
pub const CONNECTIONS_OPEN: &str = "analytics_connections_open";
/// Connections the server closed, by `reason` (`header_timeout`, `idle`, `body_timeout`).
pub const CONNECTIONS_CLOSED: &str = "analytics_connections_closed_total";
/// Times every slot (`server.max_connections`) was taken, so new clients waited.
pub const CONNECTIONS_LIMIT_REACHED: &str = "analytics_connections_limit_reached_total";
/// Connections closed at accept, by `reason` (`per_client`: the client had
/// `server.max_connections_per_client` open).
pub const CONNECTIONS_REFUSED: &str = "analytics_connections_refused_total";

/// Handles registered once per server, cloned into each connection's task.
#[derive(Clone)]
pub struct ConnectionMetrics {
    open: Gauge,
    header_timeout: Counter,
    idle: Counter,
    body_timeout: Counter,
    /// Incremented by the accept loop when a client is over its connection cap.
    pub refused_per_client: Counter,
    /// Incremented by the accept loop when it has to wait for a free slot.
    pub limit_reached: Counter,
}

impl ConnectionMetrics {
    /// Registers the handles with the global recorder (installed with the router).
    pub fn register() -> Self {
        describe_gauge!(CONNECTIONS_OPEN, "Open client connections");
        describe_counter!(
            CONNECTIONS_CLOSED,
            "Connections the server closed: no request head in time, idle, or a request body \
             not received in time"
        );
        describe_counter!(
            CONNECTIONS_REFUSED,
            "Connections closed at accept: the client had its most connections open"
        );
        describe_counter!(
            CONNECTIONS_LIMIT_REACHED,
            "Times every connection slot was taken and new clients waited in the backlog"
        );
        ConnectionMetrics {
            open: gauge!(CONNECTIONS_OPEN),
            header_timeout: counter!(CONNECTIONS_CLOSED, "reason" => "header_timeout"),
            idle: counter!(CONNECTIONS_CLOSED, "reason" => "idle"),
            body_timeout: counter!(CONNECTIONS_CLOSED, "reason" => "body_timeout"),
            refused_per_client: counter!(CONNECTIONS_REFUSED, "reason" => "per_client"),
            limit_reached: counter!(CONNECTIONS_LIMIT_REACHED),
        }
    }

    /// Counts a connection as open until the returned guard drops.
    pub fn opened(&self) -> OpenConnection {
        self.open.increment(1.0);
        OpenConnection(self.open.clone())
    }

    /// Counts a connection the server closed for `reason`.
    pub fn closed(&self, reason: CloseReason) {
        match reason {
            CloseReason::HeaderTimeout => self.header_timeout.increment(1),
            CloseReason::Idle => self.idle.increment(1),
            CloseReason::BodyTimeout => self.body_timeout.increment(1),
        }
    }
}

/// An open connection in the gauge; a guard so that a task dropped mid-way (runtime shut
/// down) still leaves the gauge right.
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

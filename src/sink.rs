//! Where the analytics endpoints put their rows (`ingest.sink`): straight into the database
//! (direct mode: group commit, `Idempotency-Key` claims in SQL), or into the NATS streams
//! (stream mode: claims in a key-value bucket). Either way a 200 is answered only once the
//! row is durably stored where the mode says.

use std::sync::Arc;
use std::time::Duration;

use crate::domain::FieldError;
use crate::idempotency::{self, Idempotency, IdempotencyHeader, Keyed};
use crate::ingest::{GroupCommit, WriteResult};
use crate::store::{EVENT_ENDPOINT, EventRow, METRIC_ENDPOINT, MetricRow, Store, StoreError};
use crate::stream::{KeyedPublisher, Nats, StreamRow};

/// The rows' destination.
// Made once and kept behind an `Arc`: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum Sink {
    /// The database.
    Direct {
        /// For the batch endpoints and the keyed inserts.
        store: Arc<dyn Store>,
        /// Group commit for the single-event endpoints.
        writers: Arc<GroupCommit>,
        /// `Idempotency-Key` claims in the database.
        idempotency: Idempotency,
    },
    /// The NATS JetStream streams.
    Stream {
        /// Publishes rows, claims keys in the bucket.
        publisher: KeyedPublisher,
        /// The connection (readiness).
        nats: Nats,
    },
}

/// What became of a single-event request's row.
#[derive(Debug)]
pub enum Outcome {
    /// Stored (or stored before, under the same `Idempotency-Key`): the id to answer.
    Stored(String),
    /// The `Idempotency-Key` is malformed or was used with another body (a 422).
    Refused(FieldError),
}

impl Outcome {
    fn of(keyed: Keyed, new_id: uuid::Uuid) -> Self {
        match keyed {
            Keyed::NoKey => Outcome::Stored(new_id.to_string()),
            Keyed::Stored(id) | Keyed::Replayed(id) => Outcome::Stored(id),
            Keyed::Invalid(error) | Keyed::Conflict(error) => Outcome::Refused(error),
        }
    }
}

/// A probe must answer while the database is silent (orchestrators give up after seconds).
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// `Ok` when the database answers a ping within [`PING_TIMEOUT`]; else what is wrong, for
/// a readiness probe (`serve` in direct mode, and `load`).
pub async fn database_ready(store: &dyn Store) -> Result<(), &'static str> {
    match tokio::time::timeout(PING_TIMEOUT, store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => {
            tracing::warn!(error = ?err, "readiness check: database not answering");
            Err("Database unavailable")
        }
        Err(_elapsed) => {
            tracing::warn!("readiness check: database ping timed out");
            Err("Database unavailable")
        }
    }
}

/// What the sink does differently for metrics and events (implemented for those two only).
// Implemented here alone, for concrete row types: the handlers' futures are checked `Send`
// where axum takes them.
#[allow(async_fn_in_trait)]
pub trait SinkRow: StreamRow + Clone {
    /// The endpoint an `Idempotency-Key` is scoped to.
    const ENDPOINT: &'static str;
    fn user_id(&self) -> &str;
    fn body_hash(&self) -> String;
    /// Direct mode: stores the row under the request's key (or says there is none).
    async fn store_keyed(
        idempotency: &Idempotency,
        store: &dyn Store,
        header: &IdempotencyHeader,
        row: &Self,
    ) -> Result<Keyed, StoreError>;
    /// Direct mode: hands the row to group commit.
    async fn write(writers: &GroupCommit, row: Self) -> WriteResult;
    /// Direct mode: stores a batch in one transaction.
    async fn insert_all(store: &dyn Store, rows: &[Self]) -> Result<(), StoreError>;
}

impl SinkRow for MetricRow {
    const ENDPOINT: &'static str = METRIC_ENDPOINT;
    fn user_id(&self) -> &str {
        &self.user_id
    }
    fn body_hash(&self) -> String {
        idempotency::metric_hash(&self.metric)
    }
    async fn store_keyed(
        idempotency: &Idempotency,
        store: &dyn Store,
        header: &IdempotencyHeader,
        row: &Self,
    ) -> Result<Keyed, StoreError> {
        idempotency.store_metric(store, header, row).await
    }
    async fn write(writers: &GroupCommit, row: Self) -> WriteResult {
        writers.store_metric(row).await
    }
    async fn insert_all(store: &dyn Store, rows: &[Self]) -> Result<(), StoreError> {
        store.insert_metrics(rows).await
    }
}

impl SinkRow for EventRow {
    const ENDPOINT: &'static str = EVENT_ENDPOINT;
    fn user_id(&self) -> &str {
        &self.user_id
    }
    fn body_hash(&self) -> String {
        idempotency::event_hash(&self.event)
    }
    async fn store_keyed(
        idempotency: &Idempotency,
        store: &dyn Store,
        header: &IdempotencyHeader,
        row: &Self,
    ) -> Result<Keyed, StoreError> {
        idempotency.store_event(store, header, row).await
    }
    async fn write(writers: &GroupCommit, row: Self) -> WriteResult {
        writers.store_event(row).await
    }
    async fn insert_all(store: &dyn Store, rows: &[Self]) -> Result<(), StoreError> {
        store.insert_events(rows).await
    }
}

impl Sink {
    /// Stores one metric or event, under the request's `Idempotency-Key` when it has one.
    pub async fn store<R: SinkRow>(
        &self,
        header: &IdempotencyHeader,
        row: R,
    ) -> Result<Outcome, Arc<StoreError>> {
        let id = row.id();
        let keyed = match self {
            Sink::Direct {
                store,
                writers,
                idempotency,
            } => match R::store_keyed(idempotency, store.as_ref(), header, &row).await? {
                Keyed::NoKey => {
                    R::write(writers, row).await?;
                    Keyed::NoKey
                }
                keyed => keyed,
            },
            Sink::Stream { publisher, .. } => {
                let hash = || row.body_hash();
                (publisher.publish(header, R::ENDPOINT, row.user_id(), &row, hash)).await?
            }
        };
        Ok(Outcome::of(keyed, id))
    }

    /// Stores a batch endpoint's valid rows. Direct mode: in one transaction, all or none.
    /// Stream mode: on `Err` some may be in the stream (and will be loaded).
    pub async fn store_batch<R: SinkRow>(&self, rows: &[R]) -> Result<(), StoreError> {
        match self {
            Sink::Direct { store, .. } => R::insert_all(store.as_ref(), rows).await,
            Sink::Stream { publisher, .. } => publisher.publisher.publish_all(rows).await,
        }
    }

    /// `Ok` when rows can be stored now; else what is wrong, for the readiness probe.
    pub async fn ready(&self) -> Result<(), &'static str> {
        match self {
            Sink::Direct { store, writers, .. } => {
                // The writers have connections of their own: a ping on the store's pool can
                // succeed while they are stuck.
                if writers.stalled() {
                    tracing::warn!("readiness check: group-commit writes are not committing");
                    return Err("Database writes are stalled");
                }
                database_ready(store.as_ref()).await
            }
            Sink::Stream { nats, .. } if nats.connected() => Ok(()),
            Sink::Stream { .. } => {
                tracing::warn!("readiness check: no NATS server connected");
                Err("Event stream unavailable")
            }
        }
    }
}

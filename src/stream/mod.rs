//! Stream mode (`ingest.sink = "nats"`): capture publishes each row to a NATS JetStream
//! stream and answers once the stream has acknowledged it; loaders (`analytics-service
//! load`, or `[loader] enabled` in `serve`) move the rows from the streams into the database.
//!
//! Ids are made at capture and travel as `Nats-Msg-Id`, so a row published twice within the
//! stream's duplicate window is kept once, and a row delivered twice to a loader is inserted
//! once (`on conflict ("id") do nothing`). `docs/DEPLOYMENT.md` draws the topology.

mod config;
mod connection;
mod keyed;
mod loader;
mod message;
mod publisher;

pub use config::{Config, LoaderConfig};
pub use connection::{Nats, SetupError, connect};
pub use keyed::{IDEMPOTENCY_BUCKET, KeyedPublisher};
pub use loader::{DEAD_LETTERS, Loader, OLDEST_PENDING, PENDING, REASON_HEADER, ROWS_LOADED};
pub use message::{StreamRow, Table};
pub use publisher::{PUBLISH_FAILED, PUBLISHED, Publisher};

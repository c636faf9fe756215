//! The loader's memory is bounded by its fetch budget, not by the backlog: a backlog of
//! events near the size limit is loaded by a process that stays small, each row once.

use std::collections::HashSet;
use std::time::Duration;

use analytics_service::domain::{NewAnalyticsEvent, NewMetric};
use analytics_service::settings::Settings;
use analytics_service::store::{EventRow, MetricRow};
use analytics_service::stream::{self, Publisher, StreamRow, Table};
use serde_json::json;
use sqlx::Connection;

use super::{InProcessLoader, Rig, loader_process_with, secs};
use crate::helpers::eventually;

/// `count` events whose `data` holds about `bytes` bytes.
fn events(count: usize, bytes: usize) -> Vec<EventRow> {
    let event = |i: usize| {
        let blob = format!("{i:06}").repeat(bytes / 6);
        let body = json!({"type": "big", "data": {"blob": blob}, "data_index": "i"});
        NewAnalyticsEvent::parse(&body).unwrap()
    };
    (0..count)
        .map(|i| EventRow::new(chrono::Utc::now(), "stream-user".to_owned(), event(i)))
        .collect()
}

/// `count` metrics whose `data_string` holds about `bytes` bytes.
fn metrics(count: usize, bytes: usize) -> Vec<MetricRow> {
    let metric = |i: usize| {
        let blob = format!("{i:06}").repeat(bytes / 6);
        let body = json!({"metric_name": "big", "metric_value": i, "data_string": blob});
        NewMetric::parse(&body).unwrap()
    };
    (0..count)
        .map(|i| MetricRow::new(chrono::Utc::now(), "stream-user".to_owned(), metric(i)))
        .collect()
}

/// Publishes the rows straight to their stream (as capture would: each with its id as
/// `Nats-Msg-Id`); returns their ids.
async fn publish<R: StreamRow>(settings: &Settings, rows: Vec<R>) -> HashSet<String> {
    let nats = stream::connect(&settings.nats).await.unwrap();
    let publisher = Publisher::new(nats.jetstream.clone(), secs(30));
    let mut ids = HashSet::new();
    for group in rows.chunks(10) {
        publisher.publish_all(group).await.unwrap();
        ids.extend(group.iter().map(|row| row.id().to_string()));
    }
    ids
}

/// The ids in `table`, and how many rows it holds.
async fn stored_ids(database_url: &str, table: Table) -> (HashSet<String>, usize) {
    let mut conn = sqlx::PgConnection::connect(database_url).await.unwrap();
    let query = match table {
        Table::Metrics => r#"select "id" from "AnalyticsMetrics""#,
        Table::Details => r#"select "id" from "AnalyticsDetails""#,
    };
    let ids: Vec<(String,)> = sqlx::query_as(query).fetch_all(&mut conn).await.unwrap();
    let rows = ids.len();
    (ids.into_iter().map(|(id,)| id).collect(), rows)
}

/// Waits until every id is in `table` (for at most `within`), then checks that nothing else
/// is and that none is there twice.
async fn assert_loaded_once(
    database_url: &str,
    table: Table,
    ids: &HashSet<String>,
    within: Duration,
) {
    let (stored, rows) = eventually("every row to be loaded", within, async || {
        let (stored, rows) = stored_ids(database_url, table).await;
        ids.is_subset(&stored).then_some((stored, rows))
    })
    .await;
    let name = table.name();
    assert_eq!(&stored, ids, "rows other than those published in {name}");
    assert_eq!(rows, ids.len(), "a row is stored twice in {name}");
}

/// The review's case, larger and in both tables, so that every worker is busy: a backlog
/// of 150 events and 150 metrics of 900 KB (270 MB) is waiting when a loader with the
/// default settings (4 workers per table, batch 500, 4 MiB pulls) starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_900_kb_rows_keeps_the_loader_under_256_mib() {
    let Rig {
        nats: _nats,
        database,
        settings,
    } = Rig::start(1, 1).await;
    let event_ids = publish(&settings, events(150, 900 * 1024)).await;
    let metric_ids = publish(&settings, metrics(150, 900 * 1024)).await;

    // The binary's defaults: the helper's 3 s ack wait is set back to the default 30 s.
    let loader = loader_process_with(&settings, &[("APP_LOADER__ACK_WAIT_MS", "30000")]).await;
    assert_loaded_once(&database.url(), Table::Details, &event_ids, secs(240)).await;
    assert_loaded_once(&database.url(), Table::Metrics, &metric_ids, secs(60)).await;

    let peak = loader.peak_rss_mib();
    eprintln!("backlog of 150 events and 150 metrics of 900 KB: loader peak RSS {peak} MiB");
    assert!(peak < 256, "peak RSS {peak} MiB");
}

/// A pull asks for at most `loader.max_fetch_bytes`; nats-server answers a pull whose next
/// message is larger with a 409 and never delivers it to such a pull. The loader pulls that
/// message alone, and the rows behind it are loaded too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_larger_than_the_fetch_budget_is_still_loaded() {
    let Rig {
        nats: _nats,
        database,
        mut settings,
    } = Rig::start(1, 1).await;
    settings.loader.workers_per_table = 1;
    settings.loader.max_fetch_bytes = 16 * 1024;
    let mut ids = publish(&settings, events(5, 100)).await;
    ids.extend(publish(&settings, events(3, 300 * 1024)).await);
    ids.extend(publish(&settings, events(5, 100)).await);

    let loader = InProcessLoader::start(&settings).await;
    assert_loaded_once(&database.url(), Table::Details, &ids, secs(60)).await;
    loader.stop().await;
}

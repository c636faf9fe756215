//! The loader's memory is bounded by its fetch budget, not by the backlog: a backlog of
//! events near the size limit is loaded by a process that stays small, each row once.

use std::collections::HashSet;

use analytics_service::domain::NewAnalyticsEvent;
use analytics_service::settings::Settings;
use analytics_service::store::EventRow;
use analytics_service::stream::{self, Publisher, StreamRow};
use serde_json::json;

use super::{InProcessLoader, Rig, loader_process_with, secs, stored_event_ids};
use crate::helpers::eventually;

/// Publishes `count` events whose `data` holds `bytes` bytes, straight to the stream (as
/// capture would: each with its id as `Nats-Msg-Id`); returns their ids.
async fn publish_events(settings: &Settings, count: usize, bytes: usize) -> HashSet<String> {
    let nats = stream::connect(&settings.nats).await.unwrap();
    let publisher = Publisher::new(nats.jetstream.clone(), secs(30));
    let mut ids = HashSet::new();
    let rows: Vec<EventRow> = (0..count)
        .map(|i| {
            let blob = format!("{i:06}").repeat(bytes / 6);
            let body = json!({"type": "big", "data": {"blob": blob}, "data_index": "i"});
            let event = NewAnalyticsEvent::parse(&body).unwrap();
            EventRow::new(chrono::Utc::now(), "stream-user".to_owned(), event)
        })
        .collect();
    for group in rows.chunks(10) {
        publisher.publish_all(group).await.unwrap();
        ids.extend(group.iter().map(|row| row.id().to_string()));
    }
    ids
}

/// Waits until every id is in `"AnalyticsDetails"`, then checks that nothing else is and
/// that none is there twice.
async fn assert_loaded_once(database_url: &str, ids: &HashSet<String>) {
    let (stored, rows) = eventually("every row to be loaded", secs(240), async || {
        let (stored, rows) = stored_event_ids(database_url).await;
        ids.is_subset(&stored).then_some((stored, rows))
    })
    .await;
    assert_eq!(&stored, ids, "rows other than those published");
    assert_eq!(rows, ids.len(), "a row is stored twice");
}

/// The review's case, larger: a backlog of 300 events of 900 KB (270 MB) is waiting when
/// a loader with the default settings (4 workers per table, batch 500) starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_900_kb_events_keeps_the_loader_under_256_mib() {
    let Rig {
        nats: _nats,
        database,
        settings,
    } = Rig::start(1, 1).await;
    let ids = publish_events(&settings, 300, 900 * 1024).await;

    // The binary's defaults: the helper's 3 s ack wait is set back to the default 30 s.
    let loader = loader_process_with(&settings, &[("APP_LOADER__ACK_WAIT_MS", "30000")]).await;
    assert_loaded_once(&database.url(), &ids).await;

    let peak = loader.peak_rss_mib();
    eprintln!("backlog of 300 events of 900 KB: loader peak RSS {peak} MiB");
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
    let mut ids = publish_events(&settings, 5, 100).await;
    ids.extend(publish_events(&settings, 3, 300 * 1024).await);
    ids.extend(publish_events(&settings, 5, 100).await);

    let loader = InProcessLoader::start(&settings).await;
    assert_loaded_once(&database.url(), &ids).await;
    loader.stop().await;
}

//! Stream mode end to end on a three-node JetStream cluster.

use std::sync::Arc;

use serde_json::json;

use super::{
    Acknowledged, Rig, assert_loaded_exactly_once, capture, loader_process, post_events,
    scrape_value, secs,
};
use crate::helpers::{event_body, eventually};

/// Two capture replicas, a stream of three replicas, two loader processes: every row a
/// client was answered 200 for is in PostgreSQL once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_published_through_two_replicas_land_once_through_two_loaders() {
    let Rig {
        nats: _nats,
        database,
        settings,
    } = Rig::start(3, 3).await;
    let first = Arc::new(capture(&settings).await);
    let second = Arc::new(capture(&settings).await);
    let loaders = [
        loader_process(&settings).await,
        loader_process(&settings).await,
    ];

    let (a, b) = tokio::join!(post_events(&first, 300, 8), post_events(&second, 300, 8));
    let items: Vec<_> = (0..50)
        .map(|i| event_body("batched", json!({"i": i}), "b"))
        .collect();
    let batch = second
        .post_json(
            "/api/analytics/log_raw_analytics/batch",
            &json!(items),
            Some(&second.token("stream-user")),
        )
        .await;
    assert_eq!(batch.status(), 200);
    let results: Vec<serde_json::Value> = batch.json().await.unwrap();
    let mut acked = Acknowledged::default();
    acked.merge(a);
    acked.merge(b);
    acked
        .ids
        .extend(results.iter().map(|r| r["id"].as_str().unwrap().to_owned()));

    assert_eq!(acked.refused, 0);
    assert_eq!(acked.ids.len(), 650);
    let rows = assert_loaded_exactly_once(&database.url(), &acked).await;
    assert_eq!(rows, 650);
    // Each loader process exports what it loaded; between them, every row.
    let mut loaded = 0.0;
    for loader in &loaders {
        let series = r#"analytics_loader_rows_loaded_total{table="AnalyticsDetails"}"#;
        loaded += scrape_value(&loader.url("/metrics"), series)
            .await
            .unwrap_or(0.0);
    }
    assert!(loaded >= 650.0, "the loaders report {loaded} rows loaded");
    eprintln!("end to end: acknowledged 650, stored {rows}, duplicates 0");
}

/// The loader's lag gauges: rows waiting while the table is locked, and their age; both
/// back to zero once the rows are loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_loader_exports_its_backlog_and_the_oldest_rows_age() {
    let Rig {
        nats: _nats,
        database,
        settings,
    } = Rig::start(1, 1).await;
    let app = Arc::new(capture(&settings).await);
    let acked = post_events(&app, 100, 4).await;
    let mut conn = app.pg().await;
    let mut lock = sqlx::Connection::begin(&mut conn).await.unwrap();
    sqlx::query(r#"lock table "AnalyticsDetails" in access exclusive mode"#)
        .execute(&mut *lock)
        .await
        .unwrap();
    let loader = super::loader_process_with(
        &settings,
        &[
            ("APP_LOADER__LAG_INTERVAL_MS", "100"),
            ("APP_LOADER__INSERT_DEADLINE_MS", "1000"),
        ],
    )
    .await;
    let metrics = loader.url("/metrics");
    let pending = r#"analytics_loader_pending_messages{table="AnalyticsDetails"}"#;
    let oldest = r#"analytics_loader_oldest_pending_seconds{table="AnalyticsDetails"}"#;

    let age = eventually("the backlog's age to show", secs(20), async || {
        let waiting = scrape_value(&metrics, pending).await?;
        let age = scrape_value(&metrics, oldest).await?;
        (waiting == 100.0 && age >= 1.0).then_some(age)
    })
    .await;
    lock.rollback().await.unwrap();
    assert_loaded_exactly_once(&database.url(), &acked).await;
    eventually("the backlog to drain", secs(20), async || {
        let waiting = scrape_value(&metrics, pending).await;
        let age = scrape_value(&metrics, oldest).await;
        waiting == Some(0.0) && age == Some(0.0)
    })
    .await;
    assert!(age < 60.0, "{age}");
}

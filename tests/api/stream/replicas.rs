//! Replicas that act as one: an `Idempotency-Key` raced across two capture replicas.

use std::sync::Arc;

use serde_json::json;
use tokio::task::JoinSet;

use super::{InProcessLoader, Rig, capture, secs, stored_event_ids};
use crate::helpers::{event_body, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idempotency_key_raced_across_two_replicas_gives_one_id_and_one_row() {
    let Rig {
        nats: _nats,
        database,
        settings,
    } = Rig::start(1, 1).await;
    let replicas = [
        Arc::new(capture(&settings).await),
        Arc::new(capture(&settings).await),
    ];
    let body = event_body("purchase", json!({"order": 7}), "o7");

    let mut requests = JoinSet::new();
    for i in 0..20 {
        let app = replicas[i % 2].clone();
        let body = body.clone();
        requests.spawn(async move {
            app.client
                .post(app.url("/api/analytics/log_raw_analytics"))
                .bearer_auth(app.token("buyer"))
                .header("idempotency-key", "order-7")
                .json(&body)
                .send()
                .await
                .unwrap()
        });
    }
    let mut ids = Vec::new();
    while let Some(response) = requests.join_next().await {
        let response = response.unwrap();
        assert_eq!(response.status(), 200);
        ids.push(response.json::<String>().await.unwrap());
    }
    let conflicting = replicas[1]
        .client
        .post(replicas[1].url("/api/analytics/log_raw_analytics"))
        .bearer_auth(replicas[1].token("buyer"))
        .header("idempotency-key", "order-7")
        .json(&event_body("purchase", json!({"order": 8}), "o8"))
        .send()
        .await
        .unwrap();
    let loader = InProcessLoader::start(&settings).await;

    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1, "replicas answered different ids: {ids:?}");
    assert_eq!(conflicting.status(), 422);
    let conflict: serde_json::Value = conflicting.json().await.unwrap();
    assert_eq!(conflict["detail"][0]["type"], "idempotency_key_conflict");
    let stored = eventually("the row to be loaded", secs(30), async || {
        let (stored, rows) = stored_event_ids(&database.url()).await;
        (rows > 0).then_some((stored, rows))
    })
    .await;
    // Give a second row, were there one, the time to arrive.
    tokio::time::sleep(secs(1)).await;
    let (_, rows) = stored_event_ids(&database.url()).await;
    loader.stop().await;
    assert!(stored.0.contains(&ids[0]));
    assert_eq!(rows, 1);
}

//! Faults under load in stream mode: a NATS node killed, PostgreSQL silent for 10 s, a
//! loader killed with SIGKILL mid-batch.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{
    Acknowledged, InProcessLoader, Rig, assert_loaded_exactly_once, capture, loader_process,
    post_events, secs, stored_event_ids,
};
use crate::helpers::{TestApp, admin_pg_url, event_body, eventually};
use crate::pg_proxy::PgProxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nats_node_killed_under_load_loses_no_acknowledged_row() {
    let Rig {
        mut nats,
        database,
        settings,
    } = Rig::start(3, 3).await;
    let app = Arc::new(capture(&settings).await);

    let load = tokio::spawn({
        let app = app.clone();
        async move { post_events(&app, 1500, 16).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    nats.nodes[0].kill();
    let mut acked = load.await.unwrap();
    // After the kill, capture still answers: every one of these is acknowledged.
    let after = post_events(&app, 200, 8).await;
    assert_eq!(
        after.refused, 0,
        "capture stopped answering after a node died"
    );
    acked.merge(after);
    let loader = InProcessLoader::start(&settings).await;

    let rows = assert_loaded_exactly_once(&database.url(), &acked).await;
    loader.stop().await;
    eprintln!(
        "node killed: acknowledged {}, refused {}, stored {rows}, duplicates 0",
        acked.ids.len(),
        acked.refused
    );
    // Requests whose publish was in flight on the dead node are sent again within the
    // publish timeout: only a few may run out of it while the stream elects a new leader.
    assert!(acked.refused < 1500 / 4, "{} refused", acked.refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_silent_for_ten_seconds_capture_answers_and_every_row_is_loaded_once() {
    let Rig {
        nats: _nats,
        database,
        settings,
    } = Rig::start(1, 1).await;
    let app = Arc::new(capture(&settings).await);
    let upstream = url::Url::parse(&admin_pg_url()).unwrap();
    let upstream = format!(
        "{}:{}",
        upstream.host_str().unwrap(),
        upstream.port().unwrap_or(5432)
    );
    let proxy = PgProxy::start(upstream.parse().unwrap()).await;
    let mut through_proxy = settings.clone();
    through_proxy.database.url = Some(proxy.url(&database.url()).into());
    let loader = InProcessLoader::start(&through_proxy).await;

    let before = post_events(&app, 200, 8).await;
    proxy.black_hole_all();
    let during = post_events_for(&app, secs(10)).await;
    let (_, rows_during) = stored_event_ids(&database.url()).await;
    proxy.restore();
    let after = post_events(&app, 200, 8).await;

    assert_eq!(
        during.refused, 0,
        "capture refused rows while PostgreSQL was silent"
    );
    assert!(
        during.ids.len() >= 100,
        "only {} rows during the outage",
        during.ids.len()
    );
    let mut acked = before;
    acked.merge(during);
    acked.merge(after);
    assert_eq!(acked.refused, 0);
    assert!(
        rows_during <= 200 + 1,
        "rows were loaded through a silent database"
    );
    let rows = assert_loaded_exactly_once(&database.url(), &acked).await;
    loader.stop().await;
    eprintln!(
        "PostgreSQL outage: acknowledged {}, stored {rows}, duplicates 0",
        acked.ids.len()
    );
}

/// Posts events one client at a time for `how_long`.
async fn post_events_for(app: &Arc<TestApp>, how_long: Duration) -> Acknowledged {
    let deadline = tokio::time::Instant::now() + how_long;
    let mut acked = Acknowledged::default();
    while tokio::time::Instant::now() < deadline {
        acked.merge(post_events(app, 20, 4).await);
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_loader_killed_mid_batch_and_started_again_loses_no_row_and_stores_none_twice() {
    let Rig {
        nats: _nats,
        database,
        settings,
    } = Rig::start(1, 1).await;
    let app = capture(&settings).await;
    let token = app.token("stream-user");
    let mut acked = Acknowledged::default();
    for batch in 0..40 {
        let items: Vec<_> = (0..500)
            .map(|i| event_body("bulk", json!({"batch": batch, "i": i}), "b"))
            .collect();
        let path = "/api/analytics/log_raw_analytics/batch";
        let response = app.post_json(path, &json!(items), Some(&token)).await;
        assert_eq!(response.status(), 200);
        let results: Vec<serde_json::Value> = response.json().await.unwrap();
        (acked.ids).extend(results.iter().map(|r| r["id"].as_str().unwrap().to_owned()));
    }

    let mut first = loader_process(&settings).await;
    let loaded_at_kill = eventually("the loader to load some rows", secs(30), async || {
        let (_, rows) = stored_event_ids(&database.url()).await;
        (rows > 0).then_some(rows)
    })
    .await;
    first.kill();
    let (_, rows_after_kill) = stored_event_ids(&database.url()).await;
    assert!(
        rows_after_kill < acked.ids.len(),
        "the loader finished before it was killed ({rows_after_kill} rows)"
    );
    let _second = loader_process(&settings).await;

    let rows = assert_loaded_exactly_once(&database.url(), &acked).await;
    assert_eq!(rows, 20_000);
    eprintln!(
        "loader SIGKILL: acknowledged 20000, {loaded_at_kill}..{rows_after_kill} loaded at the kill, stored {rows}, duplicates 0"
    );
}

/// The only NATS server gone: capture answers 503 with `Retry-After` within the publish
/// timeout (never a 500, never a hang), `/readyz` says so, and both recover with the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_nats_gone_capture_answers_503_then_recovers() {
    let Rig {
        mut nats,
        database,
        mut settings,
    } = Rig::start(1, 1).await;
    settings.nats.publish_timeout = Duration::from_secs(1);
    let app = Arc::new(capture(&settings).await);
    let token = app.token("stream-user");
    let body = event_body("t", json!({}), "i");
    let path = "/api/analytics/log_raw_analytics";

    nats.nodes[0].kill();
    let started = tokio::time::Instant::now();
    let refused = app.post_json(path, &body, Some(&token)).await;
    let waited = started.elapsed();
    let ready_while_down = app.client.get(app.url("/readyz")).send().await.unwrap();
    nats.nodes[0].restart();
    nats.wait_ready().await;
    let mut refused_while_recovering = 0;
    let recovered = eventually("capture to store rows again", secs(30), async || {
        let response = app.post_json(path, &body, Some(&token)).await;
        let status = response.status();
        let text = response.text().await.unwrap();
        refused_while_recovering += usize::from(status != 200);
        (status == 200).then(|| serde_json::from_str::<String>(&text).expect(&text))
    })
    .await;
    let ready_after = app.client.get(app.url("/readyz")).send().await.unwrap();

    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    assert!(waited < Duration::from_secs(3), "answered after {waited:?}");
    assert_eq!(ready_while_down.status(), 503);
    assert_eq!(ready_after.status(), 200);
    let loader = InProcessLoader::start(&settings).await;
    // A refused request's publish may still reach the stream (the client sends what it
    // buffered once it reconnects): those rows are loaded too, once.
    let acked = Acknowledged {
        ids: vec![recovered],
        refused: 1 + refused_while_recovering,
    };
    assert_loaded_exactly_once(&database.url(), &acked).await;
    loader.stop().await;
}

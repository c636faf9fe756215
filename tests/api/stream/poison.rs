//! A row the database refuses for good goes to the dead letters after the bounded
//! deliveries, and the rows behind it are loaded.

use analytics_service::stream::{self, Table};
use async_nats::jetstream;
use sqlx::Connection;

use super::{InProcessLoader, Rig, capture, secs};
use crate::helpers::{eventually, metric_body};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_row_reaches_the_dead_letters_and_the_rows_behind_it_are_loaded() {
    let Rig {
        nats,
        database,
        mut settings,
    } = Rig::start(1, 1).await;
    settings.loader.max_deliver = 3;
    let app = capture(&settings).await;
    app.require_known_users(&["known"]).await;
    let path = "/api/analytics/log_raw_metric";
    // Capture does not read the "User" table: the unknown user's row is acknowledged, and
    // refused by the database at load time.
    let poison = app
        .post_json(
            path,
            &metric_body("m", 1, "poison"),
            Some(&app.token("nobody")),
        )
        .await;
    assert_eq!(poison.status(), 200);
    let poison_id: String = poison.json().await.unwrap();
    let mut behind = Vec::new();
    for i in 0..20 {
        let body = metric_body("m", i, "fine");
        let response = app.post_json(path, &body, Some(&app.token("known"))).await;
        assert_eq!(response.status(), 200);
        behind.push(response.json::<String>().await.unwrap());
    }

    let started = tokio::time::Instant::now();
    let loader = InProcessLoader::start(&settings).await;
    let mut conn = sqlx::PgConnection::connect(&database.url()).await.unwrap();
    eventually(
        "the rows behind the poison row to be loaded",
        secs(30),
        async || {
            let (count,): (i64,) = sqlx::query_as(
                r#"select count(*) from "AnalyticsMetrics" where "userId" = 'known'"#,
            )
            .fetch_one(&mut conn)
            .await
            .unwrap();
            count == 20
        },
    )
    .await;
    let client = async_nats::connect(nats.urls()).await.unwrap();
    let dead_letters = jetstream::new(client)
        .get_stream("ANALYTICS_DEAD")
        .await
        .unwrap();
    let dead = eventually("the dead letter", secs(30), async || {
        dead_letters.get_raw_message(1).await.ok()
    })
    .await;
    let dead_after = started.elapsed();
    loader.stop().await;

    assert_eq!(dead.subject.as_str(), Table::Metrics.dead_letter_subject());
    let reason = dead.headers.get(stream::REASON_HEADER).unwrap();
    assert_eq!(reason.as_str(), "unknown_user");
    let row: serde_json::Value = serde_json::from_slice(&dead.payload).unwrap();
    assert_eq!(row["id"], poison_id.as_str());
    assert_eq!(row["userId"], "nobody");
    // Three deliveries, two retry delays apart at least.
    assert!(
        dead_after >= 2 * settings.loader.retry_delay,
        "{dead_after:?}"
    );
    let (poison_stored,): (i64,) =
        sqlx::query_as(r#"select count(*) from "AnalyticsMetrics" where "id" = $1"#)
            .bind(&poison_id)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(poison_stored, 0);
    assert!(
        dead_letters.get_raw_message(2).await.is_err(),
        "one dead letter only"
    );
}

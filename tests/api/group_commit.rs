//! Group commit: concurrent single-event requests share transactions, yet every 200 means
//! the row is committed.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::{Executor, PgConnection};
use tokio::task::{JoinHandle, JoinSet};

use analytics_service::domain::NewMetric;
use analytics_service::error::UNKNOWN_USER_DETAIL;
use analytics_service::ingest::BatchRow;
use analytics_service::settings::Settings;
use analytics_service::store::MetricRow;

use crate::helpers::{Backend, TestApp, eventually, metric_body, metric_storage_503_body};
use crate::on_both_backends;

const METRIC: &str = "/api/analytics/log_raw_metric";

/// A request to the metric endpoint as `token`'s user, sent when awaited.
fn send_metric(
    app: &TestApp,
    token: &str,
    body: &Value,
) -> impl Future<Output = reqwest::Result<reqwest::Response>> + Send + use<> {
    app.client
        .post(app.url(METRIC))
        .bearer_auth(token)
        .json(body)
        .send()
}

/// Commits `blocker`'s transaction (releasing its table lock) after `ms` milliseconds.
async fn commit_after(blocker: &mut PgConnection, ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    blocker.execute("commit").await.unwrap();
}

/// Fires `bodies` concurrently; returns (status, body) per request, in completion order.
async fn post_all(app: &TestApp, bodies: Vec<Value>) -> Vec<(u16, Value)> {
    let token = app.token("user-1");
    let mut requests = JoinSet::new();
    for body in bodies {
        let request = send_metric(app, &token, &body);
        requests.spawn(async move {
            let response = request.await.expect("the request reaches the server");
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        });
    }
    requests.join_all().await
}

async fn count(conn: &mut PgConnection, sql: &'static str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(conn).await.unwrap();
    n
}

/// Rows in `"AnalyticsMetrics"`, read on a connection of the test's own.
async fn stored_metrics(app: &TestApp) -> i64 {
    count(
        &mut app.pg().await,
        r#"select count(*) from "AnalyticsMetrics""#,
    )
    .await
}

async fn concurrent_requests_get_distinct_ids_and_all_rows_are_stored(app: TestApp) {
    let bodies = (0..200)
        .map(|i| metric_body(format!("m{i}"), 1, "d"))
        .collect();

    let answers = post_all(&app, bodies).await;

    let ids: HashSet<String> = answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 200, "{body}");
            body.as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 200);
    for id in &ids {
        assert!(
            app.store.metric_by_id(id).await.unwrap().is_some(),
            "row {id} missing"
        );
    }
}

on_both_backends!(
    concurrent_requests_get_distinct_ids_and_all_rows_are_stored,
    an_idle_writer_holds_none_of_the_stores_connections,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_requests_take_fewer_transactions_than_requests() {
    // One user sending 500 at once is over the per-user burst; that limit is not under test.
    let app = TestApp::spawn_with(Backend::Postgres, |s| {
        s.edge.rate_limit.user_per_second = 0.0
    })
    .await;
    let bodies = (0..500)
        .map(|i| metric_body(format!("m{i}"), 1, "d"))
        .collect();

    let answers = post_all(&app, bodies).await;

    assert!(answers.iter().all(|(status, _)| *status == 200));
    let mut conn = app.pg().await;
    assert_eq!(
        count(&mut conn, r#"select count(*) from "AnalyticsMetrics""#).await,
        500
    );
    // Rows written by one transaction share its id (xmin).
    let transactions = count(
        &mut conn,
        r#"select count(distinct xmin::text) from "AnalyticsMetrics""#,
    )
    .await;
    assert!(
        transactions < 500,
        "{transactions} transactions for 500 rows"
    );
}

/// The byte estimate of one `metric_body(name, 1, "d")` row with a three-character name.
fn metric_row_bytes() -> usize {
    let metric = NewMetric::parse(&metric_body("m00", 1, "d")).unwrap();
    MetricRow::new(chrono::Utc::now(), "user-1".into(), metric).approx_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_transaction_passes_the_byte_limit_and_no_row_is_lost() {
    // Two rows and a half: a third row would pass the limit, so it opens the next batch.
    let limit = metric_row_bytes() * 5 / 2;
    let app = TestApp::spawn_with(Backend::Postgres, |s| {
        s.edge.rate_limit.user_per_second = 0.0;
        s.ingest.writers_per_table = 1;
        s.ingest.max_batch_bytes = limit;
        s.ingest.max_wait = Duration::from_micros(300_000);
    })
    .await;
    let bodies = (0..20)
        .map(|i| metric_body(format!("m{i:02}"), 1, "d"))
        .collect();

    let answers = post_all(&app, bodies).await;

    assert!(
        answers.iter().all(|(status, _)| *status == 200),
        "{answers:?}"
    );
    let mut conn = app.pg().await;
    assert_eq!(
        count(&mut conn, r#"select count(*) from "AnalyticsMetrics""#).await,
        20
    );
    // Rows written by one transaction share its id (xmin).
    let largest = count(
        &mut conn,
        r#"select max(n) from (select count(*) as n from "AnalyticsMetrics" group by xmin::text) as t"#,
    )
    .await;
    assert_eq!(largest, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_database_refuses_fails_only_its_own_request() {
    let app = TestApp::spawn_with(Backend::Postgres, |s| {
        s.ingest.writers_per_table = 1;
        s.ingest.max_wait = Duration::from_micros(300_000);
    })
    .await;
    let mut conn = app.pg().await;
    conn.execute(r#"alter table "AnalyticsMetrics" add constraint no_poison check ("analyticMetric" <> 'poison')"#)
        .await
        .unwrap();
    let mut bodies: Vec<Value> = (0..39)
        .map(|i| metric_body(format!("m{i}"), 1, "d"))
        .collect();
    bodies.insert(17, metric_body("poison", 1, "d"));

    let answers = post_all(&app, bodies).await;

    let failed: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s != 200)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(failed.len(), 1, "{answers:?}");
    assert_eq!(failed[0]["detail"]["message"], "Analytics database error");
    assert_eq!(
        count(&mut conn, r#"select count(*) from "AnalyticsMetrics""#).await,
        39
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_with_retry_after() {
    let app = TestApp::spawn_with(Backend::Postgres, |s| {
        s.ingest.writers_per_table = 1;
        s.ingest.max_batch = 1;
        s.ingest.queue_capacity = 1;
    })
    .await;
    let mut blocker = app.lock_metrics_table().await;
    let token = app.token("user-1");
    let send = |name: &str| send_metric(&app, &token, &metric_body(name, 1, "d"));
    let first = tokio::spawn(send("first"));
    app.wait_for_lock_waiter().await;
    let mut rest = JoinSet::new();
    for i in 0..5 {
        rest.spawn(send(&format!("r{i}")));
    }

    let refused = rest.join_next().await.unwrap().unwrap().unwrap();

    metric_storage_503_body(refused).await;
    blocker.execute("commit").await.unwrap();
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    let mut accepted = 1;
    for response in rest.join_all().await {
        let status = response.unwrap().status().as_u16();
        assert!(status == 200 || status == 503, "{status}");
        accepted += i64::from(status == 200);
    }
    let mut conn = app.pg().await;
    assert_eq!(
        count(&mut conn, r#"select count(*) from "AnalyticsMetrics""#).await,
        accepted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_a_full_queue_answers_every_accepted_request() {
    let mut app = TestApp::spawn_with(Backend::Postgres, |s| s.ingest.writers_per_table = 1).await;
    let mut blocker = app.lock_metrics_table().await;
    let token = app.token("user-1");
    let mut requests = JoinSet::new();
    for i in 0..20 {
        requests.spawn(send_metric(
            &app,
            &token,
            &metric_body(format!("m{i}"), 1, "d"),
        ));
    }
    app.wait_for_lock_waiter().await;

    let (stopped, ()) = tokio::join!(app.stop(), commit_after(&mut blocker, 300));

    stopped.expect("the server stops cleanly");
    let statuses: Vec<u16> = requests
        .join_all()
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    assert_eq!(statuses, vec![200; 20]);
    let mut conn = app.pg().await;
    assert_eq!(
        count(&mut conn, r#"select count(*) from "AnalyticsMetrics""#).await,
        20
    );
}

type Sent = JoinHandle<reqwest::Result<reqwest::Response>>;

/// Locks the metrics table, sends the first `(token, body)` and waits until its transaction
/// waits on the lock, then sends the others and waits until all of them are queued.
async fn queue_behind_a_locked_table(
    app: &TestApp,
    requests: &[(String, Value)],
) -> (PgConnection, Vec<Sent>) {
    let blocker = app.lock_metrics_table().await;
    let send = |(token, body): &(String, Value)| tokio::spawn(send_metric(app, token, body));
    let mut sent = vec![send(&requests[0])];
    app.wait_for_lock_waiter().await;
    sent.extend(requests[1..].iter().map(send));
    let queued = ("AnalyticsMetrics", requests.len() - 1);
    eventually(
        &format!("{queued:?} rows waiting for the writer"),
        Duration::from_secs(10),
        async || app.group_commit.waiting_rows()[0] == queued,
    )
    .await;
    assert_eq!(app.group_commit.waiting_rows()[0], queued);
    (blocker, sent)
}

/// `user-1`'s requests for the metrics named `names`.
fn metrics_of_user_1(app: &TestApp, names: impl Iterator<Item = String>) -> Vec<(String, Value)> {
    let token = app.token("user-1");
    names
        .map(|name| (token.clone(), metric_body(name.as_str(), 1, "d")))
        .collect()
}

/// Waits until no other session of the app's database runs a statement.
async fn wait_until_the_database_is_quiet(conn: &mut PgConnection) {
    eventually(
        "the database to go quiet",
        Duration::from_secs(5),
        async || {
            let busy = count(
                conn,
                "select count(*) from pg_stat_activity where datname = current_database() \
             and state = 'active' and pid <> pg_backend_pid()",
            )
            .await;
            busy == 0
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_still_queued_when_the_drain_deadline_passes_are_written() {
    // One row and a half: every batch takes a second row off the queue and holds it over.
    let limit = metric_row_bytes() * 3 / 2;
    let mut app = TestApp::spawn_with(Backend::Postgres, |s| {
        s.edge.rate_limit.user_per_second = 0.0;
        s.ingest.writers_per_table = 1;
        s.ingest.max_batch_bytes = limit;
        s.server.shutdown_timeout = Duration::from_secs(0);
    })
    .await;
    // The first row alone is in the blocked transaction; the other 19 wait in the queue.
    let names = (0..20).map(|i| format!("m{i:02}"));
    let (mut blocker, requests) =
        queue_behind_a_locked_table(&app, &metrics_of_user_1(&app, names)).await;

    let (stopped, ()) = tokio::join!(app.stop(), commit_after(&mut blocker, 300));

    // The deadline cut the connections before any answer; the queued rows are written.
    stopped.expect("the server stops cleanly");
    requests.iter().for_each(tokio::task::JoinHandle::abort);
    let mut conn = app.pg().await;
    assert_eq!(
        count(&mut conn, r#"select count(*) from "AnalyticsMetrics""#).await,
        20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_whose_connection_the_server_drops_takes_a_new_one() {
    // A writer keeps its connection while rows keep coming; a dropped one must not stick.
    let app = TestApp::spawn_with(Backend::Postgres, |s| {
        s.edge.rate_limit.user_per_second = 0.0;
        s.ingest.writers_per_table = 1;
    })
    .await;
    let token = app.token("user-1");
    let stored = app
        .post_json(METRIC, &metric_body("before", 1, "d"), Some(&token))
        .await;
    assert_eq!(stored.status(), 200);
    let mut conn = app.pg().await;

    let dropped = count(
        &mut conn,
        "select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity \
         where datname = current_database() and pid <> pg_backend_pid()) as t",
    )
    .await;
    let mut statuses = Vec::new();
    for i in 0..20 {
        let body = metric_body(format!("after-{i}"), 1, "d");
        let status = app.post_json(METRIC, &body, Some(&token)).await.status();
        statuses.push(status.as_u16());
        if status == 200 {
            break;
        }
    }

    assert!(dropped > 0, "the service had no connection to drop");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "a lost connection is 'retry later', never a 500: {statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&200), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_writer_writes_on_a_connection_outside_the_stores_pool() {
    let app = TestApp::spawn(Backend::Postgres).await;
    let mut blocker = app.lock_metrics_table().await;
    let token = app.token("user-1");
    let request = tokio::spawn(send_metric(&app, &token, &metric_body("m", 1, "d")));
    // The writer is inside its transaction now, waiting for the lock.
    app.wait_for_lock_waiter().await;

    let stats = app.store.pool_stats();
    commit_after(&mut blocker, 0).await;

    assert_eq!(request.await.unwrap().unwrap().status(), 200);
    assert_eq!(
        stats.idle, stats.size,
        "the writer holds a store connection: {stats:?}"
    );
}

async fn an_idle_writer_holds_none_of_the_stores_connections(app: TestApp) {
    // PostgreSQL writers have a connection of their own; SQLite's give theirs back to the
    // store's pool after 100 ms without rows. Either way the batch endpoints get the pool.
    let stored = app
        .post_json(
            METRIC,
            &metric_body("one", 1, "d"),
            Some(&app.token("user-1")),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(400)).await;

    assert_eq!(stored.status(), 200);
    let stats = app.store.pool_stats();
    assert_eq!(stats.idle, stats.size, "a connection is held: {stats:?}");
}

/// A PostgreSQL app with one writer per table and no per-user rate limit, then `tweak`.
async fn one_writer_app(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    TestApp::spawn_with(Backend::Postgres, |s| {
        s.edge.rate_limit.user_per_second = 0.0;
        s.ingest.writers_per_table = 1;
        tweak(s);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_not_written_by_the_shutdown_deadline_get_503_and_are_never_stored() {
    let mut app = one_writer_app(|s| {
        s.ingest.batch_deadline = Duration::from_millis(60_000);
        s.server.shutdown_timeout = Duration::from_secs(0);
        s.ingest.shutdown_flush = Duration::from_millis(300);
    })
    .await;
    let names = ["sent"].into_iter().chain(["q0", "q1", "q2", "q3"]);
    let requests = metrics_of_user_1(&app, names.map(str::to_owned));
    let (mut blocker, sent) = queue_behind_a_locked_table(&app, &requests).await;

    let stopped = tokio::time::timeout(Duration::from_secs(10), app.stop()).await;

    stopped
        .expect("the stop waits for no batch past its deadline")
        .expect("the server stops cleanly");
    for request in sent {
        // The drain deadline may have cut the connection first; a 200 is never right.
        if let Ok(response) = request.await.unwrap() {
            metric_storage_503_body(response).await;
        }
    }
    commit_after(&mut blocker, 0).await;
    let mut conn = app.pg().await;
    wait_until_the_database_is_quiet(&mut conn).await;
    assert_eq!(
        count(
            &mut conn,
            r#"select count(*) from "AnalyticsMetrics" where "analyticMetric" like 'q%'"#
        )
        .await,
        0,
        "a queued row was stored after its request got 503"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_row_among_many_costs_a_logarithmic_number_of_statements() {
    let app = one_writer_app(|_| {}).await;
    let mut conn = app.pg().await;
    conn.execute(r#"alter table "AnalyticsMetrics" add constraint no_poison check ("analyticMetric" <> 'poison')"#)
        .await
        .unwrap();
    // A sequence is not transactional: it counts the statements that rolled back too.
    conn.execute(
        r#"create sequence insert_statements;
           create function count_insert_statement() returns trigger language plpgsql
               as $$ begin perform nextval('insert_statements'); return null; end $$;
           create trigger count_insert_statements before insert on "AnalyticsMetrics"
               for each statement execute function count_insert_statement();"#,
    )
    .await
    .unwrap();
    let mut names: Vec<String> = (0..63).map(|i| format!("m{i}")).collect();
    names[40] = "poison".to_owned();
    let first = std::iter::once("first".to_owned());
    let requests = metrics_of_user_1(&app, first.chain(names));
    let (mut blocker, sent) = queue_behind_a_locked_table(&app, &requests).await;

    commit_after(&mut blocker, 0).await;
    let mut statuses = Vec::new();
    for request in sent {
        statuses.push(request.await.unwrap().unwrap().status().as_u16());
    }

    assert_eq!(
        statuses.iter().filter(|s| **s != 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(statuses[41], 500);
    assert_eq!(stored_metrics(&app).await, 63);
    let statements = count(
        &mut conn,
        "select case when is_called then last_value else 0 end from insert_statements",
    )
    .await;
    // The first row's batch, the 63-row batch, then a failing and a passing half per level.
    let bound = 1 + 1 + 2 * 6;
    assert!(
        statements <= bound,
        "{statements} statements (at most {bound}; row by row would take 65)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_whose_user_is_unknown_gets_403_and_its_batch_is_stored() {
    let app = one_writer_app(|_| {}).await;
    app.require_known_users(&["known"]).await;
    let (known, stranger) = (app.token("known"), app.token("stranger"));
    let mut requests: Vec<(String, Value)> = (0..10)
        .map(|i| (known.clone(), metric_body(format!("k{i}"), 1, "d")))
        .collect();
    requests.insert(5, (stranger, metric_body("s", 1, "d")));
    let (mut blocker, sent) = queue_behind_a_locked_table(&app, &requests).await;

    commit_after(&mut blocker, 0).await;
    let mut answers = Vec::new();
    for request in sent {
        let response = request.await.unwrap().unwrap();
        answers.push((
            response.status().as_u16(),
            response.json::<Value>().await.unwrap(),
        ));
    }

    assert_eq!(answers[5], (403, json!({"detail": UNKNOWN_USER_DETAIL})));
    answers.remove(5);
    assert!(answers.iter().all(|(s, _)| *s == 200), "{answers:?}");
    assert_eq!(stored_metrics(&app).await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_timed_out_leaves_no_row_behind() {
    let app = one_writer_app(|s| {
        s.ingest.batch_deadline = Duration::from_millis(60_000);
        s.edge.requests.request_timeout = Duration::from_secs(1);
    })
    .await;
    let requests = metrics_of_user_1(&app, ["sent", "gone"].into_iter().map(str::to_owned));
    let (mut blocker, sent) = queue_behind_a_locked_table(&app, &requests).await;

    let mut timed_out = Vec::new();
    for request in sent {
        timed_out.push(request.await.unwrap().unwrap());
    }
    commit_after(&mut blocker, 0).await;
    let later = app
        .post_json(
            METRIC,
            &metric_body("later", 1, "d"),
            Some(&app.token("user-1")),
        )
        .await;

    for response in timed_out {
        assert_eq!(response.status(), 503);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["detail"]["message"], "Request timed out");
    }
    // Rows leave in order: once "later" is stored, the writer has passed over "gone".
    assert_eq!(later.status(), 200);
    let mut conn = app.pg().await;
    let stored = |name: &'static str| {
        let sql = r#"select count(*) from "AnalyticsMetrics" where "analyticMetric" = $1"#;
        sqlx::query_scalar::<_, i64>(sql).bind(name)
    };
    assert_eq!(stored("gone").fetch_one(&mut conn).await.unwrap(), 0);
    // The remaining window: a row whose batch was already sent is stored.
    assert_eq!(stored("sent").fetch_one(&mut conn).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_full_of_bytes_answers_503_with_retry_after() {
    let capacity = metric_row_bytes() * 5 / 2;
    let app = one_writer_app(|s| {
        s.ingest.max_batch = 1;
        s.ingest.queue_capacity_bytes = capacity;
    })
    .await;
    let mut blocker = app.lock_metrics_table().await;
    let token = app.token("user-1");
    let first = tokio::spawn(send_metric(&app, &token, &metric_body("m00", 1, "d")));
    app.wait_for_lock_waiter().await;
    let mut rest = JoinSet::new();
    for i in 1..6 {
        rest.spawn(send_metric(
            &app,
            &token,
            &metric_body(format!("m{i:02}"), 1, "d"),
        ));
    }
    // Accepted rows wait behind the lock, so the first three answers are the refusals.
    let mut refused = Vec::new();
    while refused.len() < 3 {
        let response = rest.join_next().await.unwrap().unwrap().unwrap();
        refused.push(metric_storage_503_body(response).await);
    }

    commit_after(&mut blocker, 0).await;
    let accepted: Vec<u16> = rest
        .join_all()
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();

    for body in refused {
        assert_eq!(
            body["detail"]["message"],
            "Analytics ingestion is overloaded; retry later"
        );
    }
    assert_eq!(
        accepted,
        vec![200, 200],
        "two rows and a half fit: two wait"
    );
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    assert_eq!(stored_metrics(&app).await, 3);
}

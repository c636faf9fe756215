//! PostgreSQL: the original's tables, optionally inside Prisma's `?schema=NAME`.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::NaiveDateTime;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::types::Json;
use sqlx::{Connection, PgConnection, Postgres};
use url::Url;

use super::Config;
use super::{
    BatchStatements, EventRow, HeldConnection, MetricRow, PoolStats, RowWriter, Store, StoreError,
    StoredEvent, StoredMetric, wait_until_ready,
};
use super::{EVENT_ENDPOINT, IdempotencyClaim, IdempotentInsert, METRIC_ENDPOINT, idempotency};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Prisma's URL parameters that libpq/sqlx do not know; they are taken off the URL
/// (`schema` and `pgbouncer` are then honoured by [`connect_options`]).
const PRISMA_ONLY_PARAMS: &[&str] = &[
    "schema",
    "connection_limit",
    "pool_timeout",
    "connect_timeout",
    "socket_timeout",
    "pgbouncer",
    "statement_cache_size",
];

/// The PostgreSQL store.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// How each group-commit writer's own one-connection pool is built.
    writer_pool: PgPoolOptions,
    connect_options: PgConnectOptions,
    /// Writer connections carry startup options (statement timeout, keepalives); not behind
    /// PgBouncer, which refuses startup options it does not track.
    writer_startup_options: bool,
}

// By hand: the derived one would print the connect options, password included.
impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("host", &self.connect_options.get_host())
            .field("port", &self.connect_options.get_port())
            .field("database", &self.connect_options.get_database())
            .field("username", &self.connect_options.get_username())
            .finish_non_exhaustive()
    }
}

/// Splits Prisma's `?schema=NAME` off a database URL; the rest goes to sqlx.
/// `?pgbouncer=true` turns sqlx's statement cache off, as Prisma does: a transaction-mode
/// PgBouncer hands each transaction another server, where named statements don't exist.
fn connect_options(url: &str) -> Result<(PgConnectOptions, Option<String>), StoreError> {
    let mut parsed =
        Url::parse(url).map_err(|e| StoreError::InvalidUrl(format!("not a URL ({e})")))?;
    let schema = parsed
        .query_pairs()
        .find(|(k, _)| k == "schema")
        .map(|(_, v)| v.into_owned())
        .filter(|s| !s.is_empty());
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(k, _)| !PRISMA_ONLY_PARAMS.contains(&k.as_ref()))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    parsed.set_query(None);
    if !kept.is_empty() {
        parsed.query_pairs_mut().extend_pairs(kept);
    }
    let mut options = PgConnectOptions::from_str(parsed.as_str())
        .map_err(|_| StoreError::InvalidUrl("PostgreSQL options not understood".into()))?;
    if let Some(schema) = &schema {
        // Quoted, as `create schema` quotes it: unquoted, PostgreSQL would lowercase it.
        options = options.options([("search_path", quote_ident(schema))]);
    }
    if behind_pgbouncer(url) {
        options = options.statement_cache_capacity(0);
    }
    Ok((options, schema))
}

/// A connection idle for longer than this is pinged before use.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(1);

/// The options of the store's pool and of each writer's own pool, but their size.
fn pool_options(config: &Config) -> PgPoolOptions {
    PgPoolOptions::new()
        .acquire_timeout(config.acquire_timeout)
        .idle_timeout(Some(Duration::from_secs(300)))
        // sqlx pings every connection on acquire by default: one extra round trip per
        // group-commit transaction. Ping only connections that sat idle a while (a
        // restarted server drops them); a busy pool's connections were just used.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > IDLE_BEFORE_PING {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

/// A writer's connection: the server ends a statement after `statement_timeout` (a lock
/// wait, a stuck server) and probes the socket with TCP keepalives, so that a writer that
/// vanished does not hold a backend and its locks for hours. sqlx has no client-side
/// keepalive option; the group-commit batch deadline covers a server that stops answering.
fn writer_connect_options(
    options: &PgConnectOptions,
    statement_timeout: Duration,
) -> PgConnectOptions {
    options.clone().options([
        (
            "statement_timeout",
            statement_timeout.as_millis().max(1).to_string(),
        ),
        ("tcp_keepalives_idle", "30".to_owned()),
        ("tcp_keepalives_interval", "10".to_owned()),
        ("tcp_keepalives_count", "3".to_owned()),
    ])
}

/// Prisma's `?pgbouncer=true`: a pooler (transaction mode) in front of the server.
fn behind_pgbouncer(url: &str) -> bool {
    Url::parse(url).is_ok_and(|u| {
        u.query_pairs()
            .any(|(k, v)| k == "pgbouncer" && v.eq_ignore_ascii_case("true"))
    })
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl PgStore {
    /// Builds the pool, waits for the server and migrates, as the config says.
    pub async fn connect(config: &Config) -> Result<Self, StoreError> {
        let url = config.url().unwrap_or_default();
        let (connect_options, schema) = connect_options(url)?;
        let pool_options = pool_options(config);
        let pool = pool_options
            .clone()
            .max_connections(config.max_connections)
            .connect_lazy_with(connect_options.clone());
        let store = PgStore {
            pool,
            writer_pool: pool_options.max_connections(1),
            connect_options,
            writer_startup_options: !behind_pgbouncer(url),
        };
        wait_until_ready(config.startup_timeout, || store.ping()).await?;
        if config.run_migrations {
            store.migrate(schema.as_deref()).await?;
        }
        Ok(store)
    }

    async fn migrate(&self, schema: Option<&str>) -> Result<(), StoreError> {
        if let Some(schema) = schema {
            // The name comes from our own configuration and is quoted as an identifier.
            let create = format!("create schema if not exists {}", quote_ident(schema));
            sqlx::query(sqlx::AssertSqlSafe(create))
                .execute(&self.pool)
                .await?;
        }
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(StoreError::Migration)
    }
}

#[async_trait]
impl Store for PgStore {
    fn writer(&self, statement_timeout: Duration) -> Box<dyn RowWriter> {
        // A connection is served by the runtime it was opened on. One from the store's pool
        // would wake the writer through the request runtime, behind its request tasks, while
        // PostgreSQL waits for the next batch (bench/run.sh analytics: 10 % fewer req/s).
        let options = if self.writer_startup_options {
            writer_connect_options(&self.connect_options, statement_timeout)
        } else {
            self.connect_options.clone()
        };
        let pool = self.writer_pool.clone().connect_lazy_with(options);
        Box::new(HeldConnection::<Postgres>::owning(pool))
    }

    async fn insert_metrics(&self, rows: &[MetricRow]) -> Result<(), StoreError> {
        Postgres::store_metrics(&mut *self.pool.acquire().await?, rows).await
    }

    async fn insert_events(&self, rows: &[EventRow]) -> Result<(), StoreError> {
        Postgres::store_events(&mut *self.pool.acquire().await?, rows).await
    }

    async fn metric_by_id(&self, id: &str) -> Result<Option<StoredMetric>, StoreError> {
        Ok(sqlx::query_as::<_, StoredMetric>(
            r#"select "id", "createdAt", "updatedAt", "analyticMetric", "value", "dataString", "userId"
               from "AnalyticsMetrics" where "id" = $1"#,
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn event_by_id(&self, id: &str) -> Result<Option<StoredEvent>, StoreError> {
        type Row = (
            String,
            chrono::NaiveDateTime,
            chrono::NaiveDateTime,
            String,
            String,
            Option<Json<Value>>,
            Option<String>,
        );
        let row: Option<Row> = sqlx::query_as(
            r#"select "id", "createdAt", "updatedAt", "userId", "type", "data", "dataIndex"
               from "AnalyticsDetails" where "id" = $1"#,
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(
            |(id, created_at, updated_at, user_id, event_type, data, data_index)| StoredEvent {
                id,
                created_at,
                updated_at,
                user_id,
                event_type,
                data: data.and_then(|Json(v)| match v {
                    Value::Object(map) => Some(map),
                    _ => None,
                }),
                data_index,
            },
        ))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("select 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    fn pool_stats(&self) -> PoolStats {
        PoolStats::of(&self.pool)
    }
    async fn insert_metric_idempotent(
        &self,
        row: &MetricRow,
        claim: &IdempotencyClaim,
    ) -> Result<IdempotentInsert, StoreError> {
        let mut tx = self.pool.begin().await?;
        let key = (
            row.user_id.as_str(),
            METRIC_ENDPOINT,
            row.id,
            row.created_at,
        );
        if let Some(standing) = claim_or_standing(&mut tx, key, claim).await? {
            return Ok(standing);
        }
        write_metrics(&mut *tx, std::slice::from_ref(row)).await?;
        tx.commit().await?;
        super::count_rows_stored("AnalyticsMetrics", 1);
        Ok(IdempotentInsert::Stored)
    }

    async fn insert_event_idempotent(
        &self,
        row: &EventRow,
        claim: &IdempotencyClaim,
    ) -> Result<IdempotentInsert, StoreError> {
        let mut tx = self.pool.begin().await?;
        let key = (row.user_id.as_str(), EVENT_ENDPOINT, row.id, row.created_at);
        if let Some(standing) = claim_or_standing(&mut tx, key, claim).await? {
            return Ok(standing);
        }
        write_events(&mut *tx, std::slice::from_ref(row)).await?;
        tx.commit().await?;
        super::count_rows_stored("AnalyticsDetails", 1);
        Ok(IdempotentInsert::Stored)
    }

    async fn prune_idempotency_keys(
        &self,
        created_before: NaiveDateTime,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(idempotency::PRUNE_SQL)
            .bind(created_before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl BatchStatements for Postgres {
    async fn store_metrics(conn: &mut PgConnection, rows: &[MetricRow]) -> Result<(), StoreError> {
        // One statement is its own transaction.
        let stored = write_metrics(conn, rows).await?;
        super::count_rows_stored("AnalyticsMetrics", stored);
        Ok(())
    }

    async fn store_events(conn: &mut PgConnection, rows: &[EventRow]) -> Result<(), StoreError> {
        let stored = write_events(conn, rows).await?;
        super::count_rows_stored("AnalyticsDetails", stored);
        Ok(())
    }
}

/// Claims the key for this row, or returns the standing claim's outcome (a replay or a
/// conflict) when another request holds it; `None` means this transaction must insert.
async fn claim_or_standing(
    conn: &mut PgConnection,
    (user_id, endpoint, row_id, created_at): (&str, &str, uuid::Uuid, NaiveDateTime),
    claim: &IdempotencyClaim,
) -> Result<Option<IdempotentInsert>, StoreError> {
    let won: Option<(String,)> = sqlx::query_as(idempotency::CLAIM_SQL)
        .bind(user_id)
        .bind(endpoint)
        .bind(&claim.key)
        .bind(&claim.body_hash)
        .bind(row_id.to_string())
        .bind(created_at)
        .bind(claim.expired_before)
        .fetch_optional(&mut *conn)
        .await?;
    if won.is_some() {
        return Ok(None);
    }
    let existing: (String, String) = sqlx::query_as(idempotency::EXISTING_SQL)
        .bind(user_id)
        .bind(endpoint)
        .bind(&claim.key)
        .fetch_one(&mut *conn)
        .await?;
    Ok(Some(idempotency::outcome_of_existing(claim, existing)))
}

/// Inserts any number of metrics with one statement (`unnest` of one array per column); an
/// id already stored is skipped (stream mode may deliver a row twice). Returns the rows
/// inserted.
async fn write_metrics<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    rows: &[MetricRow],
) -> Result<u64, StoreError> {
    let ids: Vec<String> = rows.iter().map(|r| r.id.to_string()).collect();
    let times: Vec<_> = rows.iter().map(|r| r.created_at).collect();
    let names: Vec<&str> = rows.iter().map(|r| r.metric.metric_name.as_str()).collect();
    let values: Vec<f64> = rows.iter().map(|r| r.metric.metric_value).collect();
    let strings: Vec<&str> = rows.iter().map(|r| r.metric.data_string.as_str()).collect();
    let users: Vec<&str> = rows.iter().map(|r| r.user_id.as_str()).collect();
    // One statement for any number of rows: a single INSERT is its own transaction.
    let done = sqlx::query(
        r#"insert into "AnalyticsMetrics"
               ("id", "createdAt", "updatedAt", "analyticMetric", "value", "dataString", "userId")
           select id, created_at, created_at, name, value, data_string, user_id
           from unnest($1::text[], $2::timestamp(3)[], $3::text[], $4::float8[], $5::text[], $6::text[])
               as t(id, created_at, name, value, data_string, user_id)
           on conflict ("id") do nothing"#,
    )
    .bind(ids)
    .bind(times)
    .bind(names)
    .bind(values)
    .bind(strings)
    .bind(users)
    .execute(executor)
    .await?;
    Ok(done.rows_affected())
}

/// Inserts any number of events with one statement.
async fn write_events<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    rows: &[EventRow],
) -> Result<u64, StoreError> {
    let ids: Vec<String> = rows.iter().map(|r| r.id.to_string()).collect();
    let times: Vec<_> = rows.iter().map(|r| r.created_at).collect();
    let users: Vec<&str> = rows.iter().map(|r| r.user_id.as_str()).collect();
    let types: Vec<&str> = rows.iter().map(|r| r.event.event_type.as_str()).collect();
    let data: Vec<&str> = rows.iter().map(|r| r.event.data_json.as_str()).collect();
    let indexes: Vec<&str> = rows.iter().map(|r| r.event.data_index.as_str()).collect();
    let done = sqlx::query(
        r#"insert into "AnalyticsDetails"
               ("id", "createdAt", "updatedAt", "userId", "type", "data", "dataIndex")
           select id, created_at, created_at, user_id, type, data::jsonb, data_index
           from unnest($1::text[], $2::timestamp(3)[], $3::text[], $4::text[], $5::text[], $6::text[])
               as t(id, created_at, user_id, type, data, data_index)
           on conflict ("id") do nothing"#,
    )
    .bind(ids)
    .bind(times)
    .bind(users)
    .bind(types)
    .bind(data)
    .bind(indexes)
    .execute(executor)
    .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prisma_schema_parameter_becomes_the_search_path() {
        let (options, schema) =
            connect_options("postgresql://u:p@db:5432/app?schema=platform&connect_timeout=5")
                .unwrap();

        assert_eq!(schema.as_deref(), Some("platform"));
        assert_eq!(options.get_database(), Some("app"));
        assert_eq!(options.get_options(), Some(r#"-c search_path="platform""#));
    }

    #[test]
    fn a_schema_with_capitals_keeps_its_case_in_the_search_path() {
        let (options, schema) =
            connect_options("postgresql://u:p@db:5432/app?schema=MySchema").unwrap();

        assert_eq!(schema.as_deref(), Some("MySchema"));
        assert_eq!(options.get_options(), Some(r#"-c search_path="MySchema""#));
    }

    #[tokio::test]
    async fn debug_output_leaves_the_password_out() {
        let (connect_options, _) =
            connect_options("postgresql://u:s3cret-pw@db:5432/app?schema=platform").unwrap();
        let store = PgStore {
            pool: PgPoolOptions::new().connect_lazy_with(connect_options.clone()),
            writer_pool: PgPoolOptions::new(),
            connect_options,
            writer_startup_options: true,
        };

        let printed = format!("{store:?} {store:#?}");

        assert!(!printed.contains("s3cret-pw"), "{printed}");
        assert!(printed.contains("db"), "{printed}");
    }

    /// Statements a connection keeps prepared after running one query with a parameter.
    async fn statements_cached_after_a_query(pgbouncer: &str) -> usize {
        let server = std::env::var("TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let mut url = Url::parse(&server).expect("TEST_DATABASE_URL is a URL");
        url.query_pairs_mut().append_pair("pgbouncer", pgbouncer);
        let (options, _) = connect_options(url.as_str()).unwrap();
        let mut conn = PgConnection::connect_with(&options)
            .await
            .expect("PostgreSQL answers on TEST_DATABASE_URL or 127.0.0.1:5432");
        let _: (i32,) = sqlx::query_as("select $1::int4")
            .bind(1)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        conn.cached_statements_size()
    }

    #[tokio::test]
    async fn pgbouncer_parameter_turns_the_statement_cache_off() {
        let plain = statements_cached_after_a_query("false").await;
        let pooled = statements_cached_after_a_query("true").await;

        assert_eq!(plain, 1);
        assert_eq!(pooled, 0);
    }

    #[test]
    fn writer_connections_carry_a_statement_timeout_besides_the_search_path() {
        let (options, _) = connect_options("postgresql://u:p@db:5432/app?schema=platform").unwrap();

        let writer = writer_connect_options(&options, Duration::from_millis(2500));

        let startup = writer.get_options().unwrap();
        assert!(
            startup.starts_with("-c search_path=\"platform\" "),
            "{startup}"
        );
        assert!(startup.contains("-c statement_timeout=2500 "), "{startup}");
        assert!(startup.contains("-c tcp_keepalives_idle=30"), "{startup}");
    }

    #[test]
    fn only_prismas_pgbouncer_flag_means_pgbouncer() {
        assert!(behind_pgbouncer(
            "postgresql://u@db:6543/app?pgbouncer=true"
        ));
        assert!(!behind_pgbouncer(
            "postgresql://u@db:5432/app?schema=platform"
        ));
    }

    #[test]
    fn quoted_identifiers_escape_double_quotes() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}

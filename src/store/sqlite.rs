//! SQLite: the embedded default, one file (WAL mode) with the same tables.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::NaiveDateTime;
use serde_json::Value;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, Sqlite, SqliteConnection};

use super::Config;
use super::{
    BatchStatements, EventRow, HeldConnection, MetricRow, PoolStats, RowWriter, Store, StoreError,
    StoredEvent, StoredMetric, wait_until_ready,
};
use super::{EVENT_ENDPOINT, IdempotencyClaim, IdempotentInsert, METRIC_ENDPOINT, idempotency};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// The SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

fn connect_options(config: &Config) -> Result<SqliteConnectOptions, StoreError> {
    let options = match config.url() {
        Some(url) => SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::InvalidUrl(format!("SQLite URL not understood ({e})")))?,
        None => SqliteConnectOptions::new().filename(&config.sqlite_path),
    };
    // FULL: a 2xx promises the row survives a power cut, not only a crash.
    Ok(options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(config.acquire_timeout))
}

fn create_parent_folder(options: &SqliteConnectOptions) -> Result<(), StoreError> {
    let file = PathBuf::from(options.get_filename());
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && file.as_os_str() != ":memory:" => {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Unavailable(sqlx::Error::Io(e)))
        }
        _ => Ok(()),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the file and its folder, then migrates.
    pub async fn connect(config: &Config) -> Result<Self, StoreError> {
        let options = connect_options(config)?;
        create_parent_folder(&options)?;
        let pool = SqlitePoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            .connect_lazy_with(options);
        let store = SqliteStore { pool };
        wait_until_ready(config.startup_timeout, || store.ping()).await?;
        if config.run_migrations {
            MIGRATOR
                .run(&store.pool)
                .await
                .map_err(StoreError::Migration)?;
        }
        Ok(store)
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn writer(&self, _statement_timeout: Duration) -> Box<dyn RowWriter> {
        // SQLite connections run on threads of their own and answer through channels, so the
        // store's pool serves any runtime. SQLite has no statement timeout; its busy timeout
        // bounds lock waits, and the group-commit batch deadline bounds the rest.
        Box::new(HeldConnection::<Sqlite>::sharing(self.pool.clone()))
    }

    async fn insert_metrics(&self, rows: &[MetricRow]) -> Result<(), StoreError> {
        Sqlite::store_metrics(&mut *self.pool.acquire().await?, rows).await
    }

    async fn insert_events(&self, rows: &[EventRow]) -> Result<(), StoreError> {
        Sqlite::store_events(&mut *self.pool.acquire().await?, rows).await
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
            Option<String>,
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
                data: data.and_then(|text| match serde_json::from_str(&text) {
                    Ok(Value::Object(map)) => Some(map),
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
        write_metrics(&mut tx, std::slice::from_ref(row)).await?;
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
        write_events(&mut tx, std::slice::from_ref(row)).await?;
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

/// Claims the key for this row, or returns the standing claim's outcome (a replay or a
/// conflict) when another request holds it; `None` means this transaction must insert.
async fn claim_or_standing(
    conn: &mut SqliteConnection,
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

#[async_trait]
impl BatchStatements for Sqlite {
    async fn store_metrics(
        conn: &mut SqliteConnection,
        rows: &[MetricRow],
    ) -> Result<(), StoreError> {
        let mut tx = conn.begin().await?;
        let stored = write_metrics(&mut tx, rows).await?;
        tx.commit().await?;
        super::count_rows_stored("AnalyticsMetrics", stored);
        Ok(())
    }

    async fn store_events(
        conn: &mut SqliteConnection,
        rows: &[EventRow],
    ) -> Result<(), StoreError> {
        let mut tx = conn.begin().await?;
        let stored = write_events(&mut tx, rows).await?;
        tx.commit().await?;
        super::count_rows_stored("AnalyticsDetails", stored);
        Ok(())
    }
}

/// Inserts the metrics on `conn` (the caller's transaction), one prepared statement each.
async fn write_metrics(conn: &mut SqliteConnection, rows: &[MetricRow]) -> Result<u64, StoreError> {
    let mut stored = 0;
    for row in rows {
        stored += sqlx::query(
            r#"insert into "AnalyticsMetrics"
                   ("id", "createdAt", "updatedAt", "analyticMetric", "value", "dataString", "userId")
               values ($1, $2, $2, $3, $4, $5, $6)
               on conflict ("id") do nothing"#,
        )
        .bind(row.id.to_string())
        .bind(row.created_at)
        .bind(&row.metric.metric_name)
        .bind(row.metric.metric_value)
        .bind(&row.metric.data_string)
        .bind(&row.user_id)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    }
    Ok(stored)
}

/// Inserts the events on `conn` (the caller's transaction), `data` as JSON text.
async fn write_events(conn: &mut SqliteConnection, rows: &[EventRow]) -> Result<u64, StoreError> {
    let mut stored = 0;
    for row in rows {
        stored += sqlx::query(
            r#"insert into "AnalyticsDetails"
                   ("id", "createdAt", "updatedAt", "userId", "type", "data", "dataIndex")
               values ($1, $2, $2, $3, $4, $5, $6)
               on conflict ("id") do nothing"#,
        )
        .bind(row.id.to_string())
        .bind(row.created_at)
        .bind(&row.user_id)
        .bind(&row.event.event_type)
        .bind(&row.event.data_json)
        .bind(&row.event.data_index)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    }
    Ok(stored)
}

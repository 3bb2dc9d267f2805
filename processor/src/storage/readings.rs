//! Statements of `series` and `readings`: the batched write path and the range query.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

/// Ids of the given (device, metric) series, creating the missing ones. Two statements for the
/// whole set, whatever its size.
#[tracing::instrument(skip_all, fields(module = "storage", operation = "series_upsert", count = keys.len()))]
pub async fn ensure_series(
    pool: &PgPool,
    keys: &[(Uuid, String)],
) -> sqlx::Result<Vec<(Uuid, String, i32)>> {
    let (devices, metrics): (Vec<Uuid>, Vec<&str>) =
        keys.iter().map(|(d, m)| (*d, m.as_str())).unzip();
    sqlx::query(
        "INSERT INTO series (device_id, metric_name)
         SELECT * FROM UNNEST($1::uuid[], $2::text[])
         ON CONFLICT ON CONSTRAINT series_device_metric_key DO NOTHING",
    )
    .bind(&devices)
    .bind(&metrics)
    .execute(pool)
    .await?;
    sqlx::query_as(
        "SELECT s.device_id, s.metric_name, s.series_id
         FROM series s JOIN UNNEST($1::uuid[], $2::text[]) AS k(device_id, metric_name)
           ON s.device_id = k.device_id AND s.metric_name = k.metric_name",
    )
    .bind(&devices)
    .bind(&metrics)
    .fetch_all(pool)
    .await
}

/// Column arrays of one write: the whole fetched batch goes in as one statement.
#[derive(Debug, Default)]
pub struct Columns {
    pub series: Vec<i32>,
    pub ts: Vec<DateTime<Utc>>,
    pub value: Vec<f64>,
}

/// Inserts the batch; rows already stored (a redelivered message) are skipped. Returns how many
/// rows were new.
#[tracing::instrument(skip_all, fields(module = "storage", operation = "readings_insert", rows = cols.series.len()))]
pub async fn insert(db: impl PgExecutor<'_>, cols: &Columns) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "INSERT INTO readings (series_id, ts, value)
         SELECT * FROM UNNEST($1::int4[], $2::timestamptz[], $3::float8[])
         ON CONFLICT ON CONSTRAINT readings_series_ts_key DO NOTHING",
    )
    .bind(&cols.series)
    .bind(&cols.ts)
    .bind(&cols.value)
    .execute(db)
    .await?
    .rows_affected())
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReadingRow {
    pub series_id: i32,
    pub metric_name: String,
    pub ts: DateTime<Utc>,
    pub value: f64,
}

/// A page of one device's readings in `[from, to)`, ordered by `(ts, series_id)` and starting
/// after the keyset cursor, so pages stay exact while new rows arrive.
pub struct RangeQuery<'a> {
    pub device_id: Uuid,
    pub metric: Option<&'a str>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub after: Option<(DateTime<Utc>, i32)>,
    pub descending: bool,
    pub limit: i64,
}

#[tracing::instrument(skip_all, fields(module = "storage", operation = "readings_range", device_id = %q.device_id))]
pub async fn range(db: impl PgExecutor<'_>, q: &RangeQuery<'_>) -> sqlx::Result<Vec<ReadingRow>> {
    let (after_ts, after_series) = q.after.unzip();
    let sql = if q.descending {
        "SELECT r.series_id, s.metric_name, r.ts, r.value
         FROM series s JOIN readings r ON r.series_id = s.series_id
         WHERE s.device_id = $1 AND ($2::text IS NULL OR s.metric_name = $2)
           AND r.ts >= $3 AND r.ts < $4
           AND ($5::timestamptz IS NULL OR (r.ts, r.series_id) < ($5, $6))
         ORDER BY r.ts DESC, r.series_id DESC LIMIT $7"
    } else {
        "SELECT r.series_id, s.metric_name, r.ts, r.value
         FROM series s JOIN readings r ON r.series_id = s.series_id
         WHERE s.device_id = $1 AND ($2::text IS NULL OR s.metric_name = $2)
           AND r.ts >= $3 AND r.ts < $4
           AND ($5::timestamptz IS NULL OR (r.ts, r.series_id) > ($5, $6))
         ORDER BY r.ts, r.series_id LIMIT $7"
    };
    sqlx::query_as(sql)
        .bind(q.device_id)
        .bind(q.metric)
        .bind(q.from)
        .bind(q.to)
        .bind(after_ts)
        .bind(after_series)
        .bind(q.limit)
        .fetch_all(db)
        .await
}

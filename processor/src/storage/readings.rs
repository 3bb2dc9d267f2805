//! Statements of `series` and `readings`: the batched write path and the queries of the API.
//!
//! Every query is bounded by one device (usually one metric), so it starts from the few rows of
//! `series` and reads `readings` only through the `(series_id, ts)` index, in index order, with
//! a `LIMIT` where the answer allows one. The statements are `pub` so that the query-plan test
//! (`processor/tests/storage`) explains exactly the SQL the API runs; docs/queries.md has the
//! plans they get.

use chrono::{DateTime, Utc};
use sqlx::postgres::types::PgInterval;
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

/// Column arrays of one write: the whole fetched batch goes in as one statement. Times are epoch
/// microseconds, as they travel on the wire and as the binary COPY wants them (after a shift).
#[derive(Debug, Default)]
pub struct Columns {
    pub series: Vec<i32>,
    pub ts_us: Vec<i64>,
    pub value: Vec<f64>,
}

/// Stores the batch and returns how many rows were new: a binary `COPY` first, and only if that
/// hits a row already stored, the idempotent `INSERT … ON CONFLICT DO NOTHING`.
///
/// Why two paths: measured on our 2-core machines (docs/benchmarks.md), binary COPY loads the
/// narrow table markedly faster than `INSERT … UNNEST … ON CONFLICT` (no array building and
/// unnesting, no per-row speculative insertion, and timestamps and floats arrive in binary
/// instead of being parsed). COPY has no `ON CONFLICT`, but a conflict only happens when a
/// message is redelivered after its rows were committed (a crash between commit and ack) or a
/// device sent the same (metric, ts) twice: then the COPY fails as a whole (it is one statement,
/// nothing of it stays) and the batch is written again the idempotent way.
#[tracing::instrument(skip_all, fields(module = "storage", operation = "readings_store", rows = cols.series.len()))]
pub async fn store(pool: &PgPool, cols: &Columns) -> sqlx::Result<u64> {
    match copy(pool, cols).await {
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            tracing::debug!(
                module = "storage",
                operation = "readings_store",
                "A stored row was sent again; writing the batch with ON CONFLICT DO NOTHING."
            );
            insert(pool, cols).await
        }
        other => other,
    }
}

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01), for binary timestamps.
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// The batch in PostgreSQL's binary COPY format: a header, then per row the field count and
/// each field as length + big-endian value (`int4`, `timestamptz` as microseconds since 2000,
/// `float8`), then the trailer.
///
/// Rows go in `(series_id, ts)` order, the order of the unique index: a batch interleaves many
/// series (every device sends several metrics in turn), and in arrival order each row's index
/// entry lands on another leaf page than the row before; sorted, consecutive entries share a
/// leaf page that is already in cache, and the heap holds each series' rows together.
fn copy_binary(cols: &Columns) -> Vec<u8> {
    const ROW: usize = 2 + (4 + 4) + (4 + 8) + (4 + 8);
    let mut order: Vec<u32> = (0..cols.series.len() as u32).collect();
    order.sort_unstable_by_key(|&i| (cols.series[i as usize], cols.ts_us[i as usize]));
    let mut out = Vec::with_capacity(19 + cols.series.len() * ROW + 2);
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&0i32.to_be_bytes()); // flags
    out.extend_from_slice(&0i32.to_be_bytes()); // header extension length
    for i in order {
        let i = i as usize;
        let (series, ts, value) = (cols.series[i], cols.ts_us[i], cols.value[i]);
        out.extend_from_slice(&3i16.to_be_bytes());
        out.extend_from_slice(&4i32.to_be_bytes());
        out.extend_from_slice(&series.to_be_bytes());
        out.extend_from_slice(&8i32.to_be_bytes());
        out.extend_from_slice(&(ts - PG_EPOCH_OFFSET_US).to_be_bytes());
        out.extend_from_slice(&8i32.to_be_bytes());
        out.extend_from_slice(&value.to_bits().to_be_bytes());
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

/// One binary `COPY` of the whole batch: all rows or, on any error, none.
pub async fn copy(pool: &PgPool, cols: &Columns) -> sqlx::Result<u64> {
    use sqlx::postgres::PgPoolCopyExt as _;
    let data = copy_binary(cols);
    let mut copy = pool
        .copy_in_raw("COPY readings (series_id, ts, value) FROM STDIN (FORMAT binary)")
        .await?;
    if let Err(e) = copy.send(data).await {
        // Leave the connection usable; the send error is the one worth reporting.
        let _ = copy.abort("send failed").await;
        return Err(e);
    }
    copy.finish().await
}

/// Inserts the batch; rows already stored (a redelivered message) are skipped. Returns how many
/// rows were new.
#[tracing::instrument(skip_all, fields(module = "storage", operation = "readings_insert", rows = cols.series.len()))]
pub async fn insert(db: impl PgExecutor<'_>, cols: &Columns) -> sqlx::Result<u64> {
    let ts: Vec<DateTime<Utc>> = cols
        .ts_us
        .iter()
        .map(|us| {
            DateTime::from_timestamp_micros(*us)
                .ok_or_else(|| sqlx::Error::Protocol(format!("time {us} µs out of range")))
        })
        .collect::<sqlx::Result<_>>()?;
    Ok(sqlx::query(
        "INSERT INTO readings (series_id, ts, value)
         SELECT * FROM UNNEST($1::int4[], $2::timestamptz[], $3::float8[])
         ON CONFLICT ON CONSTRAINT readings_series_ts_key DO NOTHING",
    )
    .bind(&cols.series)
    .bind(&ts)
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

/// Where a page starts: the readings strictly after `(ts, series_id)` in the page's order. A
/// page without a cursor starts at the range's edge with `series_id` 0 (identity values start at
/// 1), which the same statement treats as "include `ts` itself".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keyset {
    pub ts: DateTime<Utc>,
    /// Wider than the column, so that any cursor a client sends can be compared, not only ids
    /// that exist.
    pub series_id: i64,
}

/// A page of one device's readings in `[from, to)`, ordered by `(ts, series_id)` (or the
/// reverse) and starting after `after`, so that pages stay exact while new rows arrive: a row
/// is either before the cursor (already seen) or after it (still to come), never both.
pub struct RangeQuery<'a> {
    pub device_id: Uuid,
    pub metric: Option<&'a str>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub after: Option<Keyset>,
    pub descending: bool,
    pub limit: i64,
}

// The range statements. Each series of the device contributes at most `limit` rows, read from
// the `(series_id, ts)` index in order from the page's edge (the LATERAL subquery), and the
// outer query merges them: so a page costs O(series x limit) index entries however deep it is
// and however much data the range holds. `$2`/`$3` are the bounds after the cursor is folded in
// (see `range`); the `OR` only decides the one timestamp equal to the cursor's.
macro_rules! range_sql {
    (asc, $metric:literal) => {
        concat!(
            "SELECT s.series_id, s.metric_name, r.ts, r.value
             FROM series s
             CROSS JOIN LATERAL (
                 SELECT ts, value FROM readings
                 WHERE series_id = s.series_id AND ts >= $2 AND ts < $3
                   AND (ts > $2 OR s.series_id > $4)
                 ORDER BY ts
                 LIMIT $5
             ) r
             WHERE s.device_id = $1",
            $metric,
            "
             ORDER BY r.ts, s.series_id
             LIMIT $5"
        )
    };
    (desc, $metric:literal) => {
        concat!(
            "SELECT s.series_id, s.metric_name, r.ts, r.value
             FROM series s
             CROSS JOIN LATERAL (
                 SELECT ts, value FROM readings
                 WHERE series_id = s.series_id AND ts >= $2 AND ts <= $3
                   AND (ts < $3 OR s.series_id < $4)
                 ORDER BY ts DESC
                 LIMIT $5
             ) r
             WHERE s.device_id = $1",
            $metric,
            "
             ORDER BY r.ts DESC, s.series_id DESC
             LIMIT $5"
        )
    };
}

/// Ascending, every metric of the device. `$1` device, `$2` lower bound, `$3` upper bound
/// (exclusive), `$4` series id of the cursor (0 without one), `$5` limit.
pub const RANGE_ASC_SQL: &str = range_sql!(asc, "");
/// Ascending, one metric (`$6`).
pub const RANGE_ASC_METRIC_SQL: &str = range_sql!(asc, " AND s.metric_name = $6");
/// Descending, every metric: `$3` is an inclusive upper bound whose own timestamp only counts
/// for series ids below `$4`.
pub const RANGE_DESC_SQL: &str = range_sql!(desc, "");
/// Descending, one metric (`$6`).
pub const RANGE_DESC_METRIC_SQL: &str = range_sql!(desc, " AND s.metric_name = $6");

/// The SQL a range query runs and the bounds it binds (`$2`, `$3`, `$4`): the cursor is folded
/// into the range's edge here, so that the statement has one lower and one upper bound on `ts`
/// for the index whatever the page. A cursor outside the range is ignored (the range's edge is
/// then the tighter bound).
pub fn range_plan(q: &RangeQuery<'_>) -> (&'static str, DateTime<Utc>, DateTime<Utc>, i64) {
    let sql = match (q.descending, q.metric.is_some()) {
        (false, false) => RANGE_ASC_SQL,
        (false, true) => RANGE_ASC_METRIC_SQL,
        (true, false) => RANGE_DESC_SQL,
        (true, true) => RANGE_DESC_METRIC_SQL,
    };
    if q.descending {
        match q.after {
            Some(k) if k.ts < q.to => (sql, q.from, k.ts, k.series_id),
            _ => (sql, q.from, q.to, 0),
        }
    } else {
        match q.after {
            Some(k) if k.ts >= q.from => (sql, k.ts, q.to, k.series_id),
            _ => (sql, q.from, q.to, 0),
        }
    }
}

#[tracing::instrument(skip_all, fields(module = "storage", operation = "readings_range", device_id = %q.device_id))]
pub async fn range(db: impl PgExecutor<'_>, q: &RangeQuery<'_>) -> sqlx::Result<Vec<ReadingRow>> {
    let (sql, lower, upper, edge_series) = range_plan(q);
    let query = sqlx::query_as(sql)
        .bind(q.device_id)
        .bind(lower)
        .bind(upper)
        .bind(edge_series)
        .bind(q.limit);
    match q.metric {
        Some(m) => query.bind(m),
        None => query,
    }
    .fetch_all(db)
    .await
}

/// The one series of a device's metric, if it has ever sent it.
pub const SERIES_ID_SQL: &str =
    "SELECT series_id FROM series WHERE device_id = $1 AND metric_name = $2";

#[tracing::instrument(skip_all, fields(module = "storage", operation = "series_id", device_id = %device_id))]
pub async fn series_id(
    db: impl PgExecutor<'_>,
    device_id: Uuid,
    metric: &str,
) -> sqlx::Result<Option<i32>> {
    sqlx::query_scalar(SERIES_ID_SQL)
        .bind(device_id)
        .bind(metric)
        .fetch_optional(db)
        .await
}

/// The aggregate functions of `GET /readings/aggregate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    Avg,
    Min,
    Max,
    Sum,
    Count,
    First,
    Last,
}

impl Aggregate {
    pub const ALL: [Aggregate; 7] = [
        Aggregate::Avg,
        Aggregate::Min,
        Aggregate::Max,
        Aggregate::Sum,
        Aggregate::Count,
        Aggregate::First,
        Aggregate::Last,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Aggregate::Avg => "avg",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
            Aggregate::Sum => "sum",
            Aggregate::Count => "count",
            Aggregate::First => "first",
            Aggregate::Last => "last",
        }
    }

    pub fn parse(s: &str) -> Option<Aggregate> {
        Aggregate::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// The statement computing this aggregate; see [`aggregate`] for its parameters.
    pub fn sql(self) -> &'static str {
        match self {
            Aggregate::Avg => AGG_AVG_SQL,
            Aggregate::Min => AGG_MIN_SQL,
            Aggregate::Max => AGG_MAX_SQL,
            Aggregate::Sum => AGG_SUM_SQL,
            Aggregate::Count => AGG_COUNT_SQL,
            Aggregate::First => AGG_FIRST_SQL,
            Aggregate::Last => AGG_LAST_SQL,
        }
    }
}

// Buckets are `date_bin(stride, ts, epoch)`: aligned to 1970-01-01T00:00:00Z whatever the
// range, and the same function on TimescaleDB and plain PostgreSQL 14+.
macro_rules! bucket_sql {
    ($value:literal) => {
        concat!(
            "SELECT date_bin($2::interval, ts, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS bucket,
                    ",
            $value,
            " AS value, count(*) AS count
             FROM readings
             WHERE series_id = $1 AND ts >= $3 AND ts < $4
             GROUP BY bucket
             ORDER BY bucket"
        )
    };
    // first/last: the bucket's earliest (latest) timestamp, then that one row by the unique
    // `(series_id, ts)` key, so the value is the one with that timestamp, not whichever row an
    // aggregate happened to see first. The range is repeated on the join so that, whichever
    // join the planner picks, it never reads the series outside the range.
    (pick $edge:literal) => {
        concat!(
            "SELECT b.bucket, r.value, b.count
             FROM (
                 SELECT date_bin($2::interval, ts, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS bucket,
                        count(*) AS count, ",
            $edge,
            "(ts) AS pick
                 FROM readings
                 WHERE series_id = $1 AND ts >= $3 AND ts < $4
                 GROUP BY bucket
             ) b
             JOIN readings r ON r.series_id = $1 AND r.ts = b.pick AND r.ts >= $3 AND r.ts < $4
             ORDER BY b.bucket"
        )
    };
}

/// `sum / count` rather than `avg(value)`: the same value (PostgreSQL's float `avg` is its sum
/// over its count), without the sum of squares `avg` also accumulates, which overflows for
/// values of magnitude above about 1e154 that are finite and valid readings.
pub const AGG_AVG_SQL: &str = bucket_sql!("sum(value) / count(*)");
pub const AGG_MIN_SQL: &str = bucket_sql!("min(value)");
pub const AGG_MAX_SQL: &str = bucket_sql!("max(value)");
pub const AGG_SUM_SQL: &str = bucket_sql!("sum(value)");
pub const AGG_COUNT_SQL: &str = bucket_sql!("count(*)::float8");
pub const AGG_FIRST_SQL: &str = bucket_sql!(pick "min");
pub const AGG_LAST_SQL: &str = bucket_sql!(pick "max");

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BucketRow {
    pub bucket: DateTime<Utc>,
    pub value: f64,
    pub count: i64,
}

/// The SQLSTATE PostgreSQL raises when a float sum leaves the range of a double.
pub const OUT_OF_RANGE: &str = "22003";

/// One series' buckets in `[from, to)` that hold at least one reading, in time order. `stride`
/// is the bucket width; `$1` series, `$2` stride, `$3` from, `$4` to. A sum (or average) whose
/// sum leaves the range of a double fails with SQLSTATE [`OUT_OF_RANGE`].
#[tracing::instrument(skip_all, fields(module = "storage", operation = "readings_aggregate", series_id, function = f.as_str()))]
pub async fn aggregate(
    db: impl PgExecutor<'_>,
    series_id: i32,
    f: Aggregate,
    stride: PgInterval,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> sqlx::Result<Vec<BucketRow>> {
    sqlx::query_as(f.sql())
        .bind(series_id)
        .bind(stride)
        .bind(from)
        .bind(to)
        .fetch_all(db)
        .await
}

/// Whether the hub knows the device: it exists, or it existed and sent readings (a deleted
/// device's readings are kept and stay queryable).
pub const DEVICE_KNOWN_SQL: &str = "SELECT EXISTS (SELECT 1 FROM devices WHERE id = $1)
            OR EXISTS (SELECT 1 FROM series WHERE device_id = $1)";

#[tracing::instrument(skip_all, fields(module = "storage", operation = "device_known", device_id = %device_id))]
pub async fn device_known(db: impl PgExecutor<'_>, device_id: Uuid) -> sqlx::Result<bool> {
    sqlx::query_scalar(DEVICE_KNOWN_SQL)
        .bind(device_id)
        .fetch_one(db)
        .await
}

/// Per metric of the device, the reading with the greatest timestamp (not the one stored
/// last): one backward step on the `(series_id, ts)` index per series.
pub const LATEST_SQL: &str = "SELECT s.series_id, s.metric_name, r.ts, r.value
     FROM series s
     CROSS JOIN LATERAL (
         SELECT ts, value FROM readings
         WHERE series_id = s.series_id
         ORDER BY ts DESC
         LIMIT 1
     ) r
     WHERE s.device_id = $1
     ORDER BY s.metric_name";

#[tracing::instrument(skip_all, fields(module = "storage", operation = "readings_latest", device_id = %device_id))]
pub async fn latest(db: impl PgExecutor<'_>, device_id: Uuid) -> sqlx::Result<Vec<ReadingRow>> {
    sqlx::query_as(LATEST_SQL)
        .bind(device_id)
        .fetch_all(db)
        .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MetricRow {
    pub metric_name: String,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

/// The metrics a device has readings of, with the timestamps of their first and last reading:
/// one step at each end of the `(series_id, ts)` index per series. A series with no reading
/// (its write failed after it was created) is left out.
pub const METRICS_SQL: &str = "SELECT s.metric_name, f.ts AS first_seen, l.ts AS last_seen
     FROM series s
     CROSS JOIN LATERAL (
         SELECT ts FROM readings WHERE series_id = s.series_id ORDER BY ts LIMIT 1
     ) f
     CROSS JOIN LATERAL (
         SELECT ts FROM readings WHERE series_id = s.series_id ORDER BY ts DESC LIMIT 1
     ) l
     WHERE s.device_id = $1
     ORDER BY s.metric_name";

#[tracing::instrument(skip_all, fields(module = "storage", operation = "readings_metrics", device_id = %device_id))]
pub async fn metrics(db: impl PgExecutor<'_>, device_id: Uuid) -> sqlx::Result<Vec<MetricRow>> {
    sqlx::query_as(METRICS_SQL)
        .bind(device_id)
        .fetch_all(db)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_copy_rows_have_postgres_layout() {
        let cols = Columns {
            series: vec![7],
            ts_us: vec![946_684_800_001_000],
            value: vec![1.5],
        };
        let data = copy_binary(&cols);
        assert!(data.starts_with(b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0"));
        let row = &data[19..data.len() - 2];
        assert_eq!(&row[..2], &3i16.to_be_bytes());
        assert_eq!(&row[2..10], &[0, 0, 0, 4, 0, 0, 0, 7]);
        // One millisecond after PostgreSQL's epoch is 1000 µs.
        assert_eq!(&row[10..14], &8i32.to_be_bytes());
        assert_eq!(&row[14..22], &1000i64.to_be_bytes());
        assert_eq!(&row[26..34], &1.5f64.to_bits().to_be_bytes());
        assert_eq!(&data[data.len() - 2..], &(-1i16).to_be_bytes());
    }

    #[test]
    fn binary_copy_rows_go_in_index_order() {
        let cols = Columns {
            series: vec![2, 1, 2, 1],
            ts_us: vec![
                PG_EPOCH_OFFSET_US + 5,
                PG_EPOCH_OFFSET_US + 9,
                PG_EPOCH_OFFSET_US + 1,
                PG_EPOCH_OFFSET_US + 3,
            ],
            value: vec![0.0, 1.0, 2.0, 3.0],
        };
        let data = copy_binary(&cols);
        let rows: Vec<(i32, i64, f64)> = data[19..data.len() - 2]
            .chunks(34)
            .map(|r| {
                (
                    i32::from_be_bytes(r[6..10].try_into().unwrap()),
                    i64::from_be_bytes(r[14..22].try_into().unwrap()),
                    f64::from_bits(u64::from_be_bytes(r[26..34].try_into().unwrap())),
                )
            })
            .collect();
        assert_eq!(
            rows,
            vec![(1, 3, 3.0), (1, 9, 1.0), (2, 1, 2.0), (2, 5, 0.0)]
        );
    }
}

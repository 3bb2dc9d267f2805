//! Reading queries for analysts and dashboards: raw ranges with keyset pagination, time-bucket
//! aggregates, and per-device latest values and metric lists. Every query is bounded by one
//! device, so it runs on the `(series_id, ts)` index (docs/queries.md has the plans).
//!
//! Parameters arrive as strings and are checked here rather than by serde, so that every bad
//! value gets a 400 in the one error shape with a message that names the parameter and says what
//! is allowed; the OpenAPI document states the same rules (patterns, bounds, enums), so a client
//! generated from it never sends a value the handler refuses.

use crate::AppState;
use crate::api::extract::{Json, Path, Query};
use crate::api::openapi;
use crate::auth::CurrentUser;
use crate::error::{ApiError, ErrorBody};
use crate::storage::readings::{self, Aggregate, Keyset, RangeQuery};
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::postgres::types::PgInterval;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

pub const DEFAULT_LIMIT: i64 = 1000;
pub const MAX_LIMIT: i64 = 10_000;
/// The most buckets one aggregate may answer: enough for a week by the minute or a year by the
/// hour, small enough that one answer stays a few hundred kilobytes.
pub const MAX_BUCKETS: i64 = 10_000;

/// The span every time parameter must lie in: the years 0000 to 9999, which RFC 3339 can write
/// and PostgreSQL can store, expressed in epoch milliseconds for the integer form.
pub const MIN_TIME_MS: i64 = -62_167_219_200_000;
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;

/// One reading, as every reading route answers it.
#[derive(Serialize, ToSchema)]
pub struct Reading {
    pub device_id: Uuid,
    pub metric: String,
    /// RFC 3339, always UTC.
    pub ts: DateTime<Utc>,
    pub value: f64,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RangeParams {
    /// The device whose readings to return.
    #[param(required = true, value_type = Uuid)]
    pub device_id: Option<String>,
    /// Only this metric (default: every metric of the device).
    #[param(value_type = Option<String>, pattern = "^[A-Za-z0-9_.:/-]{1,128}$")]
    pub metric: Option<String>,
    /// Inclusive start: RFC 3339 with an offset, or integer epoch milliseconds (default: the
    /// earliest reading).
    #[param(value_type = Option<openapi::TimeParam>, inline)]
    pub from: Option<String>,
    /// Exclusive end, in the same forms (default: the latest reading).
    #[param(value_type = Option<openapi::TimeParam>, inline)]
    pub to: Option<String>,
    /// Page size.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 10000, default = 1000)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page, unchanged.
    #[param(value_type = Option<String>, pattern = "^-?[0-9]{1,18}_[0-9]{1,10}$")]
    pub cursor: Option<String>,
    /// `asc` (oldest first, the default) or `desc`.
    #[param(value_type = Option<Order>, inline)]
    pub order: Option<String>,
}

// Describes `order` for the document; the handler reads it as a string to word its own error.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    Asc,
    Desc,
}

/// A page of readings in `(ts, series)` order; `next_cursor` is null on the last page.
#[derive(Serialize, ToSchema)]
pub struct ReadingPage {
    pub items: Vec<Reading>,
    pub next_cursor: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AggregateParams {
    #[param(required = true, value_type = Uuid)]
    pub device_id: Option<String>,
    #[param(required = true, value_type = String, pattern = "^[A-Za-z0-9_.:/-]{1,128}$")]
    pub metric: Option<String>,
    /// Inclusive start: RFC 3339 with an offset, or integer epoch milliseconds.
    #[param(required = true, value_type = openapi::TimeParam, inline)]
    pub from: Option<String>,
    /// Exclusive end, in the same forms.
    #[param(required = true, value_type = openapi::TimeParam, inline)]
    pub to: Option<String>,
    /// Bucket width: a positive whole number of `s`, `m`, `h` or `d` (a day is 24 h), such as
    /// `10s`, `1m`, `15m`, `1h`, `1d`. Buckets are aligned to 1970-01-01T00:00:00Z.
    #[param(required = true, value_type = String, pattern = "^[1-9][0-9]{0,5}[smhd]$")]
    pub bucket: Option<String>,
    /// The aggregate of each bucket's values; `first` and `last` are by timestamp.
    #[serde(rename = "fn")]
    #[param(rename = "fn", required = true, value_type = AggregateFn, inline)]
    pub function: Option<String>,
}

// Describes `fn` for the document; the handler reads it as a string to word its own error.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AggregateFn {
    Avg,
    Min,
    Max,
    Sum,
    Count,
    First,
    Last,
}

/// One bucket that holds at least one reading.
#[derive(Serialize, ToSchema)]
pub struct Bucket {
    /// The bucket's start (RFC 3339, UTC); it covers `[bucket, bucket + width)`.
    pub bucket: DateTime<Utc>,
    /// The aggregate (for `count`, the same number as `count`).
    pub value: f64,
    /// How many readings the bucket holds.
    pub count: i64,
}

/// Buckets in time order; empty buckets are left out, and an empty range is an empty list.
#[derive(Serialize, ToSchema)]
pub struct BucketList {
    pub items: Vec<Bucket>,
}

/// The newest reading (by timestamp) of each metric of a device, by metric name.
#[derive(Serialize, ToSchema)]
pub struct LatestList {
    pub items: Vec<Reading>,
}

#[derive(Serialize, ToSchema)]
pub struct MetricSummary {
    pub metric: String,
    /// Timestamp of the metric's earliest reading.
    pub first_seen: DateTime<Utc>,
    /// Timestamp of the metric's latest reading.
    pub last_seen: DateTime<Utc>,
}

/// The metrics a device has sent, by name.
#[derive(Serialize, ToSchema)]
pub struct MetricList {
    pub items: Vec<MetricSummary>,
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(range))
        .routes(routes!(aggregate))
        .routes(routes!(latest))
        .routes(routes!(metrics))
}

/// RFC 3339 with an offset, or integer epoch milliseconds, within the years 0000-9999 (beyond
/// them PostgreSQL would refuse the value, and no reading can be there).
pub fn parse_time(name: &str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(ms) = value.parse::<i64>() {
        return (MIN_TIME_MS..=MAX_TIME_MS)
            .contains(&ms)
            .then(|| DateTime::from_timestamp_millis(ms))
            .flatten()
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "{name} in epoch milliseconds must be between {MIN_TIME_MS} and {MAX_TIME_MS} (the years 0000 to 9999)"
                ))
            });
    }
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            ApiError::BadRequest(format!(
                "{name} must be RFC 3339 with an offset (2026-12-03T10:00:00Z) or integer epoch milliseconds"
            ))
        })
}

pub fn parse_device_id(value: Option<&str>) -> Result<Uuid, ApiError> {
    value
        .ok_or_else(|| ApiError::BadRequest("device_id is required".into()))?
        .parse()
        .map_err(|_| ApiError::BadRequest("device_id must be a UUID".into()))
}

fn check_metric(metric: &str) -> Result<(), ApiError> {
    if shared::ingest::valid_metric(metric) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(
            "metric must be 1-128 characters of A-Z a-z 0-9 _ . : / -".into(),
        ))
    }
}

fn required<'a>(name: &str, value: &'a Option<String>) -> Result<&'a str, ApiError> {
    value
        .as_deref()
        .ok_or_else(|| ApiError::BadRequest(format!("{name} is required")))
}

/// The earliest and the end (exclusive) of all time a query can name.
fn all_time() -> (DateTime<Utc>, DateTime<Utc>) {
    (
        DateTime::from_timestamp_millis(MIN_TIME_MS).unwrap_or(DateTime::<Utc>::MIN_UTC),
        DateTime::from_timestamp_millis(MAX_TIME_MS + 1).unwrap_or(DateTime::<Utc>::MAX_UTC),
    )
}

/// `from`/`to` with their defaults; `from > to` is refused, `from == to` is an empty range.
fn time_range(
    from: Option<&str>,
    to: Option<&str>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), ApiError> {
    let (earliest, end) = all_time();
    let from = from.map(|f| parse_time("from", f)).transpose()?;
    let to = to.map(|t| parse_time("to", t)).transpose()?;
    let (from, to) = (from.unwrap_or(earliest), to.unwrap_or(end));
    if from > to {
        return Err(ApiError::BadRequest("from must not be after to".into()));
    }
    Ok((from, to))
}

/// `<ts micros>_<series id>`, exactly as [`format_cursor`] writes it. A well-formed cursor
/// outside the years 0000-9999 is clamped just outside them, where it selects what it would
/// have selected (everything or nothing) without giving PostgreSQL a time it cannot store.
fn parse_cursor(cursor: &str) -> Result<Keyset, ApiError> {
    let bad = || {
        ApiError::BadRequest(
            "cursor must be a next_cursor this API returned (<micros>_<series>)".into(),
        )
    };
    let (ts, series) = cursor.split_once('_').ok_or_else(bad)?;
    let digits = |s: &str, max: usize| {
        let d = s.strip_prefix('-').unwrap_or(s);
        !d.is_empty() && d.len() <= max && d.bytes().all(|b| b.is_ascii_digit())
    };
    if !digits(ts, 18) || !digits(series, 10) || series.starts_with('-') {
        return Err(bad());
    }
    let micros: i64 = ts.parse().map_err(|_| bad())?;
    let (earliest, end) = all_time();
    let micros = micros.clamp(earliest.timestamp_micros() - 1, end.timestamp_micros());
    Ok(Keyset {
        ts: DateTime::from_timestamp_micros(micros).ok_or_else(bad)?,
        series_id: series.parse().map_err(|_| bad())?,
    })
}

fn format_cursor(ts: DateTime<Utc>, series_id: i32) -> String {
    format!("{}_{}", ts.timestamp_micros(), series_id)
}

/// Raw readings of one device in `[from, to)`, oldest or newest first, one page at a time.
/// Pages are keyset-paginated on `(ts, series)`: following `next_cursor` returns every reading
/// of the range exactly once and in order, even while new readings arrive (a reading inserted
/// behind the cursor is not returned; one ahead of it is).
#[utoipa::path(
    get,
    path = "/readings",
    operation_id = "list_readings",
    tag = "readings",
    params(RangeParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of readings", body = ReadingPage),
        (status = 400, description = "A parameter is missing or invalid: `device_id` missing or not a UUID, a bad `metric`, `from`/`to` not RFC 3339 or epoch milliseconds, `from` after `to`, `limit` outside 1-10000, a cursor this API did not write, `order` not asc/desc", body = ErrorBody),
    )
)]
async fn range(
    State(state): State<AppState>,
    _user: CurrentUser,
    Query(p): Query<RangeParams>,
) -> Result<Json<ReadingPage>, ApiError> {
    let device_id = parse_device_id(p.device_id.as_deref())?;
    if let Some(m) = &p.metric {
        check_metric(m)?;
    }
    let (from, to) = time_range(p.from.as_deref(), p.to.as_deref())?;
    let limit = p.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let descending = match p.order.as_deref() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(_) => return Err(ApiError::BadRequest("order must be asc or desc".into())),
    };
    let after = p.cursor.as_deref().map(parse_cursor).transpose()?;
    // One row more than the page, so that the last page says so (`next_cursor: null`) instead
    // of sending the client for an empty one.
    let mut rows = readings::range(
        &state.db,
        &RangeQuery {
            device_id,
            metric: p.metric.as_deref(),
            from,
            to,
            after,
            descending,
            limit: limit + 1,
        },
    )
    .await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_cursor = more
        .then(|| rows.last().map(|r| format_cursor(r.ts, r.series_id)))
        .flatten();
    let items = rows
        .into_iter()
        .map(|r| Reading {
            device_id,
            metric: r.metric_name,
            ts: r.ts,
            value: r.value,
        })
        .collect();
    Ok(Json(ReadingPage { items, next_cursor }))
}

/// A bucket width in microseconds: `<n><unit>` with `n` 1-999999 without leading zeros and unit
/// `s`, `m`, `h` or `d`. Nothing else (no `0s`, `1.5m`, `1 h`, `1w` or `1mo`: months have no
/// fixed width, and `date_bin` refuses them).
pub fn parse_bucket(value: &str) -> Result<i64, ApiError> {
    let bad = || {
        ApiError::BadRequest(
            "bucket must be a whole number from 1 to 999999 followed by s, m, h or d (10s, 1m, 15m, 1h, 1d)".into(),
        )
    };
    let unit = value.chars().last().ok_or_else(bad)?;
    let digits = &value[..value.len() - unit.len_utf8()];
    if digits.is_empty()
        || digits.len() > 6
        || digits.starts_with('0')
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let n: i64 = digits.parse().map_err(|_| bad())?;
    let unit_secs = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(bad()),
    };
    Ok(n * unit_secs * 1_000_000)
}

/// How many epoch-aligned buckets of `width` micros `[from, to)` touches (0 when empty).
fn bucket_count(from: DateTime<Utc>, to: DateTime<Utc>, width: i64) -> i64 {
    if from >= to {
        return 0;
    }
    let first = from.timestamp_micros().div_euclid(width);
    let last = (to.timestamp_micros() - 1).div_euclid(width);
    last - first + 1
}

/// Time-bucket aggregates of one device's one metric over `[from, to)`. Buckets are aligned to
/// the epoch (1970-01-01T00:00:00Z), not to `from`, so that the same bucket has the same start
/// in every query and dashboards can cache and join them.
#[utoipa::path(
    get,
    path = "/readings/aggregate",
    operation_id = "aggregate_readings",
    tag = "readings",
    params(AggregateParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The buckets that hold readings, in time order", body = BucketList),
        (status = 400, description = "A parameter is missing or invalid, `from` is after `to`, or the range spans more than 10000 buckets of the given width", body = ErrorBody),
        (status = 422, description = "A bucket's sum (for `sum` or `avg`) is beyond the range of a double", body = ErrorBody),
    )
)]
async fn aggregate(
    State(state): State<AppState>,
    _user: CurrentUser,
    Query(p): Query<AggregateParams>,
) -> Result<Json<BucketList>, ApiError> {
    let device_id = parse_device_id(p.device_id.as_deref())?;
    let metric = required("metric", &p.metric)?;
    check_metric(metric)?;
    let from = required("from", &p.from)?;
    let to = required("to", &p.to)?;
    let (from, to) = time_range(Some(from), Some(to))?;
    let width = parse_bucket(required("bucket", &p.bucket)?)?;
    let function = Aggregate::parse(required("fn", &p.function)?).ok_or_else(|| {
        ApiError::BadRequest("fn must be one of avg, min, max, sum, count, first, last".into())
    })?;
    let buckets = bucket_count(from, to, width);
    if buckets > MAX_BUCKETS {
        return Err(ApiError::BadRequest(format!(
            "the range spans {buckets} buckets of this width; at most {MAX_BUCKETS} are allowed: widen the bucket or narrow the range"
        )));
    }
    if buckets == 0 {
        return Ok(Json(BucketList { items: Vec::new() }));
    }
    let Some(series_id) = readings::series_id(&state.db, device_id, metric).await? else {
        return Ok(Json(BucketList { items: Vec::new() }));
    };
    let stride = PgInterval {
        months: 0,
        days: 0,
        microseconds: width,
    };
    let rows = readings::aggregate(&state.db, series_id, function, stride, from, to)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.code().as_deref() == Some(readings::OUT_OF_RANGE) => {
                ApiError::Validation(format!(
                    "the {} of a bucket is beyond the range of a double; use a narrower bucket",
                    function.as_str()
                ))
            }
            _ => e.into(),
        })?;
    Ok(Json(BucketList {
        items: rows
            .into_iter()
            .map(|r| Bucket {
                bucket: r.bucket,
                value: r.value,
                count: r.count,
            })
            .collect(),
    }))
}

async fn known_device(state: &AppState, id: Uuid) -> Result<(), ApiError> {
    if readings::device_known(&state.db, id).await? {
        Ok(())
    } else {
        Err(ApiError::NotFound("device"))
    }
}

/// Per metric, the device's reading with the greatest timestamp, which is not necessarily the
/// one that arrived last (devices send late and out of order).
#[utoipa::path(
    get,
    path = "/devices/{id}/latest",
    operation_id = "latest_readings",
    tag = "readings",
    params(("id" = Uuid, Path, description = "The device")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The newest reading of each metric", body = LatestList),
        (status = 400, description = "`id` is not a UUID", body = ErrorBody),
        (status = 404, description = "No such device (neither registered nor with readings)", body = ErrorBody),
    )
)]
async fn latest(
    State(state): State<AppState>,
    _user: CurrentUser,
    Path(id): Path<Uuid>,
) -> Result<Json<LatestList>, ApiError> {
    known_device(&state, id).await?;
    let rows = readings::latest(&state.db, id).await?;
    Ok(Json(LatestList {
        items: rows
            .into_iter()
            .map(|r| Reading {
                device_id: id,
                metric: r.metric_name,
                ts: r.ts,
                value: r.value,
            })
            .collect(),
    }))
}

/// The metric names a device has sent, with the timestamps of their first and last readings.
#[utoipa::path(
    get,
    path = "/devices/{id}/metrics",
    operation_id = "device_metrics",
    tag = "readings",
    params(("id" = Uuid, Path, description = "The device")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The device's metrics", body = MetricList),
        (status = 400, description = "`id` is not a UUID", body = ErrorBody),
        (status = 404, description = "No such device (neither registered nor with readings)", body = ErrorBody),
    )
)]
async fn metrics(
    State(state): State<AppState>,
    _user: CurrentUser,
    Path(id): Path<Uuid>,
) -> Result<Json<MetricList>, ApiError> {
    known_device(&state, id).await?;
    let rows = readings::metrics(&state.db, id).await?;
    Ok(Json(MetricList {
        items: rows
            .into_iter()
            .map(|r| MetricSummary {
                metric: r.metric_name,
                first_seen: r.first_seen,
                last_seen: r.last_seen,
            })
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_whole_numbers_of_a_unit_and_nothing_else() {
        for (ok, micros) in [
            ("10s", 10_000_000),
            ("1m", 60_000_000),
            ("15m", 900_000_000),
            ("1h", 3_600_000_000),
            ("1d", 86_400_000_000),
            ("999999d", 999_999 * 86_400_000_000),
        ] {
            assert_eq!(parse_bucket(ok).unwrap(), micros, "{ok}");
        }
        for bad in [
            "", "0s", "00s", "01m", "s", "1", "1.5m", "1 h", " 1h", "1h ", "1w", "1mo", "1M",
            "-1m", "+1m", "1000000d", "1ms", "1é", "é", "١m",
        ] {
            assert!(parse_bucket(bad).is_err(), "{bad:?} was accepted");
        }
    }

    fn t(s: &str) -> DateTime<Utc> {
        parse_time("t", s).unwrap()
    }

    #[test]
    fn bucket_counts_are_of_epoch_aligned_buckets() {
        let m = 60_000_000;
        assert_eq!(
            bucket_count(t("2026-01-01T00:00:00Z"), t("2026-01-01T00:00:00Z"), m),
            0
        );
        assert_eq!(
            bucket_count(t("2026-01-01T00:00:00Z"), t("2026-01-01T00:01:00Z"), m),
            1
        );
        assert_eq!(
            bucket_count(
                t("2026-01-01T00:00:30Z"),
                t("2026-01-01T00:01:00.000001Z"),
                m
            ),
            2
        );
        assert_eq!(
            bucket_count(t("1969-12-31T23:59:30Z"), t("1970-01-01T00:00:30Z"), m),
            2
        );
        assert_eq!(
            bucket_count(t("2026-01-01T00:00:00Z"), t("2026-01-07T22:40:00Z"), m),
            10_000
        );
    }

    #[test]
    fn times_are_rfc3339_or_epoch_milliseconds_within_the_years_0000_to_9999() {
        assert_eq!(t("1422883140000"), t("2015-02-02T13:19:00Z"));
        assert_eq!(t("2015-02-02T14:19:00+01:00"), t("2015-02-02T13:19:00Z"));
        assert_eq!(t(&MIN_TIME_MS.to_string()), t("0000-01-01T00:00:00Z"));
        assert_eq!(t(&MAX_TIME_MS.to_string()), t("9999-12-31T23:59:59.999Z"));
        for bad in [
            "",
            "yesterday",
            "2015-02-02",
            "2015-02-02T13:19:00",
            "1.5",
            &(MIN_TIME_MS - 1).to_string(),
            &(MAX_TIME_MS + 1).to_string(),
            "-9223372036854775808",
            "99999999999999999999",
        ] {
            assert!(parse_time("from", bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn cursors_round_trip_and_junk_is_refused() {
        let ts = t("2015-02-02T13:19:00.123456Z");
        let k = parse_cursor(&format_cursor(ts, 42)).unwrap();
        assert_eq!((k.ts, k.series_id), (ts, 42));
        let k = parse_cursor(&format_cursor(ts, i32::MAX)).unwrap();
        assert_eq!(k.series_id, i64::from(i32::MAX));
        // Well-formed but outside the years 0000-9999: clamped just outside them.
        let (earliest, end) = all_time();
        let k = parse_cursor("-999999999999999999_1").unwrap();
        assert!(k.ts < earliest);
        let k = parse_cursor("999999999999999999_1").unwrap();
        assert!(k.ts >= end);
        for bad in [
            "",
            "_",
            "1_",
            "_1",
            "1",
            "a_1",
            "1_a",
            "1_-1",
            "1_1_1",
            "1.5_1",
            "1234567890123456789_1",
            "1_12345678901",
            " 1_1",
            "1_1 ",
        ] {
            assert!(parse_cursor(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn every_aggregate_name_parses_to_itself() {
        for a in Aggregate::ALL {
            assert_eq!(Aggregate::parse(a.as_str()), Some(a));
        }
        assert_eq!(Aggregate::parse("AVG"), None);
        assert_eq!(Aggregate::parse("median"), None);
    }
}

//! Reading queries. Every query is bounded by a device, so it runs on the `(series_id, ts)` index.

use crate::AppState;
use crate::api::extract::{Json, Query};
use crate::auth::CurrentUser;
use crate::error::ApiError;
use crate::storage::readings::{self, RangeQuery};
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const DEFAULT_LIMIT: i64 = 1000;
pub const MAX_LIMIT: i64 = 10_000;

#[derive(Serialize)]
pub struct Reading {
    pub device_id: Uuid,
    pub metric: String,
    pub ts: DateTime<Utc>,
    pub value: f64,
}

#[derive(Deserialize)]
pub struct RangeParams {
    pub device_id: Option<String>,
    pub metric: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub limit: Option<i64>,
    pub cursor: Option<String>,
    pub order: Option<String>,
}

#[derive(Serialize)]
pub struct Page {
    pub items: Vec<Reading>,
    pub next_cursor: Option<String>,
}

pub fn router() -> Router<AppState> {
    Router::new().route("/readings", get(range))
}

/// RFC 3339 with an offset, or integer epoch milliseconds.
pub fn parse_time(name: &str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(ms) = value.parse::<i64>() {
        return DateTime::from_timestamp_millis(ms)
            .ok_or_else(|| ApiError::BadRequest(format!("{name} is out of range")));
    }
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            ApiError::BadRequest(format!(
                "{name} must be RFC 3339 with an offset or integer epoch milliseconds"
            ))
        })
}

pub fn parse_device_id(value: Option<&str>) -> Result<Uuid, ApiError> {
    value
        .ok_or_else(|| ApiError::BadRequest("device_id is required".into()))?
        .parse()
        .map_err(|_| ApiError::BadRequest("device_id must be a UUID".into()))
}

/// The widest range PostgreSQL and chrono both represent, for open-ended queries.
fn open_range() -> (DateTime<Utc>, DateTime<Utc>) {
    (
        DateTime::UNIX_EPOCH,
        DateTime::from_timestamp_millis(253_402_300_799_000).unwrap_or(DateTime::UNIX_EPOCH),
    )
}

fn parse_cursor(cursor: &str) -> Result<(DateTime<Utc>, i32), ApiError> {
    let bad = || ApiError::BadRequest("cursor is not one this API returned".into());
    let (ts, series) = cursor.split_once('_').ok_or_else(bad)?;
    let ts = DateTime::from_timestamp_micros(ts.parse().map_err(|_| bad())?).ok_or_else(bad)?;
    Ok((ts, series.parse().map_err(|_| bad())?))
}

async fn range(
    State(state): State<AppState>,
    _user: CurrentUser,
    Query(p): Query<RangeParams>,
) -> Result<Json<Page>, ApiError> {
    let device_id = parse_device_id(p.device_id.as_deref())?;
    if let Some(m) = &p.metric
        && !shared::ingest::valid_metric(m)
    {
        return Err(ApiError::BadRequest(
            "metric must be 1-128 characters of A-Z a-z 0-9 _ . : / -".into(),
        ));
    }
    let (mut from, mut to) = open_range();
    if let Some(f) = &p.from {
        from = parse_time("from", f)?;
    }
    if let Some(t) = &p.to {
        to = parse_time("to", t)?;
    }
    if from > to {
        return Err(ApiError::BadRequest("from must not be after to".into()));
    }
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
    let rows = readings::range(
        &state.db,
        &RangeQuery {
            device_id,
            metric: p.metric.as_deref(),
            from,
            to,
            after,
            descending,
            limit,
        },
    )
    .await?;
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| {
            rows.last()
                .map(|r| format!("{}_{}", r.ts.timestamp_micros(), r.series_id))
        })
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
    Ok(Json(Page { items, next_cursor }))
}

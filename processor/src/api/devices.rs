//! Device routes: admins create, change, rotate and delete; analysts read.

use crate::AppState;
use crate::api::extract::{Json, Path, Query};
use crate::auth::{AdminUser, CurrentUser};
use crate::error::ApiError;
use crate::storage::devices::DeviceRow;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Serialize)]
pub struct Device {
    pub id: Uuid,
    pub name: String,
    pub enabled: bool,
    /// The public part of the device's key, to tell keys apart in logs and support requests.
    pub key_id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_seen_at: Option<DateTime<Utc>>,
}

impl From<DeviceRow> for Device {
    fn from(r: DeviceRow) -> Self {
        Device {
            id: r.id,
            name: r.name,
            enabled: r.enabled,
            key_id: r.key_id,
            created_at: r.created_at,
            updated_at: r.updated_at,
            last_seen_at: r.last_seen_at,
        }
    }
}

/// A device with its API key: only in the answers to create and rotate.
#[derive(Serialize)]
pub struct DeviceWithKey {
    #[serde(flatten)]
    pub device: Device,
    pub api_key: String,
}

#[derive(Deserialize)]
pub struct CreateDevice {
    pub name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateDevice {
    pub name: Option<String>,
    pub enabled: Option<bool>,
}

#[derive(Deserialize)]
pub struct ListParams {
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

#[derive(Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/devices", post(create).get(list))
        .route("/devices/{id}", get(get_one).patch(update).delete(delete))
        .route("/devices/{id}/rotate-key", post(rotate))
}

async fn create(
    State(state): State<AppState>,
    _admin: AdminUser,
    Json(req): Json<CreateDevice>,
) -> Result<(StatusCode, Json<DeviceWithKey>), ApiError> {
    let (row, key) = state.devices.create(&req.name).await?;
    Ok((
        StatusCode::CREATED,
        Json(DeviceWithKey {
            device: row.into(),
            api_key: key.expose().to_owned(),
        }),
    ))
}

fn parse_cursor(cursor: &str) -> Result<(DateTime<Utc>, Uuid), ApiError> {
    let bad = || ApiError::BadRequest("cursor is not one this API returned".into());
    let (ts, id) = cursor.split_once('_').ok_or_else(bad)?;
    let ts: i64 = ts.parse().map_err(|_| bad())?;
    Ok((
        DateTime::from_timestamp_micros(ts).ok_or_else(bad)?,
        id.parse().map_err(|_| bad())?,
    ))
}

async fn list(
    State(state): State<AppState>,
    _user: CurrentUser,
    Query(p): Query<ListParams>,
) -> Result<Json<Page<Device>>, ApiError> {
    let limit = p.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 1000".into(),
        ));
    }
    let after = p.cursor.as_deref().map(parse_cursor).transpose()?;
    let rows = crate::storage::devices::page(&state.db, after, limit).await?;
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| {
            rows.last()
                .map(|r| format!("{}_{}", r.created_at.timestamp_micros(), r.id))
        })
        .flatten();
    Ok(Json(Page {
        items: rows.into_iter().map(Device::from).collect(),
        next_cursor,
    }))
}

async fn get_one(
    State(state): State<AppState>,
    _user: CurrentUser,
    Path(id): Path<Uuid>,
) -> Result<Json<Device>, ApiError> {
    Ok(Json(state.devices.get(id).await?.into()))
}

async fn update(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<Uuid>,
    Json(req): Json<UpdateDevice>,
) -> Result<Json<Device>, ApiError> {
    Ok(Json(
        state
            .devices
            .update(id, req.name.as_deref(), req.enabled)
            .await?
            .into(),
    ))
}

async fn delete(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    state.devices.delete(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn rotate(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<Uuid>,
) -> Result<Json<DeviceWithKey>, ApiError> {
    let (row, key) = state.devices.rotate_key(id).await?;
    Ok(Json(DeviceWithKey {
        device: row.into(),
        api_key: key.expose().to_owned(),
    }))
}

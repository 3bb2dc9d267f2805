//! Device routes: admins create, change, rotate and delete; analysts read.

use crate::AppState;
use crate::api::extract::{Json, Path, Query};
use crate::auth::{AdminUser, CurrentUser};
use crate::error::ApiError;
use crate::error::ErrorBody;
use crate::storage::devices::DeviceRow;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

#[derive(Serialize, ToSchema)]
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
#[derive(Serialize, ToSchema)]
pub struct DeviceWithKey {
    #[serde(flatten)]
    pub device: Device,
    /// The device's key; shown only in this answer, never stored in clear.
    pub api_key: String,
}

/// Unknown fields are refused: a client that sends `"enabled": false` must not get a live device.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDevice {
    /// 1-200 characters once trimmed, not only white space, no control characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\u0000-\u0020\u007F-\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub name: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateDevice {
    /// As in `CreateDevice`.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\u0000-\u0020\u007F-\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub name: Option<String>,
    /// `false` locks the device's key out on every gateway within about a second.
    pub enabled: Option<bool>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Page size.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page, unchanged.
    #[param(
        pattern = "^-?[0-9]{1,18}_[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    pub cursor: Option<String>,
}

/// One page of a list; `next_cursor` is null on the last page.
#[derive(Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get_one, update, delete))
        .routes(routes!(rotate))
}

/// Registers a device and returns its key, which is shown only here.
#[utoipa::path(
    post,
    path = "/devices",
    operation_id = "create_device",
    tag = "devices",
    request_body = CreateDevice,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created; `api_key` is shown only now", body = DeviceWithKey),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 403, description = "Needs the admin role", body = ErrorBody),
        (status = 422, description = "A missing or invalid field (`name` must be 1-200 characters)", body = ErrorBody),
    )
)]
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
    // Clamped just outside the years 0000-9999, where it selects the same devices (all or
    // none) without handing PostgreSQL a time it cannot store (which would be a 500).
    let ts = ts.clamp(
        crate::api::readings::MIN_TIME_MS * 1000 - 1,
        (crate::api::readings::MAX_TIME_MS + 1) * 1000,
    );
    Ok((
        DateTime::from_timestamp_micros(ts).ok_or_else(bad)?,
        id.parse().map_err(|_| bad())?,
    ))
}

/// Devices in creation order.
#[utoipa::path(
    get,
    path = "/devices",
    operation_id = "list_devices",
    tag = "devices",
    params(ListParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of devices", body = Page<Device>),
        (status = 400, description = "`limit` outside 1-1000 or a cursor this API did not write", body = ErrorBody),
    )
)]
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

/// One device (never its key).
#[utoipa::path(
    get,
    path = "/devices/{id}",
    operation_id = "get_device",
    tag = "devices",
    params(("id" = Uuid, Path, description = "The device")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The device", body = Device),
        (status = 400, description = "`id` is not a UUID", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
    )
)]
async fn get_one(
    State(state): State<AppState>,
    _user: CurrentUser,
    Path(id): Path<Uuid>,
) -> Result<Json<Device>, ApiError> {
    Ok(Json(state.devices.get(id).await?.into()))
}

/// Renames, enables or disables a device; disabling locks its key out on every gateway.
#[utoipa::path(
    patch,
    path = "/devices/{id}",
    operation_id = "update_device",
    tag = "devices",
    params(("id" = Uuid, Path, description = "The device")),
    request_body = UpdateDevice,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The changed device", body = Device),
        (status = 400, description = "`id` is not a UUID or the body is not JSON", body = ErrorBody),
        (status = 403, description = "Needs the admin role", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
        (status = 422, description = "An invalid or unknown field", body = ErrorBody),
    )
)]
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

/// Deletes a device: its key stops working; its readings are kept.
#[utoipa::path(
    delete,
    path = "/devices/{id}",
    operation_id = "delete_device",
    tag = "devices",
    params(("id" = Uuid, Path, description = "The device")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "`id` is not a UUID", body = ErrorBody),
        (status = 403, description = "Needs the admin role", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
    )
)]
async fn delete(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    state.devices.delete(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Gives the device a new key; the old one stops working within about a second.
#[utoipa::path(
    post,
    path = "/devices/{id}/rotate-key",
    operation_id = "rotate_device_key",
    tag = "devices",
    params(("id" = Uuid, Path, description = "The device")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The device with its new key, shown only now", body = DeviceWithKey),
        (status = 400, description = "`id` is not a UUID", body = ErrorBody),
        (status = 403, description = "Needs the admin role", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
    )
)]
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

//! Rule routes: admins create, change and delete; analysts read.

use crate::AppState;
use crate::api::devices::Page;
use crate::api::extract::{Json, Path, Query};
use crate::auth::{AdminUser, CurrentUser};
use crate::error::{ApiError, ErrorBody};
use crate::rules::manage::{NewRule, RuleChange};
use crate::rules::{RuleType, Severity};
use crate::storage::rules::{ListQuery, RuleRow};
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;

#[derive(Serialize, ToSchema)]
pub struct RuleResponse {
    pub id: Uuid,
    pub device_id: Uuid,
    pub metric: String,
    #[serde(rename = "type")]
    #[schema(value_type = RuleType)]
    pub rule_type: String,
    pub min: Option<f64>,
    pub max: Option<f64>,
    #[schema(value_type = Severity)]
    pub severity: String,
    pub enabled: bool,
    /// The event time of the newest reading evaluated for this rule (its watermark).
    pub last_evaluated_ts: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<RuleRow> for RuleResponse {
    fn from(r: RuleRow) -> Self {
        RuleResponse {
            id: r.id,
            device_id: r.device_id,
            metric: r.metric,
            rule_type: r.rule_type,
            min: r.min,
            max: r.max,
            severity: r.severity,
            enabled: r.enabled,
            last_evaluated_ts: r.last_evaluated_ts,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// `severity` may be left out (then `warning`); every other field is required as its type says.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRule {
    pub device_id: Uuid,
    #[schema(pattern = "^[A-Za-z0-9_.:/-]{1,128}$")]
    pub metric: String,
    #[serde(rename = "type")]
    pub rule_type: RuleType,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub severity: Option<Severity>,
}

/// Device and metric cannot change (another target is another rule); unknown fields are 422.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRule {
    #[serde(rename = "type")]
    pub rule_type: Option<RuleType>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub severity: Option<Severity>,
    pub enabled: Option<bool>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only this device's rules.
    #[param(value_type = Option<Uuid>)]
    pub device_id: Option<String>,
    /// Only rules on this metric.
    #[param(pattern = "^[A-Za-z0-9_.:/-]{1,128}$")]
    pub metric: Option<String>,
    /// Page size.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page, unchanged.
    #[param(
        pattern = "^-?[0-9]{1,18}_[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    pub cursor: Option<String>,
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get_one, update, delete))
}

/// Keyset cursors of the form `<micros>_<uuid>`, shared with the alert list.
pub(crate) fn parse_cursor(cursor: &str) -> Result<(DateTime<Utc>, Uuid), ApiError> {
    let bad = || ApiError::BadRequest("cursor is not one this API returned".into());
    let (ts, id) = cursor.split_once('_').ok_or_else(bad)?;
    let ts: i64 = ts.parse().map_err(|_| bad())?;
    // Clamped just outside the years 0000-9999, where it selects the same rows (all or none)
    // without handing PostgreSQL a time it cannot store (which would be a 500).
    let ts = ts.clamp(
        crate::api::readings::MIN_TIME_MS * 1000 - 1,
        (crate::api::readings::MAX_TIME_MS + 1) * 1000,
    );
    Ok((
        DateTime::from_timestamp_micros(ts).ok_or_else(bad)?,
        id.parse().map_err(|_| bad())?,
    ))
}

pub(crate) fn format_cursor(ts: DateTime<Utc>, id: Uuid) -> String {
    format!("{}_{}", ts.timestamp_micros(), id)
}

pub(crate) fn check_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if (1..=MAX_LIMIT).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )))
    }
}

pub(crate) fn parse_uuid(name: &str, value: Option<&str>) -> Result<Option<Uuid>, ApiError> {
    value
        .map(|v| {
            v.parse()
                .map_err(|_| ApiError::BadRequest(format!("{name} must be a UUID")))
        })
        .transpose()
}

pub(crate) fn check_metric_filter(metric: Option<&str>) -> Result<(), ApiError> {
    match metric {
        Some(m) if !shared::ingest::valid_metric(m) => Err(ApiError::BadRequest(
            "metric must be 1-128 characters of A-Z a-z 0-9 _ . : / -".into(),
        )),
        _ => Ok(()),
    }
}

/// Creates a rule; every processor starts evaluating it within about a second.
#[utoipa::path(
    post,
    path = "/rules",
    operation_id = "create_rule",
    tag = "rules",
    request_body = CreateRule,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = RuleResponse),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 403, description = "Needs the admin role", body = ErrorBody),
        (status = 422, description = "A missing, invalid or unknown field, thresholds that do not fit the type (a RANGE needs min <= max), or a device that does not exist", body = ErrorBody),
    )
)]
async fn create(
    State(state): State<AppState>,
    _admin: AdminUser,
    Json(req): Json<CreateRule>,
) -> Result<(StatusCode, Json<RuleResponse>), ApiError> {
    let row = state
        .rules
        .create(NewRule {
            device_id: req.device_id,
            metric: req.metric,
            kind: req.rule_type,
            min: req.min,
            max: req.max,
            severity: req.severity.unwrap_or(Severity::Warning),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(row.into())))
}

/// Rules in creation order, optionally of one device and metric.
#[utoipa::path(
    get,
    path = "/rules",
    operation_id = "list_rules",
    tag = "rules",
    params(ListParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of rules", body = Page<RuleResponse>),
        (status = 400, description = "A bad filter, `limit` outside 1-1000 or a cursor this API did not write", body = ErrorBody),
    )
)]
async fn list(
    State(state): State<AppState>,
    _user: CurrentUser,
    Query(p): Query<ListParams>,
) -> Result<Json<Page<RuleResponse>>, ApiError> {
    let limit = check_limit(p.limit)?;
    check_metric_filter(p.metric.as_deref())?;
    let rows = crate::storage::rules::page(
        &state.db,
        &ListQuery {
            device_id: parse_uuid("device_id", p.device_id.as_deref())?,
            metric: p.metric.as_deref(),
            after: p.cursor.as_deref().map(parse_cursor).transpose()?,
            limit,
        },
    )
    .await?;
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| format_cursor(r.created_at, r.id)))
        .flatten();
    Ok(Json(Page {
        items: rows.into_iter().map(RuleResponse::from).collect(),
        next_cursor,
    }))
}

#[utoipa::path(
    get,
    path = "/rules/{id}",
    operation_id = "get_rule",
    tag = "rules",
    params(("id" = Uuid, Path, description = "The rule")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The rule", body = RuleResponse),
        (status = 400, description = "`id` is not a UUID", body = ErrorBody),
        (status = 404, description = "No such rule", body = ErrorBody),
    )
)]
async fn get_one(
    State(state): State<AppState>,
    _user: CurrentUser,
    Path(id): Path<Uuid>,
) -> Result<Json<RuleResponse>, ApiError> {
    Ok(Json(state.rules.get(id).await?.into()))
}

/// Changes thresholds, type, severity or enabled; disabling resolves its open alert.
#[utoipa::path(
    patch,
    path = "/rules/{id}",
    operation_id = "update_rule",
    tag = "rules",
    params(("id" = Uuid, Path, description = "The rule")),
    request_body = UpdateRule,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The changed rule", body = RuleResponse),
        (status = 400, description = "`id` is not a UUID or the body is not JSON", body = ErrorBody),
        (status = 403, description = "Needs the admin role", body = ErrorBody),
        (status = 404, description = "No such rule", body = ErrorBody),
        (status = 422, description = "An invalid or unknown field, or thresholds that do not fit the type", body = ErrorBody),
    )
)]
async fn update(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(id): Path<Uuid>,
    Json(req): Json<UpdateRule>,
) -> Result<Json<RuleResponse>, ApiError> {
    let change = RuleChange {
        kind: req.rule_type,
        min: req.min,
        max: req.max,
        severity: req.severity,
        enabled: req.enabled,
    };
    Ok(Json(state.rules.update(id, change, admin.id).await?.into()))
}

/// Deletes a rule and resolves its open alert.
#[utoipa::path(
    delete,
    path = "/rules/{id}",
    operation_id = "delete_rule",
    tag = "rules",
    params(("id" = Uuid, Path, description = "The rule")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "`id` is not a UUID", body = ErrorBody),
        (status = 403, description = "Needs the admin role", body = ErrorBody),
        (status = 404, description = "No such rule", body = ErrorBody),
    )
)]
async fn delete(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    state.rules.delete(id, admin.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

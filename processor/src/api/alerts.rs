//! Alert routes: everyone reads, admins resolve by hand.

use crate::AppState;
use crate::api::devices::Page;
use crate::api::extract::{Json, Path, Query, RawBody};
use crate::api::readings::parse_time;
use crate::api::rules::{
    check_limit, check_metric_filter, format_cursor, parse_cursor, parse_uuid,
};
use crate::auth::{AdminUser, CurrentUser};
use crate::error::{ApiError, ErrorBody};
use crate::rules::{RuleType, Severity};
use crate::storage::alerts::{AlertRow, ListQuery};
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

/// An alert. `value`/`triggered_at` are the reading that opened it, `last_value`/`last_seen` the
/// newest violating reading, `resolved_at` the in-bounds reading that closed it (event times),
/// or the wall-clock time of a manual or rule-driven resolution (see `resolution`).
#[derive(Serialize, ToSchema)]
pub struct AlertResponse {
    pub id: Uuid,
    pub rule_id: Uuid,
    pub device_id: Uuid,
    pub metric: String,
    #[schema(value_type = AlertStatus)]
    pub status: String,
    #[schema(value_type = Severity)]
    pub severity: String,
    /// The rule's type and thresholds when the alert opened.
    #[serde(rename = "type")]
    #[schema(value_type = RuleType)]
    pub rule_type: String,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// The bound the triggering value crossed.
    pub threshold: f64,
    pub value: f64,
    pub triggered_at: DateTime<Utc>,
    pub last_value: f64,
    pub last_seen: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// `reading`, `manual`, `rule_disabled` or `rule_deleted`.
    #[schema(value_type = Option<Resolution>)]
    pub resolution: Option<String>,
    pub resolved_by: Option<Uuid>,
    pub note: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<AlertRow> for AlertResponse {
    fn from(r: AlertRow) -> Self {
        AlertResponse {
            id: r.id,
            rule_id: r.rule_id,
            device_id: r.device_id,
            metric: r.metric,
            status: r.status,
            severity: r.severity,
            rule_type: r.rule_type,
            min: r.min,
            max: r.max,
            threshold: r.threshold,
            value: r.value,
            triggered_at: r.triggered_at,
            last_value: r.last_value,
            last_seen: r.last_seen,
            resolved_at: r.resolved_at,
            resolution: r.resolution,
            resolved_by: r.resolved_by,
            note: r.note,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

// Document types: the answers carry these values as strings from the database.
#[derive(Serialize, ToSchema)]
pub enum AlertStatus {
    #[serde(rename = "ACTIVE")]
    Active,
    #[serde(rename = "RESOLVED")]
    Resolved,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    Reading,
    Manual,
    RuleDisabled,
    RuleDeleted,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// `ACTIVE` or `RESOLVED`, in any case.
    #[param(pattern = "^([Aa][Cc][Tt][Ii][Vv][Ee]|[Rr][Ee][Ss][Oo][Ll][Vv][Ee][Dd])$")]
    pub status: Option<String>,
    #[param(value_type = Option<Uuid>)]
    pub device_id: Option<String>,
    #[param(pattern = "^[A-Za-z0-9_.:/-]{1,128}$")]
    pub metric: Option<String>,
    #[param(value_type = Option<Severity>, inline)]
    pub severity: Option<String>,
    #[param(value_type = Option<Uuid>)]
    pub rule_id: Option<String>,
    /// Inclusive lower bound on `triggered_at` (RFC 3339 or epoch milliseconds).
    #[param(value_type = Option<crate::api::openapi::TimeParam>, inline)]
    pub from: Option<String>,
    /// Exclusive upper bound on `triggered_at`.
    #[param(value_type = Option<crate::api::openapi::TimeParam>, inline)]
    pub to: Option<String>,
    /// `desc` (newest first, the default) or `asc`.
    #[param(value_type = Option<crate::api::readings::Order>, inline)]
    pub order: Option<String>,
    /// Page size.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page, unchanged.
    #[param(
        pattern = "^-?[0-9]{1,18}_[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    pub cursor: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// At most 1000 characters, no NUL.
    #[schema(max_length = 1000, pattern = "^[^\\u0000]*$")]
    pub note: Option<String>,
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get_one))
        .routes(routes!(resolve))
}

/// Alerts, newest first by default, with filters.
#[utoipa::path(
    get,
    path = "/alerts",
    operation_id = "list_alerts",
    tag = "alerts",
    params(ListParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of alerts", body = Page<AlertResponse>),
        (status = 400, description = "A bad filter, `from` after `to`, `limit` outside 1-1000, a cursor this API did not write, `order` not asc/desc", body = ErrorBody),
    )
)]
async fn list(
    State(state): State<AppState>,
    _user: CurrentUser,
    Query(p): Query<ListParams>,
) -> Result<Json<Page<AlertResponse>>, ApiError> {
    let limit = check_limit(p.limit)?;
    check_metric_filter(p.metric.as_deref())?;
    let status = match p.status.as_deref() {
        None => None,
        Some(s) if s.eq_ignore_ascii_case("active") => Some("ACTIVE"),
        Some(s) if s.eq_ignore_ascii_case("resolved") => Some("RESOLVED"),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "status must be ACTIVE or RESOLVED".into(),
            ));
        }
    };
    let severity = match p.severity.as_deref() {
        None => None,
        Some(s) => Some(
            crate::rules::Severity::parse(s)
                .ok_or_else(|| {
                    ApiError::BadRequest("severity must be info, warning or critical".into())
                })?
                .as_str(),
        ),
    };
    let from = p
        .from
        .as_deref()
        .map(|v| parse_time("from", v))
        .transpose()?;
    let to = p.to.as_deref().map(|v| parse_time("to", v)).transpose()?;
    if let (Some(f), Some(t)) = (from, to)
        && f > t
    {
        return Err(ApiError::BadRequest("from must not be after to".into()));
    }
    let ascending = match p.order.as_deref() {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(_) => return Err(ApiError::BadRequest("order must be asc or desc".into())),
    };
    let rows = crate::storage::alerts::page(
        &state.db,
        &ListQuery {
            status,
            device_id: parse_uuid("device_id", p.device_id.as_deref())?,
            metric: p.metric.as_deref(),
            severity,
            rule_id: parse_uuid("rule_id", p.rule_id.as_deref())?,
            from,
            to,
            after: p.cursor.as_deref().map(parse_cursor).transpose()?,
            ascending,
            limit,
        },
    )
    .await?;
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| format_cursor(r.triggered_at, r.id)))
        .flatten();
    Ok(Json(Page {
        items: rows.into_iter().map(AlertResponse::from).collect(),
        next_cursor,
    }))
}

#[utoipa::path(
    get,
    path = "/alerts/{id}",
    operation_id = "get_alert",
    tag = "alerts",
    params(("id" = Uuid, Path, description = "The alert")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The alert", body = AlertResponse),
        (status = 400, description = "`id` is not a UUID", body = ErrorBody),
        (status = 404, description = "No such alert", body = ErrorBody),
    )
)]
async fn get_one(
    State(state): State<AppState>,
    _user: CurrentUser,
    Path(id): Path<Uuid>,
) -> Result<Json<AlertResponse>, ApiError> {
    crate::storage::alerts::get(&state.db, id)
        .await?
        .map(|r| Json(r.into()))
        .ok_or(ApiError::NotFound("alert"))
}

/// The body is optional: no body (or an empty one) resolves without a note.
#[utoipa::path(
    post,
    path = "/alerts/{id}/resolve",
    operation_id = "resolve_alert",
    tag = "alerts",
    params(("id" = Uuid, Path, description = "The alert")),
    request_body(content = Option<ResolveRequest>, description = "Optional; no body, `null` or `{}` resolves without a note"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The resolved alert", body = AlertResponse),
        (status = 400, description = "`id` is not a UUID or the body is not JSON", body = ErrorBody),
        (status = 403, description = "Needs the admin role", body = ErrorBody),
        (status = 404, description = "No such alert", body = ErrorBody),
        (status = 409, description = "The alert is already resolved", body = ErrorBody),
        (status = 422, description = "An unknown field, or a note over 1000 characters", body = ErrorBody),
    )
)]
async fn resolve(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(id): Path<Uuid>,
    RawBody(body): RawBody,
) -> Result<Json<AlertResponse>, ApiError> {
    let note = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        // `null` is "no body" as well.
        serde_json::from_slice::<Option<ResolveRequest>>(&body)
            .map_err(|e| match e.classify() {
                serde_json::error::Category::Data => ApiError::Validation(e.to_string()),
                serde_json::error::Category::Io
                | serde_json::error::Category::Syntax
                | serde_json::error::Category::Eof => {
                    ApiError::BadRequest(format!("the body is not valid JSON: {e}"))
                }
            })?
            .and_then(|r| r.note)
    };
    let row = crate::alerts::resolve_by_hand(&state.db, &state.metrics, id, admin.id, note).await?;
    Ok(Json(row.into()))
}

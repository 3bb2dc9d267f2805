//! Rows and statements of `alerts`. Every statement that changes an alert runs while its rule's
//! row is locked by the caller (see [`super::rules::lock`]).

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

/// The partial unique index "one ACTIVE alert per rule".
pub const ONE_ACTIVE_PER_RULE: &str = "alerts_one_active_per_rule";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AlertRow {
    pub id: Uuid,
    pub rule_id: Uuid,
    pub device_id: Uuid,
    pub metric: String,
    pub rule_type: String,
    pub severity: String,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub threshold: f64,
    pub value: f64,
    pub triggered_at: DateTime<Utc>,
    pub last_value: f64,
    pub last_seen: DateTime<Utc>,
    pub status: String,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolution: Option<String>,
    pub resolved_by: Option<Uuid>,
    pub note: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The selected columns, as a macro so that every statement stays a `&'static str`.
macro_rules! columns {
    () => {
        "id, rule_id, device_id, metric, rule_type, severity, min, max, threshold, value,
         triggered_at, last_value, last_seen, status, resolved_at, resolution, resolved_by, note,
         created_at, updated_at"
    };
}

/// The ACTIVE alert of each given rule, as `(rule_id, alert_id)`. Read after the rules are locked,
/// so it sees every change committed by whoever held those locks before.
#[tracing::instrument(skip_all, fields(module = "storage", operation = "alerts_active", rules = rule_ids.len()))]
pub async fn active_for_rules(
    db: impl PgExecutor<'_>,
    rule_ids: &[Uuid],
) -> sqlx::Result<Vec<(Uuid, Uuid)>> {
    sqlx::query_as("SELECT rule_id, id FROM alerts WHERE rule_id = ANY($1) AND status = 'ACTIVE'")
        .bind(rule_ids)
        .fetch_all(db)
        .await
}

/// Changes to alerts that were ACTIVE when the batch's evaluation started, one element per alert:
/// a newer violating reading (`last_*`), and/or the event time at which an in-bounds reading
/// resolved it.
#[derive(Debug, Default)]
pub struct ExistingChanges {
    pub id: Vec<Uuid>,
    pub last_value: Vec<Option<f64>>,
    pub last_seen: Vec<Option<DateTime<Utc>>>,
    pub resolved_at: Vec<Option<DateTime<Utc>>>,
}

/// Applies [`ExistingChanges`] in one statement. Returns the rows changed, which the caller
/// compares with what it expected: fewer means an alert stopped being ACTIVE behind the rule lock.
#[tracing::instrument(skip_all, fields(module = "storage", operation = "alerts_update", alerts = c.id.len()))]
pub async fn update_existing(db: impl PgExecutor<'_>, c: &ExistingChanges) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "UPDATE alerts a
            SET last_value = coalesce(v.last_value, a.last_value),
                last_seen = coalesce(v.last_seen, a.last_seen),
                status = CASE WHEN v.resolved_at IS NULL THEN 'ACTIVE' ELSE 'RESOLVED' END,
                resolved_at = v.resolved_at,
                resolution = CASE WHEN v.resolved_at IS NULL THEN NULL ELSE 'reading' END,
                updated_at = now()
           FROM UNNEST($1::uuid[], $2::float8[], $3::timestamptz[], $4::timestamptz[])
                AS v(id, last_value, last_seen, resolved_at)
          WHERE a.id = v.id AND a.status = 'ACTIVE'",
    )
    .bind(&c.id)
    .bind(&c.last_value)
    .bind(&c.last_seen)
    .bind(&c.resolved_at)
    .execute(db)
    .await?
    .rows_affected())
}

/// Alerts opened by one batch's evaluation, one element per alert. An alert that opened and
/// resolved within the batch is inserted RESOLVED; at most one per rule is ACTIVE.
#[derive(Debug, Default)]
pub struct NewAlerts {
    pub id: Vec<Uuid>,
    pub rule_id: Vec<Uuid>,
    pub threshold: Vec<f64>,
    pub value: Vec<f64>,
    pub triggered_at: Vec<DateTime<Utc>>,
    pub last_value: Vec<f64>,
    pub last_seen: Vec<DateTime<Utc>>,
    pub resolved_at: Vec<Option<DateTime<Utc>>>,
}

/// Inserts [`NewAlerts`] in one statement, copying the definition of each (locked) rule into
/// its alerts. A second ACTIVE alert for a rule fails on [`ONE_ACTIVE_PER_RULE`].
#[tracing::instrument(skip_all, fields(module = "storage", operation = "alerts_insert", alerts = n.id.len()))]
pub async fn insert_new(db: impl PgExecutor<'_>, n: &NewAlerts) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "INSERT INTO alerts (id, rule_id, device_id, metric, rule_type, severity, min, max,
                             threshold, value, triggered_at, last_value, last_seen,
                             status, resolved_at, resolution)
         SELECT v.id, r.id, r.device_id, r.metric, r.type, r.severity, r.min, r.max,
                v.threshold, v.value, v.triggered_at, v.last_value, v.last_seen,
                CASE WHEN v.resolved_at IS NULL THEN 'ACTIVE' ELSE 'RESOLVED' END,
                v.resolved_at,
                CASE WHEN v.resolved_at IS NULL THEN NULL ELSE 'reading' END
           FROM UNNEST($1::uuid[], $2::uuid[], $3::float8[], $4::float8[], $5::timestamptz[],
                       $6::float8[], $7::timestamptz[], $8::timestamptz[])
                AS v(id, rule_id, threshold, value, triggered_at, last_value, last_seen, resolved_at)
           JOIN rules r ON r.id = v.rule_id",
    )
    .bind(&n.id)
    .bind(&n.rule_id)
    .bind(&n.threshold)
    .bind(&n.value)
    .bind(&n.triggered_at)
    .bind(&n.last_value)
    .bind(&n.last_seen)
    .bind(&n.resolved_at)
    .execute(db)
    .await?
    .rows_affected())
}

/// Why an alert was closed other than by a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closure {
    Manual,
    RuleDisabled,
    RuleDeleted,
}

impl Closure {
    pub fn as_str(self) -> &'static str {
        match self {
            Closure::Manual => "manual",
            Closure::RuleDisabled => "rule_disabled",
            Closure::RuleDeleted => "rule_deleted",
        }
    }
}

/// Resolves the ACTIVE alert of a rule locked by the caller, at wall-clock time (no reading
/// caused it). `None` when the rule had no ACTIVE alert.
#[tracing::instrument(skip_all, fields(module = "storage", operation = "alert_close_for_rule", rule_id = %rule_id, alert_id))]
pub async fn close_active_for_rule(
    db: impl PgExecutor<'_>,
    rule_id: Uuid,
    closure: Closure,
    by: Option<Uuid>,
) -> sqlx::Result<Option<AlertRow>> {
    let row: Option<AlertRow> = sqlx::query_as(concat!(
        "UPDATE alerts SET status = 'RESOLVED', resolved_at = now(), resolution = $2,
                resolved_by = $3, updated_at = now()
          WHERE rule_id = $1 AND status = 'ACTIVE' RETURNING ",
        columns!()
    ))
    .bind(rule_id)
    .bind(closure.as_str())
    .bind(by)
    .fetch_optional(db)
    .await?;
    if let Some(r) = &row {
        tracing::Span::current().record("alert_id", tracing::field::display(r.id));
    }
    Ok(row)
}

/// Resolves one alert by hand if it is still ACTIVE; `None` if it is not (or does not exist).
#[tracing::instrument(skip_all, fields(module = "storage", operation = "alert_resolve", alert_id = %id))]
pub async fn resolve_manually(
    db: impl PgExecutor<'_>,
    id: Uuid,
    by: Uuid,
    note: Option<&str>,
) -> sqlx::Result<Option<AlertRow>> {
    sqlx::query_as(concat!(
        "UPDATE alerts SET status = 'RESOLVED', resolved_at = now(), resolution = 'manual',
                resolved_by = $2, note = $3, updated_at = now()
          WHERE id = $1 AND status = 'ACTIVE' RETURNING ",
        columns!()
    ))
    .bind(id)
    .bind(by)
    .bind(note)
    .fetch_optional(db)
    .await
}

#[tracing::instrument(skip_all, fields(module = "storage", operation = "alert_get", alert_id = %id))]
pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<AlertRow>> {
    sqlx::query_as(concat!("SELECT ", columns!(), " FROM alerts WHERE id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await
}

/// Filters of `GET /alerts`; `None` means "any".
pub struct ListQuery<'a> {
    pub status: Option<&'a str>,
    pub device_id: Option<Uuid>,
    pub metric: Option<&'a str>,
    pub severity: Option<&'a str>,
    pub rule_id: Option<Uuid>,
    /// Inclusive lower bound on `triggered_at`.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive upper bound on `triggered_at`.
    pub to: Option<DateTime<Utc>>,
    pub after: Option<(DateTime<Utc>, Uuid)>,
    pub ascending: bool,
    pub limit: i64,
}

/// A page ordered by `(triggered_at, id)` (newest first unless ascending), after the keyset
/// cursor, so pages stay exact while alerts open.
#[tracing::instrument(skip_all, fields(module = "storage", operation = "alert_page", device_id = ?q.device_id, rule_id = ?q.rule_id))]
pub async fn page(db: impl PgExecutor<'_>, q: &ListQuery<'_>) -> sqlx::Result<Vec<AlertRow>> {
    let (after_ts, after_id) = q.after.unzip();
    let sql = if q.ascending {
        concat!(
            "SELECT ",
            columns!(),
            " FROM alerts
             WHERE ($1::text IS NULL OR status = $1)
               AND ($2::uuid IS NULL OR device_id = $2)
               AND ($3::text IS NULL OR metric = $3)
               AND ($4::text IS NULL OR severity = $4)
               AND ($5::uuid IS NULL OR rule_id = $5)
               AND ($6::timestamptz IS NULL OR triggered_at >= $6)
               AND ($7::timestamptz IS NULL OR triggered_at < $7)
               AND ($8::timestamptz IS NULL OR (triggered_at, id) > ($8, $9))
             ORDER BY triggered_at, id LIMIT $10"
        )
    } else {
        concat!(
            "SELECT ",
            columns!(),
            " FROM alerts
             WHERE ($1::text IS NULL OR status = $1)
               AND ($2::uuid IS NULL OR device_id = $2)
               AND ($3::text IS NULL OR metric = $3)
               AND ($4::text IS NULL OR severity = $4)
               AND ($5::uuid IS NULL OR rule_id = $5)
               AND ($6::timestamptz IS NULL OR triggered_at >= $6)
               AND ($7::timestamptz IS NULL OR triggered_at < $7)
               AND ($8::timestamptz IS NULL OR (triggered_at, id) < ($8, $9))
             ORDER BY triggered_at DESC, id DESC LIMIT $10"
        )
    };
    sqlx::query_as(sql)
        .bind(q.status)
        .bind(q.device_id)
        .bind(q.metric)
        .bind(q.severity)
        .bind(q.rule_id)
        .bind(q.from)
        .bind(q.to)
        .bind(after_ts)
        .bind(after_id)
        .bind(q.limit)
        .fetch_all(db)
        .await
}

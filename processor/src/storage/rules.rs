//! Rows and statements of `rules`, including the per-rule event-time watermark.

use crate::rules::{Condition, Rule, RuleType, Severity};
use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

/// The foreign key that refuses a rule for a device that does not exist.
pub const DEVICE_FKEY: &str = "rules_device_id_fkey";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RuleRow {
    pub id: Uuid,
    pub device_id: Uuid,
    pub metric: String,
    #[sqlx(rename = "type")]
    pub rule_type: String,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub severity: String,
    pub enabled: bool,
    pub last_evaluated_ts: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A row that the table's CHECK constraints should have made impossible.
#[derive(Debug)]
pub struct CorruptRule(pub String);

impl RuleRow {
    /// The domain form. Fails only if the table's constraints were bypassed.
    pub fn to_rule(&self) -> Result<Rule, CorruptRule> {
        let kind = RuleType::parse(&self.rule_type)
            .ok_or_else(|| CorruptRule(format!("rule {} has type {}", self.id, self.rule_type)))?;
        let severity = Severity::parse(&self.severity).ok_or_else(|| {
            CorruptRule(format!("rule {} has severity {}", self.id, self.severity))
        })?;
        let condition = Condition::new(kind, self.min, self.max)
            .map_err(|e| CorruptRule(format!("rule {}: {}", self.id, e.0)))?;
        Ok(Rule {
            id: self.id,
            device_id: self.device_id,
            metric: self.metric.clone(),
            condition,
            severity,
            enabled: self.enabled,
        })
    }
}

/// The selected columns, as a macro so that every statement stays a `&'static str`.
macro_rules! columns {
    () => {
        "id, device_id, metric, type, min, max, severity, enabled, last_evaluated_ts, created_at, updated_at"
    };
}

#[tracing::instrument(skip_all, fields(module = "storage", operation = "rule_insert", rule_id = %rule.id, device_id = %rule.device_id))]
pub async fn insert(db: impl PgExecutor<'_>, rule: &Rule) -> sqlx::Result<RuleRow> {
    sqlx::query_as(concat!(
        "INSERT INTO rules (id, device_id, metric, type, min, max, severity, enabled)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING ",
        columns!()
    ))
    .bind(rule.id)
    .bind(rule.device_id)
    .bind(&rule.metric)
    .bind(rule.condition.kind().as_str())
    .bind(rule.condition.min())
    .bind(rule.condition.max())
    .bind(rule.severity.as_str())
    .bind(rule.enabled)
    .fetch_one(db)
    .await
}

#[tracing::instrument(skip_all, fields(module = "storage", operation = "rule_get", rule_id = %id))]
pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<RuleRow>> {
    sqlx::query_as(concat!("SELECT ", columns!(), " FROM rules WHERE id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await
}

/// Locks one rule for a change made through the API. Every writer of a rule's alerts takes this
/// lock first (the engine, manual resolve, update, delete), so they serialise per rule and always
/// lock in the same order: rule, then alerts.
#[tracing::instrument(skip_all, fields(module = "storage", operation = "rule_lock", rule_id = %id))]
pub async fn lock(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<RuleRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM rules WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

pub struct ListQuery<'a> {
    pub device_id: Option<Uuid>,
    pub metric: Option<&'a str>,
    pub after: Option<(DateTime<Utc>, Uuid)>,
    pub limit: i64,
}

/// One page in creation order after the `(created_at, id)` cursor.
#[tracing::instrument(skip_all, fields(module = "storage", operation = "rule_page", device_id = ?q.device_id))]
pub async fn page(db: impl PgExecutor<'_>, q: &ListQuery<'_>) -> sqlx::Result<Vec<RuleRow>> {
    let (ts, id) = q.after.unzip();
    sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM rules
         WHERE ($1::uuid IS NULL OR device_id = $1)
           AND ($2::text IS NULL OR metric = $2)
           AND ($3::timestamptz IS NULL OR (created_at, id) > ($3, $4))
         ORDER BY created_at, id LIMIT $5"
    ))
    .bind(q.device_id)
    .bind(q.metric)
    .bind(ts)
    .bind(id)
    .bind(q.limit)
    .fetch_all(db)
    .await
}

/// Every enabled rule: the rule cache's whole content. Rules are few (people write them), so a
/// full reload on every change is simpler and safer than applying deltas.
#[tracing::instrument(skip_all, fields(module = "storage", operation = "rule_load_enabled"))]
pub async fn all_enabled(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<RuleRow>> {
    sqlx::query_as(concat!("SELECT ", columns!(), " FROM rules WHERE enabled"))
        .fetch_all(db)
        .await
}

/// Writes a new definition (type, thresholds, severity, enabled) of a rule locked by the caller.
/// The watermark is left alone: a changed threshold applies to readings newer than it.
#[tracing::instrument(skip_all, fields(module = "storage", operation = "rule_update", rule_id = %rule.id))]
pub async fn update(db: impl PgExecutor<'_>, rule: &Rule) -> sqlx::Result<Option<RuleRow>> {
    sqlx::query_as(concat!("UPDATE rules SET type = $2, min = $3, max = $4, severity = $5, enabled = $6, updated_at = now()
         WHERE id = $1 RETURNING ", columns!()))
    .bind(rule.id)
    .bind(rule.condition.kind().as_str())
    .bind(rule.condition.min())
    .bind(rule.condition.max())
    .bind(rule.severity.as_str())
    .bind(rule.enabled)
    .fetch_optional(db)
    .await
}

#[tracing::instrument(skip_all, fields(module = "storage", operation = "rule_delete", rule_id = %id))]
pub async fn delete(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<bool> {
    Ok(sqlx::query("DELETE FROM rules WHERE id = $1")
        .bind(id)
        .execute(db)
        .await?
        .rows_affected()
        > 0)
}

/// Bounds how long the engine waits for a rule lock held by an API change, so a stuck
/// transaction delays one batch's evaluation (which then fails, counted) instead of holding its
/// acknowledgements until the redelivery timeout.
#[tracing::instrument(skip_all, fields(module = "storage", operation = "set_lock_timeout"))]
pub async fn set_local_lock_timeout(db: impl PgExecutor<'_>, millis: u32) -> sqlx::Result<()> {
    sqlx::query("SELECT set_config('lock_timeout', $1, true)")
        .bind(format!("{millis}ms"))
        .execute(db)
        .await?;
    Ok(())
}

/// Locks the given rules for one batch's evaluation and returns their current definitions and
/// watermarks. Ids are locked in ascending order, so two processors evaluating overlapping sets
/// of rules wait for each other instead of deadlocking. Rules deleted since the caller's cache
/// was loaded are simply absent.
#[tracing::instrument(skip_all, fields(module = "storage", operation = "rule_lock_batch", rules = ids.len()))]
pub async fn lock_for_evaluation(
    db: impl PgExecutor<'_>,
    ids: &[Uuid],
) -> sqlx::Result<Vec<RuleRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM rules WHERE id = ANY($1) ORDER BY id FOR UPDATE"
    ))
    .bind(ids)
    .fetch_all(db)
    .await
}

/// Moves the watermarks of rules locked by the caller forward (never back).
#[tracing::instrument(skip_all, fields(module = "storage", operation = "rule_watermarks", rules = ids.len()))]
pub async fn advance_watermarks(
    db: impl PgExecutor<'_>,
    ids: &[Uuid],
    ts: &[DateTime<Utc>],
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE rules r
            SET last_evaluated_ts = GREATEST(r.last_evaluated_ts, v.ts)
           FROM UNNEST($1::uuid[], $2::timestamptz[]) AS v(id, ts)
          WHERE r.id = v.id",
    )
    .bind(ids)
    .bind(ts)
    .execute(db)
    .await?;
    Ok(())
}

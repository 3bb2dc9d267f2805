//! The alert lifecycle: ACTIVE/RESOLVED transitions, in event time and safe across processors.
//!
//! After a batch is committed, [`Engine::evaluate`] takes the readings that have enabled rules
//! (per the in-memory [`RuleCache`]) and, in ONE transaction for the whole batch:
//!
//! 1. locks those rules' rows (ascending id, so two processors never deadlock) and reads each
//!    rule's current definition and watermark `last_evaluated_ts`;
//! 2. reads their ACTIVE alerts (after the locks, so it sees whatever the previous lock holder
//!    committed);
//! 3. [`plan`]s each rule: its readings in timestamp order, keeping only those newer than the
//!    watermark: late data is stored but cannot flip an alert, and a redelivered batch is a
//!    no-op;
//! 4. writes the planned alert changes and the new watermarks in three statements, and commits.
//!
//! Because every transition of a rule happens under that rule's row lock and only moves its
//! watermark forward, the order in which processors commit does not matter: the state always
//! follows the newest reading evaluated, and an older reading arriving later changes nothing.
//! The partial unique index `alerts_one_active_per_rule` is the database's own guarantee on top.
//!
//! A failure here is logged and counted; it never undoes the readings' write nor holds back
//! their acknowledgement.

use crate::error::ApiError;
use crate::observability::Metrics;
use crate::rules::cache::RuleIndex;
use crate::rules::{Rule, RuleCache, evaluate};
use crate::storage::{
    self,
    alerts::{AlertRow, Closure, ExistingChanges, NewAlerts},
};
use chrono::{DateTime, Utc};
use shared::wire::Batch;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

/// A reading of a rule's (device, metric), as the batch carried it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub ts: DateTime<Utc>,
    pub value: f64,
}

/// What one batch does to the alert that was ACTIVE for the rule when evaluation started.
#[derive(Debug, Clone, PartialEq)]
pub struct ExistingChange {
    pub alert_id: Uuid,
    /// The newest violating reading, when there was one.
    pub last: Option<Point>,
    /// The event time of the in-bounds reading that resolved it.
    pub resolved_at: Option<DateTime<Utc>>,
}

/// An alert opened by one batch; it may have resolved within the same batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Opened {
    pub alert_id: Uuid,
    /// The bound the first violating value crossed.
    pub threshold: f64,
    pub first: Point,
    pub last: Point,
    pub resolved_at: Option<DateTime<Utc>>,
}

/// Everything one batch does to one rule.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Readings evaluated (newer than the watermark, one per timestamp).
    pub evaluated: usize,
    /// The new watermark, when it moved.
    pub watermark: Option<DateTime<Utc>>,
    pub existing: Option<ExistingChange>,
    /// In event-time order; only the last may still be ACTIVE.
    pub opened: Vec<Opened>,
}

/// The change record of the alert that was ACTIVE at the start, created on first use.
fn existing(plan: &mut Plan, active: Option<Uuid>) -> Option<&mut ExistingChange> {
    let id = active?;
    Some(plan.existing.get_or_insert(ExistingChange {
        alert_id: id,
        last: None,
        resolved_at: None,
    }))
}

enum Current {
    None,
    Existing,
    Opened(usize),
}

/// The transitions a rule's readings imply. Pure: the caller supplies the state read under the
/// rule's lock (`watermark`, the `active` alert) and how new alert ids are made.
///
/// Readings are taken in timestamp order; of several with one timestamp only the first in batch
/// order counts, as it is the one stored (`ON CONFLICT DO NOTHING` keeps the first). Readings at
/// or before the watermark were evaluated already (a redelivery) or are late: neither changes
/// anything. A disabled rule does nothing and keeps its watermark.
pub fn plan(
    rule: &Rule,
    watermark: Option<DateTime<Utc>>,
    active: Option<Uuid>,
    mut points: Vec<Point>,
    mut new_id: impl FnMut() -> Uuid,
) -> Plan {
    let mut plan = Plan::default();
    if !rule.enabled {
        return plan;
    }
    points.sort_by_key(|p| p.ts);
    points.dedup_by_key(|p| p.ts);
    let mut current = if active.is_some() {
        Current::Existing
    } else {
        Current::None
    };
    for p in points
        .into_iter()
        .filter(|p| watermark.is_none_or(|w| p.ts > w))
    {
        plan.evaluated += 1;
        plan.watermark = Some(p.ts);
        let threshold = evaluate(rule, p.value).threshold();
        current = match (threshold, current) {
            (Some(threshold), Current::None) => {
                plan.opened.push(Opened {
                    alert_id: new_id(),
                    threshold,
                    first: p,
                    last: p,
                    resolved_at: None,
                });
                Current::Opened(plan.opened.len() - 1)
            }
            (Some(_), Current::Existing) => {
                if let Some(e) = existing(&mut plan, active) {
                    e.last = Some(p);
                }
                Current::Existing
            }
            (Some(_), Current::Opened(i)) => {
                if let Some(o) = plan.opened.get_mut(i) {
                    o.last = p;
                }
                Current::Opened(i)
            }
            (None, Current::None) => Current::None,
            (None, Current::Existing) => {
                if let Some(e) = existing(&mut plan, active) {
                    e.resolved_at = Some(p.ts);
                }
                Current::None
            }
            (None, Current::Opened(i)) => {
                if let Some(o) = plan.opened.get_mut(i) {
                    o.resolved_at = Some(p.ts);
                }
                Current::None
            }
        };
    }
    plan
}

/// The readings of a set of batches that have rules, grouped by rule id (ascending: the lock
/// order). A reading with several rules is listed under each.
pub fn collect(index: &RuleIndex, batches: &[Batch]) -> BTreeMap<Uuid, Vec<Point>> {
    let mut work: BTreeMap<Uuid, Vec<Point>> = BTreeMap::new();
    for b in batches {
        // The rules of each of the batch's metrics, looked up once per batch.
        let by_metric: Vec<&[Uuid]> = b
            .metrics
            .iter()
            .map(|m| index.matching(b.device_id, m))
            .collect();
        for r in &b.readings {
            let rules = by_metric
                .get(r.metric as usize)
                .copied()
                .unwrap_or_default();
            if rules.is_empty() {
                continue;
            }
            // The consumer refused out-of-range timestamps before storing the batch.
            let Some(ts) = DateTime::from_timestamp_micros(r.ts_us) else {
                continue;
            };
            for id in rules {
                work.entry(*id)
                    .or_default()
                    .push(Point { ts, value: r.value });
            }
        }
    }
    work
}

/// One alert transition: logged and counted together, so the log and `alerts_total` agree.
#[derive(Debug)]
pub struct AlertEvent<'a> {
    pub transition: &'static str,
    pub cause: &'static str,
    pub alert_id: Uuid,
    pub rule_id: Uuid,
    pub device_id: Uuid,
    pub metric: &'a str,
    pub severity: &'a str,
    /// Event time for reading-driven transitions, wall-clock time otherwise.
    pub at: DateTime<Utc>,
    pub value: Option<f64>,
}

impl AlertEvent<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics
            .alerts
            .with_label_values(&[self.transition, self.severity])
            .inc();
        tracing::info!(
            module = "alerts",
            operation = self.transition,
            status = self.cause,
            alert_id = %self.alert_id,
            rule_id = %self.rule_id,
            device_id = %self.device_id,
            metric = self.metric,
            severity = self.severity,
            at = %self.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            value = self.value,
            "Alert {}.",
            self.transition
        );
    }
}

/// A batch whose evaluation failed: its readings stay stored and acknowledged, and the rules'
/// state catches up with the next reading newer than it.
pub struct RulesFailed<'a> {
    pub error: &'a dyn std::fmt::Display,
    pub rules: usize,
    pub attempts: u32,
}

impl RulesFailed<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.rules_failures.inc();
        tracing::error!(
            module = "alerts",
            operation = "evaluate",
            status = "failed",
            rules = self.rules,
            attempts = self.attempts,
            error = %self.error,
            "Rule evaluation failed; the readings stay stored."
        );
    }
}

/// The event of an alert closed without a reading (by hand, or by its rule's change).
pub fn closed_event(alert: &AlertRow, closure: Closure) -> AlertEvent<'_> {
    AlertEvent {
        transition: "resolved",
        cause: closure.as_str(),
        alert_id: alert.id,
        rule_id: alert.rule_id,
        device_id: alert.device_id,
        metric: &alert.metric,
        severity: &alert.severity,
        at: alert.resolved_at.unwrap_or(alert.updated_at),
        value: None,
    }
}

/// Resolves the ACTIVE alert of a rule the caller has locked (see `storage::rules::lock`).
pub async fn close_for_rule(
    tx: &mut Transaction<'_, Postgres>,
    rule_id: Uuid,
    closure: Closure,
    by: Option<Uuid>,
) -> Result<Option<AlertRow>, ApiError> {
    let conn: &mut PgConnection = tx;
    Ok(storage::alerts::close_active_for_rule(conn, rule_id, closure, by).await?)
}

/// Longest note an admin may attach to a manual resolution (the column's CHECK agrees).
pub const MAX_NOTE_CHARS: usize = 1000;

/// An admin resolves an alert by hand. It takes the rule's lock like the engine does, so it
/// cannot interleave with a batch's evaluation of the same rule. If the rule is still violated,
/// its next violating reading opens a new alert: a manual resolution acknowledges this episode,
/// it does not silence the rule (disable the rule for that).
#[tracing::instrument(skip_all, fields(module = "alerts", operation = "resolve", alert_id = %id, rule_id))]
pub async fn resolve_by_hand(
    db: &PgPool,
    metrics: &Metrics,
    id: Uuid,
    by: Uuid,
    note: Option<String>,
) -> Result<AlertRow, ApiError> {
    let note = note.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty());
    if note
        .as_ref()
        .is_some_and(|n| n.chars().count() > MAX_NOTE_CHARS)
    {
        return Err(ApiError::Validation(format!(
            "note must be at most {MAX_NOTE_CHARS} characters"
        )));
    }
    // PostgreSQL cannot store NUL in text: refused here rather than failing as a 500.
    if note.as_ref().is_some_and(|n| n.contains('\0')) {
        return Err(ApiError::Validation("note must not contain NUL".into()));
    }
    let alert = storage::alerts::get(db, id)
        .await?
        .ok_or(ApiError::NotFound("alert"))?;
    tracing::Span::current().record("rule_id", tracing::field::display(alert.rule_id));
    if alert.status != "ACTIVE" {
        return Err(already_resolved());
    }
    let mut tx = db.begin().await?;
    // The rule may be gone; then its alert was resolved with it and the update finds nothing.
    storage::rules::lock(&mut *tx, alert.rule_id).await?;
    let row = storage::alerts::resolve_manually(&mut *tx, id, by, note.as_deref())
        .await?
        .ok_or_else(already_resolved)?;
    tx.commit().await?;
    closed_event(&row, Closure::Manual).emit(metrics);
    Ok(row)
}

fn already_resolved() -> ApiError {
    ApiError::Conflict("the alert is already resolved".into())
}

/// How many times a batch's evaluation is tried when it loses a race it can win on a retry.
const ATTEMPTS: u32 = 3;

/// How long the engine waits for a rule lock held by an API change.
const LOCK_TIMEOUT_MS: u32 = 5_000;

/// Why one attempt did not commit.
enum Failure {
    /// Lost a race the database caught (the one-ACTIVE index, a deadlock, an ACTIVE alert that
    /// changed without the rule lock): re-reading the state and trying again is right.
    Conflict(String),
    /// Anything else (the database is down, a corrupt rule row): retrying now would not help.
    Fatal(String),
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        if storage::is_unique_violation(&e, storage::alerts::ONE_ACTIVE_PER_RULE) {
            return Failure::Conflict(format!(
                "a second ACTIVE alert was refused by {}",
                storage::alerts::ONE_ACTIVE_PER_RULE
            ));
        }
        match &e {
            sqlx::Error::Database(d) if d.code().as_deref() == Some("40P01") => {
                Failure::Conflict(e.to_string())
            }
            _ => Failure::Fatal(e.to_string()),
        }
    }
}

/// What one committed evaluation did, for the events emitted after the commit.
#[derive(Default)]
struct Applied {
    existing: ExistingChanges,
    new: NewAlerts,
    watermark_ids: Vec<Uuid>,
    watermarks: Vec<DateTime<Utc>>,
    evaluated: usize,
    events: Vec<Transition>,
}

/// A transition made by a committed evaluation, emitted after the commit.
struct Transition {
    rule: Rule,
    kind: &'static str,
    alert_id: Uuid,
    at: DateTime<Utc>,
    value: Option<f64>,
}

impl Applied {
    fn add(&mut self, rule: &Rule, plan: Plan) {
        self.evaluated += plan.evaluated;
        if let Some(w) = plan.watermark {
            self.watermark_ids.push(rule.id);
            self.watermarks.push(w);
        }
        if let Some(e) = plan.existing {
            self.existing.id.push(e.alert_id);
            self.existing.last_value.push(e.last.map(|p| p.value));
            self.existing.last_seen.push(e.last.map(|p| p.ts));
            self.existing.resolved_at.push(e.resolved_at);
            if let Some(at) = e.resolved_at {
                self.events.push(Transition {
                    rule: rule.clone(),
                    kind: "resolved",
                    alert_id: e.alert_id,
                    at,
                    value: None,
                });
            }
        }
        for o in plan.opened {
            self.events.push(Transition {
                rule: rule.clone(),
                kind: "opened",
                alert_id: o.alert_id,
                at: o.first.ts,
                value: Some(o.first.value),
            });
            if let Some(at) = o.resolved_at {
                self.events.push(Transition {
                    rule: rule.clone(),
                    kind: "resolved",
                    alert_id: o.alert_id,
                    at,
                    value: None,
                });
            }
            self.new.id.push(o.alert_id);
            self.new.rule_id.push(rule.id);
            self.new.threshold.push(o.threshold);
            self.new.value.push(o.first.value);
            self.new.triggered_at.push(o.first.ts);
            self.new.last_value.push(o.last.value);
            self.new.last_seen.push(o.last.ts);
            self.new.resolved_at.push(o.resolved_at);
        }
    }
}

/// The rules engine of one processor copy. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    pub db: PgPool,
    pub metrics: Metrics,
    pub rules: RuleCache,
}

impl Engine {
    /// Evaluates a committed set of batches. Never fails: a failure is logged and counted here,
    /// and the caller acknowledges the batches regardless.
    #[tracing::instrument(
        name = "evaluate_rules",
        skip_all,
        fields(module = "alerts", operation = "evaluate", rules)
    )]
    pub async fn evaluate(&self, batches: &[Batch]) {
        let work = collect(&self.rules.snapshot(), batches);
        if work.is_empty() {
            return;
        }
        tracing::Span::current().record("rules", work.len());
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.apply(&work).await {
                Ok(applied) => {
                    self.metrics
                        .rule_evaluations
                        .inc_by(applied.evaluated as u64);
                    for t in &applied.events {
                        AlertEvent {
                            transition: t.kind,
                            cause: "reading",
                            alert_id: t.alert_id,
                            rule_id: t.rule.id,
                            device_id: t.rule.device_id,
                            metric: &t.rule.metric,
                            severity: t.rule.severity.as_str(),
                            at: t.at,
                            value: t.value,
                        }
                        .emit(&self.metrics);
                    }
                    return;
                }
                Err(Failure::Conflict(why)) if attempt < ATTEMPTS => {
                    tracing::debug!(attempt, reason = %why, "Rule evaluation lost a race; retrying.");
                }
                Err(Failure::Conflict(why) | Failure::Fatal(why)) => {
                    RulesFailed {
                        error: &why,
                        rules: work.len(),
                        attempts: attempt,
                    }
                    .emit(&self.metrics);
                    return;
                }
            }
        }
    }

    /// One attempt: lock, read, plan, write, commit. Dropping the transaction on an error rolls
    /// it back, so an attempt changes everything or nothing.
    async fn apply(&self, work: &BTreeMap<Uuid, Vec<Point>>) -> Result<Applied, Failure> {
        let ids: Vec<Uuid> = work.keys().copied().collect();
        let mut tx = self.db.begin().await?;
        storage::rules::set_local_lock_timeout(&mut *tx, LOCK_TIMEOUT_MS).await?;
        let rows = storage::rules::lock_for_evaluation(&mut *tx, &ids).await?;
        let active: HashMap<Uuid, Uuid> = storage::alerts::active_for_rules(&mut *tx, &ids)
            .await?
            .into_iter()
            .collect();
        let mut applied = Applied::default();
        for row in rows {
            let rule = row.to_rule().map_err(|e| Failure::Fatal(e.0))?;
            let Some(points) = work.get(&rule.id) else {
                continue;
            };
            let p = plan(
                &rule,
                row.last_evaluated_ts,
                active.get(&rule.id).copied(),
                points.clone(),
                Uuid::new_v4,
            );
            applied.add(&rule, p);
        }
        if !applied.existing.id.is_empty() {
            let changed = storage::alerts::update_existing(&mut *tx, &applied.existing).await?;
            if changed != applied.existing.id.len() as u64 {
                return Err(Failure::Conflict(
                    "an ACTIVE alert changed without its rule's lock".into(),
                ));
            }
        }
        if !applied.new.id.is_empty() {
            storage::alerts::insert_new(&mut *tx, &applied.new).await?;
        }
        if !applied.watermark_ids.is_empty() {
            storage::rules::advance_watermarks(
                &mut *tx,
                &applied.watermark_ids,
                &applied.watermarks,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(applied)
    }
}

#[cfg(test)]
mod tests;

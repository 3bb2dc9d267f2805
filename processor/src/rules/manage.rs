//! Creating, changing and deleting rules: validation, the database write, the alert that a
//! disabled or deleted rule leaves behind, and telling every processor copy to reload.

use crate::alerts;
use crate::error::ApiError;
use crate::observability::Metrics;
use crate::rules::cache::{RuleCache, Trigger};
use crate::rules::{Condition, Invalid, Rule, RuleType, Severity};
use crate::storage::{self, alerts::Closure, rules::RuleRow};
use sqlx::PgPool;
use uuid::Uuid;

/// Everything rule management needs. Cheap to clone.
#[derive(Clone)]
pub struct Rules {
    pub db: PgPool,
    pub cache: RuleCache,
    pub nats: async_nats::Client,
    /// `Names::rules_changed_subject()` of this hub.
    pub subject: String,
    pub metrics: Metrics,
}

/// A rule as a client asks for it, before validation.
#[derive(Debug, Clone)]
pub struct NewRule {
    pub device_id: Uuid,
    pub metric: String,
    pub kind: RuleType,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub severity: Severity,
}

/// A partial change. The device and metric are fixed: another target is another rule (with its
/// own alert history). When the type changes, thresholds the new type does not use are dropped.
#[derive(Debug, Clone, Default)]
pub struct RuleChange {
    pub kind: Option<RuleType>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub severity: Option<Severity>,
    pub enabled: Option<bool>,
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        ApiError::Validation(e.0)
    }
}

fn check_metric(metric: &str) -> Result<(), Invalid> {
    shared::ingest::valid_metric(metric)
        .then_some(())
        .ok_or_else(|| Invalid("metric must be 1-128 characters of A-Z a-z 0-9 _ . : / -".into()))
}

impl NewRule {
    /// Validates into a rule with a fresh id.
    pub fn validate(self) -> Result<Rule, Invalid> {
        check_metric(&self.metric)?;
        Ok(Rule {
            id: Uuid::new_v4(),
            device_id: self.device_id,
            metric: self.metric,
            condition: Condition::new(self.kind, self.min, self.max)?,
            severity: self.severity,
            enabled: true,
        })
    }
}

impl RuleChange {
    /// The rule after this change, validated as a whole.
    pub fn apply_to(self, current: &Rule) -> Result<Rule, Invalid> {
        let kind = self.kind.unwrap_or(current.condition.kind());
        let uses_min = matches!(kind, RuleType::Min | RuleType::Range);
        let uses_max = matches!(kind, RuleType::Max | RuleType::Range);
        let min = match self.min {
            Some(v) => Some(v),
            None if uses_min => current.condition.min(),
            None => None,
        };
        let max = match self.max {
            Some(v) => Some(v),
            None if uses_max => current.condition.max(),
            None => None,
        };
        Ok(Rule {
            condition: Condition::new(kind, min, max)?,
            severity: self.severity.unwrap_or(current.severity),
            enabled: self.enabled.unwrap_or(current.enabled),
            ..current.clone()
        })
    }
}

fn corrupt(e: storage::rules::CorruptRule) -> ApiError {
    ApiError::Internal(anyhow::anyhow!(e.0))
}

impl Rules {
    /// Creates a rule. An unknown device is a 422: the device is a field of the body, and the
    /// route itself (`/rules`) exists.
    #[tracing::instrument(skip_all, fields(module = "rules", operation = "create", rule_id, device_id = %new.device_id))]
    pub async fn create(&self, new: NewRule) -> Result<RuleRow, ApiError> {
        let device_id = new.device_id;
        let rule = new.validate()?;
        tracing::Span::current().record("rule_id", tracing::field::display(rule.id));
        let row = storage::rules::insert(&self.db, &rule)
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(d)
                    if d.code().as_deref() == Some("23503")
                        && d.constraint() == Some(storage::rules::DEVICE_FKEY) =>
                {
                    ApiError::Validation(format!("device {device_id} does not exist"))
                }
                _ => e.into(),
            })?;
        tracing::info!(status = "created", "Rule created.");
        self.announce().await;
        Ok(row)
    }

    pub async fn get(&self, id: Uuid) -> Result<RuleRow, ApiError> {
        storage::rules::get(&self.db, id)
            .await?
            .ok_or(ApiError::NotFound("rule"))
    }

    /// Changes a rule under its lock. Disabling it resolves its open alert in the same
    /// transaction, so no alert stays ACTIVE for a rule that no longer evaluates.
    #[tracing::instrument(skip_all, fields(module = "rules", operation = "update", rule_id = %id))]
    pub async fn update(
        &self,
        id: Uuid,
        change: RuleChange,
        by: Uuid,
    ) -> Result<RuleRow, ApiError> {
        let mut tx = self.db.begin().await?;
        let current = storage::rules::lock(&mut *tx, id)
            .await?
            .ok_or(ApiError::NotFound("rule"))?
            .to_rule()
            .map_err(corrupt)?;
        let next = change.apply_to(&current)?;
        let row = storage::rules::update(&mut *tx, &next)
            .await?
            .ok_or(ApiError::NotFound("rule"))?;
        let closed = if current.enabled && !next.enabled {
            alerts::close_for_rule(&mut tx, id, Closure::RuleDisabled, Some(by)).await?
        } else {
            None
        };
        tx.commit().await?;
        if let Some(alert) = closed {
            alerts::closed_event(&alert, Closure::RuleDisabled).emit(&self.metrics);
        }
        tracing::info!(enabled = row.enabled, status = "updated", "Rule updated.");
        self.announce().await;
        Ok(row)
    }

    /// Deletes a rule under its lock, resolving its open alert first. The alert history stays.
    #[tracing::instrument(skip_all, fields(module = "rules", operation = "delete", rule_id = %id))]
    pub async fn delete(&self, id: Uuid, by: Uuid) -> Result<(), ApiError> {
        let mut tx = self.db.begin().await?;
        storage::rules::lock(&mut *tx, id)
            .await?
            .ok_or(ApiError::NotFound("rule"))?;
        let closed = alerts::close_for_rule(&mut tx, id, Closure::RuleDeleted, Some(by)).await?;
        storage::rules::delete(&mut *tx, id).await?;
        tx.commit().await?;
        if let Some(alert) = closed {
            alerts::closed_event(&alert, Closure::RuleDeleted).emit(&self.metrics);
        }
        tracing::info!(status = "deleted", "Rule deleted.");
        self.announce().await;
        Ok(())
    }

    /// Reloads this copy's cache before the API answers (so a client that creates a rule and
    /// then sends a reading through a one-processor hub sees it applied), then tells the other
    /// copies. Neither failure fails the request: the change is committed, and every copy reloads
    /// periodically anyway.
    async fn announce(&self) {
        if let Err(e) = self.cache.reload(&self.db, Trigger::Local).await {
            tracing::warn!(module = "rules", operation = "reload", error = %e, "Cannot reload rules after a change; the periodic reload will.");
        }
        if let Err(e) = self
            .nats
            .publish(self.subject.clone(), bytes::Bytes::new())
            .await
        {
            tracing::warn!(module = "rules", operation = "announce", error = %e, "Cannot announce a rule change; other processors pick it up at their periodic reload.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(kind: RuleType, min: Option<f64>, max: Option<f64>) -> Rule {
        NewRule {
            device_id: Uuid::nil(),
            metric: "temperature".into(),
            kind,
            min,
            max,
            severity: Severity::Warning,
        }
        .validate()
        .unwrap()
    }

    #[test]
    fn a_new_rule_needs_a_valid_metric_and_condition() {
        let new = |metric: &str, kind, min, max| NewRule {
            device_id: Uuid::nil(),
            metric: metric.into(),
            kind,
            min,
            max,
            severity: Severity::Info,
        };
        assert!(
            new("t", RuleType::Max, None, Some(1.0))
                .validate()
                .unwrap()
                .enabled
        );
        for bad in ["", "has space", "ü", &"x".repeat(129)] {
            let e = new(bad, RuleType::Max, None, Some(1.0))
                .validate()
                .unwrap_err();
            assert!(e.0.contains("metric"), "{bad:?}: {}", e.0);
        }
        assert!(
            new("t", RuleType::Range, Some(2.0), Some(1.0))
                .validate()
                .is_err()
        );
    }

    #[test]
    fn a_change_keeps_what_it_does_not_mention_and_revalidates_the_whole() {
        let range = base(RuleType::Range, Some(0.0), Some(10.0));
        let only_max = RuleChange {
            max: Some(20.0),
            ..Default::default()
        }
        .apply_to(&range)
        .unwrap();
        assert_eq!(
            only_max.condition,
            Condition::Range {
                min: 0.0,
                max: 20.0
            }
        );
        assert_eq!(only_max.id, range.id);

        // RANGE → MAX drops min; asking for a min on a MAX rule is refused.
        let to_max = RuleChange {
            kind: Some(RuleType::Max),
            ..Default::default()
        }
        .apply_to(&range)
        .unwrap();
        assert_eq!(to_max.condition, Condition::Max { max: 10.0 });
        assert!(
            RuleChange {
                kind: Some(RuleType::Max),
                min: Some(1.0),
                ..Default::default()
            }
            .apply_to(&range)
            .is_err()
        );
        // MAX → MIN without a min is refused; with one it is fine.
        let max = base(RuleType::Max, None, Some(5.0));
        assert!(
            RuleChange {
                kind: Some(RuleType::Min),
                ..Default::default()
            }
            .apply_to(&max)
            .is_err()
        );
        let to_min = RuleChange {
            kind: Some(RuleType::Min),
            min: Some(1.0),
            ..Default::default()
        }
        .apply_to(&max)
        .unwrap();
        assert_eq!(to_min.condition, Condition::Min { min: 1.0 });
        // A RANGE narrowed into min > max is refused.
        assert!(
            RuleChange {
                min: Some(11.0),
                ..Default::default()
            }
            .apply_to(&range)
            .is_err()
        );
        let disabled = RuleChange {
            enabled: Some(false),
            severity: Some(Severity::Critical),
            ..Default::default()
        }
        .apply_to(&range)
        .unwrap();
        assert!(!disabled.enabled);
        assert_eq!(disabled.severity, Severity::Critical);
        assert_eq!(disabled.condition, range.condition);
    }
}

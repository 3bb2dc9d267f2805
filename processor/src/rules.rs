//! Alert rules: what a rule is, [`evaluate`] (the pure threshold check), validation of a rule's
//! definition, the in-memory rule cache every processor copy keeps ([`cache`]) and the rule
//! management the API calls ([`manage`]).
//!
//! `evaluate` is deliberately free of async, clocks and IO: the alert lifecycle
//! ([`crate::alerts`]) decides what a verdict means for an alert, this module only says whether
//! one value is within one rule's bounds.

pub mod cache;
pub mod manage;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use cache::RuleCache;
pub use manage::Rules;

/// The three kinds of condition (docs/rules-and-alerts.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum RuleType {
    /// Violated when the value is above `max`.
    #[serde(rename = "MAX")]
    Max,
    /// Violated when the value is below `min`.
    #[serde(rename = "MIN")]
    Min,
    /// Violated when the value is outside `[min, max]`.
    #[serde(rename = "RANGE")]
    Range,
}

impl RuleType {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleType::Max => "MAX",
            RuleType::Min => "MIN",
            RuleType::Range => "RANGE",
        }
    }

    pub fn parse(s: &str) -> Option<RuleType> {
        match s {
            "MAX" => Some(RuleType::Max),
            "MIN" => Some(RuleType::Min),
            "RANGE" => Some(RuleType::Range),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Severity> {
        match s {
            "info" => Some(Severity::Info),
            "warning" => Some(Severity::Warning),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
}

/// A validated condition: only the thresholds its type uses, all finite, `min <= max`. Built by
/// [`Condition::new`], so an invalid condition cannot be evaluated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Condition {
    Max { max: f64 },
    Min { min: f64 },
    Range { min: f64, max: f64 },
}

/// Why a rule definition is refused; the message is what the API answers with its 422.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl Condition {
    /// Checks a definition as a client sent it. A threshold the type does not use is refused
    /// rather than ignored, so a client never believes a bound is in force when it is not.
    pub fn new(kind: RuleType, min: Option<f64>, max: Option<f64>) -> Result<Condition, Invalid> {
        for (name, v) in [("min", min), ("max", max)] {
            if let Some(v) = v
                && !v.is_finite()
            {
                return Err(Invalid(format!("{name} must be a finite number")));
            }
        }
        match (kind, min, max) {
            (RuleType::Max, None, Some(max)) => Ok(Condition::Max { max }),
            (RuleType::Max, _, None) => Err(Invalid("a MAX rule needs max".into())),
            (RuleType::Max, Some(_), Some(_)) => Err(Invalid(
                "a MAX rule takes max only; use RANGE for both bounds".into(),
            )),
            (RuleType::Min, Some(min), None) => Ok(Condition::Min { min }),
            (RuleType::Min, None, _) => Err(Invalid("a MIN rule needs min".into())),
            (RuleType::Min, Some(_), Some(_)) => Err(Invalid(
                "a MIN rule takes min only; use RANGE for both bounds".into(),
            )),
            (RuleType::Range, Some(min), Some(max)) if min <= max => {
                Ok(Condition::Range { min, max })
            }
            (RuleType::Range, Some(_), Some(_)) => {
                Err(Invalid("a RANGE rule needs min <= max".into()))
            }
            (RuleType::Range, _, _) => Err(Invalid("a RANGE rule needs both min and max".into())),
        }
    }

    pub fn kind(&self) -> RuleType {
        match self {
            Condition::Max { .. } => RuleType::Max,
            Condition::Min { .. } => RuleType::Min,
            Condition::Range { .. } => RuleType::Range,
        }
    }

    pub fn min(&self) -> Option<f64> {
        match *self {
            Condition::Min { min } | Condition::Range { min, .. } => Some(min),
            Condition::Max { .. } => None,
        }
    }

    pub fn max(&self) -> Option<f64> {
        match *self {
            Condition::Max { max } | Condition::Range { max, .. } => Some(max),
            Condition::Min { .. } => None,
        }
    }
}

/// A rule as the engine and the cache use it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub id: Uuid,
    pub device_id: Uuid,
    pub metric: String,
    pub condition: Condition,
    pub severity: Severity,
    pub enabled: bool,
}

/// The outcome of checking one value against one rule. A violation says which bound was crossed,
/// so an alert can record the threshold that mattered (for RANGE, min or max).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    Within,
    /// Above the rule's max, which is carried.
    Above(f64),
    /// Below the rule's min, which is carried.
    Below(f64),
}

impl Verdict {
    pub fn is_violation(&self) -> bool {
        !matches!(self, Verdict::Within)
    }

    /// The bound that was crossed.
    pub fn threshold(&self) -> Option<f64> {
        match *self {
            Verdict::Within => None,
            Verdict::Above(t) | Verdict::Below(t) => Some(t),
        }
    }
}

/// Checks one value against one rule. A value equal to a threshold is within bounds: a rule says
/// how far a value may go, and reaching the limit is still allowed.
///
/// Values are finite: the gateway and the consumer refuse anything else before storage, so this
/// never sees NaN (which would compare as within bounds).
pub fn evaluate(rule: &Rule, value: f64) -> Verdict {
    match rule.condition {
        Condition::Max { max } if value > max => Verdict::Above(max),
        Condition::Min { min } if value < min => Verdict::Below(min),
        Condition::Range { max, .. } if value > max => Verdict::Above(max),
        Condition::Range { min, .. } if value < min => Verdict::Below(min),
        Condition::Max { .. } | Condition::Min { .. } | Condition::Range { .. } => Verdict::Within,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(condition: Condition) -> Rule {
        Rule {
            id: Uuid::nil(),
            device_id: Uuid::nil(),
            metric: "m".into(),
            condition,
            severity: Severity::Warning,
            enabled: true,
        }
    }

    const W: Verdict = Verdict::Within;

    /// Every boundary of every type: equal is within, one ulp past is a violation, and the sign
    /// and magnitude of the numbers change nothing.
    #[test]
    fn evaluate_matches_the_table() {
        let max = |max| Condition::Max { max };
        let min = |min| Condition::Min { min };
        let range = |min, max| Condition::Range { min, max };
        let up = |x: f64| x.next_up();
        let down = |x: f64| x.next_down();
        #[rustfmt::skip]
        let table: Vec<(Condition, f64, Verdict)> = vec![
            // MAX
            (max(1000.0), 999.0, W),
            (max(1000.0), 1000.0, W),
            (max(1000.0), up(1000.0), Verdict::Above(1000.0)),
            (max(1000.0), 1010.0, Verdict::Above(1000.0)),
            (max(1000.0), -1e300, W),
            (max(0.0), 0.0, W),
            (max(0.0), -0.0, W),
            (max(-0.0), 0.0, W),
            (max(0.0), f64::MIN_POSITIVE, Verdict::Above(0.0)),
            (max(-5.0), -5.0, W),
            (max(-5.0), -4.999, Verdict::Above(-5.0)),
            (max(-5.0), -6.0, W),
            (max(1e300), 1e300, W),
            (max(1e300), f64::MAX, Verdict::Above(1e300)),
            (max(-1e300), -1e300, W),
            (max(-1e300), 0.0, Verdict::Above(-1e300)),
            (max(f64::MAX), f64::MAX, W),
            // MIN
            (min(10.0), 11.0, W),
            (min(10.0), 10.0, W),
            (min(10.0), down(10.0), Verdict::Below(10.0)),
            (min(10.0), -10.0, Verdict::Below(10.0)),
            (min(10.0), 1e300, W),
            (min(-40.0), -40.0, W),
            (min(-40.0), -40.5, Verdict::Below(-40.0)),
            (min(-40.0), -39.5, W),
            (min(0.0), -0.0, W),
            (min(0.0), -f64::MIN_POSITIVE, Verdict::Below(0.0)),
            (min(-1e300), -1e300, W),
            (min(-1e300), f64::MIN, Verdict::Below(-1e300)),
            (min(1e300), 1e300, W),
            (min(1e300), 0.0, Verdict::Below(1e300)),
            (min(f64::MIN), f64::MIN, W),
            // RANGE
            (range(-10.0, 10.0), 0.0, W),
            (range(-10.0, 10.0), -10.0, W),
            (range(-10.0, 10.0), 10.0, W),
            (range(-10.0, 10.0), up(10.0), Verdict::Above(10.0)),
            (range(-10.0, 10.0), down(-10.0), Verdict::Below(-10.0)),
            (range(-10.0, 10.0), 1e300, Verdict::Above(10.0)),
            (range(-10.0, 10.0), -1e300, Verdict::Below(-10.0)),
            (range(-1e300, 1e300), 1e300, W),
            (range(-1e300, 1e300), -1e300, W),
            (range(-1e300, 1e300), f64::MAX, Verdict::Above(1e300)),
            (range(-1e300, 1e300), f64::MIN, Verdict::Below(-1e300)),
            (range(-20.0, -10.0), -15.0, W),
            (range(-20.0, -10.0), -5.0, Verdict::Above(-10.0)),
            (range(-20.0, -10.0), -25.0, Verdict::Below(-20.0)),
            // RANGE with min == max: exactly that value is within, anything else is not.
            (range(5.0, 5.0), 5.0, W),
            (range(5.0, 5.0), up(5.0), Verdict::Above(5.0)),
            (range(5.0, 5.0), down(5.0), Verdict::Below(5.0)),
            (range(0.0, 0.0), -0.0, W),
        ];
        for (i, (condition, value, expected)) in table.into_iter().enumerate() {
            let got = evaluate(&rule(condition), value);
            assert_eq!(got, expected, "row {i}: {condition:?} with {value:e}");
            assert_eq!(got.is_violation(), expected != W, "row {i}");
        }
    }

    #[test]
    fn a_violation_reports_the_threshold_it_crossed() {
        let r = rule(Condition::Range {
            min: -1.0,
            max: 1.0,
        });
        assert_eq!(evaluate(&r, 2.0).threshold(), Some(1.0));
        assert_eq!(evaluate(&r, -2.0).threshold(), Some(-1.0));
        assert_eq!(evaluate(&r, 0.5).threshold(), None);
    }

    #[test]
    fn conditions_are_validated_per_type() {
        use RuleType::*;
        let ok = |k, min, max| Condition::new(k, min, max).unwrap();
        let err = |k, min, max| Condition::new(k, min, max).unwrap_err().0;
        assert_eq!(ok(Max, None, Some(1.0)), Condition::Max { max: 1.0 });
        assert_eq!(ok(Min, Some(-1e300), None), Condition::Min { min: -1e300 });
        assert_eq!(
            ok(Range, Some(3.0), Some(3.0)),
            Condition::Range { min: 3.0, max: 3.0 }
        );
        assert_eq!(
            ok(Range, Some(-1e300), Some(1e300)),
            Condition::Range {
                min: -1e300,
                max: 1e300
            }
        );
        assert!(err(Max, None, None).contains("needs max"));
        assert!(err(Max, Some(1.0), None).contains("needs max"));
        assert!(err(Max, Some(1.0), Some(2.0)).contains("max only"));
        assert!(err(Min, None, None).contains("needs min"));
        assert!(err(Min, None, Some(1.0)).contains("needs min"));
        assert!(err(Min, Some(1.0), Some(2.0)).contains("min only"));
        assert!(err(Range, Some(2.0), Some(1.0)).contains("min <= max"));
        assert!(err(Range, Some(1.0), None).contains("both"));
        assert!(err(Range, None, Some(1.0)).contains("both"));
        assert!(err(Range, None, None).contains("both"));
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(err(Max, None, Some(bad)).contains("finite"));
            assert!(err(Min, Some(bad), None).contains("finite"));
            assert!(err(Range, Some(bad), Some(1.0)).contains("finite"));
            assert!(err(Range, Some(0.0), Some(bad)).contains("finite"));
        }
    }

    #[test]
    fn a_condition_exposes_exactly_its_thresholds() {
        let c = Condition::Range { min: 1.0, max: 2.0 };
        assert_eq!(
            (c.kind(), c.min(), c.max()),
            (RuleType::Range, Some(1.0), Some(2.0))
        );
        let c = Condition::Max { max: 2.0 };
        assert_eq!(
            (c.kind(), c.min(), c.max()),
            (RuleType::Max, None, Some(2.0))
        );
        let c = Condition::Min { min: 1.0 };
        assert_eq!(
            (c.kind(), c.min(), c.max()),
            (RuleType::Min, Some(1.0), None)
        );
    }

    #[test]
    fn names_round_trip() {
        for t in [RuleType::Max, RuleType::Min, RuleType::Range] {
            assert_eq!(RuleType::parse(t.as_str()), Some(t));
        }
        for s in [Severity::Info, Severity::Warning, Severity::Critical] {
            assert_eq!(Severity::parse(s.as_str()), Some(s));
        }
        assert_eq!(RuleType::parse("max"), None);
        assert_eq!(Severity::parse("fatal"), None);
    }
}

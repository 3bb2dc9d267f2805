//! The in-memory index of enabled rules by (device, metric), so that matching a reading to its
//! rules costs a hash lookup and never a query.
//!
//! Every processor copy holds one. It is loaded at start, reloaded whenever any copy announces a
//! rule change on the core-NATS subject `Names::rules_changed_subject()`, and reloaded every
//! [`RELOAD_EVERY`] as a safety net for a missed announcement (core NATS delivers at most once,
//! and not while disconnected).
//!
//! The index holds rule ids only. The engine reads each rule's definition, enabled flag and
//! watermark from the database under the rule's lock, so a copy whose index is a moment stale
//! can never act on an old threshold or on a disabled or deleted rule; the most staleness can do
//! is skip a rule created a few milliseconds ago.

use crate::rules::Rule;
use crate::storage;
use futures::{FutureExt, StreamExt};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Safety-net reload period. Changes normally arrive within milliseconds by NATS; this bounds
/// how long a copy that missed an announcement stays stale.
pub const RELOAD_EVERY: Duration = Duration::from_secs(30);

/// How soon a failed reload is retried.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Enabled rules by device, then metric.
#[derive(Debug, Default)]
pub struct RuleIndex {
    by_device: HashMap<Uuid, HashMap<String, Vec<Uuid>>>,
    /// Every id, sorted: tells whether a reload changed anything.
    ids: Vec<Uuid>,
}

impl RuleIndex {
    /// Builds the index from rules; disabled ones are left out.
    pub fn build(rules: impl IntoIterator<Item = Rule>) -> RuleIndex {
        let mut index = RuleIndex::default();
        for rule in rules.into_iter().filter(|r| r.enabled) {
            index
                .by_device
                .entry(rule.device_id)
                .or_default()
                .entry(rule.metric)
                .or_default()
                .push(rule.id);
            index.ids.push(rule.id);
        }
        index.ids.sort_unstable();
        index
    }

    /// The enabled rules on this device's metric (usually none, so this must be cheap).
    pub fn matching(&self, device_id: Uuid, metric: &str) -> &[Uuid] {
        self.by_device
            .get(&device_id)
            .and_then(|m| m.get(metric))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// What made the cache reload; it goes into the log line.
#[derive(Debug, Clone, Copy)]
pub enum Trigger {
    Start,
    /// This copy changed a rule (its API answer waits for the reload).
    Local,
    /// Another copy (or this one) announced a change.
    Announced,
    Periodic,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Start => "start",
            Trigger::Local => "local",
            Trigger::Announced => "announced",
            Trigger::Periodic => "periodic",
        }
    }
}

struct Installed {
    ticket: u64,
    index: Arc<RuleIndex>,
}

/// Shared by the writers (read) and the reloaders (replace). Cheap to clone.
#[derive(Clone)]
pub struct RuleCache {
    installed: Arc<RwLock<Installed>>,
    tickets: Arc<AtomicU64>,
}

impl Default for RuleCache {
    fn default() -> Self {
        RuleCache {
            installed: Arc::new(RwLock::new(Installed {
                ticket: 0,
                index: Arc::default(),
            })),
            tickets: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl RuleCache {
    /// The current index. A batch takes one snapshot and matches all its readings against it.
    pub fn snapshot(&self) -> Arc<RuleIndex> {
        self.installed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .index
            .clone()
    }

    /// Installs `index` unless a reload that started later was installed already: reloads can
    /// overlap (an API change and an announcement), and the one that queried last saw the most.
    fn install(&self, ticket: u64, index: RuleIndex) -> Option<(usize, bool)> {
        let mut installed = self.installed.write().unwrap_or_else(|p| p.into_inner());
        if ticket <= installed.ticket {
            return None;
        }
        let changed = installed.index.ids != index.ids;
        let len = index.len();
        *installed = Installed {
            ticket,
            index: Arc::new(index),
        };
        Some((len, changed))
    }

    /// Reads every enabled rule and swaps the index in.
    pub async fn reload(&self, db: &PgPool, trigger: Trigger) -> anyhow::Result<()> {
        let ticket = self.tickets.fetch_add(1, Ordering::SeqCst) + 1;
        let rows = storage::rules::all_enabled(db).await?;
        let mut rules = Vec::with_capacity(rows.len());
        for row in rows {
            match row.to_rule() {
                Ok(r) => rules.push(r),
                Err(e) => {
                    tracing::error!(module = "rules", operation = "reload", rule_id = %row.id, error = %e.0, "Rule row is invalid; it is not evaluated.")
                }
            }
        }
        if let Some((rules, changed)) = self.install(ticket, RuleIndex::build(rules)) {
            // Tests wait for this line on every copy; periodic reloads that found nothing new
            // stay quiet.
            if changed || !matches!(trigger, Trigger::Periodic) {
                tracing::info!(
                    module = "rules",
                    operation = "reload",
                    trigger = trigger.as_str(),
                    rules,
                    changed,
                    "Rule cache reloaded."
                );
            }
        }
        Ok(())
    }
}

/// Keeps the cache fresh until cancelled: reloads on every announcement (a burst of them gives
/// one reload), every [`RELOAD_EVERY`], and soon after a failed reload.
pub async fn watch(
    cache: RuleCache,
    db: PgPool,
    mut announcements: async_nats::Subscriber,
    cancel: CancellationToken,
) {
    let mut next = tokio::time::Instant::now() + RELOAD_EVERY;
    loop {
        let trigger = tokio::select! {
            _ = cancel.cancelled() => return,
            m = announcements.next() => match m {
                Some(_) => {
                    // Drain what already arrived: one reload covers every change committed
                    // before it starts.
                    while let Some(Some(_)) = announcements.next().now_or_never() {}
                    Trigger::Announced
                }
                None => {
                    tracing::warn!(module = "rules", operation = "watch", "Rule announcements ended; relying on periodic reloads.");
                    periodic_only(&cache, &db, &cancel).await;
                    return;
                }
            },
            _ = tokio::time::sleep_until(next) => Trigger::Periodic,
        };
        next = match cache.reload(&db, trigger).await {
            Ok(()) => tokio::time::Instant::now() + RELOAD_EVERY,
            Err(e) => {
                tracing::warn!(module = "rules", operation = "reload", error = %e, "Cannot reload rules; retrying soon.");
                tokio::time::Instant::now() + RETRY_AFTER
            }
        };
    }
}

async fn periodic_only(cache: &RuleCache, db: &PgPool, cancel: &CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(RELOAD_EVERY) => {}
        }
        if let Err(e) = cache.reload(db, Trigger::Periodic).await {
            tracing::warn!(module = "rules", operation = "reload", error = %e, "Cannot reload rules; retrying later.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Condition, Severity};

    fn rule(device: Uuid, metric: &str, enabled: bool) -> Rule {
        Rule {
            id: Uuid::new_v4(),
            device_id: device,
            metric: metric.into(),
            condition: Condition::Max { max: 1.0 },
            severity: Severity::Info,
            enabled,
        }
    }

    #[test]
    fn the_index_finds_enabled_rules_by_device_and_metric_only() {
        let (d, e) = (Uuid::new_v4(), Uuid::new_v4());
        let a = rule(d, "temp", true);
        let b = rule(d, "temp", true);
        let off = rule(d, "temp", false);
        let other = rule(e, "temp", true);
        let index = RuleIndex::build([a.clone(), b.clone(), off, other.clone()]);
        let mut found = index.matching(d, "temp").to_vec();
        found.sort();
        let mut want = vec![a.id, b.id];
        want.sort();
        assert_eq!(found, want);
        assert_eq!(index.matching(e, "temp"), &[other.id]);
        assert!(index.matching(d, "hum").is_empty());
        assert!(index.matching(Uuid::new_v4(), "temp").is_empty());
        assert_eq!(index.len(), 3);
    }

    #[test]
    fn an_older_reload_never_replaces_a_newer_one() {
        let cache = RuleCache::default();
        let d = Uuid::new_v4();
        let newer = rule(d, "m", true);
        assert_eq!(
            cache.install(2, RuleIndex::build([newer.clone()])),
            Some((1, true))
        );
        assert_eq!(cache.install(1, RuleIndex::default()), None);
        assert_eq!(cache.snapshot().matching(d, "m"), &[newer.id]);
        assert_eq!(
            cache.install(3, RuleIndex::build([newer.clone()])),
            Some((1, false))
        );
    }
}

//! The lifecycle planner as a pure function (tables and an order-permutation property), then the
//! real engine against PostgreSQL with many concurrent evaluators standing in for processors.

use super::*;
use crate::rules::{Condition, Severity};
use rand::SeedableRng;
use rand::seq::SliceRandom;

const T0: i64 = 1_764_000_000_000;

fn t(i: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(T0 + i * 1000).unwrap()
}

fn pts(values: &[(i64, f64)]) -> Vec<Point> {
    values
        .iter()
        .map(|&(i, value)| Point { ts: t(i), value })
        .collect()
}

fn max_rule(max: f64) -> Rule {
    Rule {
        id: Uuid::from_u128(1),
        device_id: Uuid::from_u128(2),
        metric: "m".into(),
        condition: Condition::Max { max },
        severity: Severity::Critical,
        enabled: true,
    }
}

/// Deterministic ids: 100, 101, …
fn ids() -> impl FnMut() -> Uuid {
    let mut n = 99u128;
    move || {
        n += 1;
        Uuid::from_u128(n)
    }
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

/// Case C8 in one batch: MAX 1000 with 990, 1010, 995, 1012, 998 gives exactly two episodes,
/// each resolved by the next in-bounds reading, and never two open at once.
#[test]
fn flapping_in_one_batch_gives_exactly_the_implied_episodes() {
    let readings = pts(&[(0, 990.0), (1, 1010.0), (2, 995.0), (3, 1012.0), (4, 998.0)]);
    let p = plan(&max_rule(1000.0), None, None, readings, ids());
    assert_eq!(p.evaluated, 5);
    assert_eq!(p.watermark, Some(t(4)));
    assert_eq!(p.existing, None);
    assert_eq!(
        p.opened,
        vec![
            Opened {
                alert_id: id(100),
                threshold: 1000.0,
                first: Point {
                    ts: t(1),
                    value: 1010.0
                },
                last: Point {
                    ts: t(1),
                    value: 1010.0
                },
                resolved_at: Some(t(2)),
            },
            Opened {
                alert_id: id(101),
                threshold: 1000.0,
                first: Point {
                    ts: t(3),
                    value: 1012.0
                },
                last: Point {
                    ts: t(3),
                    value: 1012.0
                },
                resolved_at: Some(t(4)),
            },
        ]
    );
}

/// Case C9: a batch arriving as T+3, T+1, T+2, T is evaluated as T, T+1, T+2, T+3. With MAX 2.5
/// the alert opens at T+2 (value 3) and is still open at T+3 (value 4); arrival order would have
/// opened at T+3 and then resolved it with the older 2.
#[test]
fn a_batch_out_of_order_is_evaluated_in_timestamp_order() {
    let readings = pts(&[(3, 4.0), (1, 2.0), (2, 3.0), (0, 1.0)]);
    let p = plan(&max_rule(2.5), None, None, readings, ids());
    assert_eq!(p.watermark, Some(t(3)));
    assert_eq!(p.opened.len(), 1);
    let o = &p.opened[0];
    assert_eq!(
        (o.first.ts, o.first.value, o.last.ts, o.last.value),
        (t(2), 3.0, t(3), 4.0)
    );
    assert_eq!(o.resolved_at, None);
}

/// Case C7: readings at or before the watermark change nothing: a late in-bounds reading does
/// not resolve, a late violation does not open, and the watermark does not move back.
#[test]
fn late_readings_do_not_flip_state() {
    let rule = max_rule(10.0);
    let late_ok = plan(
        &rule,
        Some(t(100)),
        Some(id(7)),
        pts(&[(-30 * 86_400, 1.0), (100, 2.0)]),
        ids(),
    );
    assert_eq!(late_ok, Plan::default());
    let late_violation = plan(&rule, Some(t(100)), None, pts(&[(50, 99.0)]), ids());
    assert_eq!(late_violation, Plan::default());
    // Mixed: only the part newer than the watermark counts.
    let mixed = plan(
        &rule,
        Some(t(100)),
        Some(id(7)),
        pts(&[(99, 1.0), (101, 50.0), (98, 2.0)]),
        ids(),
    );
    assert_eq!(mixed.evaluated, 1);
    assert_eq!(
        mixed.existing,
        Some(ExistingChange {
            alert_id: id(7),
            last: Some(Point {
                ts: t(101),
                value: 50.0
            }),
            resolved_at: None,
        })
    );
    assert!(mixed.opened.is_empty());
}

/// An ACTIVE alert is updated by further violations, resolved by an in-bounds reading, and a
/// violation after that opens a new alert.
#[test]
fn an_active_alert_is_updated_then_resolved_then_a_new_one_opens() {
    let p = plan(
        &max_rule(10.0),
        Some(t(0)),
        Some(id(7)),
        pts(&[(1, 11.0), (2, 12.0), (3, 5.0), (4, 13.0)]),
        ids(),
    );
    assert_eq!(
        p.existing,
        Some(ExistingChange {
            alert_id: id(7),
            last: Some(Point {
                ts: t(2),
                value: 12.0
            }),
            resolved_at: Some(t(3)),
        })
    );
    assert_eq!(p.opened.len(), 1);
    assert_eq!(p.opened[0].first.ts, t(4));
    assert_eq!(p.opened[0].resolved_at, None);
}

#[test]
fn in_bounds_readings_without_an_alert_only_move_the_watermark() {
    let p = plan(
        &max_rule(10.0),
        None,
        None,
        pts(&[(1, 1.0), (2, 10.0)]),
        ids(),
    );
    assert_eq!(
        p,
        Plan {
            evaluated: 2,
            watermark: Some(t(2)),
            existing: None,
            opened: vec![],
        }
    );
}

/// Of two readings with one timestamp, the first in batch order is the one stored, so it is the
/// one evaluated.
#[test]
fn of_equal_timestamps_the_first_in_batch_order_counts() {
    let p = plan(
        &max_rule(10.0),
        None,
        None,
        pts(&[(1, 50.0), (1, 1.0)]),
        ids(),
    );
    assert_eq!(p.evaluated, 1);
    assert_eq!(p.opened.len(), 1);
    assert_eq!(p.opened[0].resolved_at, None);
}

#[test]
fn a_disabled_rule_does_nothing() {
    let mut rule = max_rule(10.0);
    rule.enabled = false;
    assert_eq!(
        plan(&rule, None, Some(id(7)), pts(&[(1, 50.0), (2, 1.0)]), ids()),
        Plan::default()
    );
}

#[test]
fn a_range_alert_records_the_bound_it_crossed() {
    let mut rule = max_rule(0.0);
    rule.condition = Condition::Range {
        min: -5.0,
        max: 5.0,
    };
    let p = plan(&rule, None, None, pts(&[(1, -9.0), (2, 9.0)]), ids());
    assert_eq!(p.opened.len(), 1);
    assert_eq!(p.opened[0].threshold, -5.0);
    assert_eq!(p.opened[0].last.value, 9.0);
}

/// (id, triggered_at, last_seen, resolved_at) of a simulated alert.
type SimAlert = (Uuid, DateTime<Utc>, DateTime<Utc>, Option<DateTime<Utc>>);

/// The database's part, in memory: what applying plans does to one rule's alerts and watermark.
#[derive(Debug, Default, Clone, PartialEq)]
struct Sim {
    watermark: Option<DateTime<Utc>>,
    alerts: Vec<SimAlert>,
}

impl Sim {
    fn active(&self) -> Option<Uuid> {
        self.alerts.iter().find(|a| a.3.is_none()).map(|a| a.0)
    }

    fn apply(&mut self, rule: &Rule, points: Vec<Point>, new_id: &mut impl FnMut() -> Uuid) {
        let p = plan(rule, self.watermark, self.active(), points, &mut *new_id);
        if let Some(e) = p.existing {
            let a = self.alerts.iter_mut().find(|a| a.0 == e.alert_id).unwrap();
            if let Some(last) = e.last {
                a.2 = last.ts;
            }
            a.3 = e.resolved_at;
        }
        for o in p.opened {
            self.alerts
                .push((o.alert_id, o.first.ts, o.last.ts, o.resolved_at));
        }
        assert!(self.alerts.iter().filter(|a| a.3.is_none()).count() <= 1);
        if let Some(w) = p.watermark {
            self.watermark = Some(self.watermark.map_or(w, |old| old.max(w)));
        }
    }
}

/// Whatever order the batches are evaluated in (processors commit in any order), the end state
/// is the one the newest reading implies, episodes never overlap in event time, and evaluating
/// everything again (a redelivery) changes nothing.
#[test]
fn any_evaluation_order_ends_in_the_state_of_the_newest_reading() {
    let rule = max_rule(10.0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for n in 1..=12i64 {
        for _ in 0..50 {
            // One reading per batch, alternating in and out of bounds with some repeats.
            let mut batches: Vec<Vec<Point>> = (0..n)
                .map(|i| {
                    let violating = (i / 2 + i) % 3 != 0;
                    pts(&[(i, if violating { 20.0 } else { 1.0 })])
                })
                .collect();
            let newest_violates = batches.last().unwrap()[0].value > 10.0;
            batches.shuffle(&mut rng);
            let mut sim = Sim::default();
            let mut next = ids();
            for b in &batches {
                sim.apply(&rule, b.clone(), &mut next);
            }
            assert_eq!(sim.watermark, Some(t(n - 1)));
            match sim.active() {
                Some(a) => {
                    assert!(newest_violates, "{sim:?}");
                    let a = sim.alerts.iter().find(|x| x.0 == a).unwrap();
                    assert_eq!(a.2, t(n - 1), "an open alert has seen the newest reading");
                }
                None => assert!(!newest_violates, "{sim:?}"),
            }
            let mut episodes = sim.alerts.clone();
            episodes.sort_by_key(|a| a.1);
            for w in episodes.windows(2) {
                assert!(w[0].3.is_some_and(|r| r <= w[1].1), "overlap: {episodes:?}");
            }
            let before = sim.clone();
            for b in &batches {
                sim.apply(&rule, b.clone(), &mut next);
            }
            assert_eq!(sim, before, "a redelivery changed something");
        }
    }
}

/// With every batch evaluated in time order, the history is exactly the one the readings imply.
#[test]
fn flapping_batch_by_batch_gives_the_same_history_as_one_batch() {
    let rule = max_rule(1000.0);
    let values = [990.0, 1010.0, 995.0, 1012.0, 998.0];
    let mut sim = Sim::default();
    let mut next = ids();
    for (i, v) in values.iter().enumerate() {
        sim.apply(&rule, pts(&[(i as i64, *v)]), &mut next);
    }
    assert_eq!(
        sim.alerts,
        vec![
            (id(100), t(1), t(1), Some(t(2))),
            (id(101), t(3), t(3), Some(t(4)))
        ]
    );
}

mod database {
    //! The real engine against PostgreSQL. Each test migrates its own database.
    use super::*;
    use crate::config::DatabaseArgs;
    use crate::rules::cache::Trigger;
    use shared::wire::{Channel, Reading};

    struct TestDb {
        name: String,
        pool: PgPool,
    }

    fn server_url() -> String {
        std::env::var("HUB_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
    }

    impl TestDb {
        async fn new() -> TestDb {
            let name = format!(
                "processor_test_{}",
                &Uuid::new_v4().simple().to_string()[..12]
            );
            let args = DatabaseArgs {
                database_url: format!("{}/{name}", server_url()),
                database_max_connections: 16,
            };
            if let Err(e) = crate::storage::migrate(&args).await {
                panic!(
                    "PostgreSQL at {} is needed for this test ({e:#}). Start it: compose/services up",
                    server_url()
                );
            }
            TestDb {
                name,
                pool: crate::storage::pool(&args).unwrap(),
            }
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            let name = self.name.clone();
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    use sqlx::Connection;
                    if let Ok(mut c) =
                        sqlx::PgConnection::connect(&format!("{}/postgres", server_url())).await
                    {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                        )))
                        .execute(&mut c)
                        .await;
                    }
                });
            })
            .join();
        }
    }

    async fn device(db: &PgPool) -> Uuid {
        let id = Uuid::new_v4();
        crate::storage::devices::insert(db, id, "d", &id.simple().to_string(), "x")
            .await
            .unwrap();
        id
    }

    async fn rule(db: &PgPool, device_id: Uuid, max: f64) -> Rule {
        let rule = Rule {
            id: Uuid::new_v4(),
            device_id,
            metric: "m".into(),
            condition: Condition::Max { max },
            severity: Severity::Warning,
            enabled: true,
        };
        crate::storage::rules::insert(db, &rule).await.unwrap();
        rule
    }

    async fn engine(db: &PgPool) -> Engine {
        let rules = RuleCache::default();
        rules.reload(db, Trigger::Start).await.unwrap();
        Engine {
            db: db.clone(),
            metrics: Metrics::new(),
            rules,
        }
    }

    fn batch(device_id: Uuid, readings: &[(i64, f64)]) -> Batch {
        Batch {
            device_id,
            channel: Channel::Http,
            received_at_us: T0 * 1000,
            metrics: vec!["m".into()],
            readings: readings
                .iter()
                .map(|&(i, value)| Reading {
                    metric: 0,
                    ts_us: (T0 + i * 1000) * 1000,
                    value,
                })
                .collect(),
        }
    }

    type AlertState = (
        String,
        DateTime<Utc>,
        DateTime<Utc>,
        f64,
        Option<DateTime<Utc>>,
    );

    /// (status, triggered_at, last_seen, last_value, resolved_at) of a rule's alerts, oldest first.
    async fn alerts_of(db: &PgPool, rule_id: Uuid) -> Vec<AlertState> {
        sqlx::query_as(
            "SELECT status, triggered_at, last_seen, last_value, resolved_at FROM alerts
             WHERE rule_id = $1 ORDER BY triggered_at",
        )
        .bind(rule_id)
        .fetch_all(db)
        .await
        .unwrap()
    }

    async fn watermark(db: &PgPool, rule_id: Uuid) -> Option<DateTime<Utc>> {
        crate::storage::rules::get(db, rule_id)
            .await
            .unwrap()
            .unwrap()
            .last_evaluated_ts
    }

    /// Evaluates every batch, `workers` at a time, each worker with its own engine (as separate
    /// processors have), taking batches in the shuffled order.
    async fn evaluate_concurrently(db: &PgPool, batches: Vec<Batch>, workers: usize) {
        let queue = std::sync::Arc::new(std::sync::Mutex::new(batches));
        let mut tasks = Vec::new();
        for _ in 0..workers {
            let engine = engine(db).await;
            let queue = queue.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let next = queue.lock().unwrap().pop();
                    let Some(b) = next else { break };
                    engine.evaluate(std::slice::from_ref(&b)).await;
                }
                engine.metrics.rules_failures.get()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 0, "an evaluation failed");
        }
    }

    /// Many evaluators hammering one rule with violations never open a second alert: one
    /// ACTIVE alert that has seen the newest reading.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_evaluators_open_one_alert_per_rule() {
        let db = TestDb::new().await;
        let d = device(&db.pool).await;
        let r = rule(&db.pool, d, 100.0).await;
        let mut batches: Vec<Batch> = (0..300)
            .map(|i| batch(d, &[(i, 200.0 + i as f64)]))
            .collect();
        batches.shuffle(&mut rand::rngs::StdRng::seed_from_u64(1));
        evaluate_concurrently(&db.pool, batches, 8).await;
        let alerts = alerts_of(&db.pool, r.id).await;
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].0, "ACTIVE");
        assert_eq!((alerts[0].2, alerts[0].3), (t(299), 499.0));
        assert_eq!(watermark(&db.pool, r.id).await, Some(t(299)));
    }

    /// Alternating violate/clear batches spread over concurrent evaluators in random order end
    /// in the state of the newest reading, with episodes that never overlap; run for both
    /// endings and several orders.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_evaluators_end_in_the_state_of_the_newest_reading() {
        let db = TestDb::new().await;
        for seed in 0..6u64 {
            let d = device(&db.pool).await;
            let r = rule(&db.pool, d, 10.0).await;
            let n = 80 + seed as i64; // even: ends in bounds; odd: ends violating
            let mut batches: Vec<Batch> = (0..n)
                .map(|i| batch(d, &[(i, if i % 2 == 1 { 20.0 } else { 1.0 })]))
                .collect();
            batches.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
            evaluate_concurrently(&db.pool, batches.clone(), 6).await;
            let alerts = alerts_of(&db.pool, r.id).await;
            let active: Vec<_> = alerts.iter().filter(|a| a.0 == "ACTIVE").collect();
            if (n - 1) % 2 == 1 {
                assert_eq!(active.len(), 1, "seed {seed}: {alerts:?}");
                assert_eq!(active[0].2, t(n - 1));
            } else {
                assert!(active.is_empty(), "seed {seed}: {alerts:?}");
            }
            for w in alerts.windows(2) {
                assert!(
                    w[0].4.is_some_and(|resolved| resolved <= w[1].1),
                    "seed {seed}: overlapping episodes {alerts:?}"
                );
            }
            assert_eq!(watermark(&db.pool, r.id).await, Some(t(n - 1)));
            // A redelivery of everything changes nothing.
            evaluate_concurrently(&db.pool, batches, 3).await;
            assert_eq!(alerts_of(&db.pool, r.id).await, alerts, "seed {seed}");
        }
    }

    /// The partial unique index refuses a second ACTIVE alert, and the engine reads that
    /// violation, by name, as a race to retry rather than a failure.
    #[tokio::test]
    async fn the_database_refuses_a_second_active_alert_and_the_engine_calls_it_a_conflict() {
        let db = TestDb::new().await;
        let d = device(&db.pool).await;
        let r = rule(&db.pool, d, 10.0).await;
        let one = |id: Uuid| NewAlerts {
            id: vec![id],
            rule_id: vec![r.id],
            threshold: vec![10.0],
            value: vec![11.0],
            triggered_at: vec![t(1)],
            last_value: vec![11.0],
            last_seen: vec![t(1)],
            resolved_at: vec![None],
        };
        crate::storage::alerts::insert_new(&db.pool, &one(Uuid::new_v4()))
            .await
            .unwrap();
        let e = crate::storage::alerts::insert_new(&db.pool, &one(Uuid::new_v4()))
            .await
            .unwrap_err();
        assert!(matches!(Failure::from(e), Failure::Conflict(_)));
    }

    /// Deleting a device deletes its rules; their open alerts are resolved, not left ACTIVE.
    #[tokio::test]
    async fn a_deleted_device_leaves_no_active_alert_behind() {
        let db = TestDb::new().await;
        let d = device(&db.pool).await;
        let r = rule(&db.pool, d, 10.0).await;
        engine(&db.pool)
            .await
            .evaluate(&[batch(d, &[(1, 50.0)])])
            .await;
        assert_eq!(alerts_of(&db.pool, r.id).await[0].0, "ACTIVE");
        assert!(crate::storage::devices::delete(&db.pool, d).await.unwrap());
        let (status, resolution): (String, String) =
            sqlx::query_as("SELECT status, resolution FROM alerts WHERE rule_id = $1")
                .bind(r.id)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        assert_eq!(
            (status.as_str(), resolution.as_str()),
            ("RESOLVED", "rule_deleted")
        );
    }

    /// A rule deleted after a processor cached it is skipped, not resurrected, and a disabled one
    /// neither evaluates nor moves its watermark.
    #[tokio::test]
    async fn a_stale_cache_cannot_act_on_a_deleted_or_disabled_rule() {
        let db = TestDb::new().await;
        let d = device(&db.pool).await;
        let deleted = rule(&db.pool, d, 10.0).await;
        let mut disabled = rule(&db.pool, d, 10.0).await;
        let engine = engine(&db.pool).await;
        crate::storage::rules::delete(&db.pool, deleted.id)
            .await
            .unwrap();
        disabled.enabled = false;
        crate::storage::rules::update(&db.pool, &disabled)
            .await
            .unwrap();
        engine.evaluate(&[batch(d, &[(1, 50.0)])]).await;
        assert_eq!(engine.metrics.rules_failures.get(), 0);
        assert!(alerts_of(&db.pool, deleted.id).await.is_empty());
        assert!(alerts_of(&db.pool, disabled.id).await.is_empty());
        assert_eq!(watermark(&db.pool, disabled.id).await, None);
    }
}

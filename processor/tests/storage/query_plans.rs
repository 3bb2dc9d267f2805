//! Every statement the reading API runs reads `readings` through the `(series_id, ts)` index, on
//! a table of a million rows: checked with `EXPLAIN (FORMAT JSON)` twice per statement, once
//! planned for the bound values (what PostgreSQL does for the first executions of a prepared
//! statement) and once as a generic plan (what it may switch to after five), so that neither can
//! fall back to a sequential scan. docs/queries.md shows the plans this prints.

use crate::TestDb;
use chrono::{DateTime, Utc};
use processor::storage::readings::{self, Aggregate, Keyset, RangeQuery};
use serde_json::Value;
use sqlx::postgres::types::PgInterval;
use sqlx::{Executor as _, Row as _};
use std::time::Instant;
use uuid::Uuid;

const DEVICES: i64 = 50;
const METRICS: [&str; 4] = ["temperature", "humidity", "light", "co2"];
/// Per series: 200 series x 5000 = 1 000 000 rows, one a minute from 2026-01-01.
const PER_SERIES: i64 = 5000;

#[derive(Clone)]
enum Arg {
    Uuid(Uuid),
    Ts(DateTime<Utc>),
    Int(i32),
    BigInt(i64),
    Text(&'static str),
    Micros(i64),
}

impl Arg {
    fn literal(&self) -> String {
        match self {
            Arg::Uuid(u) => format!("'{u}'::uuid"),
            Arg::Ts(t) => format!("'{}'::timestamptz", t.to_rfc3339()),
            Arg::Int(i) => i.to_string(),
            Arg::BigInt(i) => i.to_string(),
            Arg::Text(s) => format!("'{s}'"),
            Arg::Micros(m) => format!("'{m} microseconds'::interval"),
        }
    }
}

struct Case {
    name: String,
    sql: &'static str,
    args: Vec<Arg>,
    /// Latest and metrics must walk the index in order (one step per series). The others may
    /// also read it with a bitmap scan, which the planner picks when most of a range's rows
    /// are wanted anyway (then sorting a few thousand rows is cheaper than visiting their heap
    /// pages in index order); for a range much larger than the page it walks the index.
    ordered: bool,
}

/// The plan as (node type, relation, index) triples, depth first, and as an indented outline.
fn nodes(plan: &Value, depth: usize, out: &mut Vec<(String, String, String)>, text: &mut String) {
    let field = |k: &str| plan[k].as_str().unwrap_or("").to_owned();
    let (node, relation, index) = (
        field("Node Type"),
        field("Relation Name"),
        field("Index Name"),
    );
    let mut line = format!("{}{node}", "  ".repeat(depth));
    if !index.is_empty() {
        line += &format!(" using {index}");
    }
    if !relation.is_empty() {
        line += &format!(" on {relation}");
    }
    for key in ["Index Cond", "Filter", "Join Filter"] {
        if let Some(c) = plan[key].as_str() {
            line += &format!("  [{key}: {c}]");
        }
    }
    text.push_str(&line);
    text.push('\n');
    out.push((node, relation, index));
    for child in plan["Plans"].as_array().into_iter().flatten() {
        nodes(child, depth + 1, out, text);
    }
}

fn check(case: &Case, mode: &str, explained: &str) -> String {
    let doc: Value = serde_json::from_str(explained).unwrap();
    let mut found = Vec::new();
    let mut text = String::new();
    nodes(&doc[0]["Plan"], 0, &mut found, &mut text);
    let seq = found
        .iter()
        .any(|(n, r, _)| n == "Seq Scan" && r == "readings");
    assert!(
        !seq,
        "{} ({mode}) scans readings sequentially:\n{text}",
        case.name
    );
    let ordered = found.iter().any(|(n, _, i)| {
        (n == "Index Scan" || n == "Index Only Scan") && i == "readings_series_ts_key"
    });
    let bitmap = found
        .iter()
        .any(|(n, _, i)| n == "Bitmap Index Scan" && i == "readings_series_ts_key");
    if case.ordered {
        assert!(
            ordered,
            "{} ({mode}) does not walk readings_series_ts_key in order:\n{text}",
            case.name
        );
    } else {
        assert!(
            ordered || bitmap,
            "{} ({mode}) does not use readings_series_ts_key:\n{text}",
            case.name
        );
    }
    text
}

/// The plan PostgreSQL makes for the bound values, as the API's first executions get.
async fn explain_custom(pool: &sqlx::PgPool, case: &Case) -> String {
    let sql = format!("EXPLAIN (FORMAT JSON) {}", case.sql);
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for a in &case.args {
        q = match a.clone() {
            Arg::Uuid(u) => q.bind(u),
            Arg::Ts(t) => q.bind(t),
            Arg::Int(i) => q.bind(i),
            Arg::BigInt(i) => q.bind(i),
            Arg::Text(s) => q.bind(s),
            Arg::Micros(m) => q.bind(PgInterval {
                months: 0,
                days: 0,
                microseconds: m,
            }),
        };
    }
    let row = q.fetch_one(pool).await.unwrap();
    // EXPLAIN answers `json`, which is text on the wire.
    row.try_get_unchecked::<String, _>(0).unwrap()
}

/// The generic plan, made without the values, which PostgreSQL may switch to for a statement
/// prepared and run many times (sqlx caches its prepared statements per connection).
async fn explain_generic(pool: &sqlx::PgPool, case: &Case) -> String {
    let mut conn = pool.acquire().await.unwrap();
    conn.execute("SET plan_cache_mode = force_generic_plan")
        .await
        .unwrap();
    conn.execute(sqlx::AssertSqlSafe(format!(
        "PREPARE plan_probe AS {}",
        case.sql
    )))
    .await
    .unwrap();
    let args: Vec<String> = case.args.iter().map(Arg::literal).collect();
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (FORMAT JSON) EXECUTE plan_probe({})",
        args.join(", ")
    )))
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    conn.execute("DEALLOCATE plan_probe; RESET plan_cache_mode")
        .await
        .unwrap();
    row.try_get_unchecked::<String, _>(0).unwrap()
}

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn range_case(name: &str, q: &RangeQuery<'static>) -> Case {
    let (sql, lower, upper, edge) = readings::range_plan(q);
    let mut args = vec![
        Arg::Uuid(q.device_id),
        Arg::Ts(lower),
        Arg::Ts(upper),
        Arg::BigInt(edge),
        Arg::BigInt(q.limit),
    ];
    if let Some(m) = q.metric {
        args.push(Arg::Text(m));
    }
    Case {
        name: name.to_owned(),
        sql,
        args,
        ordered: false,
    }
}

#[tokio::test]
async fn every_reading_query_reads_the_series_ts_index_on_a_million_rows() {
    let db = TestDb::create().await;
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO series (device_id, metric_name)
         SELECT md5('device' || d)::uuid, m
         FROM generate_series(1, $1::int8) d, unnest($2::text[]) m",
    )
    .bind(DEVICES)
    .bind(&METRICS[..])
    .execute(&db.pool)
    .await
    .unwrap();
    let inserted = sqlx::query(
        "INSERT INTO readings (series_id, ts, value)
         SELECT s.series_id, TIMESTAMPTZ '2026-01-01 00:00:00+00' + n * INTERVAL '1 minute',
                s.series_id + sin(n) * 10
         FROM series s, generate_series(0, $1::int8 - 1) n",
    )
    .bind(PER_SERIES)
    .execute(&db.pool)
    .await
    .unwrap()
    .rows_affected();
    assert!(inserted >= 1_000_000, "only {inserted} rows");
    sqlx::raw_sql("ANALYZE series; ANALYZE readings")
        .execute(&db.pool)
        .await
        .unwrap();
    eprintln!(
        "loaded and analysed {inserted} readings in {:.1?}",
        started.elapsed()
    );

    let device: Uuid = sqlx::query_scalar("SELECT md5('device' || 7)::uuid")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let series = readings::series_id(&db.pool, device, "humidity")
        .await
        .unwrap()
        .unwrap();
    let (from, to) = (t("2026-01-02T00:00:00Z"), t("2026-01-03T00:00:00Z"));
    let cursor = Some(Keyset {
        ts: t("2026-01-02T12:00:00Z"),
        series_id: i64::from(series),
    });
    let range =
        |metric: Option<&'static str>, after: Option<Keyset>, descending: bool| RangeQuery {
            device_id: device,
            metric,
            from,
            to,
            after,
            descending,
            limit: 1001,
        };
    let mut cases = vec![
        range_case("range asc, every metric", &range(None, None, false)),
        range_case(
            "range asc, every metric, after a cursor",
            &range(None, cursor, false),
        ),
        range_case("range desc, every metric", &range(None, None, true)),
        range_case(
            "range desc, every metric, after a cursor",
            &range(None, cursor, true),
        ),
        range_case(
            "range asc, one metric",
            &range(Some("humidity"), None, false),
        ),
        range_case(
            "range asc, one metric, after a cursor",
            &range(Some("humidity"), cursor, false),
        ),
        range_case(
            "range desc, one metric, after a cursor",
            &range(Some("humidity"), cursor, true),
        ),
        Case {
            name: "latest".into(),
            sql: readings::LATEST_SQL,
            args: vec![Arg::Uuid(device)],
            ordered: true,
        },
        Case {
            name: "metrics".into(),
            sql: readings::METRICS_SQL,
            args: vec![Arg::Uuid(device)],
            ordered: true,
        },
    ];
    for f in Aggregate::ALL {
        cases.push(Case {
            name: format!("aggregate {} by 1h over a day", f.as_str()),
            sql: f.sql(),
            args: vec![
                Arg::Int(series),
                Arg::Micros(3_600_000_000),
                Arg::Ts(from),
                Arg::Ts(to),
            ],
            ordered: false,
        });
    }
    // The whole history of the series: the widest an aggregate gets.
    cases.push(Case {
        name: "aggregate avg by 1d over all time".into(),
        sql: Aggregate::Avg.sql(),
        args: vec![
            Arg::Int(series),
            Arg::Micros(86_400_000_000),
            Arg::Ts(t("2000-01-01T00:00:00Z")),
            Arg::Ts(t("2100-01-01T00:00:00Z")),
        ],
        ordered: false,
    });

    for case in &cases {
        let custom = check(case, "custom plan", &explain_custom(&db.pool, case).await);
        let generic = check(case, "generic plan", &explain_generic(&db.pool, case).await);
        eprintln!(
            "-- {}\n{custom}-- {} (generic)\n{generic}",
            case.name, case.name
        );
    }
}

/// The keyset pages of the range statements return every row once, in order, in both
/// directions, when several metrics share timestamps (the case the `series_id` tie-break is for)
/// and when the range bounds cut through a timestamp.
#[tokio::test]
async fn range_pages_return_every_row_once_in_order_across_metrics_with_equal_timestamps() {
    let db = TestDb::create().await;
    let device = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO series (device_id, metric_name) SELECT $1, m FROM unnest($2::text[]) m",
    )
    .bind(device)
    .bind(&METRICS[..3])
    .execute(&db.pool)
    .await
    .unwrap();
    // 3 metrics x 20 timestamps, every timestamp shared by all three series.
    sqlx::query(
        "INSERT INTO readings (series_id, ts, value)
         SELECT s.series_id, TIMESTAMPTZ '2026-01-01 00:00:00+00' + n * INTERVAL '1 second', n
         FROM series s, generate_series(0, 19) n WHERE s.device_id = $1",
    )
    .bind(device)
    .execute(&db.pool)
    .await
    .unwrap();
    let (from, to) = (t("2026-01-01T00:00:02Z"), t("2026-01-01T00:00:17Z"));
    let expected: Vec<(DateTime<Utc>, i32)> = sqlx::query_as(
        "SELECT r.ts, r.series_id FROM readings r JOIN series s USING (series_id)
         WHERE s.device_id = $1 AND r.ts >= $2 AND r.ts < $3 ORDER BY r.ts, r.series_id",
    )
    .bind(device)
    .bind(from)
    .bind(to)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(expected.len(), 45);
    for descending in [false, true] {
        for limit in [1, 2, 4, 7, 45, 46] {
            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let page = readings::range(
                    &db.pool,
                    &RangeQuery {
                        device_id: device,
                        metric: None,
                        from,
                        to,
                        after,
                        descending,
                        limit,
                    },
                )
                .await
                .unwrap();
                seen.extend(page.iter().map(|r| (r.ts, r.series_id)));
                match page.last() {
                    Some(last) if page.len() as i64 == limit => {
                        after = Some(Keyset {
                            ts: last.ts,
                            series_id: i64::from(last.series_id),
                        })
                    }
                    _ => break,
                }
                assert!(seen.len() <= expected.len(), "pages never end");
            }
            let mut want = expected.clone();
            if descending {
                want.reverse();
            }
            assert_eq!(seen, want, "descending {descending}, limit {limit}");
        }
    }
}

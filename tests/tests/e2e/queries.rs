//! The query API for analysts: raw ranges with keyset pagination, time-bucket aggregates, latest
//! values and metric lists per device, the OpenAPI documents, and a schemathesis run against the
//! processor's document.

use chrono::{DateTime, Duration as TimeDelta, Utc};
use hub_tests::hub::{TestDevice, TestHub, wait_until};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// `path?k=v&…`, with the values URL-encoded.
fn query(path: &str, params: &[(&str, &str)]) -> String {
    let url = reqwest::Url::parse_with_params(&format!("http://hub{path}"), params).unwrap();
    match url.query() {
        Some(q) if !q.is_empty() => format!("{}?{q}", url.path()),
        _ => url.path().to_owned(),
    }
}

fn ts(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// Sends readings `(metric, ts, value)` as one batch and checks the gateway took them all.
async fn send(hub: &TestHub, device: &TestDevice, readings: &[(&str, DateTime<Utc>, f64)]) {
    let body = json!({
        "readings": readings
            .iter()
            .map(|(m, t, v)| json!({ "metric": m, "ts": rfc(*t), "value": v }))
            .collect::<Vec<_>>()
    });
    let (status, answer) = hub.ingest(&device.key, body.to_string()).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["accepted"], readings.len(), "{answer}");
}

/// The one error shape, exactly: `{"error":{"code","message"}}` and nothing else.
fn assert_error(what: &str, status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{what}: {body}");
    let obj = body
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not an object: {body}"));
    assert_eq!(obj.len(), 1, "{what}: {body}");
    let err = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("{what}: {body}"));
    assert_eq!(err.len(), 2, "{what}: {body}");
    assert_eq!(err["code"], want_code, "{what}: {body}");
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {body}"
    );
}

/// Follows `next_cursor` to the end; returns every item and the number of pages.
async fn all_pages(hub: &TestHub, token: &str, params: &[(&str, &str)]) -> (Vec<Value>, usize) {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut p: Vec<(&str, &str)> = params.to_vec();
        if let Some(c) = &cursor {
            p.push(("cursor", c));
        }
        let (status, page) = hub
            .api(Method::GET, &query("/readings", &p), token, None)
            .await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        let got = page["items"].as_array().unwrap();
        items.extend(got.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => {
                assert!(!got.is_empty(), "an empty page with a cursor: {page}");
                cursor = Some(c.to_owned());
            }
            None => return (items, pages),
        }
        assert!(pages < 1000, "pages never end");
    }
}

fn keys(items: &[Value]) -> Vec<(String, DateTime<Utc>, f64)> {
    items
        .iter()
        .map(|i| {
            (
                i["metric"].as_str().unwrap().to_owned(),
                ts(i["ts"].as_str().unwrap()),
                i["value"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// Readings sent out of order, several metrics sharing every timestamp, come back exactly once
/// and in order whatever the page size, oldest or newest first, with and without a metric filter
/// and within `[from, to)` given in either time form; the last page says it is the last.
#[tokio::test]
async fn out_of_order_readings_page_back_exactly_once_in_order_in_both_directions() {
    let hub = TestHub::start().await;
    let token = hub.admin_token().await;
    let device = hub.create_device(&token, "pager").await;
    let t0 = ts("2026-03-01T00:00:00Z");
    let metrics = ["a", "b", "c"];
    let mut all: Vec<(&str, DateTime<Utc>, f64)> = Vec::new();
    for i in 0..20i64 {
        for (m, metric) in metrics.iter().enumerate() {
            all.push((
                metric,
                t0 + TimeDelta::seconds(i),
                (m * 1000) as f64 + i as f64,
            ));
        }
    }
    // Newest first, in four batches whose own order is shuffled too.
    let mut shuffled = all.clone();
    shuffled.reverse();
    for chunk in shuffled.chunks(15) {
        let mut c = chunk.to_vec();
        c.rotate_left(7);
        send(&hub, &device, &c).await;
    }
    hub.wait_stored(device.id, 60).await;
    let id = device.id.to_string();
    let mut expected = all.clone();
    expected.sort_by(|x, y| x.1.cmp(&y.1).then(x.0.cmp(y.0)));

    let mut reference: Option<Vec<(String, DateTime<Utc>, f64)>> = None;
    for limit in ["1", "7", "59", "60", "1000"] {
        let (asc, pages) = all_pages(&hub, &token, &[("device_id", &id), ("limit", limit)]).await;
        let (desc, _) = all_pages(
            &hub,
            &token,
            &[("device_id", &id), ("limit", limit), ("order", "desc")],
        )
        .await;
        let (asc, mut desc) = (keys(&asc), keys(&desc));
        assert_eq!(asc.len(), 60, "limit {limit}");
        let n: usize = limit.parse().unwrap();
        assert_eq!(
            pages,
            60usize.div_ceil(n),
            "limit {limit}: one page per {n} rows"
        );
        assert!(
            asc.windows(2).all(|w| w[0].1 <= w[1].1),
            "limit {limit}: not in time order"
        );
        let mut sorted = asc.clone();
        sorted.sort_by(|x, y| x.1.cmp(&y.1).then(x.0.cmp(&y.0)));
        let want: Vec<_> = expected
            .iter()
            .map(|(m, t, v)| (m.to_string(), *t, *v))
            .collect();
        assert_eq!(
            sorted, want,
            "limit {limit}: not every reading exactly once"
        );
        desc.reverse();
        assert_eq!(desc, asc, "limit {limit}: desc is not asc reversed");
        // Ties between metrics are broken the same way on every page size.
        match &reference {
            None => reference = Some(asc),
            Some(r) => assert_eq!(&asc, r, "limit {limit}: a different order"),
        }
    }

    // One metric, and a range given as epoch milliseconds (from, inclusive) and RFC 3339 (to,
    // exclusive).
    let from = (t0 + TimeDelta::seconds(5)).timestamp_millis().to_string();
    let to = rfc(t0 + TimeDelta::seconds(15));
    for order in ["asc", "desc"] {
        let (items, _) = all_pages(
            &hub,
            &token,
            &[
                ("device_id", &id),
                ("metric", "b"),
                ("from", &from),
                ("to", &to),
                ("limit", "3"),
                ("order", order),
            ],
        )
        .await;
        let mut got: Vec<f64> = keys(&items).iter().map(|k| k.2).collect();
        if order == "desc" {
            got.reverse();
        }
        let want: Vec<f64> = (5..15).map(|i| 1000.0 + i as f64).collect();
        assert_eq!(got, want, "{order}");
        assert!(items.iter().all(|i| i["device_id"] == id.as_str()));
    }
    // from == to is an empty range, not an error.
    let (status, page) = hub
        .api(
            Method::GET,
            &query(
                "/readings",
                &[("device_id", &id), ("from", &to), ("to", &to)],
            ),
            &token,
            None,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page, json!({ "items": [], "next_cursor": null }));
}

/// Keyset pages stay exact while readings arrive: a reading stored behind the cursor is not
/// returned (its place was already passed), one ahead of it is, and nothing comes twice.
#[tokio::test]
async fn pages_stay_exact_while_readings_arrive_behind_and_ahead_of_the_cursor() {
    let hub = TestHub::start().await;
    let token = hub.admin_token().await;
    let device = hub.create_device(&token, "busy").await;
    let t0 = ts("2026-03-01T00:00:00Z");
    let first: Vec<(&str, DateTime<Utc>, f64)> = (0..30i64)
        .flat_map(|i| {
            [
                ("x", t0 + TimeDelta::seconds(i), i as f64),
                ("y", t0 + TimeDelta::seconds(i), -(i as f64)),
            ]
        })
        .collect();
    send(&hub, &device, &first).await;
    hub.wait_stored(device.id, 60).await;
    let id = device.id.to_string();

    let mut seen = Vec::new();
    let (status, page) = hub
        .api(
            Method::GET,
            &query("/readings", &[("device_id", &id), ("limit", "10")]),
            &token,
            None,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    seen.extend(keys(page["items"].as_array().unwrap()));
    let mut cursor = page["next_cursor"].as_str().unwrap().to_owned();
    // The first page ended at t0+4s; one reading lands behind it, one far ahead.
    let behind = ("x", t0 + TimeDelta::milliseconds(1500), 0.5);
    let ahead = ("y", t0 + TimeDelta::seconds(100), 100.0);
    send(&hub, &device, &[behind, ahead]).await;
    hub.wait_stored(device.id, 62).await;
    loop {
        let (status, page) = hub
            .api(
                Method::GET,
                &query(
                    "/readings",
                    &[("device_id", &id), ("limit", "10"), ("cursor", &cursor)],
                ),
                &token,
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        seen.extend(keys(page["items"].as_array().unwrap()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    let unique: BTreeSet<(String, DateTime<Utc>)> =
        seen.iter().map(|k| (k.0.clone(), k.1)).collect();
    assert_eq!(unique.len(), seen.len(), "a reading came twice");
    assert!(
        seen.windows(2).all(|w| w[0].1 <= w[1].1),
        "not in time order"
    );
    for (m, t, _) in &first {
        assert!(
            unique.contains(&(m.to_string(), *t)),
            "{m} at {t} is missing"
        );
    }
    assert!(
        unique.contains(&("y".to_owned(), ahead.1)),
        "the reading ahead is missing"
    );
    assert!(
        !unique.contains(&("x".to_owned(), behind.1)),
        "the reading behind was returned"
    );
    assert_eq!(seen.len(), 61);
}

/// Epoch-aligned start of the bucket of width `secs` holding `t`.
fn bucket_of(t: DateTime<Utc>, secs: i64) -> DateTime<Utc> {
    let micros = secs * 1_000_000;
    DateTime::from_timestamp_micros(t.timestamp_micros().div_euclid(micros) * micros).unwrap()
}

async fn aggregate(
    hub: &TestHub,
    token: &str,
    params: &[(&str, &str)],
) -> Vec<(DateTime<Utc>, f64, i64)> {
    let (status, body) = hub
        .api(
            Method::GET,
            &query("/readings/aggregate", params),
            token,
            None,
        )
        .await;
    assert_eq!(status, 200, "{params:?}: {body}");
    let obj = body.as_object().unwrap();
    assert_eq!(obj.len(), 1, "{body}");
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            assert_eq!(b.as_object().unwrap().len(), 3, "{b}");
            (
                ts(b["bucket"].as_str().unwrap()),
                b["value"].as_f64().unwrap(),
                b["count"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Every aggregate function gives the exact value over known data, sent out of order: buckets
/// start on multiples of their width since the epoch (not at `from`), hold only readings in
/// `[from, to)`, empty buckets are left out, `first`/`last` go by timestamp, not by arrival.
#[tokio::test]
async fn aggregates_are_exact_for_every_function_in_epoch_aligned_buckets() {
    let hub = TestHub::start().await;
    let token = hub.admin_token().await;
    let device = hub.create_device(&token, "thermo").await;
    let base = ts("2026-03-02T10:00:00Z");
    let at = |ms: i64| base + TimeDelta::milliseconds(ms);
    let data: Vec<(&str, DateTime<Utc>, f64)> = vec![
        ("temp", at(5_000), 4.0),
        ("temp", at(20_000), 1.0),
        ("temp", at(50_000), 7.0),
        ("temp", at(61_000), -2.5),
        ("temp", at(125_000), 0.5),
        ("temp", at(150_000), 10.0),
        ("temp", at(179_999), 3.0),
        ("temp", at(245_000), 100.0),
        // Another metric of the same device must not leak into temp's buckets.
        ("other", at(5_000), 1e6),
    ];
    // Last timestamps first, and the first bucket's readings in reverse, so that arrival order
    // and timestamp order disagree.
    send(&hub, &device, &[data[7], data[6], data[8]]).await;
    send(
        &hub,
        &device,
        &[data[2], data[5], data[1], data[4], data[0], data[3]],
    )
    .await;
    hub.wait_stored(device.id, 9).await;
    let id = device.id.to_string();
    let from = base.timestamp_millis().to_string();
    let to = rfc(base + TimeDelta::seconds(300));
    let minute = |m: i64| base + TimeDelta::minutes(m);
    let expected: [(&str, [f64; 4]); 7] = [
        ("avg", [4.0, -2.5, 4.5, 100.0]),
        ("min", [1.0, -2.5, 0.5, 100.0]),
        ("max", [7.0, -2.5, 10.0, 100.0]),
        ("sum", [12.0, -2.5, 13.5, 100.0]),
        ("count", [3.0, 1.0, 3.0, 1.0]),
        ("first", [4.0, -2.5, 0.5, 100.0]),
        ("last", [7.0, -2.5, 3.0, 100.0]),
    ];
    for (f, values) in expected {
        let got = aggregate(
            &hub,
            &token,
            &[
                ("device_id", &id),
                ("metric", "temp"),
                ("from", &from),
                ("to", &to),
                ("bucket", "1m"),
                ("fn", f),
            ],
        )
        .await;
        let want: Vec<_> = [0, 1, 2, 4]
            .iter()
            .zip(values)
            .zip([3, 1, 3, 1])
            .map(|((m, v), n)| (minute(*m), v, n))
            .collect();
        assert_eq!(got, want, "fn={f}");
    }

    // `from` in the middle of a bucket: the bucket still starts on the minute, and holds only
    // the readings at or after `from`; `to` is exclusive.
    let got = aggregate(
        &hub,
        &token,
        &[
            ("device_id", &id),
            ("metric", "temp"),
            ("from", &rfc(at(30_000))),
            ("to", &rfc(at(150_000))),
            ("bucket", "1m"),
            ("fn", "sum"),
        ],
    )
    .await;
    assert_eq!(
        got,
        vec![
            (minute(0), 7.0, 1),
            (minute(1), -2.5, 1),
            (minute(2), 0.5, 1)
        ]
    );

    // A width that does not divide an hour: buckets on multiples of 7 minutes since the epoch.
    let got = aggregate(
        &hub,
        &token,
        &[
            ("device_id", &id),
            ("metric", "temp"),
            ("from", &from),
            ("to", &to),
            ("bucket", "7m"),
            ("fn", "count"),
        ],
    )
    .await;
    let mut want: BTreeMap<DateTime<Utc>, i64> = BTreeMap::new();
    for (m, t, _) in &data {
        if *m == "temp" {
            *want.entry(bucket_of(*t, 420)).or_default() += 1;
        }
    }
    let want: Vec<_> = want.into_iter().map(|(b, n)| (b, n as f64, n)).collect();
    assert_eq!(got, want);
    assert!(got.iter().all(|(b, _, _)| b.timestamp() % 420 == 0));
    assert_ne!(got[0].0, base, "7-minute buckets must not start at from");

    // A day bucket starts at midnight UTC.
    let got = aggregate(
        &hub,
        &token,
        &[
            ("device_id", &id),
            ("metric", "temp"),
            ("from", &from),
            ("to", &to),
            ("bucket", "1d"),
            ("fn", "avg"),
        ],
    )
    .await;
    assert_eq!(got, vec![(ts("2026-03-02T00:00:00Z"), 123.0 / 8.0, 8)]);

    // Empty answers, never errors: from == to, a range without readings, a metric or a device
    // without readings; and exactly the maximum number of buckets is allowed.
    for params in [
        vec![
            ("device_id", id.as_str()),
            ("metric", "temp"),
            ("from", &from),
            ("to", &from),
        ],
        vec![
            ("device_id", &id),
            ("metric", "temp"),
            ("from", "2020-01-01T00:00:00Z"),
            ("to", "2020-01-02T00:00:00Z"),
        ],
        vec![
            ("device_id", &id),
            ("metric", "nothing"),
            ("from", &from),
            ("to", &to),
        ],
        vec![
            ("device_id", "00000000-0000-4000-8000-000000000000"),
            ("metric", "temp"),
            ("from", &from),
            ("to", &to),
        ],
        vec![
            ("device_id", &id),
            ("metric", "temp"),
            ("from", "2026-01-01T00:00:00Z"),
            ("to", "2026-01-07T22:40:00Z"),
        ],
    ] {
        let mut p = params.clone();
        p.extend([("bucket", "1m"), ("fn", "avg")]);
        assert_eq!(aggregate(&hub, &token, &p).await, vec![], "{p:?}");
    }
}

/// Latest is the reading with the greatest timestamp per metric, not the last to arrive; the
/// metric list has each metric's first and last reading times; an unknown device is a 404.
#[tokio::test]
async fn latest_goes_by_timestamp_and_metrics_list_first_and_last_seen() {
    let hub = TestHub::start().await;
    let token = hub.admin_token().await;
    let device = hub.create_device(&token, "late-sender").await;
    let t = ts("2026-03-03T12:00:00Z");
    let s = |secs: i64| t + TimeDelta::seconds(secs);
    let id = device.id.to_string();

    for route in ["latest", "metrics"] {
        let (status, body) = hub
            .api(Method::GET, &format!("/devices/{id}/{route}"), &token, None)
            .await;
        assert_eq!(
            (status, body),
            (200, json!({ "items": [] })),
            "{route} before any reading"
        );
    }
    send(&hub, &device, &[("temp", s(10), 2.0), ("hum", s(5), 50.0)]).await;
    hub.wait_stored(device.id, 2).await;
    // Arrive later, but one is older than what is stored and one newer.
    send(&hub, &device, &[("temp", s(0), 1.0), ("hum", s(20), 55.0)]).await;
    hub.wait_stored(device.id, 4).await;

    let (status, latest) = hub
        .api(Method::GET, &format!("/devices/{id}/latest"), &token, None)
        .await;
    assert_eq!(status, 200, "{latest}");
    assert_eq!(
        latest,
        json!({ "items": [
            { "device_id": id, "metric": "hum", "ts": rfc(s(20)), "value": 55.0 },
            { "device_id": id, "metric": "temp", "ts": rfc(s(10)), "value": 2.0 },
        ]})
    );
    let (status, metrics) = hub
        .api(Method::GET, &format!("/devices/{id}/metrics"), &token, None)
        .await;
    assert_eq!(status, 200, "{metrics}");
    assert_eq!(
        metrics,
        json!({ "items": [
            { "metric": "hum", "first_seen": rfc(s(5)), "last_seen": rfc(s(20)) },
            { "metric": "temp", "first_seen": rfc(s(0)), "last_seen": rfc(s(10)) },
        ]})
    );

    for route in ["latest", "metrics"] {
        let (status, body) = hub
            .api(
                Method::GET,
                &format!("/devices/{}/{route}", uuid::Uuid::new_v4()),
                &token,
                None,
            )
            .await;
        assert_error(route, status, &body, 404, "not_found");
        let (status, body) = hub
            .api(
                Method::GET,
                &format!("/devices/not-a-uuid/{route}"),
                &token,
                None,
            )
            .await;
        assert_error(route, status, &body, 400, "bad_request");
    }
}

/// Every bad parameter of the reading routes is a 400 in the one error shape, with a message
/// that names what is wrong.
#[tokio::test]
async fn every_bad_parameter_is_a_400_in_the_one_error_shape() {
    let hub = TestHub::start().await;
    let token = hub.admin_token().await;
    let device = hub.create_device(&token, "strict").await;
    let id = device.id.to_string();
    let long_metric = "m".repeat(129);
    let range: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![], "device_id"),
        (vec![("device_id", "")], "device_id"),
        (vec![("device_id", "not-a-uuid")], "device_id"),
        (vec![("device_id", &id), ("metric", "has space")], "metric"),
        (vec![("device_id", &id), ("metric", "")], "metric"),
        (vec![("device_id", &id), ("metric", &long_metric)], "metric"),
        (vec![("device_id", &id), ("from", "yesterday")], "from"),
        (vec![("device_id", &id), ("from", "2026-03-01")], "from"),
        (
            vec![("device_id", &id), ("from", "2026-03-01T00:00:00")],
            "from",
        ),
        (vec![("device_id", &id), ("to", "1.5")], "to"),
        (vec![("device_id", &id), ("to", "")], "to"),
        (
            vec![("device_id", &id), ("from", "-62167219200001")],
            "from",
        ),
        (vec![("device_id", &id), ("to", "253402300800000")], "to"),
        (
            vec![("device_id", &id), ("from", "99999999999999999999")],
            "from",
        ),
        (
            vec![
                ("device_id", &id),
                ("from", "2026-03-02T00:00:00Z"),
                ("to", "1772323200000"),
            ],
            "from must not be after to",
        ),
        (vec![("device_id", &id), ("limit", "0")], "limit"),
        (vec![("device_id", &id), ("limit", "-1")], "limit"),
        (vec![("device_id", &id), ("limit", "10001")], "limit"),
        (vec![("device_id", &id), ("limit", "abc")], "limit"),
        (vec![("device_id", &id), ("limit", "1.5")], "limit"),
        (vec![("device_id", &id), ("cursor", "junk")], "cursor"),
        (vec![("device_id", &id), ("cursor", "1_x")], "cursor"),
        (vec![("device_id", &id), ("cursor", "1_-1")], "cursor"),
        (vec![("device_id", &id), ("order", "sideways")], "order"),
        (vec![("device_id", &id), ("order", "ASC")], "order"),
    ];
    for (params, mention) in &range {
        let path = query("/readings", params);
        let (status, body) = hub.api(Method::GET, &path, &token, None).await;
        assert_error(&path, status, &body, 400, "bad_request");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(mention),
            "{path}: {message:?} does not mention {mention}"
        );
    }

    let full = [
        ("device_id", id.as_str()),
        ("metric", "temp"),
        ("from", "2026-03-01T00:00:00Z"),
        ("to", "2026-03-02T00:00:00Z"),
        ("bucket", "1m"),
        ("fn", "avg"),
    ];
    let (status, body) = hub
        .api(
            Method::GET,
            &query("/readings/aggregate", &full),
            &token,
            None,
        )
        .await;
    assert_eq!(status, 200, "the base case must be valid: {body}");
    let mut agg_cases: Vec<(Vec<(&str, &str)>, &str)> = Vec::new();
    // Each required parameter left out.
    for (i, (name, _)) in full.iter().enumerate() {
        let mut p = full.to_vec();
        p.remove(i);
        agg_cases.push((p, name));
    }
    let with = |name: &'static str, value: &'static str| {
        let mut p: Vec<(&str, &str)> = full.to_vec();
        for kv in p.iter_mut() {
            if kv.0 == name {
                kv.1 = value;
            }
        }
        p
    };
    for (name, value) in [
        ("device_id", "nope"),
        ("metric", "bad metric"),
        ("from", "soon"),
        ("to", "2026-03-02"),
        ("bucket", ""),
        ("bucket", "0s"),
        ("bucket", "0m"),
        ("bucket", "01m"),
        ("bucket", "1x"),
        ("bucket", "1.5m"),
        ("bucket", "m"),
        ("bucket", "1"),
        ("bucket", "-1m"),
        ("bucket", "1w"),
        ("bucket", "1 m"),
        ("bucket", "1000000d"),
        ("fn", "median"),
        ("fn", "AVG"),
        ("fn", ""),
    ] {
        agg_cases.push((with(name, value), name));
    }
    agg_cases.push((
        with("from", "2026-03-03T00:00:00Z"),
        "from must not be after to",
    ));
    // 86 400 one-second buckets in a day: over the limit, and the message names it.
    agg_cases.push((with("bucket", "1s"), "10000"));
    agg_cases.push((with("bucket", "8s"), "10000"));
    for (params, mention) in &agg_cases {
        let path = query("/readings/aggregate", params);
        let (status, body) = hub.api(Method::GET, &path, &token, None).await;
        assert_error(&path, status, &body, 400, "bad_request");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(mention),
            "{path}: {message:?} does not mention {mention}"
        );
    }
    // 9 s buckets over a day: 9600 buckets, within the limit.
    let (status, body) = hub
        .api(
            Method::GET,
            &query("/readings/aggregate", &with("bucket", "9s")),
            &token,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Without a token: 401 in the same shape.
    for path in [
        query("/readings", &[("device_id", &id)]),
        query("/readings/aggregate", &full),
        format!("/devices/{id}/latest"),
        format!("/devices/{id}/metrics"),
    ] {
        let (status, body) = hub.api(Method::GET, &path, "", None).await;
        assert_error(&path, status, &body, 401, "unauthorized");
    }
}

/// Every route the processor's router serves, as (method, path template). The router cannot be
/// enumerated at run time, so this list is the test's statement of it: a route added to the
/// router without being in the document fails below (its probe would not be checked), and one
/// documented but not served fails the probe.
const SERVED: &[(&str, &str)] = &[
    ("post", "/auth/login"),
    ("get", "/auth/me"),
    ("get", "/users"),
    ("post", "/users"),
    ("delete", "/users/{id}"),
    ("get", "/devices"),
    ("post", "/devices"),
    ("get", "/devices/{id}"),
    ("patch", "/devices/{id}"),
    ("delete", "/devices/{id}"),
    ("post", "/devices/{id}/rotate-key"),
    ("get", "/devices/{id}/latest"),
    ("get", "/devices/{id}/metrics"),
    ("get", "/readings"),
    ("get", "/readings/aggregate"),
    ("get", "/rules"),
    ("post", "/rules"),
    ("get", "/rules/{id}"),
    ("patch", "/rules/{id}"),
    ("delete", "/rules/{id}"),
    ("get", "/alerts"),
    ("get", "/alerts/{id}"),
    ("post", "/alerts/{id}/resolve"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// `GET /openapi.json` is an OpenAPI 3 document of every route the processor serves, with its
/// parameters, a bearer scheme on every authenticated operation, and every error answer in the
/// one error shape; each documented operation is really served (no 404 "no such route" or 405).
#[tokio::test]
async fn the_processor_openapi_document_lists_every_route_the_router_serves() {
    let hub = TestHub::start().await;
    let token = hub.admin_token().await;
    let r = hub
        .http
        .get(format!("{}/openapi.json", hub.processor_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "served without a token");
    assert!(
        r.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let doc: Value = r.json().await.unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["type"],
        "http"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let error_body = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(error_body["required"], json!(["error"]), "{error_body}");

    let mut documented = BTreeSet::new();
    let mut operation_ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if !METHODS.contains(&method.as_str()) {
                continue;
            }
            let what = format!("{method} {path}");
            documented.insert((method.clone(), path.clone()));
            let op_id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{what}: no operationId"));
            assert!(
                operation_ids.insert(op_id.to_owned()),
                "{what}: operationId {op_id} twice"
            );
            // Every `{param}` of the path is declared as a path parameter.
            for name in path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            {
                let declared = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["name"] == name && p["in"] == "path" && p["required"] == true);
                assert!(declared, "{what}: path parameter {name} is not declared");
            }
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{what}: no success answer"
            );
            for (status, response) in responses {
                // Readiness answers 503 with its checks, not an error.
                let readiness = path == "/readyz" && status == "503";
                if (status.starts_with('4') || status.starts_with('5')) && !readiness {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{what} {status}: not the one error shape"
                    );
                }
            }
            let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
            if secured {
                assert_eq!(op["security"], json!([{ "bearer": [] }]), "{what}");
                for status in ["401", "500", "503"] {
                    assert!(responses.contains_key(status), "{what}: no {status} answer");
                }
            }
            // Everything but login and the meta routes needs a token.
            let public = path == "/auth/login"
                || ["/healthz", "/readyz", "/metrics", "/openapi.json"].contains(&path.as_str());
            assert_eq!(secured, !public, "{what}: security");

            // The router serves it: an unknown id or an empty body may be refused, but not as
            // "no such route" or "method not allowed".
            let concrete = path.replace("{id}", &uuid::Uuid::new_v4().to_string());
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let body = matches!(method, Method::POST | Method::PATCH).then(|| json!({}));
            let (status, answer) = hub.api(method, &concrete, &token, body).await;
            assert_ne!(status, 405, "{what}: not served: {answer}");
            assert!(
                !(status == 404 && answer["error"]["message"] == "no such route"),
                "{what}: not served: {answer}"
            );
        }
    }
    let served: BTreeSet<(String, String)> = SERVED
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty(),
        "served but not documented: {undocumented:?}"
    );
    assert!(
        unknown.is_empty(),
        "documented but missing from SERVED: {unknown:?}"
    );

    // The query parameters of the reading routes, with what the handlers enforce.
    let params = |path: &str| -> BTreeMap<String, Value> {
        doc["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["name"].as_str().unwrap().to_owned(), p.clone()))
            .collect()
    };
    let range = params("/readings");
    assert_eq!(
        range.keys().collect::<Vec<_>>(),
        [
            "cursor",
            "device_id",
            "from",
            "limit",
            "metric",
            "order",
            "to"
        ]
    );
    assert_eq!(range["device_id"]["required"], true);
    assert_eq!(range["limit"]["schema"]["maximum"], 10000);
    assert_eq!(range["order"]["schema"]["enum"], json!(["asc", "desc"]));
    let aggregate = params("/readings/aggregate");
    for name in ["device_id", "metric", "from", "to", "bucket", "fn"] {
        assert_eq!(aggregate[name]["required"], true, "{name}");
    }
    assert_eq!(
        aggregate["fn"]["schema"]["enum"],
        json!(["avg", "min", "max", "sum", "count", "first", "last"])
    );
    assert_eq!(
        aggregate["bucket"]["schema"]["pattern"],
        "^[1-9][0-9]{0,5}[smhd]$"
    );
}

/// The gateway documents `POST /ingest` at its own `GET /openapi.json`: the three body shapes,
/// both ways of presenting the key, and every answer of the ingest contract.
#[tokio::test]
async fn the_gateway_openapi_document_describes_ingest() {
    let hub = TestHub::start().await;
    let r = hub
        .http
        .get(format!("{}/openapi.json", hub.gateway_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let ingest = &doc["paths"]["/ingest"]["post"];
    assert!(ingest.is_object(), "{doc}");
    let responses = ingest["responses"].as_object().unwrap();
    for status in ["202", "400", "401", "413", "422", "429", "503"] {
        assert!(responses.contains_key(status), "no {status} answer");
    }
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    assert_eq!(schemes.len(), 2, "{schemes:?}");
    assert_eq!(ingest["security"].as_array().unwrap().len(), 2);
    let mut body = &ingest["requestBody"]["content"]["application/json"]["schema"];
    if let Some(name) = body["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
    {
        body = &doc["components"]["schemas"][name];
    }
    assert_eq!(body["oneOf"].as_array().map(Vec::len), Some(3), "{body}");
    let headers: Vec<_> = ingest["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["in"] == "header")
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(headers.contains(&"Idempotency-Key"), "{headers:?}");
}

/// The schemathesis executable, installed by compose/services into the tools directory.
fn schemathesis() -> std::path::PathBuf {
    let path = std::env::var_os("HUB_TEST_SCHEMATHESIS").unwrap_or_else(|| {
        panic!(
            "HUB_TEST_SCHEMATHESIS is not set: run the suite with compose/test, or \
             `compose/services up && eval \"$(compose/services env)\"`"
        )
    });
    let path = std::path::PathBuf::from(path);
    assert!(
        path.is_file(),
        "schemathesis is not at {} (HUB_TEST_SCHEMATHESIS): run compose/services up",
        path.display()
    );
    path
}

/// schemathesis generates requests for every operation of `/openapi.json` (valid and invalid,
/// with and without the token, and sequences that follow the document's links), authenticated
/// as an admin, and checks every answer: no 5xx, every status documented, every body matching
/// its schema, valid data accepted and invalid data refused. The number of examples is bounded
/// so that the run takes a couple of minutes on a small machine.
#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_answer_that_breaks_the_document() {
    let st = schemathesis();
    let hub = TestHub::start().await;
    let token = hub.admin_token().await;
    // Data for the read routes to find: a device with readings.
    let device = hub.create_device(&token, "fuzzed").await;
    let t = ts("2026-03-04T00:00:00Z");
    let readings: Vec<(&str, DateTime<Utc>, f64)> = (0..50i64)
        .map(|i| {
            (
                if i % 2 == 0 { "temp" } else { "hum" },
                t + TimeDelta::seconds(i),
                i as f64,
            )
        })
        .collect();
    send(&hub, &device, &readings).await;
    hub.wait_stored(device.id, 50).await;

    let config = hub_tests::workspace_root().join("tests/schemathesis.toml");
    let url = format!("{}/openapi.json", hub.processor_url());
    let examples = std::env::var("HUB_TEST_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "15".into());
    // Its own working directory: schemathesis may leave files in it.
    let workdir = std::env::temp_dir().join(format!("schemathesis-{}", hub.namespace));
    std::fs::create_dir_all(&workdir).unwrap();
    let child = tokio::process::Command::new(&st)
        .current_dir(&workdir)
        // tests/schemathesis.toml points the reading routes at this device.
        .env("HUB_ST_DEVICE_ID", device.id.to_string())
        .arg("--config-file")
        .arg(&config)
        .args(["run", &url, "--checks", "all", "--max-examples", &examples])
        .args(["--seed", "20261203", "--workers", "2", "--no-color"])
        .args(["--generation-database", "none"])
        .args(["--request-timeout", "20", "--max-failures", "50"])
        .arg("-H")
        .arg(format!("Authorization: Bearer {token}"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", st.display()));
    let out = tokio::time::timeout(Duration::from_secs(600), child.wait_with_output())
        .await
        .expect("schemathesis ran for more than 10 minutes")
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&workdir);
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    assert!(
        text.contains("Tested:"),
        "schemathesis did not test anything:\n{text}"
    );

    // The hub survived the run: the token and the data are still there.
    let http = &hub.http;
    let readyz = format!("{}/readyz", hub.processor_url());
    wait_until(
        Duration::from_secs(10),
        "the processor to stay ready",
        || async {
            http.get(&readyz)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        },
    )
    .await;
}

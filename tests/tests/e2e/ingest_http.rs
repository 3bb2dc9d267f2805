//! `POST /ingest` over HTTP: every status of docs/api.md and the cases C1–C6, C9, C10 (inputs that broke comparable
//! systems).

use hub_tests::hub::{HubOptions, TestHub, stream_state, wait_until};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

const NOW_ISH: &str = "2026-01-01T00:00:00Z";

async fn values_stored(hub: &TestHub, device: uuid::Uuid) -> Vec<f64> {
    sqlx::query_scalar("SELECT value FROM metric_readings WHERE device_id = $1 ORDER BY ts")
        .bind(device)
        .fetch_all(&hub.db)
        .await
        .unwrap()
}

/// Cases C1–C4: bad readings are rejected by index with a reason, the good ones beside them are
/// stored, and nothing non-finite reaches storage.
#[tokio::test]
async fn bad_readings_are_rejected_by_index_and_their_neighbours_stored() {
    let hub = TestHub::start().await;
    let token = hub.admin_token().await;
    let d = hub.create_device(&token, "mixed").await;
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).timestamp_millis();
    let body = format!(
        r#"[
        {{"metric":"t","value":1,"ts":1559206140}},
        {{"metric":"t","value":2,"ts":{future}}},
        {{"metric":"t","value":"NaN","ts":"2026-01-01T00:00:01Z"}},
        {{"metric":"t","value":"Infinity","ts":"2026-01-01T00:00:02Z"}},
        {{"metric":"t","value":null,"ts":"2026-01-01T00:00:03Z"}},
        {{"metric":"t","value":NaN,"ts":"2026-01-01T00:00:04Z"}},
        {{"metric":"hum","value":"37.8","ts":"2026-01-01T00:00:05Z"}},
        {{"metric":"t","value":10.5,"ts":"{NOW_ISH}"}},
        {{"metric":"t","value":11.5,"ts":1559206140000}}
    ]"#
    );
    let (status, resp) = hub.ingest(&d.key, body).await;
    assert_eq!(status, 202, "{resp}");
    assert_eq!(resp["accepted"], 2);
    let rejected = resp["rejected"].as_array().unwrap();
    let by_index = |i: u64| {
        rejected
            .iter()
            .find(|r| r["index"] == i)
            .map(|r| r["error"].as_str().unwrap().to_owned())
            .unwrap_or_else(|| panic!("index {i} not rejected: {resp}"))
    };
    assert!(
        by_index(0).contains("epoch seconds") && by_index(0).contains("1970"),
        "C1: {}",
        by_index(0)
    );
    assert!(by_index(1).contains("future"), "C2: {}", by_index(1));
    for i in [2, 3, 5] {
        assert!(
            by_index(i).contains("not finite"),
            "C3 {i}: {}",
            by_index(i)
        );
    }
    assert!(by_index(4).contains("null"), "C3 null: {}", by_index(4));
    assert!(by_index(6).contains("JSON number"), "C4: {}", by_index(6));
    assert_eq!(rejected.len(), 7);
    hub.wait_stored(d.id, 2).await;
    let values = values_stored(&hub, d.id).await;
    assert_eq!(values, vec![11.5, 10.5]);
    assert!(values.iter().all(|v| v.is_finite()));
}

/// What got a 202 is stored, reading for reading: readings without `ts` (which take the
/// receive time, to the microsecond) sent back to back are all kept, timestamps keep their
/// microseconds, and a repeat of one metric and time within one body is refused by index
/// instead of being counted as accepted and merged away by storage.
#[tokio::test]
async fn every_accepted_reading_is_stored_including_those_without_ts() {
    let hub = TestHub::start().await;
    let token = hub.admin_token().await;
    let d = hub.create_device(&token, "hasty").await;
    let mut accepted = 0;
    for v in 0..20 {
        let (status, resp) = hub
            .ingest(&d.key, format!(r#"{{"metric":"no_ts","value":{v}}}"#))
            .await;
        assert_eq!(status, 202, "{resp}");
        accepted += resp["accepted"].as_i64().unwrap();
    }
    let (status, resp) = hub
        .ingest(
            &d.key,
            r#"[{"metric":"same","value":1},{"metric":"same","value":2},{"metric":"other","value":3},
                {"metric":"fine","value":4,"ts":"2026-01-01T00:00:00.000001Z"},
                {"metric":"fine","value":5,"ts":"2026-01-01T00:00:00.000002Z"},
                {"metric":"fine","value":6,"ts":"2026-01-01T00:00:00.000002Z"}]"#,
        )
        .await;
    assert_eq!(status, 202, "{resp}");
    assert_eq!(resp["accepted"], 4, "{resp}");
    let rejected: Vec<i64> = resp["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["index"].as_i64().unwrap())
        .collect();
    assert_eq!(rejected, vec![1, 5], "{resp}");
    accepted += resp["accepted"].as_i64().unwrap();
    hub.wait_stored(d.id, accepted).await;
    let fine: Vec<String> = sqlx::query_scalar(
        "SELECT to_char(ts AT TIME ZONE 'UTC', 'SS.US') FROM metric_readings
         WHERE device_id = $1 AND metric_name = 'fine' ORDER BY ts",
    )
    .bind(d.id)
    .fetch_all(&hub.db)
    .await
    .unwrap();
    assert_eq!(fine, vec!["00.000001", "00.000002"]);
}

/// Statuses for bodies and keys: 400, 401, 413, 422, and the error shape on each.
#[tokio::test]
async fn every_refusal_has_its_status_and_the_one_error_shape() {
    let hub = TestHub::start_with(HubOptions {
        gateway_env: vec![("GATEWAY_MAX_READINGS".into(), "3".into())],
        ..Default::default()
    })
    .await;
    let token = hub.admin_token().await;
    let d = hub.create_device(&token, "statuses").await;
    let url = format!("{}/ingest", hub.gateway_url());
    let good = r#"{"metric":"t","value":1}"#;

    let cases: Vec<(&str, Option<&str>, String, u16, &str)> = vec![
        (
            "C6 empty body",
            Some(d.key.as_str()),
            String::new(),
            400,
            "invalid_body",
        ),
        (
            "not JSON",
            Some(d.key.as_str()),
            "{nope".into(),
            400,
            "invalid_body",
        ),
        (
            "scalar",
            Some(d.key.as_str()),
            "42".into(),
            400,
            "invalid_body",
        ),
        (
            "a byte-order mark before the JSON",
            Some(d.key.as_str()),
            format!("\u{feff}{good}"),
            400,
            "invalid_body",
        ),
        (
            "a non-ASCII letter outside a string",
            Some(d.key.as_str()),
            r#"{"metric":"t","value":1é}"#.into(),
            400,
            "invalid_body",
        ),
        (
            "none valid",
            Some(d.key.as_str()),
            r#"[{"metric":"t","value":"x"}]"#.into(),
            422,
            "no_valid_readings",
        ),
        (
            "empty array",
            Some(d.key.as_str()),
            "[]".into(),
            422,
            "no_readings",
        ),
        (
            "too many readings",
            Some(d.key.as_str()),
            format!("[{good},{good},{good},{good}]"),
            413,
            "payload_too_large",
        ),
        ("no key", None, good.into(), 401, "unauthorized"),
        (
            "unknown key",
            Some(
                "iotk_000000000000_0000000000000000000000000000000000000000000000000000000000000000",
            ),
            good.into(),
            401,
            "unauthorized",
        ),
        (
            "garbage key",
            Some("hello"),
            good.into(),
            401,
            "unauthorized",
        ),
    ];
    for (what, key, body, status, code) in cases {
        let mut req = hub.http.post(&url).body(body);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{what}");
        let v: Value = r
            .json()
            .await
            .unwrap_or_else(|e| panic!("{what}: not JSON: {e}"));
        assert_eq!(v["error"]["code"], code, "{what}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: {v}"
        );
    }
    // X-API-Key works as well as Authorization.
    let r = hub
        .http
        .post(&url)
        .header("X-API-Key", &d.key)
        .body(good)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // A key in the URL is never accepted.
    let r = hub
        .http
        .post(format!("{url}?api_key={}", d.key))
        .body(good)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Unknown routes and methods answer in the same shape.
    let r = hub.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let r = hub
        .http
        .get(format!("{}/nope", hub.gateway_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "not_found"
    );
    hub.wait_stored(d.id, 1).await;
}

/// Case C10: 10 000 readings just under 1 MiB are all stored; one byte-heavy body over 1 MiB is
/// 413 with the limit in the message and stores nothing.
#[tokio::test]
async fn the_size_limits_take_a_full_batch_and_refuse_a_larger_one_whole() {
    let hub = TestHub::start().await;
    let token = hub.admin_token().await;
    let d = hub.create_device(&token, "bulk").await;
    let base = 1_700_000_000_000i64;
    let reading = |i: i64| format!(r#"{{"metric":"m","value":{i}.25,"ts":{}}}"#, base + i);
    let mut body = format!(
        "[{}]",
        (0..10_000).map(reading).collect::<Vec<_>>().join(",")
    );
    // Pad with whitespace up to just under 1 MiB.
    let pad = 1024 * 1024 - 1 - body.len();
    body.insert_str(1, &" ".repeat(pad));
    assert_eq!(body.len(), 1024 * 1024 - 1);
    let (status, resp) = hub.ingest(&d.key, body.clone()).await;
    assert_eq!(status, 202, "{resp}");
    assert_eq!(resp["accepted"], 10_000);
    hub.wait_stored(d.id, 10_000).await;

    let other = hub.create_device(&token, "bulk 2").await;
    body.insert_str(1, "  ");
    let (status, resp) = hub.ingest(&other.key, body).await;
    assert_eq!(status, 413, "{resp}");
    assert!(
        resp["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1048576"),
        "{resp}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(hub.stored(other.id).await, 0);
}

/// Case C9: an out-of-order batch is stored whole and the newest reading is the one with the
/// greatest timestamp, not the last in the body.
#[tokio::test]
async fn an_out_of_order_batch_is_stored_whole_and_ordered_by_time() {
    let hub = TestHub::start().await;
    let token = hub.admin_token().await;
    let d = hub.create_device(&token, "order").await;
    let t = 1_750_000_000_000i64;
    let body = json!([
        {"metric": "m", "value": 4, "ts": t + 3000},
        {"metric": "m", "value": 2, "ts": t + 1000},
        {"metric": "m", "value": 3, "ts": t + 2000},
        {"metric": "m", "value": 1, "ts": t},
    ]);
    assert_eq!(hub.ingest(&d.key, body.to_string()).await.0, 202);
    hub.wait_stored(d.id, 4).await;
    let (_, page) = hub
        .api(
            Method::GET,
            &format!("/readings?device_id={}&metric=m", d.id),
            &token,
            None,
        )
        .await;
    let values: Vec<f64> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["value"].as_f64().unwrap())
        .collect();
    assert_eq!(values, vec![1.0, 2.0, 3.0, 4.0]);
    let (_, newest) = hub
        .api(
            Method::GET,
            &format!("/readings?device_id={}&metric=m&order=desc&limit=1", d.id),
            &token,
            None,
        )
        .await;
    assert_eq!(newest["items"][0]["value"], 4.0);
}

/// 429 with Retry-After over the per-device rate; other devices are not affected.
#[tokio::test]
async fn a_device_over_its_rate_gets_429_with_retry_after() {
    let hub = TestHub::start_with(HubOptions {
        gateway_env: vec![
            ("GATEWAY_INGEST_RATE_PER_SEC".into(), "1".into()),
            ("GATEWAY_INGEST_BURST".into(), "2".into()),
        ],
        ..Default::default()
    })
    .await;
    let token = hub.admin_token().await;
    let d = hub.create_device(&token, "chatty").await;
    let e = hub.create_device(&token, "quiet").await;
    let mut limited = None;
    for _ in 0..6 {
        let r = hub
            .http
            .post(format!("{}/ingest", hub.gateway_url()))
            .bearer_auth(&d.key)
            .body(r#"{"metric":"m","value":1}"#)
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("no 429 after 6 requests at a rate of 1/s with burst 2");
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "rate_limited"
    );
    assert_eq!(
        hub.ingest(&e.key, r#"{"metric":"m","value":1}"#).await.0,
        202
    );
}

/// 503 with Retry-After when JetStream cannot take the batch (here: the stream is gone), and
/// nothing is claimed as accepted.
#[tokio::test]
async fn the_gateway_answers_503_when_jetstream_cannot_store() {
    let hub = TestHub::start_with(HubOptions {
        processors: 1,
        ..Default::default()
    })
    .await;
    let token = hub.admin_token().await;
    let d = hub.create_device(&token, "unlucky").await;
    let (js, names) = hub.jetstream().await;
    js.delete_stream(names.stream()).await.unwrap();
    let r = hub
        .http
        .post(format!("{}/ingest", hub.gateway_url()))
        .bearer_auth(&d.key)
        .body(r#"{"metric":"m","value":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "unavailable"
    );
}

/// The stream's byte limit bounds what waits for a processor, not what was already stored: a
/// stream of 1 MiB takes many times that over time while the processor keeps up (it trims what
/// it acknowledged), where a stream that kept processed messages would answer 503 after a few.
#[tokio::test]
async fn the_stream_limit_bounds_only_what_waits_for_a_processor() {
    let limit: i64 = 1024 * 1024;
    let hub = TestHub::start_with(HubOptions {
        processors: 1,
        stream_max_bytes: Some(limit),
        ..Default::default()
    })
    .await;
    let token = hub.admin_token().await;
    let d = hub.create_device(&token, "steady").await;
    let (js, names) = hub.jetstream().await;
    let per_body: i64 = 10_000;
    let rounds: i64 = 16;
    let drained = || async { stream_state(&js, &names).await.map(|s| s.messages) == Some(0) };
    for round in 0..rounds {
        // Each round waits for the trim of the last: without it, the stream never empties.
        wait_until(Duration::from_secs(10), "the stream is trimmed", drained).await;
        let base = 1_767_225_600_000 + round * per_body;
        let readings: Vec<Value> = (0..per_body)
            .map(|i| json!({"metric": "m", "value": i as f64 + 0.5, "ts": base + i}))
            .collect();
        let (status, body) = hub
            .ingest(&d.key, json!({ "readings": readings }).to_string())
            .await;
        assert_eq!(status, 202, "round {round}: {body}");
        hub.wait_stored(d.id, (round + 1) * per_body).await;
    }
    // Each message holds 10 000 readings of at least 16 bytes (an f64 value and a timestamp),
    // so the stream took over 2.5 MiB in all, more than twice its limit.
    let state = stream_state(&js, &names).await.unwrap();
    assert_eq!(state.last_sequence, rounds as u64, "{state:?}");
}

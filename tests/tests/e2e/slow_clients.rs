//! Clients that hold connections without finishing their requests (slowloris) or announce
//! bodies over the limit: both HTTP servers close or answer them within the configured time,
//! in the one error shape, and keep serving everyone else.

use hub_tests::hub::{HubOptions, TestHub};
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

/// Everything the server sends until it closes the connection, and how long that took; panics
/// if it is still open after `within`.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + within).into(), stream.read(&mut buf)).await {
            Err(_) => panic!(
                "the connection is still open after {within:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    (
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
    )
}

/// The status line and the JSON body of a raw HTTP/1.1 answer.
fn status_and_body(answer: &str) -> (u16, Value) {
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

async fn connect(url: &str) -> TcpStream {
    TcpStream::connect(host_port(url)).await.unwrap()
}

#[tokio::test]
async fn stalled_heads_and_bodies_are_cut_off_and_oversized_bodies_refused_up_front() {
    let timeouts = vec![
        ("HTTP_HEADER_TIMEOUT_SECS".to_owned(), "1".to_owned()),
        ("HTTP_BODY_TIMEOUT_SECS".to_owned(), "1".to_owned()),
    ];
    let mut opts = HubOptions::default();
    opts.gateway_env.extend(timeouts.clone());
    opts.processor_env.extend(timeouts);
    let hub = TestHub::start_with(opts).await;
    let token = hub.admin_token().await;
    let d = hub.create_device(&token, "patient").await;
    let (gw, api) = (hub.gateway_url().to_owned(), hub.processor_url().to_owned());

    for base in [&gw, &api] {
        // Half a request head, then silence: closed after the header timeout.
        let mut s = connect(base).await;
        s.write_all(b"POST /ingest HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let (_, took) = read_until_closed(&mut s, Duration::from_secs(10)).await;
        assert!(
            took >= Duration::from_millis(900),
            "{base}: closed after {took:?}"
        );
        // A connection that never sends anything is closed as well.
        let mut s = connect(base).await;
        read_until_closed(&mut s, Duration::from_secs(10)).await;
    }

    // A body that stops arriving: 408 in the error shape after the body timeout.
    let stalled = [
        (
            &gw,
            format!(
                "POST /ingest HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 100\r\n\r\n[{{\"metric\"",
                d.key
            ),
        ),
        (
            &api,
            "POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"username\"".to_owned(),
        ),
    ];
    for (base, head) in stalled {
        let mut s = connect(base).await;
        s.write_all(head.as_bytes()).await.unwrap();
        let (answer, _) = read_until_closed(&mut s, Duration::from_secs(10)).await;
        let (status, body) = status_and_body(&answer);
        assert_eq!(status, 408, "{base}: {answer}");
        assert_eq!(body["error"]["code"], "request_timeout", "{base}: {answer}");
    }

    // A Content-Length over the limit is refused before the body is read: no `100 Continue`.
    let oversized = [
        (
            &gw,
            format!(
                "POST /ingest HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 99999999999\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
                d.key
            ),
        ),
        (
            &api,
            format!(
                "POST /devices HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 99999999999\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
            ),
        ),
    ];
    for (base, head) in oversized {
        let mut s = connect(base).await;
        s.write_all(head.as_bytes()).await.unwrap();
        let (answer, _) = read_until_closed(&mut s, Duration::from_secs(10)).await;
        assert!(!answer.contains("100 Continue"), "{base}: {answer}");
        let (status, body) = status_and_body(&answer);
        assert_eq!(status, 413, "{base}: {answer}");
        assert_eq!(
            body["error"]["code"], "payload_too_large",
            "{base}: {answer}"
        );
    }

    // A real body over the processor's limit (1 MiB) is a 413 too, not a 400.
    let big = format!("{{\"name\":\"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let r = hub
        .http
        .post(format!("{api}/devices"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "payload_too_large"
    );

    // Everyone else was served throughout, and still is.
    let (status, body) = hub.ingest(&d.key, r#"{"metric":"t","value":1}"#).await;
    assert_eq!(status, 202, "{body}");
    hub.wait_stored(d.id, 1).await;
}

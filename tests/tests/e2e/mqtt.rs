//! The gateway's receive-only MQTT 3.1.1 endpoint, driven by the real `mosquitto_pub`,
//! by rumqttc's client, and — where a test must control packet ids, the DUP flag or watch for a
//! PUBACK that must *not* come — by a bare client written with rumqttc's own codec.

use bytes::BytesMut;
use hub_tests::hub::{HubOptions, TestDevice, TestHub, stream_state, wait_until};
use reqwest::Method;
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, Packet, PubAck, Publish, SubAck, Subscribe,
    SubscribeReasonCode, UnsubAck, Unsubscribe,
};
use rumqttc::mqttbytes::{Error as CodecError, QoS};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A reading time inside the default horizon and skew, distinct per call site.
const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

fn mqtt_addr(hub: &TestHub) -> SocketAddr {
    hub.gateways[0]
        .mqtt_addr
        .expect("the gateway's \"Gateway listening.\" line has no mqtt_addr")
}

fn topic(device: &TestDevice) -> String {
    format!("devices/{}/readings", device.id)
}

fn reading(metric: &str, value: f64, ts: i64) -> String {
    format!(r#"{{"metric":"{metric}","value":{value},"ts":{ts}}}"#)
}

async fn events(hub: &TestHub, kind: &str) -> f64 {
    hub.metric(
        hub.gateway_url(),
        "hub_gateway_mqtt_events_total",
        &[("kind", kind)],
    )
    .await
}

/// What a bare client saw within a deadline.
#[derive(Debug)]
enum Seen {
    Packet(Packet),
    /// The gateway closed the connection.
    Closed,
    /// Nothing arrived, and the connection is still open.
    Nothing,
}

/// A minimal MQTT client on rumqttc's codec: it sends exactly the packets a test builds.
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    async fn open(addr: SocketAddr) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.expect("connect to MQTT"),
            buf: BytesMut::new(),
        }
    }

    /// Opens a connection, sends CONNECT and returns the CONNACK code.
    async fn connect(
        addr: SocketAddr,
        client_id: &str,
        username: &str,
        password: &str,
        keep_alive: u16,
    ) -> (Raw, ConnAck) {
        let mut raw = Raw::open(addr).await;
        let mut connect = Connect::new(client_id);
        connect.keep_alive = keep_alive;
        connect.set_login(username, password);
        raw.send(Packet::Connect(connect)).await;
        match raw.recv(Duration::from_secs(10)).await {
            Seen::Packet(Packet::ConnAck(ack)) => (raw, ack),
            other => panic!("expected CONNACK, saw {other:?}"),
        }
    }

    async fn device(addr: SocketAddr, client_id: &str, device: &TestDevice) -> Raw {
        let (raw, ack) =
            Raw::connect(addr, client_id, &device.id.to_string(), &device.key, 60).await;
        assert_eq!(ack.code, ConnectReturnCode::Success);
        raw
    }

    async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        packet.write(&mut out, usize::MAX).expect("encode");
        self.stream.write_all(&out).await.expect("write");
    }

    async fn publish(&mut self, topic: &str, qos: QoS, pkid: u16, dup: bool, payload: &[u8]) {
        let mut p = Publish::new(topic, qos, payload.to_vec());
        p.pkid = pkid;
        p.dup = dup;
        self.send(Packet::Publish(p)).await;
    }

    async fn recv(&mut self, within: Duration) -> Seen {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match Packet::read(&mut self.buf, 1 << 20) {
                Ok(p) => return Seen::Packet(p),
                Err(CodecError::InsufficientBytes(_)) => {}
                Err(e) => panic!("the gateway sent something unreadable: {e}"),
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Seen::Nothing,
                Ok(Ok(0)) | Ok(Err(_)) => return Seen::Closed,
                Ok(Ok(_)) => {}
            }
        }
    }

    async fn expect_puback(&mut self, pkid: u16, within: Duration) {
        match self.recv(within).await {
            Seen::Packet(Packet::PubAck(PubAck { pkid: got })) => assert_eq!(got, pkid),
            other => panic!("expected PUBACK {pkid} within {within:?}, saw {other:?}"),
        }
    }

    async fn expect_closed(&mut self, within: Duration) {
        match self.recv(within).await {
            Seen::Closed => {}
            other => panic!("expected the gateway to close the connection, saw {other:?}"),
        }
    }

    /// PINGREQ answered by PINGRESP: the connection is up and being read.
    async fn expect_alive(&mut self) {
        self.send(Packet::PingReq).await;
        match self.recv(Duration::from_secs(10)).await {
            Seen::Packet(Packet::PingResp) => {}
            other => panic!("expected PINGRESP, saw {other:?}"),
        }
    }
}

/// Runs the real `mosquitto_pub` once; returns whether it succeeded and what it printed.
async fn mosquitto_pub(
    addr: SocketAddr,
    device: &TestDevice,
    key: &str,
    args: &[&str],
) -> (bool, String) {
    let port = addr.port().to_string();
    let id = device.id.to_string();
    let topic = topic(device);
    let mut cmd = tokio::process::Command::new("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p", &port, "-V", "mqttv311"])
        .args(["-u", &id, "-P", key, "-t", &topic])
        .args(args);
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("mosquitto_pub hung")
        .unwrap_or_else(|e| {
            panic!("cannot run mosquitto_pub ({e}); install mosquitto-clients (compose/services up does)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn rumqttc_options(
    addr: SocketAddr,
    client_id: &str,
    device: &TestDevice,
    key: &str,
) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    o.set_credentials(device.id.to_string(), key);
    o.set_keep_alive(Duration::from_secs(30));
    o
}

/// Polls a rumqttc event loop until `want` matches an event or it fails; returns the failure
/// (boxed: rumqttc's error is large).
async fn poll_until<F>(
    eventloop: &mut rumqttc::EventLoop,
    within: Duration,
    mut want: F,
) -> Result<(), Box<rumqttc::ConnectionError>>
where
    F: FnMut(&rumqttc::Event) -> bool,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let event = match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(event) => event.map_err(Box::new)?,
            Err(_) => panic!("no matching MQTT event within {within:?}"),
        };
        if want(&event) {
            return Ok(());
        }
    }
}

/// The real mosquitto client at QoS 0 and QoS 1: both readings are stored, counted under the
/// mqtt channel.
#[tokio::test]
async fn mosquitto_pub_at_qos_0_and_qos_1_is_stored() {
    let hub = TestHub::start().await;
    let token = hub.admin_token().await;
    let d = hub.create_device(&token, "mosquitto").await;
    let addr = mqtt_addr(&hub);
    for (qos, ts) in [("0", T0), ("1", T0 + 1000)] {
        let (ok, out) = mosquitto_pub(
            addr,
            &d,
            &d.key,
            &["-q", qos, "-m", &reading("t", 20.5, ts)],
        )
        .await;
        assert!(ok, "mosquitto_pub -q {qos} failed: {out}");
    }
    hub.wait_stored(d.id, 2).await;
    let accepted = hub
        .metric(
            hub.gateway_url(),
            "hub_gateway_ingest_readings_total",
            &[("channel", "mqtt"), ("outcome", "accepted")],
        )
        .await;
    assert_eq!(accepted, 2.0);
    // The readiness answer covers the MQTT listener.
    let ready: Value = hub
        .http
        .get(format!("{}/readyz", hub.gateway_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["checks"]["mqtt_listener"], true, "{ready}");
}

/// A wrong password, another device's key, a username that is no device id and no credentials
/// at all are each answered CONNACK "not authorised" and nothing is stored.
#[tokio::test]
async fn wrong_credentials_are_refused_with_not_authorised() {
    let hub = TestHub::start().await;
    let token = hub.admin_token().await;
    let d = hub.create_device(&token, "locked").await;
    let e = hub.create_device(&token, "other").await;
    let addr = mqtt_addr(&hub);

    let mut wrong = d.key.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == '0' { '1' } else { '0' });
    let (ok, out) =
        mosquitto_pub(addr, &d, &wrong, &["-q", "1", "-m", &reading("t", 1.0, T0)]).await;
    assert!(!ok, "mosquitto_pub with a wrong key succeeded: {out}");
    assert!(out.to_lowercase().contains("not authori"), "{out}");

    // rumqttc sees the refusal code itself.
    let (_client, mut eventloop) =
        rumqttc::AsyncClient::new(rumqttc_options(addr, "r1", &d, &e.key), 10);
    let refused = poll_until(&mut eventloop, Duration::from_secs(10), |_| false).await;
    assert!(
        matches!(
            refused.as_ref().map_err(|e| &**e),
            Err(rumqttc::ConnectionError::ConnectionRefused(
                ConnectReturnCode::NotAuthorized
            ))
        ),
        "{refused:?}"
    );

    for (user, pass) in [("not-a-device", d.key.as_str()), ("", "")] {
        let mut raw = Raw::open(addr).await;
        let mut connect = Connect::new("r2");
        if !user.is_empty() {
            connect.set_login(user, pass);
        }
        raw.send(Packet::Connect(connect)).await;
        match raw.recv(Duration::from_secs(10)).await {
            Seen::Packet(Packet::ConnAck(ack)) => {
                assert_eq!(ack.code, ConnectReturnCode::NotAuthorized)
            }
            other => panic!("expected CONNACK, saw {other:?}"),
        }
        raw.expect_closed(Duration::from_secs(10)).await;
    }
    let failures = hub
        .metric(
            hub.gateway_url(),
            "hub_gateway_device_auth_failures_total",
            &[("channel", "mqtt")],
        )
        .await;
    assert_eq!(failures, 4.0);
    // The same device's real key still works, and only its reading is stored.
    let (ok, out) =
        mosquitto_pub(addr, &d, &d.key, &["-q", "1", "-m", &reading("t", 2.0, T0)]).await;
    assert!(ok, "{out}");
    hub.wait_stored(d.id, 1).await;
    assert_eq!(hub.stored(e.id).await, 0);
}

/// Device A publishing on B's topic gets no PUBACK and its connection is closed; nothing is
/// stored for either device, and A can still publish on its own topic afterwards.
#[tokio::test]
async fn a_device_publishing_on_another_devices_topic_stores_nothing() {
    let hub = TestHub::start().await;
    let token = hub.admin_token().await;
    let a = hub.create_device(&token, "a").await;
    let b = hub.create_device(&token, "b").await;
    let addr = mqtt_addr(&hub);

    let mut raw = Raw::device(addr, "a-1", &a).await;
    raw.publish(
        &topic(&b),
        QoS::AtLeastOnce,
        1,
        false,
        reading("t", 1.0, T0).as_bytes(),
    )
    .await;
    raw.expect_closed(Duration::from_secs(10)).await;
    let mut raw = Raw::device(addr, "a-2", &a).await;
    raw.publish(
        "devices/+/readings",
        QoS::AtMostOnce,
        0,
        false,
        reading("t", 1.0, T0).as_bytes(),
    )
    .await;
    raw.expect_closed(Duration::from_secs(10)).await;
    assert_eq!(events(&hub, "publish_refused_topic").await, 2.0);

    // A later publish of A's own is stored; by then B's refused one would have been too.
    let mut raw = Raw::device(addr, "a-3", &a).await;
    raw.publish(
        &topic(&a),
        QoS::AtLeastOnce,
        1,
        false,
        reading("t", 2.0, T0).as_bytes(),
    )
    .await;
    raw.expect_puback(1, Duration::from_secs(10)).await;
    hub.wait_stored(a.id, 1).await;
    assert_eq!(hub.stored(b.id).await, 0);
}

/// Cases C3 and C6 over MQTT: `nan`, a zero-byte payload and a body with no valid reading are
/// counted, acknowledged (redelivering them cannot help) and stored nowhere; the connection
/// stays up, the valid reading beside an invalid one is stored, and another device is unaffected.
#[tokio::test]
async fn empty_and_garbage_payloads_leave_the_connection_and_other_devices_working() {
    let hub = TestHub::start().await;
    let token = hub.admin_token().await;
    let d = hub.create_device(&token, "noisy").await;
    let e = hub.create_device(&token, "neighbour").await;
    let addr = mqtt_addr(&hub);
    let mut noisy = Raw::device(addr, "noisy", &d).await;
    let mut neighbour = Raw::device(addr, "neighbour", &e).await;

    // The last two once panicked the parser: multi-byte characters where JSON allows none.
    let bad: [&[u8]; 6] = [
        b"nan",
        b"",
        br#"{"metric":"t","value":"NaN"}"#,
        b"\xff\xfe",
        "\u{feff}{\"metric\":\"t\",\"value\":1}".as_bytes(),
        "{\"metric\":\"t\",\"value\":1} \u{fc} NaN".as_bytes(),
    ];
    for (i, payload) in bad.iter().enumerate() {
        let pkid = i as u16 + 1;
        noisy
            .publish(&topic(&d), QoS::AtLeastOnce, pkid, false, payload)
            .await;
        noisy.expect_puback(pkid, Duration::from_secs(10)).await;
    }
    // QoS 0 garbage too: nothing to acknowledge, and still no harm.
    noisy
        .publish(&topic(&d), QoS::AtMostOnce, 0, false, b"nan")
        .await;
    noisy
        .publish(&topic(&d), QoS::AtMostOnce, 0, false, b"")
        .await;
    noisy.expect_alive().await;
    wait_until(
        Duration::from_secs(10),
        "8 bad payloads counted",
        || async { events(&hub, "bad_payload").await == 8.0 },
    )
    .await;

    // One bad and one good reading in one payload: the good one is stored.
    let mixed = format!(
        r#"{{"readings":[{{"metric":"t","value":NaN,"ts":{T0}}},{}]}}"#,
        reading("t", 21.0, T0 + 1)
    );
    noisy
        .publish(&topic(&d), QoS::AtLeastOnce, 10, false, mixed.as_bytes())
        .await;
    noisy.expect_puback(10, Duration::from_secs(10)).await;
    neighbour
        .publish(
            &topic(&e),
            QoS::AtLeastOnce,
            1,
            false,
            reading("t", 5.0, T0).as_bytes(),
        )
        .await;
    neighbour.expect_puback(1, Duration::from_secs(10)).await;

    // The real client: `-m nan` and `-n` (a zero-length message) are acknowledged too.
    let cases: [&[&str]; 2] = [&["-q", "1", "-m", "nan"], &["-q", "1", "-n"]];
    for args in cases {
        let (ok, out) = mosquitto_pub(addr, &d, &d.key, args).await;
        assert!(ok, "mosquitto_pub {args:?}: {out}");
    }
    noisy
        .publish(
            &topic(&d),
            QoS::AtLeastOnce,
            11,
            false,
            reading("t", 22.0, T0 + 2).as_bytes(),
        )
        .await;
    noisy.expect_puback(11, Duration::from_secs(10)).await;
    hub.wait_stored(d.id, 2).await;
    hub.wait_stored(e.id, 1).await;
    let values: Vec<f64> =
        sqlx::query_scalar("SELECT value FROM metric_readings WHERE device_id = $1 ORDER BY ts")
            .bind(d.id)
            .fetch_all(&hub.db)
            .await
            .unwrap();
    assert_eq!(values, vec![21.0, 22.0]);
    assert_eq!(events(&hub, "bad_payload").await, 10.0);
    assert_eq!(events(&hub, "readings_rejected").await, 1.0);
}

/// A device that sends over MQTT and over HTTP has one series per metric: both readings come
/// back from one range query.
#[tokio::test]
async fn one_device_over_mqtt_and_http_lands_in_one_series() {
    let hub = TestHub::start().await;
    let token = hub.admin_token().await;
    let d = hub.create_device(&token, "bilingual").await;
    let addr = mqtt_addr(&hub);

    let (client, mut eventloop) =
        rumqttc::AsyncClient::new(rumqttc_options(addr, "bilingual", &d, &d.key), 10);
    client
        .publish(
            topic(&d),
            rumqttc::QoS::AtLeastOnce,
            false,
            reading("temp", 1.5, T0),
        )
        .await
        .unwrap();
    poll_until(&mut eventloop, Duration::from_secs(10), |e| {
        matches!(e, rumqttc::Event::Incoming(Packet::PubAck(_)))
    })
    .await
    .expect("PUBACK from rumqttc");
    let (status, body) = hub.ingest(&d.key, reading("temp", 2.5, T0 + 60_000)).await;
    assert_eq!(status, 202, "{body}");
    hub.wait_stored(d.id, 2).await;

    let (status, page) = hub
        .api(
            Method::GET,
            &format!("/readings?device_id={}&metric=temp", d.id),
            &token,
            None,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    let values: Vec<f64> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["value"].as_f64().unwrap())
        .collect();
    assert_eq!(values, vec![1.5, 2.5]);
    let series: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT (device_id, metric_name)) FROM metric_readings WHERE device_id = $1",
    )
    .bind(d.id)
    .fetch_one(&hub.db)
    .await
    .unwrap();
    assert_eq!(series, 1);
}

/// Rotating a device's key closes its open MQTT connection within about a second; the old key
/// can no longer connect, the new one can.
#[tokio::test]
async fn a_rotated_key_closes_the_open_connection_and_cannot_reconnect() {
    let hub = TestHub::start().await;
    let token = hub.admin_token().await;
    let d = hub.create_device(&token, "rotating").await;
    let bystander = hub.create_device(&token, "bystander").await;
    let addr = mqtt_addr(&hub);
    let mut raw = Raw::device(addr, "rotating", &d).await;
    let mut other = Raw::device(addr, "bystander", &bystander).await;
    raw.expect_alive().await;

    let (status, body) = hub
        .api(
            Method::POST,
            &format!("/devices/{}/rotate-key", d.id),
            &token,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let rotated_at = Instant::now();
    let new_key = body["api_key"].as_str().unwrap().to_owned();
    raw.expect_closed(Duration::from_secs(5)).await;
    let took = rotated_at.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "closed only after {took:?}"
    );
    assert_eq!(events(&hub, "key_revoked").await, 1.0);
    // Another device's connection is untouched.
    other.expect_alive().await;

    let (_, ack) = Raw::connect(addr, "rotating", &d.id.to_string(), &d.key, 60).await;
    assert_eq!(ack.code, ConnectReturnCode::NotAuthorized);
    let rotated = TestDevice {
        id: d.id,
        key: new_key,
    };
    hub.wait_key_loaded(&rotated).await;
    let mut raw = Raw::device(addr, "rotating", &rotated).await;
    raw.publish(
        &topic(&rotated),
        QoS::AtLeastOnce,
        1,
        false,
        reading("t", 1.0, T0).as_bytes(),
    )
    .await;
    raw.expect_puback(1, Duration::from_secs(10)).await;
    hub.wait_stored(d.id, 1).await;
}

/// With the hub's stream gone (JetStream cannot store anything for this namespace), a QoS 1
/// publish gets no PUBACK while the gateway keeps retrying it; once the stream is back the
/// PUBACK arrives and the reading, which has no timestamp of its own (so only the message id can
/// deduplicate it), is stored exactly once.
#[tokio::test]
async fn a_qos1_publish_while_jetstream_is_unavailable_is_acknowledged_only_once_stored() {
    let mut hub = TestHub::start().await;
    let token = hub.admin_token().await;
    let d = hub.create_device(&token, "patient").await;
    let addr = mqtt_addr(&hub);
    let mut raw = Raw::device(addr, "patient", &d).await;

    let (js, names) = hub.jetstream().await;
    js.delete_stream(names.stream()).await.unwrap();

    raw.publish(
        &topic(&d),
        QoS::AtLeastOnce,
        7,
        false,
        br#"{"metric":"t","value":42}"#,
    )
    .await;
    wait_until(
        Duration::from_secs(20),
        "the gateway to retry the publish",
        || async { events(&hub, "publish_retry").await >= 3.0 },
    )
    .await;
    match raw.recv(Duration::from_millis(300)).await {
        Seen::Nothing => {}
        other => panic!("expected no PUBACK while JetStream is unavailable, saw {other:?}"),
    }
    // The connection itself stays healthy: one publish is far below the in-flight limit, so
    // the socket is still read and pings are answered.
    raw.expect_alive().await;

    shared::backbone::ensure_stream(&js, &names, Default::default())
        .await
        .unwrap();
    raw.expect_puback(7, Duration::from_secs(30)).await;
    // The durable consumer went with the stream; a restarted processor creates it again.
    hub.processors[0].process.kill();
    hub.processors.clear();
    hub.start_processor().await;
    hub.wait_stored(d.id, 1).await;
    let state = stream_state(&js, &names).await.unwrap();
    assert_eq!(state.last_sequence, 1, "the stream took the message once");
    // Once the processor acked it (after the commit), its trim removes it from the stream.
    wait_until(
        Duration::from_secs(10),
        "the stored message leaves the stream",
        || async { stream_state(&js, &names).await.map(|s| s.messages) == Some(0) },
    )
    .await;
}

/// Case C5 over MQTT: a QoS 1 message redelivered with the same packet id and DUP set — after a
/// reconnect, as a client does when the PUBACK was lost — is stored once. The same packet id and
/// payload sent later as a *new* message (DUP clear; a client that reconnects for every reading)
/// is a new reading and is stored.
#[tokio::test]
async fn a_redelivered_qos1_message_is_stored_once() {
    let hub = TestHub::start().await;
    let token = hub.admin_token().await;
    let d = hub.create_device(&token, "forgetful").await;
    let addr = mqtt_addr(&hub);
    // No timestamp: the gateway's receive time differs per delivery, so only the message id
    // can tell a redelivery apart.
    let payload = br#"{"metric":"door","value":1}"#;

    let mut first = Raw::device(addr, "forgetful", &d).await;
    first
        .publish(&topic(&d), QoS::AtLeastOnce, 42, false, payload)
        .await;
    first.expect_puback(42, Duration::from_secs(10)).await;
    drop(first);
    hub.wait_stored(d.id, 1).await;

    let mut again = Raw::device(addr, "forgetful", &d).await;
    again
        .publish(&topic(&d), QoS::AtLeastOnce, 42, true, payload)
        .await;
    again.expect_puback(42, Duration::from_secs(10)).await;
    // Give a wrongly stored duplicate every chance to appear: a later message on the same
    // connection is stored after it would have been.
    again
        .publish(
            &topic(&d),
            QoS::AtLeastOnce,
            43,
            false,
            reading("other", 1.0, T0).as_bytes(),
        )
        .await;
    again.expect_puback(43, Duration::from_secs(10)).await;
    hub.wait_stored(d.id, 2).await;

    again
        .publish(&topic(&d), QoS::AtLeastOnce, 42, false, payload)
        .await;
    again.expect_puback(42, Duration::from_secs(10)).await;
    hub.wait_stored(d.id, 3).await;
    let doors: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM metric_readings WHERE device_id = $1 AND metric_name = 'door'",
    )
    .bind(d.id)
    .fetch_one(&hub.db)
    .await
    .unwrap();
    assert_eq!(doors, 2);
}

/// A newer connection with the same device and client id takes over (MQTT-3.1.4-2); the same
/// client id of another device is someone else and is left alone.
#[tokio::test]
async fn a_duplicate_client_id_hands_the_session_to_the_newer_connection() {
    let hub = TestHub::start().await;
    let token = hub.admin_token().await;
    let d = hub.create_device(&token, "twin").await;
    let e = hub.create_device(&token, "namesake").await;
    let addr = mqtt_addr(&hub);
    let mut older = Raw::device(addr, "same-id", &d).await;
    let mut namesake = Raw::device(addr, "same-id", &e).await;
    older.expect_alive().await;
    let mut newer = Raw::device(addr, "same-id", &d).await;
    older.expect_closed(Duration::from_secs(5)).await;
    newer.expect_alive().await;
    namesake.expect_alive().await;
    assert_eq!(events(&hub, "taken_over").await, 1.0);
    newer
        .publish(
            &topic(&d),
            QoS::AtLeastOnce,
            1,
            false,
            reading("t", 1.0, T0).as_bytes(),
        )
        .await;
    newer.expect_puback(1, Duration::from_secs(10)).await;
    hub.wait_stored(d.id, 1).await;
}

/// Protocol hygiene: PINGREQ, a refused SUBSCRIBE (SUBACK 0x80), UNSUBSCRIBE, a clean
/// DISCONNECT, QoS 2 refused by closing, an oversized packet closed before it is read, a silent
/// client closed after 1.5 × its keep-alive, and a socket that never sends CONNECT closed after
/// the CONNECT timeout.
#[tokio::test]
async fn protocol_hygiene_keep_alive_limits_and_refusals() {
    let hub = TestHub::start_with(HubOptions {
        gateway_env: vec![
            ("GATEWAY_MAX_BODY_BYTES".into(), "2048".into()),
            ("GATEWAY_MQTT_CONNECT_TIMEOUT_SECS".into(), "1".into()),
        ],
        ..Default::default()
    })
    .await;
    let token = hub.admin_token().await;
    let d = hub.create_device(&token, "hygienic").await;
    let addr = mqtt_addr(&hub);

    let mut raw = Raw::device(addr, "h1", &d).await;
    raw.expect_alive().await;
    raw.send(Packet::Subscribe(Subscribe::new(
        "devices/#",
        QoS::AtLeastOnce,
    )))
    .await;
    match raw.recv(Duration::from_secs(10)).await {
        Seen::Packet(Packet::SubAck(SubAck { return_codes, .. })) => {
            assert_eq!(return_codes, vec![SubscribeReasonCode::Failure])
        }
        other => panic!("expected SUBACK, saw {other:?}"),
    }
    let mut unsub = Unsubscribe::new("devices/#");
    unsub.pkid = 9;
    raw.send(Packet::Unsubscribe(unsub)).await;
    match raw.recv(Duration::from_secs(10)).await {
        Seen::Packet(Packet::UnsubAck(UnsubAck { pkid })) => assert_eq!(pkid, 9),
        other => panic!("expected UNSUBACK, saw {other:?}"),
    }
    // A payload at the body limit is fine; one far over it closes the connection.
    raw.publish(&topic(&d), QoS::AtLeastOnce, 1, false, &vec![b' '; 2048])
        .await;
    raw.expect_puback(1, Duration::from_secs(10)).await;
    raw.publish(
        &topic(&d),
        QoS::AtLeastOnce,
        2,
        false,
        &vec![b' '; 64 * 1024],
    )
    .await;
    raw.expect_closed(Duration::from_secs(10)).await;
    assert_eq!(events(&hub, "packet_too_large").await, 1.0);

    let mut raw = Raw::device(addr, "h2", &d).await;
    raw.publish(
        &topic(&d),
        QoS::ExactlyOnce,
        1,
        false,
        reading("t", 1.0, T0).as_bytes(),
    )
    .await;
    raw.expect_closed(Duration::from_secs(10)).await;
    assert_eq!(events(&hub, "qos2_refused").await, 1.0);

    let mut raw = Raw::device(addr, "h3", &d).await;
    raw.send(Packet::Disconnect).await;
    raw.expect_closed(Duration::from_secs(10)).await;

    let (mut raw, ack) = Raw::connect(addr, "h4", &d.id.to_string(), &d.key, 1).await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    let started = Instant::now();
    raw.expect_closed(Duration::from_secs(10)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(1200),
        "closed after {:?}, before 1.5 × the 1 s keep-alive",
        started.elapsed()
    );
    assert_eq!(events(&hub, "keepalive_timeout").await, 1.0);

    let mut silent = Raw::open(addr).await;
    silent.expect_closed(Duration::from_secs(10)).await;
    assert_eq!(events(&hub, "connect_timeout").await, 1.0);

    // A protocol we do not speak: MQTT 3.1 ("MQIsdp", level 3), MQTT 5, an unknown level. Each
    // gets CONNACK 0x01 (unacceptable protocol version), then the connection closes.
    let refused: [&[u8]; 3] = [
        b"\x10\x10\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x02p1",
        b"\x10\x0f\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x02p2",
        b"\x10\x0e\x00\x04MQTT\x09\x02\x00\x3c\x00\x02p3",
    ];
    for connect in refused {
        let mut raw = Raw::open(addr).await;
        raw.stream.write_all(connect).await.unwrap();
        match raw.recv(Duration::from_secs(10)).await {
            Seen::Packet(Packet::ConnAck(ack)) => {
                assert_eq!(
                    ack.code,
                    ConnectReturnCode::RefusedProtocolVersion,
                    "{connect:?}"
                )
            }
            other => panic!("{connect:?}: expected CONNACK 0x01, saw {other:?}"),
        }
        raw.expect_closed(Duration::from_secs(10)).await;
    }
    assert_eq!(events(&hub, "unsupported_protocol").await, 3.0);

    wait_until(
        Duration::from_secs(10),
        "every connection to be counted closed",
        || async {
            hub.metric(hub.gateway_url(), "hub_gateway_mqtt_connections_open", &[])
                .await
                == 0.0
        },
    )
    .await;
    hub.wait_stored(d.id, 0).await;
}

/// Past the connection cap a new connection is closed at once; the open ones keep working and a
/// slot is free again when one closes.
#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once() {
    let hub = TestHub::start_with(HubOptions {
        gateway_env: vec![("GATEWAY_MQTT_MAX_CONNECTIONS".into(), "2".into())],
        ..Default::default()
    })
    .await;
    let token = hub.admin_token().await;
    let d = hub.create_device(&token, "crowded").await;
    let addr = mqtt_addr(&hub);
    let mut one = Raw::device(addr, "c1", &d).await;
    let two = Raw::device(addr, "c2", &d).await;
    let mut three = Raw::open(addr).await;
    three.expect_closed(Duration::from_secs(10)).await;
    assert_eq!(events(&hub, "connection_cap").await, 1.0);
    one.expect_alive().await;
    drop(two);
    wait_until(Duration::from_secs(10), "a free slot", || async {
        hub.metric(hub.gateway_url(), "hub_gateway_mqtt_connections_open", &[])
            .await
            == 1.0
    })
    .await;
    let mut four = Raw::device(addr, "c4", &d).await;
    four.expect_alive().await;
}

/// SIGTERM: the gateway stops accepting, closes its MQTT connections and exits cleanly.
#[tokio::test]
async fn the_gateway_closes_mqtt_connections_on_shutdown() {
    let mut hub = TestHub::start().await;
    let token = hub.admin_token().await;
    let d = hub.create_device(&token, "last-orders").await;
    let addr = mqtt_addr(&hub);
    let mut raw = Raw::device(addr, "last", &d).await;
    raw.publish(
        &topic(&d),
        QoS::AtLeastOnce,
        1,
        false,
        reading("t", 1.0, T0).as_bytes(),
    )
    .await;
    raw.expect_puback(1, Duration::from_secs(10)).await;
    assert!(
        hub.gateways[0].process.terminate(Duration::from_secs(20)),
        "the gateway did not exit cleanly on SIGTERM"
    );
    raw.expect_closed(Duration::from_secs(5)).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
    hub.wait_stored(d.id, 1).await;
}

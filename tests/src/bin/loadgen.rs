//! Load generator for a running hub. One subcommand per channel:
//!
//! - `mqtt`: N simulated devices, each its own rumqttc connection, publishing QoS 1 JSON batches
//!   to `devices/<id>/readings` at a fixed total rate for a fixed time. Reports messages/s,
//!   readings/s, PUBACK latency percentiles and loss (= published − PUBACKed, after a drain), and
//!   can count what reached the database.
//!
//! Open loop: message `k` of a device is *due* at `start + offset + k × period` whatever happened
//! to the ones before it, and its PUBACK latency is measured from that due time. A device whose
//! gateway applies backpressure therefore shows it as latency instead of quietly sending less
//! ("coordinated omission"). Every reading's `(device, metric, ts)` is unique, so a row count in
//! the database can be compared exactly with what was acknowledged.
//!
//! Devices come from a JSON file (`[{"id":"…","key":"…"}]`; `api_key` is accepted for `key`) or
//! are created through the processor API with an admin login. The last line printed is one JSON
//! object for scripts.

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use futures::StreamExt as _;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

#[derive(Parser, Debug)]
#[command(name = "loadgen", about = "Generate device load against a running hub")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Simulated devices over MQTT 3.1.1, QoS 1.
    Mqtt(MqttArgs),
}

#[derive(Args, Debug)]
struct MqttArgs {
    /// The gateway's MQTT listener.
    #[arg(long, env = "LOADGEN_MQTT_ADDR", default_value = "127.0.0.1:1883")]
    mqtt_addr: String,
    /// Simulated devices, one MQTT connection each.
    #[arg(long, default_value_t = 500)]
    devices: usize,
    /// Messages per second over all devices together.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Seconds of load.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Readings per message.
    #[arg(long, default_value_t = 10)]
    batch: usize,
    /// Unacknowledged QoS 1 publishes a device may have outstanding (rumqttc's in-flight window).
    #[arg(long, default_value_t = 16)]
    inflight: u16,
    /// Seconds to wait after the load for outstanding PUBACKs; what is still missing is loss.
    #[arg(long, default_value_t = 30)]
    drain: u64,
    /// Seconds to get every device connected before giving up.
    #[arg(long, default_value_t = 60)]
    connect_timeout: u64,
    #[command(flatten)]
    devices_from: DeviceSource,
    /// Also count the rows stored for the load's devices in this database (the hub's
    /// `DATABASE_URL`), waiting until they match what was acknowledged.
    #[arg(long, env = "LOADGEN_DATABASE_URL")]
    verify_database_url: Option<String>,
}

/// Where the simulated devices come from.
#[derive(Args, Debug)]
struct DeviceSource {
    /// JSON file with the devices: `[{"id":"…","key":"…"}]`. Without it, devices are created
    /// through the processor API.
    #[arg(long)]
    devices_file: Option<PathBuf>,
    /// The processor API, to create devices.
    #[arg(
        long,
        env = "LOADGEN_PROCESSOR_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    processor_url: String,
    #[arg(long, env = "HUB_ADMIN_USERNAME", default_value = "admin")]
    admin_username: String,
    #[arg(long, env = "HUB_ADMIN_PASSWORD", hide_env_values = true)]
    admin_password: Option<String>,
    /// Write the created devices (with their keys) here, to reuse with `--devices-file`.
    #[arg(long)]
    save_devices: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Device {
    id: Uuid,
    #[serde(alias = "api_key")]
    key: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Mqtt(args) => mqtt(args).await,
    }
}

async fn load_devices(src: &DeviceSource, wanted: usize) -> anyhow::Result<Vec<Device>> {
    if let Some(path) = &src.devices_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut devices: Vec<Device> = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a JSON array of devices", path.display()))?;
        if devices.len() < wanted {
            bail!(
                "{} has {} devices; --devices asks for {wanted}",
                path.display(),
                devices.len()
            );
        }
        devices.truncate(wanted);
        return Ok(devices);
    }
    let Some(password) = &src.admin_password else {
        bail!("give --devices-file, or --admin-password (HUB_ADMIN_PASSWORD) to create devices");
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let login: serde_json::Value = http
        .post(format!("{}/auth/login", src.processor_url))
        .json(&json!({ "username": src.admin_username, "password": password }))
        .send()
        .await
        .context("cannot reach the processor API")?
        .error_for_status()
        .context("admin login refused")?
        .json()
        .await?;
    let token = login["access_token"]
        .as_str()
        .context("no access_token in the login answer")?
        .to_owned();
    let run = &Uuid::new_v4().simple().to_string()[..8];
    let created: Vec<anyhow::Result<Device>> = futures::stream::iter(0..wanted)
        .map(|i| {
            let (http, token) = (&http, &token);
            async move {
                let device: Device = http
                    .post(format!("{}/devices", src.processor_url))
                    .bearer_auth(token)
                    .json(&json!({ "name": format!("loadgen-{run}-{i}") }))
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                Ok(device)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let devices = created.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(path) = &src.save_devices {
        std::fs::write(path, serde_json::to_vec_pretty(&devices)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(devices)
}

/// One simulated device: what its sender published and what its event loop saw come back.
#[derive(Default)]
struct DeviceState {
    /// Due times of publishes handed to the client and not yet on the wire, in order.
    queued: Mutex<VecDeque<Instant>>,
    published: AtomicU64,
    acked: AtomicU64,
    /// Due time → PUBACK, in microseconds.
    latencies_us: Mutex<Vec<u64>>,
    connection_errors: AtomicU64,
}

fn payload(batch: usize, ts_ms: i64, seq: u64) -> String {
    let readings: Vec<String> = (0..batch)
        .map(|m| {
            format!(
                r#"{{"metric":"m{m}","value":{}.5,"ts":{ts_ms}}}"#,
                (seq + m as u64) % 1000
            )
        })
        .collect();
    format!(r#"{{"readings":[{}]}}"#, readings.join(","))
}

fn options(args: &MqttArgs, device: &Device, host: &str, port: u16) -> MqttOptions {
    let client_id = format!("loadgen-{}", device.id.simple());
    let mut o = MqttOptions::new(client_id, host, port);
    o.set_credentials(device.id.to_string(), device.key.clone());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(args.inflight.max(1));
    o.set_request_channel_capacity(usize::from(args.inflight.max(1)) * 2);
    // Large batches must fit; the gateway enforces its own limit.
    o.set_max_packet_size(2 * 1024 * 1024, 2 * 1024 * 1024);
    o
}

/// Polls until the first CONNACK; a refusal is retried (a device created a moment ago may not
/// have reached the gateway's key cache yet) until `deadline`.
async fn connect(eventloop: &mut EventLoop, deadline: Instant) -> anyhow::Result<()> {
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Err(_) => bail!("no CONNACK before the connect deadline"),
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                if Instant::now() >= deadline {
                    bail!("cannot connect: {e}");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Drives a device's connection until its sender disconnects: matches each publish as it goes
/// out with its due time, and each PUBACK with its publish. (`poll` is never cancelled while
/// the connection is in use: rumqttc does not promise that is safe.)
async fn drive(mut eventloop: EventLoop, state: Arc<DeviceState>) {
    let mut on_wire: HashMap<u16, Instant> = HashMap::new();
    loop {
        match eventloop.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                // A resend after a reconnect reuses its packet id; it keeps its first due time.
                if let std::collections::hash_map::Entry::Vacant(slot) = on_wire.entry(pkid) {
                    let due = state
                        .queued
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .pop_front();
                    slot.insert(due.unwrap_or_else(Instant::now));
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(due) = on_wire.remove(&ack.pkid) {
                    let us = u64::try_from(due.elapsed().as_micros()).unwrap_or(u64::MAX);
                    state
                        .latencies_us
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(us);
                    state.acked.fetch_add(1, Ordering::AcqRel);
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(rumqttc::ConnectionError::RequestsDone) => return,
            Err(_) => {
                state.connection_errors.fetch_add(1, Ordering::AcqRel);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Publishes a device's share of the load on schedule, then waits (until `drain_until`) for
/// its PUBACKs and disconnects. Returns how many sends were late by more than one period.
async fn send(client: AsyncClient, state: Arc<DeviceState>, plan: SendPlan) -> u64 {
    let SendPlan {
        topic,
        batch,
        first,
        period,
        end,
        base_ts,
        drain,
    } = plan;
    let mut late = 0u64;
    let mut seq = 0u64;
    loop {
        let due = first + period.mul_f64(seq as f64);
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due).await;
        if Instant::now() > due + period {
            late += 1;
        }
        state
            .queued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(due);
        let body = payload(batch, base_ts + seq as i64, seq);
        if client
            .publish(topic.as_str(), QoS::AtLeastOnce, false, body)
            .await
            .is_err()
        {
            break;
        }
        state.published.fetch_add(1, Ordering::AcqRel);
        seq += 1;
    }
    let drain_until = Instant::now() + drain;
    while state.acked.load(Ordering::Acquire) < state.published.load(Ordering::Acquire)
        && Instant::now() < drain_until
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = client.try_disconnect();
    late
}

struct SendPlan {
    topic: String,
    batch: usize,
    first: Instant,
    period: Duration,
    end: Instant,
    base_ts: i64,
    drain: Duration,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

async fn count_stored(
    url: &str,
    devices: &[Device],
    expected: u64,
    wait: Duration,
) -> anyhow::Result<u64> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .context("cannot connect to --verify-database-url")?;
    let ids: Vec<Uuid> = devices.iter().map(|d| d.id).collect();
    let deadline = Instant::now() + wait;
    loop {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM metric_readings WHERE device_id = ANY($1)")
                .bind(&ids)
                .fetch_one(&pool)
                .await?;
        let n = u64::try_from(n).unwrap_or(0);
        if n >= expected || Instant::now() >= deadline {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn mqtt(args: MqttArgs) -> anyhow::Result<()> {
    if args.devices == 0 || args.rate <= 0.0 || args.batch == 0 {
        bail!("--devices, --rate and --batch must be positive");
    }
    let (host, port) = args
        .mqtt_addr
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
        .context("--mqtt-addr must be HOST:PORT")?;
    let devices = load_devices(&args.devices_from, args.devices).await?;
    eprintln!(
        "loadgen mqtt: {} devices → {}, {} msg/s × {} readings for {} s (QoS 1, in-flight {} per device)",
        devices.len(),
        args.mqtt_addr,
        args.rate,
        args.batch,
        args.duration,
        args.inflight
    );

    // Connect everyone first, so that the measured window is pure publishing.
    let connect_deadline = Instant::now() + Duration::from_secs(args.connect_timeout);
    let connected: Vec<anyhow::Result<(AsyncClient, EventLoop)>> = futures::stream::iter(&devices)
        .map(|d| {
            let options = options(&args, d, &host, port);
            async move {
                let (client, mut eventloop) = AsyncClient::new(options, 64);
                connect(&mut eventloop, connect_deadline)
                    .await
                    .with_context(|| format!("device {}", d.id))?;
                Ok((client, eventloop))
            }
        })
        // In order (64 at a time): each connection is zipped with its device below, and a
        // connection must publish on its own device's topic.
        .buffered(64)
        .collect()
        .await;
    let connected = connected.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    eprintln!("loadgen mqtt: {} connections up", connected.len());

    let period = Duration::from_secs_f64(args.devices as f64 / args.rate);
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + Duration::from_secs(args.duration);
    // Timestamps an hour back (inside any skew limit), one millisecond per message: unique per
    // (device, metric) for runs of up to an hour at a thousand messages per second per device.
    let base_ts = chrono::Utc::now().timestamp_millis() - 3_600_000;
    let mut drivers = Vec::new();
    let mut senders = Vec::new();
    let mut states = Vec::new();
    for (i, ((client, eventloop), device)) in connected.into_iter().zip(&devices).enumerate() {
        let state = Arc::new(DeviceState::default());
        states.push(state.clone());
        drivers.push(tokio::spawn(drive(eventloop, state.clone())));
        let plan = SendPlan {
            topic: format!("devices/{}/readings", device.id),
            batch: args.batch,
            // Spread the devices' first messages over one period, not all at once.
            first: start + period.mul_f64(i as f64 / args.devices as f64),
            period,
            end,
            base_ts,
            drain: Duration::from_secs(args.drain),
        };
        senders.push(tokio::spawn(send(client, state, plan)));
    }
    let mut late = 0;
    for s in senders {
        late += s.await?;
    }
    let total_elapsed = start.elapsed();
    // A driver whose disconnect cannot go out (its in-flight window never emptied) is abandoned.
    let stop = Instant::now() + Duration::from_secs(5);
    for d in drivers {
        let _ = tokio::time::timeout_at(stop, d).await;
    }
    let sum = |f: fn(&DeviceState) -> u64| states.iter().map(|s| f(s)).sum::<u64>();
    let published = sum(|s| s.published.load(Ordering::Acquire));
    let acked = sum(|s| s.acked.load(Ordering::Acquire));
    let connection_errors = sum(|s| s.connection_errors.load(Ordering::Acquire));
    let mut latencies: Vec<u64> = states
        .iter()
        .flat_map(|s| {
            std::mem::take(&mut *s.latencies_us.lock().unwrap_or_else(|p| p.into_inner()))
        })
        .collect();
    let send_elapsed = end.saturating_duration_since(start);
    latencies.sort_unstable();
    let loss = published.saturating_sub(acked);
    let secs = send_elapsed.as_secs_f64();
    let msgs_per_s = acked as f64 / secs;
    let readings_per_s = msgs_per_s * args.batch as f64;
    let (p50, p99, max) = (
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies
            .last()
            .map(|v| *v as f64 / 1000.0)
            .unwrap_or(f64::NAN),
    );
    let stored = match &args.verify_database_url {
        Some(url) => Some(
            count_stored(
                url,
                &devices,
                acked * args.batch as u64,
                Duration::from_secs(60),
            )
            .await?,
        ),
        None => None,
    };
    println!(
        "MQTT load, QoS 1: {} devices, batch {}, offered {:.0} msg/s for {} s",
        devices.len(),
        args.batch,
        args.rate,
        args.duration
    );
    println!(
        "  published  {published} messages ({late} sent later than one period after their due time)"
    );
    println!(
        "  PUBACKed   {acked} messages: {msgs_per_s:.0} msg/s, {readings_per_s:.0} readings/s (over the {secs:.1} s send window; last PUBACK after {:.1} s)",
        total_elapsed.as_secs_f64()
    );
    println!("  PUBACK latency from due time: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms");
    println!("  loss (published − PUBACKed) {loss}; connection errors {connection_errors}");
    if let Some(stored) = stored {
        println!(
            "  stored     {stored} readings in the database (expected {})",
            acked * args.batch as u64
        );
    }
    println!(
        "{}",
        json!({
            "mode": "mqtt",
            "qos": 1,
            "devices": devices.len(),
            "batch": args.batch,
            "duration_s": args.duration,
            "offered_msgs_per_s": args.rate,
            "published": published,
            "acked": acked,
            "loss": loss,
            "late_sends": late,
            "connection_errors": connection_errors,
            "msgs_per_s": msgs_per_s,
            "readings_per_s": readings_per_s,
            "puback_p50_ms": p50,
            "puback_p99_ms": p99,
            "puback_max_ms": max,
            "stored_readings": stored,
        })
    );
    if loss > 0 {
        bail!("{loss} published messages were never acknowledged");
    }
    Ok(())
}

//! An open-loop HTTP load generator for the benchmark (`src/bin/bench.rs`).
//!
//! Open loop: request `k` is *due* at `start + k × period` whatever happened to the requests
//! before it, and its latency is measured from that due time, not from when it was actually sent.
//! A closed-loop generator (send the next request when the previous one answered) slows down
//! with the system under test and so hides exactly the queueing it should measure ("coordinated
//! omission"). The number of requests in flight is still capped, so that an overloaded target
//! cannot make the generator eat the machine; when the cap is hit, sends are late, which is
//! counted and shows in the latencies.
//!
//! Every request carries `batch` readings of one device, devices taken in turn. Timestamps are
//! unique per (device, metric) across every phase of a run (a per-device sequence), so that a
//! stored row count can be compared exactly with the accepted count: a duplicate would be
//! silently merged by the database and look like a loss.
//!
//! The generator talks only to loopback addresses: [`Target::url`] must be `http://127.0.0.1…`.

use anyhow::{Context as _, bail};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Metric names every simulated device reports, in turn within a batch.
pub const METRICS: [&str; 4] = ["temperature", "humidity", "co2", "light"];

/// A device the load is sent as.
#[derive(Debug, Clone)]
pub struct LoadDevice {
    pub id: Uuid,
    pub key: String,
}

/// Where the readings go and in which format.
#[derive(Debug, Clone)]
pub enum Target {
    /// The hub gateway's `POST /ingest` (JSON, device key as bearer token).
    Hub { url: String },
    /// An InfluxDB 1.x `POST /write` (line protocol, millisecond precision).
    Influx { url: String, database: String },
}

impl Target {
    pub fn url(&self) -> String {
        match self {
            Target::Hub { url } => format!("{url}/ingest"),
            Target::Influx { url, database } => {
                format!("{url}/write?db={database}&precision=ms")
            }
        }
    }
}

/// Hands out per-device request numbers for the whole run, so that every reading's
/// (device, metric, ts) is unique across phases.
pub struct Sequencer {
    next: Vec<AtomicU64>,
    /// Epoch milliseconds of the first timestamp: an hour ago, so that the gateway's future-skew
    /// check never trips however long the run.
    base_ms: i64,
}

impl Sequencer {
    pub fn new(devices: usize) -> Self {
        Self {
            next: (0..devices).map(|_| AtomicU64::new(0)).collect(),
            base_ms: chrono::Utc::now().timestamp_millis() - 3_600_000,
        }
    }

    /// Request number `n` of `device` covers the `per_metric` timestamps from
    /// `base + n × per_metric` on, for each metric.
    fn take(&self, device: usize) -> u64 {
        self.next[device].fetch_add(1, Ordering::Relaxed)
    }
}

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub target: Target,
    pub devices: Vec<LoadDevice>,
    /// Readings per request.
    pub batch: usize,
    /// Offered readings per second (the request rate is `rate / batch`).
    pub rate: f64,
    pub duration: Duration,
    /// Most requests in flight at once.
    pub max_in_flight: usize,
    /// Keep-alive connections (HTTP clients), shared by the devices in turn.
    pub connections: usize,
}

/// What happened; every count is exact (each request is awaited to its end).
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub requests: u64,
    /// Requests answered 2xx.
    pub ok: u64,
    /// Readings the target said it accepted (the hub's `accepted`; every line of a 2xx for
    /// InfluxDB).
    pub accepted: u64,
    /// Non-2xx answers by status.
    pub refused: std::collections::BTreeMap<u16, u64>,
    /// Requests that got no answer (connection error or client timeout): their outcome is
    /// unknown, so they bound how far the stored count may exceed `accepted`.
    pub failed: u64,
    /// Requests sent more than 50 ms after they were due (the in-flight cap was hit or the
    /// generator itself was short of CPU).
    pub late: u64,
    /// From the first due time to the last answer.
    pub elapsed: Duration,
    /// From the first due time to the last due time (the offered window).
    pub offered_window: Duration,
    /// Due time → 2xx answer, in microseconds, for every successful request.
    pub latencies_us: Vec<u64>,
}

impl LoadReport {
    /// The `q` quantile (0..=1) of the 2xx latencies, in milliseconds.
    pub fn latency_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let mut v = self.latencies_us.clone();
        v.sort_unstable();
        let i = ((v.len() - 1) as f64 * q).round() as usize;
        v[i.min(v.len() - 1)] as f64 / 1000.0
    }

    pub fn accepted_per_sec(&self) -> f64 {
        self.accepted as f64 / self.offered_window.as_secs_f64().max(1e-9)
    }
}

fn check_loopback(url: &str) -> anyhow::Result<()> {
    let ok = ["http://127.0.0.1:", "http://[::1]:", "http://localhost:"]
        .iter()
        .any(|p| url.starts_with(p));
    if !ok {
        bail!("the load generator only sends to loopback addresses, not {url}");
    }
    Ok(())
}

/// The text of every value a body can carry (see [`body`]), formatted once: the generator shares
/// the machine with the hub, so what it spends per reading is taken from the system under test.
fn value_text(k: usize) -> &'static str {
    static TABLE: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        (0..1000)
            .map(|k| (20.0 + k as f64 / 100.0).to_string())
            .collect()
    });
    &table[k % 1000]
}

/// The body of request number `seq` of device `d`: `batch` readings, metrics in turn, unique
/// timestamps per (device, metric).
pub fn body(target: &Target, device: &LoadDevice, seq: u64, batch: usize, base_ms: i64) -> String {
    let per_metric = batch.div_ceil(METRICS.len()) as i64;
    let first = base_ms + seq as i64 * per_metric;
    let mut out = String::with_capacity(32 + batch * 72);
    let mut ts_text = itoa::Buffer::new();
    if matches!(target, Target::Hub { .. }) {
        out.push_str("{\"readings\":[");
    }
    for i in 0..batch {
        let metric = METRICS[i % METRICS.len()];
        let ts = ts_text.format(first + (i / METRICS.len()) as i64);
        // Values vary a little, like real sensors; two decimals keep the bodies realistic.
        let value = value_text(seq as usize * 31 + i * 7);
        match target {
            Target::Hub { .. } => {
                if i > 0 {
                    out.push(',');
                }
                for part in [
                    "{\"metric\":\"",
                    metric,
                    "\",\"value\":",
                    value,
                    ",\"ts\":",
                    ts,
                    "}",
                ] {
                    out.push_str(part);
                }
            }
            Target::Influx { .. } => {
                // Writing into a String cannot fail.
                let _ = writeln!(
                    out,
                    "readings,device_id={},metric={metric} value={value} {ts}",
                    device.id
                );
            }
        }
    }
    if matches!(target, Target::Hub { .. }) {
        out.push_str("]}");
    }
    out
}

#[derive(serde::Deserialize)]
struct Accepted {
    accepted: u64,
}

struct Shared {
    report: Mutex<LoadReport>,
}

/// Runs one phase of load and returns what happened. Bounded in count (`rate × duration`
/// requests, rounded up) and in time (each request has a client timeout longer than the
/// gateway's own publish timeout, so that the gateway always answers first and counts stay
/// exact).
pub async fn run(spec: &LoadSpec, seq: &Arc<Sequencer>) -> anyhow::Result<LoadReport> {
    let url = spec.target.url();
    check_loopback(&url)?;
    anyhow::ensure!(
        !spec.devices.is_empty() && spec.batch > 0 && spec.rate > 0.0,
        "the load needs devices, a batch size and a rate"
    );
    anyhow::ensure!(
        seq.next.len() >= spec.devices.len(),
        "the sequencer was made for fewer devices"
    );
    let clients = (0..spec.connections.clamp(1, spec.devices.len().max(1)))
        .map(|_| {
            reqwest::Client::builder()
                .tcp_nodelay(true)
                .pool_idle_timeout(Duration::from_secs(90))
                .timeout(Duration::from_secs(60))
                .build()
                .context("cannot build an HTTP client")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let requests_per_sec = spec.rate / spec.batch as f64;
    let total = (requests_per_sec * spec.duration.as_secs_f64())
        .ceil()
        .max(1.0) as u64;
    let period = Duration::from_secs_f64(1.0 / requests_per_sec);
    let permits = Arc::new(tokio::sync::Semaphore::new(spec.max_in_flight.max(1)));
    let shared = Arc::new(Shared {
        report: Mutex::new(LoadReport {
            latencies_us: Vec::with_capacity(total as usize),
            ..Default::default()
        }),
    });
    let url: Arc<str> = url.into();
    // Per device once: its bearer header (the hub's) and the device itself, shared by the
    // requests instead of copied into each.
    let devices: Arc<Vec<(LoadDevice, reqwest::header::HeaderValue)>> = Arc::new(
        spec.devices
            .iter()
            .map(|d| {
                let auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", d.key))
                    .context("a device key is not a valid header value")?;
                Ok((d.clone(), auth))
            })
            .collect::<anyhow::Result<_>>()?,
    );
    let target = Arc::new(spec.target.clone());
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut late = 0u64;
    for k in 0..total {
        let due = start + period.mul_f64(k as f64);
        tokio::time::sleep_until(due.into()).await;
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .context("the in-flight semaphore closed")?;
        if due.elapsed() > Duration::from_millis(50) {
            late += 1;
        }
        let d = (k % spec.devices.len() as u64) as usize;
        let devices = devices.clone();
        let client = clients[d % clients.len()].clone();
        let n = seq.take(d);
        let target = target.clone();
        let batch = spec.batch;
        let base_ms = seq.base_ms;
        let url = url.clone();
        let shared = shared.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let (device, auth) = &devices[d];
            let body = body(&target, device, n, batch, base_ms);
            let mut req = client.post(&*url).body(body);
            req = match *target {
                Target::Hub { .. } => req
                    .header(reqwest::header::AUTHORIZATION, auth.clone())
                    .header("content-type", "application/json"),
                Target::Influx { .. } => req.header("content-type", "text/plain"),
            };
            let outcome = match req.send().await {
                Ok(r) if r.status().is_success() => {
                    let accepted = match *target {
                        Target::Hub { .. } => {
                            r.json::<Accepted>().await.map(|a| a.accepted).unwrap_or(0)
                        }
                        Target::Influx { .. } => batch as u64,
                    };
                    Ok(accepted)
                }
                Ok(r) => Err(Some(r.status().as_u16())),
                Err(_) => Err(None),
            };
            let latency = due.elapsed();
            let mut rep = shared.report.lock().unwrap_or_else(|p| p.into_inner());
            rep.requests += 1;
            match outcome {
                Ok(accepted) => {
                    rep.ok += 1;
                    rep.accepted += accepted;
                    rep.latencies_us.push(latency.as_micros() as u64);
                }
                Err(Some(status)) => *rep.refused.entry(status).or_default() += 1,
                Err(None) => rep.failed += 1,
            }
        });
        // Reap finished tasks as we go, so the set does not grow with the run.
        while tasks.try_join_next().is_some() {}
    }
    let offered_window = start.elapsed();
    while tasks.join_next().await.is_some() {}
    let mut report = std::mem::take(&mut *shared.report.lock().unwrap_or_else(|p| p.into_inner()));
    report.late = late;
    report.elapsed = start.elapsed();
    report.offered_window = offered_window.max(period.mul_f64(total as f64));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_bodies_are_valid_json_with_unique_timestamps_per_metric() {
        let device = LoadDevice {
            id: Uuid::new_v4(),
            key: String::new(),
        };
        let target = Target::Hub { url: String::new() };
        let mut seen = std::collections::HashSet::new();
        for n in 0..3 {
            let v: serde_json::Value =
                serde_json::from_str(&body(&target, &device, n, 10, 1_700_000_000_000)).unwrap();
            let readings = v["readings"].as_array().unwrap();
            assert_eq!(readings.len(), 10);
            for r in readings {
                let key = (r["metric"].to_string(), r["ts"].as_i64().unwrap());
                assert!(seen.insert(key), "duplicate (metric, ts)");
            }
        }
    }

    #[test]
    fn influx_bodies_have_one_line_per_reading() {
        let device = LoadDevice {
            id: Uuid::new_v4(),
            key: String::new(),
        };
        let target = Target::Influx {
            url: String::new(),
            database: "b".into(),
        };
        let b = body(&target, &device, 0, 5, 1_700_000_000_000);
        assert_eq!(b.lines().count(), 5);
        assert!(b.starts_with("readings,device_id="));
    }

    #[test]
    fn only_loopback_targets_are_allowed() {
        assert!(check_loopback("http://127.0.0.1:8081/ingest").is_ok());
        assert!(check_loopback("http://example.com/ingest").is_err());
    }
}

//! The hub's benchmark: throughput, latency and cost, beside what the database alone can take
//! and, optionally, beside InfluxDB — all in one run, on one machine. `compose/bench` runs it;
//! `docs/benchmarks.md` describes the method and the results.
//!
//! Phases, in order, on a fresh hub (real release binaries, unique database and namespace):
//!
//! 1. **ceiling** — the same rows written straight into the same `readings` table (on series
//!    ids of their own) with the processor's own two statements: binary COPY and
//!    `INSERT … UNNEST … ON CONFLICT`, on one and on two connections. The fastest is the ceiling.
//! 2. **sustained** — the highest open-loop HTTP rate the hub keeps up with: trials step the
//!    offered rate up by a quarter until one falls behind (a refusal, late sends, or more than a
//!    second of backlog at the end), then bisect; a full-length run at the rate found confirms it.
//!    Its committed rate (rows per second in the database while the load runs) is the figure.
//! 3. **latency** — open-loop load at 80 % of that rate; gateway receive → commit latency from
//!    the processor's histogram (linear interpolation inside a bucket), and the client's own
//!    due-time → 2xx latency.
//! 4. **overload** — 1.5 × the ceiling offered: what the hub commits while overloaded on one
//!    machine (less than it sustains: the gateway takes the CPU the database needs).
//! 5. **gateway only** — the processor is stopped; what the gateway alone accepts (2xx).
//! 6. **processor drain** — a new processor drains the stream phase 5 filled.
//! 7. **peer** (`--peer influxdb`) — the same readings, batch size, offered rate and duration
//!    into a private `influxd` over its line-protocol `/write`.
//!
//! After each phase the bench waits until everything accepted is stored, and at the end the
//! rows counted in the database must equal the readings accepted (2xx): nothing lost.
//!
//! Output: a table for people and, as the last line, one JSON object for scripts.

use anyhow::{Context as _, bail};
use clap::Parser;
use hub_tests::hub::{HubOptions, TestHub, metric_value};
use hub_tests::load::{self, LoadDevice, LoadReport, LoadSpec, METRICS, Sequencer, Target};
use processor::storage::readings::{self, Columns};
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The same allocator as the hub's binaries, so that the load generator takes as little of the
/// machine's CPU from the system under test as it can.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// p50 and p99 in milliseconds, then the histogram bucket bounds (seconds) each fell in.
type LatencyFigures = (f64, f64, (f64, f64), (f64, f64));

#[derive(Parser, Debug, Clone)]
#[command(
    name = "bench",
    about = "Benchmark the hub end to end, beside the database ceiling and a peer"
)]
struct Args {
    /// Seconds of load per phase (and per method of the ceiling phase).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Readings per HTTP request (and per line-protocol write for the peer). 500 is what an
    /// edge gateway or a buffering device sends; at 100 and below the per-request costs (HTTP,
    /// a JetStream message, a log line) dominate on a 2-core machine (docs/benchmarks.md).
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Simulated devices, each with its own key; requests go to them in turn.
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Offered readings per second in the overload, gateway-only and peer phases. Default: 1.5 ×
    /// the measured ceiling, so that the system under test, not the generator, is the limit.
    #[arg(long)]
    rate: Option<f64>,
    /// The first rate the sustained-rate search tries. Default: 30 % of the measured ceiling.
    #[arg(long)]
    start_rate: Option<f64>,
    /// Most trials of the sustained-rate search (before the confirming run).
    #[arg(long, default_value_t = 8)]
    max_trials: usize,
    /// Readings per second for the latency phase. Default: 80 % of the sustained rate.
    #[arg(long)]
    latency_rate: Option<f64>,
    /// Most HTTP requests in flight at once.
    #[arg(long, default_value_t = 256)]
    max_in_flight: usize,
    /// Keep-alive HTTP connections the devices share.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Also measure a peer system with the same load.
    #[arg(long, value_enum)]
    peer: Option<Peer>,
    /// The `influxd` binary for `--peer influxdb`.
    #[arg(long, default_value = "influxd")]
    influxd: String,
    /// Extra environment for the processor (KEY=VALUE, repeatable), for experiments.
    #[arg(long = "processor-env", value_parser = parse_kv)]
    processor_env: Vec<(String, String)>,
    /// Extra environment for the gateway (KEY=VALUE, repeatable), for experiments.
    #[arg(long = "gateway-env", value_parser = parse_kv)]
    gateway_env: Vec<(String, String)>,
    /// Skip phases (comma-separated: ceiling, latency, overload, gateway-only), for quick
    /// experiments.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Peer {
    Influxdb,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s}"))
}

// ---------------------------------------------------------------------------------------------
// Process accounting from /proc.

/// CPU time and memory of one process, from `/proc/<pid>/stat` and `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default)]
struct ProcSample {
    /// utime + stime, in clock ticks.
    ticks: u64,
    /// Peak resident set (VmHWM), in KiB.
    hwm_kb: u64,
}

fn proc_sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) … utime(14) stime(15), i.e. indexes 11 and 12 here.
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Some(ProcSample { ticks, hwm_kb })
}

fn clock_ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Processes whose command line matches, by pid.
fn pids_matching(pred: impl Fn(&str, &str) -> bool) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default();
            pred(comm.trim(), &cmdline)
        })
        .collect()
}

/// The groups of processes the bench reports on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Group {
    Gateway,
    Processor,
    /// PostgreSQL backends connected to this run's database (found by their command line).
    PostgresBackends,
    /// Every other PostgreSQL process (WAL writer, checkpointer, autovacuum, other databases'
    /// backends): shared with anything else running on the machine.
    PostgresOther,
    /// The NATS server on the hub's port: shared with anything else using it.
    Nats,
    /// The bench itself: the load generator and its HTTP clients.
    Bench,
    Influxd,
}

impl Group {
    fn name(self) -> &'static str {
        match self {
            Group::Gateway => "gateway",
            Group::Processor => "processor",
            Group::PostgresBackends => "postgres_backends",
            Group::PostgresOther => "postgres_other",
            Group::Nats => "nats",
            Group::Bench => "bench",
            Group::Influxd => "influxd",
        }
    }
}

/// Knows which pid belongs to which group and samples them.
struct Accounting {
    database: String,
    nats_port: String,
    gateway: Option<u32>,
    processor: Option<u32>,
    influxd: Option<u32>,
    ticks_per_sec: f64,
    /// Highest VmHWM seen per group, in KiB (for PostgreSQL: of one backend).
    peak_kb: BTreeMap<Group, u64>,
    /// CPU seconds per group summed over the measured phases.
    cpu_total: BTreeMap<Group, f64>,
}

type Snapshot = BTreeMap<u32, (Group, ProcSample)>;

impl Accounting {
    fn snapshot(&mut self) -> Snapshot {
        let mut out = Snapshot::new();
        let add = |pid: u32, group: Group, out: &mut Snapshot| {
            if let Some(s) = proc_sample(pid) {
                out.insert(pid, (group, s));
            }
        };
        for (pid, group) in [
            (self.gateway, Group::Gateway),
            (self.processor, Group::Processor),
            (self.influxd, Group::Influxd),
            (Some(std::process::id()), Group::Bench),
        ] {
            if let Some(pid) = pid {
                add(pid, group, &mut out);
            }
        }
        let db = self.database.clone();
        for pid in pids_matching(|comm, _| comm == "postgres") {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            let group = if cmdline.contains(&db) {
                Group::PostgresBackends
            } else {
                Group::PostgresOther
            };
            add(pid, group, &mut out);
        }
        let port = self.nats_port.clone();
        let nats: Vec<u32> =
            pids_matching(|comm, cmd| comm == "nats-server" && cmd.contains(&port));
        for pid in nats {
            add(pid, Group::Nats, &mut out);
        }
        for (group, s) in out.values() {
            let peak = self.peak_kb.entry(*group).or_default();
            *peak = (*peak).max(s.hwm_kb);
        }
        out
    }

    /// CPU seconds per group between two snapshots (a process that started in between counts
    /// from zero; one that ended in between is lost, which only the processor restart does, and
    /// only after its phase was accounted).
    fn cpu_between(&mut self, before: &Snapshot, after: &Snapshot) -> BTreeMap<Group, f64> {
        let mut out = BTreeMap::new();
        for (pid, (group, s)) in after {
            let start = before.get(pid).map(|(_, b)| b.ticks).unwrap_or(0);
            *out.entry(*group).or_default() +=
                s.ticks.saturating_sub(start) as f64 / self.ticks_per_sec;
        }
        for (g, v) in &out {
            *self.cpu_total.entry(*g).or_default() += v;
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the hub's state.

/// Rows stored by the hub (not by the ceiling phase, whose series ids are all ≤ `ceiling_max`).
async fn hub_rows(db: &PgPool, ceiling_max: i32) -> anyhow::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM readings WHERE series_id > $1")
        .bind(ceiling_max)
        .fetch_one(db)
        .await
        .context("cannot count the stored readings")
}

async fn metrics_text(hub: &TestHub, base: &str) -> anyhow::Result<String> {
    hub.http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .context("cannot read /metrics")?
        .text()
        .await
        .context("cannot read /metrics")
}

/// Rows the current processor reports as committed (`rows_affected` of committed inserts).
async fn processor_written(hub: &TestHub) -> anyhow::Result<f64> {
    let text = metrics_text(hub, hub.processor_url()).await?;
    Ok(metric_value(
        &text,
        "hub_processor_readings_written_total",
        &[],
    ))
}

/// The cumulative buckets of the end-to-end latency histogram: (upper bound s, count).
fn latency_buckets(text: &str) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("hub_processor_ingest_latency_seconds_bucket{")?;
            let le = rest.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count = l.rsplit_once(' ')?.1.parse().ok()?;
            Some((le, count))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The `q` quantile of a cumulative histogram, interpolating linearly inside the bucket it falls
/// in (as Prometheus' `histogram_quantile` does). Returns (estimate, bucket lower, bucket upper)
/// in seconds, so the report can say how coarse the estimate is.
fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<(f64, f64, f64)> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some((lower.0, lower.0, le));
            }
            let within = count - lower.1;
            let frac = if within > 0.0 {
                (rank - lower.1) / within
            } else {
                1.0
            };
            return Some((lower.0 + (le - lower.0) * frac, lower.0, le));
        }
        lower = (le, count);
    }
    None
}

fn delta_buckets(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|&(le, c)| {
            let b = before
                .iter()
                .find(|(l, _)| *l == le)
                .map(|(_, c)| *c)
                .unwrap_or(0.0);
            (le, c - b)
        })
        .collect()
}

/// Waits until the database holds `target` hub rows. Polls the processor's committed-rows
/// counter (cheap) and confirms with a count in the database (exact). Returns when the last row
/// was seen committed.
async fn wait_stored(
    hub: &TestHub,
    ceiling_max: i32,
    target: i64,
    written_base: (i64, f64),
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let (rows_base, metric_base) = written_base;
    let deadline = Instant::now() + timeout;
    loop {
        let written = processor_written(hub).await.unwrap_or(metric_base);
        let now = Instant::now();
        if rows_base + (written - metric_base) as i64 >= target {
            let stored = hub_rows(&hub.db, ceiling_max).await?;
            if stored >= target {
                return Ok(now);
            }
        }
        if Instant::now() > deadline {
            let stored = hub_rows(&hub.db, ceiling_max).await?;
            bail!("after {timeout:?} the database holds {stored} hub rows, expected {target}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The ceiling.

/// Rows shaped like the hub's: `devices × METRICS` series, timestamps unique per series.
struct RowSource {
    series: Vec<i32>,
    next_ts: Vec<i64>,
    batch: usize,
    metrics: usize,
    cursor: usize,
}

impl RowSource {
    /// The next `n` rows as three columns, in the order the hub would write them: requests of
    /// `batch` readings, devices in turn, metrics in turn inside a request.
    fn take(&mut self, n: usize) -> Columns {
        let devices = self.series.len() / self.metrics;
        let (mut s, mut t, mut v) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for _ in 0..n {
            let request = self.cursor / self.batch;
            let within = self.cursor % self.batch;
            let idx = (request % devices) * self.metrics + within % self.metrics;
            s.push(self.series[idx]);
            t.push(self.next_ts[idx] * 1000);
            self.next_ts[idx] += 1;
            v.push(20.0 + (self.cursor % 1000) as f64 / 100.0);
            self.cursor += 1;
        }
        Columns {
            series: s,
            ts_us: t,
            value: v,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Method {
    CopyBinary,
    UnnestOnConflict,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::CopyBinary => "COPY (binary)",
            Method::UnnestOnConflict => "INSERT … UNNEST … ON CONFLICT DO NOTHING",
        }
    }
}

/// The hub's own two write statements (`processor::storage::readings`), so that the ceiling
/// is measured with exactly the SQL the processor runs, minus everything around it.
async fn write_rows(db: &PgPool, method: Method, cols: &Columns) -> anyhow::Result<u64> {
    match method {
        Method::CopyBinary => readings::copy(db, cols).await.context("COPY"),
        Method::UnnestOnConflict => readings::insert(db, cols).await.context("UNNEST insert"),
    }
}

struct CeilingResult {
    method: Method,
    connections: usize,
    rows: u64,
    secs: f64,
}

impl CeilingResult {
    fn rate(&self) -> f64 {
        self.rows as f64 / self.secs
    }
}

/// Writes rows by `method` on `connections` connections for `duration`, in statements of
/// `rows_per_statement`; rows are generated ahead of the clock so that only the database's work
/// is timed.
async fn ceiling_run(
    db: &PgPool,
    source: &mut RowSource,
    method: Method,
    connections: usize,
    rows_per_statement: usize,
    duration: Duration,
) -> anyhow::Result<CeilingResult> {
    let started = Instant::now();
    let mut rows = 0u64;
    while started.elapsed() < duration {
        let chunks: Vec<_> = (0..connections)
            .map(|_| source.take(rows_per_statement))
            .collect();
        let results =
            futures::future::join_all(chunks.iter().map(|c| write_rows(db, method, c))).await;
        for r in results {
            rows += r?;
        }
    }
    Ok(CeilingResult {
        method,
        connections,
        rows,
        secs: started.elapsed().as_secs_f64(),
    })
}

// ---------------------------------------------------------------------------------------------
// The peer: a private InfluxDB 1.x.

struct Influx {
    child: std::process::Child,
    url: String,
    _dir: TempDir,
}

/// A temporary directory removed on drop.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .context("cannot find a free port")?
        .local_addr()?
        .port())
}

impl Influx {
    /// Starts `influxd` with its own directories and loopback ports, usage reporting off.
    async fn start(binary: &str, http: &reqwest::Client) -> anyhow::Result<Influx> {
        let dir =
            std::env::temp_dir().join(format!("hub-bench-influx-{}", hub_tests::unique_suffix()));
        std::fs::create_dir_all(&dir).context("cannot create the InfluxDB directory")?;
        let dir = TempDir(dir);
        let (http_port, rpc_port) = (free_port()?, free_port()?);
        let d = dir.0.display();
        // Defaults otherwise (WAL fsync on every write, as a durable store should), so that the
        // comparison is with InfluxDB as packaged.
        let config = format!(
            "reporting-disabled = true\n\
             bind-address = \"127.0.0.1:{rpc_port}\"\n\
             [meta]\n  dir = \"{d}/meta\"\n\
             [data]\n  dir = \"{d}/data\"\n  wal-dir = \"{d}/wal\"\n  query-log-enabled = false\n\
             [http]\n  bind-address = \"127.0.0.1:{http_port}\"\n  log-enabled = false\n\
             [monitor]\n  store-enabled = false\n\
             [continuous_queries]\n  enabled = false\n"
        );
        let conf_path = dir.0.join("influxdb.conf");
        std::fs::write(&conf_path, config).context("cannot write the InfluxDB config")?;
        let log = std::fs::File::create(dir.0.join("influxd.log"))?;
        let child = std::process::Command::new(binary)
            .arg("-config")
            .arg(&conf_path)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!("cannot start {binary} (install the Debian package influxdb)")
            })?;
        let url = format!("http://127.0.0.1:{http_port}");
        let mut influx = Influx {
            child,
            url,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ping = http.get(format!("{}/ping", influx.url)).send().await;
            if ping.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if let Ok(Some(status)) = influx.child.try_wait() {
                bail!("influxd exited ({status}); see its log");
            }
            if Instant::now() > deadline {
                bail!("influxd did not answer /ping within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        influx.query(http, "CREATE DATABASE bench").await?;
        Ok(influx)
    }

    async fn query(&self, http: &reqwest::Client, q: &str) -> anyhow::Result<Value> {
        let r = http
            .post(format!("{}/query", self.url))
            .form(&[("q", q), ("db", "bench")])
            .send()
            .await
            .context("InfluxDB query")?;
        let status = r.status();
        let v: Value = r.json().await.context("InfluxDB query answer")?;
        anyhow::ensure!(status.is_success(), "InfluxDB query {q} failed: {v}");
        Ok(v)
    }

    async fn points(&self, http: &reqwest::Client) -> anyhow::Result<u64> {
        let v = self
            .query(http, "SELECT count(value) FROM readings")
            .await?;
        Ok(v["results"][0]["series"][0]["values"][0][1]
            .as_u64()
            .unwrap_or(0))
    }
}

impl Drop for Influx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// One phase of load on the hub.

/// What one phase of load did to the hub.
struct PhaseRun {
    report: LoadReport,
    /// Rows committed per second after the warm-up, while the load ran.
    committed_rate: f64,
    /// Readings accepted but not yet committed when the load stopped.
    backlog_at_end: i64,
    cpu: BTreeMap<Group, f64>,
}

impl PhaseRun {
    /// Whether the hub kept up with `rate`: every request answered 2xx, hardly any sent late
    /// by the generator (which would mean it, not the hub, was the limit), all of the offered
    /// readings accepted, and at most a second of them still uncommitted when the load ended.
    fn kept_up(&self, rate: f64) -> bool {
        let r = &self.report;
        let offered = rate * r.offered_window.as_secs_f64();
        r.refused.is_empty()
            && r.failed == 0
            && (r.late as f64) <= 0.01 * r.requests as f64
            && r.accepted as f64 >= 0.99 * offered
            && (self.backlog_at_end as f64) <= rate
    }
}

/// Runs `spec` against the hub, measures the committed rate after a warm-up, then waits until
/// everything accepted is stored (and checks that it is, exactly).
async fn run_phase(
    hub: &TestHub,
    acct: &mut Accounting,
    ceiling_max: i32,
    spec: &LoadSpec,
    seq: &Arc<Sequencer>,
) -> anyhow::Result<PhaseRun> {
    let rows0 = hub_rows(&hub.db, ceiling_max).await?;
    let m0 = processor_written(hub).await?;
    let before = acct.snapshot();
    let warmup = Duration::from_secs_f64((spec.duration.as_secs_f64() / 5.0).clamp(1.0, 5.0));
    let sampler = async {
        let start = Instant::now();
        tokio::time::sleep(warmup).await;
        let a = (Instant::now(), processor_written(hub).await);
        tokio::time::sleep_until((start + spec.duration).into()).await;
        let b = (Instant::now(), processor_written(hub).await);
        (a, b)
    };
    let (report, (a, b)) = tokio::join!(load::run(spec, seq), sampler);
    let report = report?;
    let m_end = processor_written(hub).await?;
    let after = acct.snapshot();
    let cpu = acct.cpu_between(&before, &after);
    let (wa, wb) = (a.1?, b.1?);
    let committed_rate = (wb - wa) / (b.0 - a.0).as_secs_f64();
    let backlog_at_end = report.accepted as i64 - (m_end - m0) as i64;
    let target = rows0 + report.accepted as i64;
    wait_stored(
        hub,
        ceiling_max,
        target,
        (rows0, m0),
        Duration::from_secs(300),
    )
    .await?;
    let stored = hub_rows(&hub.db, ceiling_max).await?;
    anyhow::ensure!(
        stored == target,
        "{stored} hub rows stored after the phase, {target} accepted"
    );
    Ok(PhaseRun {
        report,
        committed_rate,
        backlog_at_end,
        cpu,
    })
}

// ---------------------------------------------------------------------------------------------
// The run.

struct Phase {
    name: &'static str,
    load: Option<LoadReport>,
    /// Readings committed (or accepted, for the gateway-only phase) per second.
    rate: f64,
    cpu: BTreeMap<Group, f64>,
    note: String,
}

fn mb(kb: u64) -> f64 {
    (kb as f64 / 1024.0 * 10.0).round() / 10.0
}

fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn r0(x: f64) -> f64 {
    x.round()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.seconds >= 2, "--seconds must be at least 2");
    anyhow::ensure!(
        args.batch >= 1 && args.devices >= 1,
        "--batch and --devices must be ≥ 1"
    );
    let release = std::env::var("HUB_TEST_RELEASE").is_ok_and(|v| v == "1");
    if !release {
        eprintln!("warning: HUB_TEST_RELEASE=1 is not set: measuring DEBUG binaries");
    }
    let secs = Duration::from_secs(args.seconds);
    let progress = |msg: &str| eprintln!("==> {msg}");

    // Nothing in the harness logs per reading; INFO is the hub's default level (one access-log
    // line per HTTP request), and what production runs, so that is what is measured.
    let mut opts = HubOptions {
        // The drain phase pre-fills the stream with many seconds of readings.
        stream_max_bytes: None,
        ..Default::default()
    };
    opts.processor_env
        .push(("DATABASE_MAX_CONNECTIONS".into(), "16".into()));
    opts.processor_env
        .extend(args.processor_env.iter().cloned());
    opts.gateway_env.extend(args.gateway_env.iter().cloned());
    progress("starting a fresh hub (release binaries, unique database and namespace)");
    let mut hub = TestHub::start_with(opts).await;
    let token = hub.admin_token().await;
    progress(&format!("creating {} devices", args.devices));
    let mut devices = Vec::with_capacity(args.devices);
    let names: Vec<String> = (0..args.devices).map(|i| format!("bench-{i}")).collect();
    for chunk in names.chunks(16) {
        let made =
            futures::future::join_all(chunk.iter().map(|n| hub.create_device(&token, n))).await;
        devices.extend(made.into_iter().map(|d| LoadDevice {
            id: d.id,
            key: d.key,
        }));
    }
    let bench_db = PgPoolOptions::new()
        .max_connections(4)
        .connect(&hub.database_url)
        .await
        .context("cannot connect to the hub's database")?;
    let nats_port = hub
        .opts
        .nats_url
        .rsplit(':')
        .next()
        .unwrap_or("4222")
        .to_owned();
    let mut acct = Accounting {
        database: hub.database.clone(),
        nats_port,
        gateway: hub.gateways.first().and_then(|g| g.process.pid()),
        processor: hub.processors.first().and_then(|p| p.process.pid()),
        influxd: None,
        ticks_per_sec: clock_ticks_per_sec(),
        peak_kb: BTreeMap::new(),
        cpu_total: BTreeMap::new(),
    };
    let mut phases: Vec<Phase> = Vec::new();
    let skip = |p: &str| args.skip.iter().any(|s| s == p);

    // Series for the ceiling, created before any hub series so that their ids are the lowest.
    let ceiling_devices: Vec<uuid::Uuid> =
        (0..args.devices).map(|_| uuid::Uuid::new_v4()).collect();
    let (cd, cm): (Vec<uuid::Uuid>, Vec<&str>) = ceiling_devices
        .iter()
        .flat_map(|d| METRICS.iter().map(move |m| (*d, *m)))
        .unzip();
    let ceiling_series: Vec<i32> = sqlx::query(
        "INSERT INTO series (device_id, metric_name)
         SELECT d, m FROM UNNEST($1::uuid[], $2::text[]) WITH ORDINALITY AS k(d, m, o)
         ORDER BY o RETURNING series_id",
    )
    .bind(&cd)
    .bind(&cm)
    .fetch_all(&bench_db)
    .await
    .context("cannot create the ceiling's series")?
    .iter()
    .map(|r| r.get::<i32, _>(0))
    .collect();
    let ceiling_max = ceiling_series.iter().copied().max().unwrap_or(0);
    let base_ms = chrono::Utc::now().timestamp_millis() - 7_200_000;
    let mut source = RowSource {
        next_ts: vec![base_ms; ceiling_series.len()],
        series: ceiling_series,
        batch: args.batch,
        metrics: METRICS.len(),
        cursor: 0,
    };

    // 1. The ceiling.
    let mut ceiling: Vec<CeilingResult> = Vec::new();
    if !skip("ceiling") {
        let variants = [
            (Method::CopyBinary, 1),
            (Method::CopyBinary, 2),
            (Method::UnnestOnConflict, 2),
        ];
        // Each method for as long as the hub's own measured run (`--seconds`): with default
        // settings PostgreSQL checkpoints every quarter of a minute or so under this write rate
        // (`max_wal_size` 1 GB), and a rate measured over a few seconds may miss the slowdown
        // that a longer one, like the hub's, always includes.
        let each = secs;
        for (method, conns) in variants {
            progress(&format!(
                "ceiling: {} on {conns} connection(s)",
                method.name()
            ));
            let before = acct.snapshot();
            let r = ceiling_run(&bench_db, &mut source, method, conns, 20_000, each).await?;
            let after = acct.snapshot();
            let cpu = acct.cpu_between(&before, &after);
            phases.push(Phase {
                name: "ceiling",
                load: None,
                rate: r.rate(),
                cpu,
                note: format!("{} ×{conns}", method.name()),
            });
            ceiling.push(r);
        }
    }
    let best = ceiling.iter().max_by(|a, b| a.rate().total_cmp(&b.rate()));
    let ceiling_rate = best.map(|b| b.rate()).unwrap_or(0.0);

    // 2. The sustained rate: the highest offered rate the hub keeps up with (every request
    //    answered 2xx on time, the backlog at the end under a second of load), found by trials
    //    that step up by a quarter and then bisect, and confirmed by a full-length run. An
    //    overloaded hub on one machine commits less than it could sustain, because the gateway
    //    then spends the CPU that the processor and the database need on readings that only
    //    queue up; that figure is reported too (phase "overload").
    let seq = Arc::new(Sequencer::new(devices.len()));
    let gateway_url = hub.gateway_url().to_owned();
    let overload_rate = args.rate.unwrap_or(if ceiling_rate > 0.0 {
        ceiling_rate * 1.5
    } else {
        150_000.0
    });
    let spec = |rate: f64, duration: Duration| LoadSpec {
        target: Target::Hub {
            url: gateway_url.clone(),
        },
        devices: devices.clone(),
        batch: args.batch,
        rate,
        duration,
        max_in_flight: args.max_in_flight,
        connections: args.connections,
    };
    let mut accepted_total: i64 = 0;
    let mut unknown_total: u64 = 0;
    let drain_timeout = Duration::from_secs(300);

    let trial_secs = Duration::from_secs((args.seconds / 2).max(4));
    let mut rate = args.start_rate.unwrap_or(if ceiling_rate > 0.0 {
        ceiling_rate * 0.3
    } else {
        50_000.0
    });
    let (mut good, mut bad): (Option<f64>, Option<f64>) = (None, None);
    for trial in 1..=args.max_trials {
        progress(&format!(
            "sustained rate, trial {trial}: offering {rate:.0} readings/s for {}s",
            trial_secs.as_secs()
        ));
        let run = run_phase(&hub, &mut acct, ceiling_max, &spec(rate, trial_secs), &seq).await?;
        accepted_total += run.report.accepted as i64;
        unknown_total += run.report.failed;
        let kept_up = run.kept_up(rate);
        progress(&format!(
            "  {} (committed {:.0}/s, backlog at end {}, late {}, refused {:?})",
            if kept_up { "kept up" } else { "fell behind" },
            run.committed_rate,
            run.backlog_at_end,
            run.report.late,
            run.report.refused
        ));
        if kept_up {
            good = Some(good.map_or(rate, |g: f64| g.max(rate)));
        } else {
            bad = Some(bad.map_or(rate, |b: f64| b.min(rate)));
        }
        rate = match (good, bad) {
            (Some(g), None) => g * 1.25,
            (None, Some(b)) => b * 0.7,
            (Some(g), Some(b)) if b / g > 1.06 => (g + b) / 2.0,
            _ => break,
        };
    }
    let mut sustained_offer = good.unwrap_or(rate);
    let mut sustained = 0.0;
    for attempt in 0..3 {
        progress(&format!(
            "sustained: offering {sustained_offer:.0} readings/s for {}s",
            args.seconds
        ));
        let run = run_phase(
            &hub,
            &mut acct,
            ceiling_max,
            &spec(sustained_offer, secs),
            &seq,
        )
        .await?;
        accepted_total += run.report.accepted as i64;
        unknown_total += run.report.failed;
        let kept_up = run.kept_up(sustained_offer);
        let note = format!(
            "offered {sustained_offer:.0}/s, accepted {:.0}/s, backlog at end {}{}",
            run.report.accepted_per_sec(),
            run.backlog_at_end,
            if kept_up {
                ""
            } else {
                " (fell behind: retried 10 % lower)"
            }
        );
        if kept_up || attempt == 2 {
            sustained = run.committed_rate;
        }
        phases.push(Phase {
            name: "sustained",
            rate: run.committed_rate,
            note,
            load: Some(run.report),
            cpu: run.cpu,
        });
        if kept_up {
            break;
        }
        sustained_offer *= 0.9;
    }

    // 3. Latency at 80 % of the sustained rate.
    let latency_rate = args.latency_rate.unwrap_or(sustained * 0.8);
    let mut latency: Option<LatencyFigures> = None;
    if !skip("latency") && latency_rate > 0.0 {
        progress(&format!(
            "latency: offering {latency_rate:.0} readings/s for {}s",
            args.seconds
        ));
        let rows0 = hub_rows(&hub.db, ceiling_max).await?;
        let m0 = processor_written(&hub).await?;
        let h0 = latency_buckets(&metrics_text(&hub, hub.processor_url()).await?);
        let before = acct.snapshot();
        let report = load::run(&spec(latency_rate, secs), &seq).await?;
        let m_end = processor_written(&hub).await?;
        let after = acct.snapshot();
        let cpu = acct.cpu_between(&before, &after);
        accepted_total += report.accepted as i64;
        unknown_total += report.failed;
        let target = rows0 + report.accepted as i64;
        wait_stored(&hub, ceiling_max, target, (rows0, m0), drain_timeout).await?;
        let h1 = latency_buckets(&metrics_text(&hub, hub.processor_url()).await?);
        let h = delta_buckets(&h0, &h1);
        let p50 = quantile(&h, 0.5).context("no latency samples")?;
        let p99 = quantile(&h, 0.99).context("no latency samples")?;
        latency = Some((
            p50.0 * 1000.0,
            p99.0 * 1000.0,
            (p50.1, p50.2),
            (p99.1, p99.2),
        ));
        let committed_rate = (m_end - m0) / report.offered_window.as_secs_f64();
        phases.push(Phase {
            name: "latency",
            rate: committed_rate,
            note: format!(
                "offered {latency_rate:.0}/s; p50 {:.1} ms in ({}, {}] s, p99 {:.1} ms in ({}, {}] s; backlog at end {}",
                p50.0 * 1000.0,
                p50.1,
                p50.2,
                p99.0 * 1000.0,
                p99.1,
                p99.2,
                target - (rows0 + (m_end - m0) as i64)
            ),
            load: Some(report),
            cpu,
        });
    }

    // Overload: well above what the hub can take (1.5 × the ceiling unless --rate says), to see
    // what it commits then and that it refuses nothing it cannot store.
    let mut overload = 0.0;
    if !skip("overload") {
        progress(&format!(
            "overload: offering {overload_rate:.0} readings/s for {}s",
            args.seconds
        ));
        let run = run_phase(
            &hub,
            &mut acct,
            ceiling_max,
            &spec(overload_rate, secs),
            &seq,
        )
        .await?;
        accepted_total += run.report.accepted as i64;
        unknown_total += run.report.failed;
        overload = run.committed_rate;
        phases.push(Phase {
            name: "overload",
            rate: run.committed_rate,
            note: format!(
                "offered {overload_rate:.0}/s, accepted {:.0}/s, backlog at end {}",
                run.report.accepted_per_sec(),
                run.backlog_at_end
            ),
            load: Some(run.report),
            cpu: run.cpu,
        });
    }

    // 4. Gateway only: the processor is stopped; the stream fills.
    let mut gateway_only = 0.0;
    let mut drain_rate = 0.0;
    if !skip("gateway-only") {
        progress("gateway only: stopping the processor");
        let rows_stopped = hub_rows(&hub.db, ceiling_max).await?;
        if let Some(mut p) = hub.processors.pop() {
            p.process.terminate(Duration::from_secs(30));
        }
        acct.processor = None;
        progress(&format!(
            "gateway only: offering {overload_rate:.0} readings/s for {}s",
            args.seconds
        ));
        let before = acct.snapshot();
        let report = load::run(&spec(overload_rate, secs), &seq).await?;
        let after = acct.snapshot();
        let cpu = acct.cpu_between(&before, &after);
        gateway_only = report.accepted_per_sec();
        accepted_total += report.accepted as i64;
        unknown_total += report.failed;
        let target = rows_stopped + report.accepted as i64;
        phases.push(Phase {
            name: "gateway-only",
            rate: gateway_only,
            note: format!("offered {overload_rate:.0}/s; counted as 2xx-accepted readings"),
            load: Some(report),
            cpu,
        });

        // 5. A new processor drains what the gateway-only phase left in the stream.
        progress("processor drain: starting a new processor on the filled stream");
        let before = acct.snapshot();
        let spawned = Instant::now();
        hub.start_processor().await;
        acct.processor = hub.processors.last().and_then(|p| p.process.pid());
        let ready = Instant::now();
        let m_ready = processor_written(&hub).await?;
        let done = wait_stored(
            &hub,
            ceiling_max,
            target,
            (rows_stopped, 0.0),
            drain_timeout,
        )
        .await?;
        let after = acct.snapshot();
        let cpu = acct.cpu_between(&before, &after);
        let remaining = (target - rows_stopped) as f64 - m_ready;
        drain_rate = remaining / (done - ready).as_secs_f64().max(1e-9);
        phases.push(Phase {
            name: "processor-drain",
            rate: drain_rate,
            load: None,
            cpu,
            note: format!(
                "{} readings; {:.1}s from spawn to ready, {:.0} of them already written then",
                target - rows_stopped,
                (ready - spawned).as_secs_f64(),
                m_ready
            ),
        });
    }

    // Nothing lost.
    let stored_total = hub_rows(&hub.db, ceiling_max).await?;
    let lost = accepted_total - stored_total;

    // 6. The peer.
    let mut peer: Option<(f64, f64, LoadReport, u64)> = None;
    if let Some(Peer::Influxdb) = args.peer {
        progress("peer: starting a private influxd");
        let influx = Influx::start(&args.influxd, &hub.http).await?;
        acct.influxd = Some(influx.child.id());
        let influx_spec = LoadSpec {
            target: Target::Influx {
                url: influx.url.clone(),
                database: "bench".into(),
            },
            ..spec(overload_rate, secs)
        };
        progress(&format!(
            "peer: offering {overload_rate:.0} readings/s for {}s",
            args.seconds
        ));
        let before = acct.snapshot();
        let report = load::run(&influx_spec, &seq).await?;
        let after = acct.snapshot();
        let cpu = acct.cpu_between(&before, &after);
        let points = influx.points(&hub.http).await?;
        let stored_rate = points as f64 / report.elapsed.as_secs_f64();
        phases.push(Phase {
            name: "peer-influxdb",
            rate: stored_rate,
            note: format!(
                "offered {overload_rate:.0}/s; {points} points stored of {} accepted",
                report.accepted
            ),
            load: Some(report.clone()),
            cpu,
        });
        peer = Some((stored_rate, report.accepted_per_sec(), report, points));
        acct.snapshot();
    }

    // The report.
    let ratio = if ceiling_rate > 0.0 {
        sustained / ceiling_rate
    } else {
        0.0
    };
    println!();
    println!(
        "Hub benchmark: {} devices, {} readings per request, {} s per phase, {} binaries",
        args.devices,
        args.batch,
        args.seconds,
        if release { "release" } else { "DEBUG" }
    );
    println!();
    println!(
        "{:<16} {:>12} {:>10} {:>10} {:>8}  cpu s (gw/proc/pg/nats/bench)  note",
        "phase", "readings/s", "p50 ms", "p99 ms", "late"
    );
    for p in &phases {
        let c = |g: Group| p.cpu.get(&g).copied().unwrap_or(0.0);
        let (p50, p99, late) = p
            .load
            .as_ref()
            .map(|l| {
                (
                    format!("{:.1}", l.latency_ms(0.5)),
                    format!("{:.1}", l.latency_ms(0.99)),
                    l.late.to_string(),
                )
            })
            .unwrap_or_default();
        println!(
            "{:<16} {:>12.0} {:>10} {:>10} {:>8}  {:>5.1}/{:>5.1}/{:>5.1}/{:>4.1}/{:>5.1}  {}",
            p.name,
            p.rate,
            p50,
            p99,
            late,
            c(Group::Gateway),
            c(Group::Processor),
            c(Group::PostgresBackends) + c(Group::PostgresOther),
            c(Group::Nats),
            c(Group::Bench) + c(Group::Influxd),
            p.note
        );
    }
    println!("(p50/p99 in this table: the client's due-time → 2xx latency.)");
    println!();
    println!(
        "ceiling (fastest method)         {:>10.0} readings/s  {}",
        ceiling_rate,
        best.map(|b| format!("{} on {} connection(s)", b.method.name(), b.connections))
            .unwrap_or_default()
    );
    println!(
        "end-to-end sustained (committed) {:>10.0} readings/s  = {:.0} % of the ceiling",
        sustained,
        ratio * 100.0
    );
    if let Some((p50, p99, b50, b99)) = latency {
        println!(
            "latency at {:.0} readings/s       p50 {:.1} ms, p99 {:.1} ms (gateway receive → commit; processor histogram, linear interpolation in buckets ({}, {}] and ({}, {}] s)",
            latency_rate, p50, p99, b50.0, b50.1, b99.0, b99.1
        );
    }
    println!(
        "overload (committed)             {:>10.0} readings/s  while {:.0}/s were offered",
        overload, overload_rate
    );
    println!(
        "gateway only (2xx accepted)      {:>10.0} readings/s",
        gateway_only
    );
    println!(
        "processor drain                  {:>10.0} readings/s",
        drain_rate
    );
    println!(
        "accepted {accepted_total}, stored {stored_total}, lost {lost}, unanswered requests {unknown_total}"
    );
    if let Some((stored, accepted, report, points)) = &peer {
        println!(
            "InfluxDB {}: {:.0} points/s stored ({points} points), {:.0}/s accepted, write p50 {:.1} ms p99 {:.1} ms",
            influx_version(&args.influxd),
            stored,
            accepted,
            report.latency_ms(0.5),
            report.latency_ms(0.99)
        );
    }
    println!("peak RSS MiB / CPU s over the measured phases:");
    for (g, kb) in &acct.peak_kb {
        println!(
            "  {:<18} {:>8.1} MiB {:>8.1} s",
            g.name(),
            mb(*kb),
            acct.cpu_total.get(g).copied().unwrap_or(0.0)
        );
    }

    let groups = |f: &dyn Fn(Group) -> Value| -> Value {
        Value::Object(
            acct.peak_kb
                .keys()
                .map(|g| (g.name().to_owned(), f(*g)))
                .collect(),
        )
    };
    let sustained_cpu: f64 = phases
        .iter()
        .rfind(|p| p.name == "sustained")
        .map(|p| {
            [
                Group::Gateway,
                Group::Processor,
                Group::PostgresBackends,
                Group::PostgresOther,
                Group::Nats,
            ]
            .iter()
            .map(|g| p.cpu.get(g).copied().unwrap_or(0.0))
            .sum()
        })
        .unwrap_or(0.0);
    let sustained_readings = phases
        .iter()
        .rfind(|p| p.name == "sustained")
        .and_then(|p| p.load.as_ref())
        .map(|l| l.accepted as f64)
        .unwrap_or(0.0);
    let mut out = json!({
        "readings_per_sec": r0(sustained),
        "latency_p50_ms": latency.map(|l| r1(l.0)),
        "latency_p99_ms": latency.map(|l| r1(l.1)),
        "latency_method": "processor histogram hub_processor_ingest_latency_seconds, linear interpolation within buckets",
        "latency_at_readings_per_sec": r0(latency_rate),
        "ceiling_readings_per_sec": r0(ceiling_rate),
        "ceiling_method": best.map(|b| format!("{} x{}", b.method.name(), b.connections)),
        "ratio_to_ceiling": (ratio * 1000.0).round() / 1000.0,
        "sustained_offered_readings_per_sec": r0(sustained_offer),
        "overload_committed_readings_per_sec": r0(overload),
        "overload_offered_readings_per_sec": r0(overload_rate),
        "gateway_only_readings_per_sec": r0(gateway_only),
        "processor_drain_readings_per_sec": r0(drain_rate),
        "peak_rss_mb": groups(&|g| json!(mb(acct.peak_kb.get(&g).copied().unwrap_or(0)))),
        "cpu_seconds": groups(&|g| json!(r1(acct.cpu_total.get(&g).copied().unwrap_or(0.0)))),
        "hub_cpu_ms_per_1k_readings": if sustained_readings > 0.0 { json!(r1(sustained_cpu * 1e6 / sustained_readings)) } else { Value::Null },
        "accepted": accepted_total,
        "stored": stored_total,
        "lost": lost,
        "unanswered_requests": unknown_total,
        "batch": args.batch,
        "devices": args.devices,
        "seconds": args.seconds,
        "release": release,
    });
    if let Some((stored, accepted, report, points)) = &peer {
        out["peer"] = json!({
            "name": "influxdb",
            "version": influx_version(&args.influxd),
            "readings_per_sec": r0(*stored),
            "accepted_per_sec": r0(*accepted),
            "points": points,
            "write_p50_ms": r1(report.latency_ms(0.5)),
            "write_p99_ms": r1(report.latency_ms(0.99)),
        });
    }
    println!("{out}");
    drop(hub);
    // A request that got no answer may or may not have been stored: only those may make the
    // stored count exceed the accepted one.
    if lost > 0 || lost.unsigned_abs() > unknown_total * args.batch as u64 {
        bail!("readings lost: accepted {accepted_total}, stored {stored_total}");
    }
    Ok(())
}

fn influx_version(binary: &str) -> String {
    std::process::Command::new(binary)
        .arg("version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

//! Observability (docs/observability.md): the metric families of both processes carry the values of
//! the traffic sent and pass `promtool check metrics`; logs are JSON lines with the house fields
//! and no secret; `/readyz` follows the real dependencies going away and coming back.
//!
//! The readiness tests start their own nats-server or PostgreSQL cluster and stop *that*: the
//! machine's shared servers are used by every other test running in parallel.

use hub_tests::hub::{HubOptions, TestDevice, TestHub, metric_value, stream_state, wait_until};
use hub_tests::process::Process;
use reqwest::Method;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Helpers

async fn scrape(hub: &TestHub, base: &str) -> String {
    let r = hub
        .http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(r.status(), 200, "GET {base}/metrics");
    let content_type = r
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain"),
        "content type of {base}/metrics: {content_type}"
    );
    r.text().await.expect("metrics text")
}

/// Pipes a `/metrics` page through `promtool check metrics` (format and naming lint) and fails
/// with promtool's findings. A missing promtool is a failure saying how to get it, never a skip.
fn assert_promtool_accepts(what: &str, text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => panic!(
            "cannot run promtool ({e}). It comes with the Debian package `prometheus`: \
             run compose/services up, which installs it."
        ),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics refused the {what} output:\n{}{}\n--- the output ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

/// `family{labels}` now minus before.
fn delta(before: &str, after: &str, family: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(after, family, labels) - metric_value(before, family, labels)
}

/// Whether a family has a `# TYPE` line of that type on the page.
fn has_family(text: &str, family: &str, kind: &str) -> bool {
    text.lines().any(|l| l == format!("# TYPE {family} {kind}"))
}

async fn status_of(hub: &TestHub, url: &str) -> u16 {
    match hub
        .http
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Polls `/readyz` of `base` until it answers `status` (0 = no answer), failing at the deadline.
async fn wait_readyz(hub: &TestHub, base: &str, status: u16, timeout: Duration) {
    let url = format!("{base}/readyz");
    wait_until(timeout, &format!("{url} to answer {status}"), || async {
        status_of(hub, &url).await == status
    })
    .await;
}

fn json_lines(process: &Process) -> Vec<Value> {
    process
        .lines()
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .unwrap_or_else(|e| panic!("{}: not a JSON log line ({e}): {l}", process.name))
        })
        .collect()
}

/// The families a page declares (its `# TYPE` lines).
fn families(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect()
}

/// The hub's metric families a text mentions (`hub_gateway_*`, `hub_processor_*`), with the
/// histogram series suffixes taken off.
fn families_mentioned(text: &str) -> std::collections::BTreeSet<String> {
    let mut found = std::collections::BTreeSet::new();
    for prefix in ["hub_gateway_", "hub_processor_"] {
        for (i, _) in text.match_indices(prefix) {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let name = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .map(str::to_owned)
                .unwrap_or(name);
            found.insert(name);
        }
    }
    found
}

fn observability_doc() -> String {
    std::fs::read_to_string(hub_tests::workspace_root().join("docs/observability.md"))
        .expect("docs/observability.md")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A nats-server of this test's own, with JetStream and a store directory that outlives a
/// restart, so that it can be killed and brought back on the same port with the same streams.
struct PrivateNats {
    bin: PathBuf,
    store: PathBuf,
    port: u16,
    server: Option<Process>,
    starts: usize,
}

impl PrivateNats {
    fn bin() -> PathBuf {
        if let Ok(p) = std::env::var("HUB_TEST_NATS_SERVER") {
            return p.into();
        }
        let system = PathBuf::from("/usr/sbin/nats-server");
        if system.exists() {
            return system;
        }
        panic!(
            "nats-server not found at /usr/sbin/nats-server (set HUB_TEST_NATS_SERVER to another \
             one): run compose/services up, which installs it"
        )
    }

    /// Starts on a port the server picks and returns once it listens.
    fn start() -> Self {
        let mut nats = PrivateNats {
            bin: Self::bin(),
            store: std::env::temp_dir().join(format!("hub-nats-{}", hub_tests::unique_suffix())),
            port: 0,
            server: None,
            starts: 0,
        };
        nats.launch("-1");
        nats
    }

    fn launch(&mut self, port: &str) {
        self.starts += 1;
        let mut server = Process::spawn(
            &format!(
                "nats-private-{}-{}",
                self.store.file_name().unwrap().to_string_lossy(),
                self.starts
            ),
            &self.bin,
            &[
                "-a",
                "127.0.0.1",
                "-p",
                port,
                "-js",
                "-sd",
                self.store.to_str().unwrap(),
            ],
            &[],
        );
        let line = server.wait_for_line(
            "Listening for client connections on",
            Duration::from_secs(20),
        );
        self.port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        self.server = Some(server);
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: the server disappears the way a crashed or unplugged one does.
    fn kill(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.kill();
        }
    }

    /// Starts again on the same port with the same store.
    fn restart(&mut self) {
        assert!(self.server.is_none(), "the server is still running");
        let port = self.port.to_string();
        self.launch(&port);
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// A PostgreSQL cluster of this test's own (initdb in a temporary directory, trust auth, a free
/// port), so that it can be stopped while the machine's server keeps serving the other tests.
/// As root the server binaries run as the `postgres` user, since initdb refuses root.
struct PrivatePostgres {
    bindir: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl PrivatePostgres {
    /// `HUB_TEST_PG_BINDIR`, or the newest `/usr/lib/postgresql/<version>/bin` with an initdb.
    fn bindir() -> PathBuf {
        if let Ok(p) = std::env::var("HUB_TEST_PG_BINDIR") {
            return p.into();
        }
        let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").exists().then_some((version, bin))
            })
            .collect();
        found.sort();
        found.pop().map(|(_, b)| b).unwrap_or_else(|| {
            panic!(
                "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (or set \
                 HUB_TEST_PG_BINDIR): run compose/services up, which installs PostgreSQL"
            )
        })
    }

    fn start() -> Self {
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let pg = PrivatePostgres {
            bindir: Self::bindir(),
            dir: std::env::temp_dir().join(format!("hub-pg-{}", hub_tests::unique_suffix())),
            port: free_port(),
            as_postgres: uid == "0",
        };
        pg.run(
            "initdb",
            &[
                "-D",
                pg.dir.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        pg.pg_ctl_start();
        pg
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bindir.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed:\n{}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default(),
        );
    }

    fn pg_ctl_start(&self) {
        let dir = self.dir.to_str().unwrap();
        let options = format!(
            "-p {} -k {dir} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port
        );
        let log = self.dir.join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                dir,
                "-l",
                log.to_str().unwrap(),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    /// A fast shutdown: sessions are disconnected and the port closes.
    fn stop(&self) {
        self.run(
            "pg_ctl",
            &["-D", self.dir.to_str().unwrap(), "-m", "fast", "-w", "stop"],
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-D", self.dir.to_str().unwrap(), "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn readings(n: usize) -> String {
    let items: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"metric":"m{i}","value":{i}.5}}"#))
        .collect();
    format!("[{}]", items.join(","))
}

/// A key with the right id and a wrong secret.
fn forged(device: &TestDevice) -> String {
    let mut k = device.key.clone();
    let last = k.pop().unwrap();
    k.push(if last == 'A' { 'B' } else { 'A' });
    k
}

// ---------------------------------------------------------------------------------------------
// Metrics

/// Proves that every family of docs/observability.md is exported and recorded where it happens: after known
/// traffic the gateway's counters by channel/outcome, auth failures, HTTP counters by route
/// template and the latency histograms move by exactly what was sent; the processor's written
/// readings equal the readings sent, its batch and latency histograms count the messages, a
/// poison message is counted as terminated; no raw path or id becomes a label; and promtool
/// accepts both pages.
#[tokio::test]
async fn both_processes_export_the_families_with_the_values_of_the_traffic_sent() {
    let hub = TestHub::start_with(HubOptions {
        // Small enough for the flood below to be refused, large enough for the other traffic.
        gateway_env: vec![
            ("GATEWAY_INGEST_BURST".into(), "10".into()),
            ("GATEWAY_INGEST_RATE_PER_SEC".into(), "1".into()),
        ],
        ..Default::default()
    })
    .await;
    let gw = hub.gateway_url().to_owned();
    let pr = hub.processor_url().to_owned();
    let token = hub.admin_token().await;
    let device = hub.create_device(&token, "observed").await;
    let flooder = hub.create_device(&token, "flooder").await;

    let g0 = scrape(&hub, &gw).await;
    let mut statuses: BTreeMap<u16, u32> = BTreeMap::new();
    let mut send = async |key: Option<&str>, body: String| {
        let mut req = hub.http.post(format!("{gw}/ingest")).body(body);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let status = req.send().await.unwrap().status().as_u16();
        *statuses.entry(status).or_default() += 1;
        status
    };
    // 12 readings accepted in 4 messages, 3 readings rejected.
    for n in [2, 3, 5] {
        assert_eq!(send(Some(&device.key), readings(n)).await, 202);
    }
    let mixed =
        r#"[{"metric":"a","value":1},{"metric":"b","value":2},{"metric":"c","value":"high"}]"#;
    assert_eq!(send(Some(&device.key), mixed.into()).await, 202);
    let none_valid = r#"[{"metric":"bad metric!","value":1},{"metric":"d","value":null}]"#;
    assert_eq!(send(Some(&device.key), none_valid.into()).await, 422);
    assert_eq!(send(Some(&device.key), "not json".into()).await, 400);
    assert_eq!(send(Some(&forged(&device)), readings(1)).await, 401);
    assert_eq!(send(None, readings(1)).await, 401);
    // The flood: some answered 422 (empty batch), the rest refused by the per-device limit.
    for _ in 0..25 {
        let s = send(Some(&flooder.key), "[]".into()).await;
        assert!(s == 422 || s == 429, "flood answered {s}");
    }
    let count = |s: u16| f64::from(statuses.get(&s).copied().unwrap_or(0));
    assert!(
        count(429) >= 1.0,
        "the flood was never limited: {statuses:?}"
    );
    let ingest_requests = f64::from(statuses.values().sum::<u32>());

    // A raw path with an id on each process, which must not become a label.
    let stray = uuid::Uuid::new_v4();
    assert_eq!(status_of(&hub, &format!("{gw}/no/such/{stray}")).await, 404);
    assert_eq!(status_of(&hub, &format!("{pr}/no/such/{stray}")).await, 404);
    let (s, _) = hub
        .api(
            Method::GET,
            &format!("/devices/{}", device.id),
            &token,
            None,
        )
        .await;
    assert_eq!(s, 200);

    // Processor: everything sent is written, once.
    hub.wait_stored(device.id, 12).await;
    wait_until(
        Duration::from_secs(20),
        "hub_processor_readings_written_total to reach 12",
        || async {
            hub.metric(&pr, "hub_processor_readings_written_total", &[])
                .await
                == 12.0
        },
    )
    .await;
    // A poison message published behind the gateway's back is terminated and counted.
    let (js, names) = hub.jetstream().await;
    js.publish(
        names.readings_subject(device.id),
        b"\x07garbage".as_ref().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    wait_until(
        Duration::from_secs(20),
        "a terminated message to be counted",
        || async {
            hub.metric(
                &pr,
                "hub_processor_consumer_messages_total",
                &[("outcome", "terminated")],
            )
            .await
                == 1.0
        },
    )
    .await;
    wait_until(
        Duration::from_secs(20),
        "hub_processor_consumer_pending_messages to be polled down to 0",
        || async {
            let p = scrape(&hub, &pr).await;
            has_family(&p, "hub_processor_consumer_pending_messages", "gauge")
                && metric_value(&p, "hub_processor_consumer_pending_messages", &[]) == 0.0
                && metric_value(&p, "hub_processor_consumer_ack_pending_messages", &[]) == 0.0
        },
    )
    .await;
    // The one processor trims every message it acknowledged (the terminated one too) from the
    // stream: its counter ends at the number of messages the stream ever took.
    let (js, names) = hub.jetstream().await;
    let published = stream_state(&js, &names).await.unwrap().last_sequence as f64;
    assert!(published > 0.0);
    wait_until(
        Duration::from_secs(10),
        "hub_processor_stream_trimmed_messages_total to reach the messages published",
        || async {
            let p = scrape(&hub, &pr).await;
            metric_value(&p, "hub_processor_stream_trimmed_messages_total", &[]) == published
        },
    )
    .await;

    let g1 = scrape(&hub, &gw).await;
    let p1 = scrape(&hub, &pr).await;

    // Gateway: ingest by channel and outcome.
    let http = |outcome| [("channel", "http"), ("outcome", outcome)];
    let req = "hub_gateway_ingest_requests_total";
    assert_eq!(delta(&g0, &g1, req, &http("accepted")), count(202));
    assert_eq!(count(202), 4.0);
    assert_eq!(
        delta(&g0, &g1, req, &http("rejected")),
        count(422) + count(400)
    );
    assert_eq!(delta(&g0, &g1, req, &http("unauthorised")), count(401));
    assert_eq!(delta(&g0, &g1, req, &http("rate_limited")), count(429));
    assert_eq!(delta(&g0, &g1, req, &http("unavailable")), 0.0);
    assert!(
        g1.contains(r#"hub_gateway_ingest_requests_total{channel="mqtt",outcome="unavailable"} 0"#),
        "the closed label sets must exist at zero from the start"
    );
    let rd = "hub_gateway_ingest_readings_total";
    assert_eq!(delta(&g0, &g1, rd, &http("accepted")), 12.0);
    assert_eq!(delta(&g0, &g1, rd, &http("rejected")), 3.0);
    let fail = "hub_gateway_device_auth_failures_total";
    assert_eq!(
        delta(
            &g0,
            &g1,
            fail,
            &[("channel", "http"), ("reason", "wrong_secret")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            &g0,
            &g1,
            fail,
            &[("channel", "http"), ("reason", "missing")]
        ),
        1.0
    );
    // JetStream publish latency: one observation per stored message.
    assert_eq!(
        delta(
            &g0,
            &g1,
            "hub_gateway_jetstream_publish_seconds_count",
            &[("channel", "http")]
        ),
        4.0
    );
    // HTTP by route template, method and status; latency counted for every request.
    let ingest_route = [("route", "/ingest"), ("method", "POST")];
    for (status, n) in &statuses {
        let s = status.to_string();
        let labels = [ingest_route[0], ingest_route[1], ("status", s.as_str())];
        assert_eq!(
            delta(&g0, &g1, "hub_gateway_http_requests_total", &labels),
            f64::from(*n),
            "gateway /ingest {status}"
        );
    }
    assert_eq!(
        delta(
            &g0,
            &g1,
            "hub_gateway_http_request_duration_seconds_count",
            &ingest_route
        ),
        ingest_requests
    );
    assert_eq!(
        delta(
            &g0,
            &g1,
            "hub_gateway_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ),
        1.0
    );
    assert_eq!(
        metric_value(&g1, "hub_gateway_device_keys_loaded", &[]),
        2.0
    );
    assert!(has_family(&g1, "hub_gateway_device_keys_loaded", "gauge"));
    assert!(has_family(
        &g1,
        "hub_gateway_mqtt_connections_open",
        "gauge"
    ));
    assert_eq!(
        metric_value(&g1, "hub_gateway_mqtt_connections_open", &[]),
        0.0
    );

    // Processor: written, batches, latencies, consumer outcomes.
    let m = |f: &str| metric_value(&p1, f, &[]);
    assert_eq!(m("hub_processor_readings_written_total"), 12.0);
    assert_eq!(m("hub_processor_readings_duplicate_total"), 0.0);
    assert_eq!(m("hub_processor_write_batch_messages_sum"), 4.0);
    assert_eq!(m("hub_processor_write_batch_readings_sum"), 12.0);
    let writes = m("hub_processor_write_batch_messages_count");
    assert!((1.0..=4.0).contains(&writes), "{writes} writes");
    assert_eq!(m("hub_processor_db_write_seconds_count"), writes);
    assert!(m("hub_processor_db_write_seconds_sum") > 0.0);
    assert_eq!(m("hub_processor_ingest_latency_seconds_count"), 4.0);
    assert!(m("hub_processor_ingest_latency_seconds_sum") > 0.0);
    let msgs = |o| {
        metric_value(
            &p1,
            "hub_processor_consumer_messages_total",
            &[("outcome", o)],
        )
    };
    assert_eq!(msgs("stored"), 4.0);
    assert_eq!(msgs("retried"), 0.0);
    assert_eq!(msgs("terminated"), 1.0);
    assert_eq!(m("hub_processor_consumer_redeliveries_total"), 0.0);
    assert!(has_family(
        &p1,
        "hub_processor_rule_evaluations_total",
        "counter"
    ));
    let pr_route = |route, method, status| {
        metric_value(
            &p1,
            "hub_processor_http_requests_total",
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    assert_eq!(pr_route("/devices/{id}", "GET", "200"), 1.0);
    assert_eq!(pr_route("/devices", "POST", "201"), 2.0);
    assert_eq!(pr_route("unmatched", "GET", "404"), 1.0);
    assert!(pr_route("/auth/login", "POST", "200") >= 1.0);
    assert_eq!(
        metric_value(
            &p1,
            "hub_processor_http_request_duration_seconds_count",
            &[("route", "/devices/{id}"), ("method", "GET")]
        ),
        1.0
    );

    // Bounded labels: no id or raw path anywhere on either page.
    for (what, page) in [("gateway", &g1), ("processor", &p1)] {
        for needle in [
            device.id.to_string(),
            flooder.id.to_string(),
            stray.to_string(),
            "/no/such".into(),
        ] {
            assert!(!page.contains(&needle), "{what} /metrics contains {needle}");
        }
    }

    assert_promtool_accepts("gateway", &g1);
    assert_promtool_accepts("processor", &p1);

    // Every family exported is documented, with its name as it appears on the page.
    let doc = observability_doc();
    for family in families(&g1).iter().chain(families(&p1).iter()) {
        assert!(
            doc.contains(&format!("| `{family}` |")),
            "{family} is exported but not in the tables of docs/observability.md"
        );
    }
}

/// Proves that the Grafana dashboard can work: every query in it is valid PromQL (promtool parses
/// it as a recording rule) and every family it queries is a documented one, so a renamed metric
/// cannot silently leave a panel empty. The provisioning points at the file and the data source
/// uid the dashboard uses.
#[test]
fn the_dashboard_queries_parse_and_use_only_documented_families() {
    let root = hub_tests::workspace_root().join("compose/grafana");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("dashboards/hub.json")).unwrap())
            .unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            assert_eq!(target["datasource"]["uid"], "prometheus", "{target}");
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(exprs.len() >= 10, "only {} queries", exprs.len());

    // Grafana's $__rate_interval is not PromQL; any duration stands in for the parse.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = serde_json::to_string(&e.replace("$__rate_interval", "1m")).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {e}\n"
        ));
    }
    let file =
        std::env::temp_dir().join(format!("hub-dashboard-{}.yml", hub_tests::unique_suffix()));
    std::fs::write(&file, rules).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output();
    let _ = std::fs::remove_file(&file);
    let out = out.unwrap_or_else(|e| {
        panic!("cannot run promtool ({e}): run compose/services up, which installs it")
    });
    assert!(
        out.status.success(),
        "a dashboard query does not parse:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let doc = observability_doc();
    let used = families_mentioned(&exprs.join("\n"));
    for required in [
        "hub_gateway_ingest_readings_total",
        "hub_processor_ingest_latency_seconds",
        "hub_processor_db_write_seconds",
        "hub_processor_consumer_pending_messages",
        "hub_processor_alerts_total",
        "hub_gateway_http_requests_total",
        "hub_processor_http_requests_total",
    ] {
        assert!(
            used.contains(required),
            "the dashboard has no panel on {required}"
        );
    }
    for family in &used {
        assert!(
            doc.contains(&format!("| `{family}` |")),
            "the dashboard queries {family}, which docs/observability.md does not document"
        );
    }

    let datasources =
        std::fs::read_to_string(root.join("provisioning/datasources/prometheus.yml")).unwrap();
    assert!(datasources.contains("uid: prometheus"));
    assert!(datasources.contains("url: http://prometheus:9090"));
    let providers = std::fs::read_to_string(root.join("provisioning/dashboards/hub.yml")).unwrap();
    assert!(providers.contains("path: /var/lib/grafana/dashboards"));
    let compose =
        std::fs::read_to_string(hub_tests::workspace_root().join("compose/docker-compose.yml"))
            .unwrap();
    assert!(compose.contains("./grafana/provisioning:/etc/grafana/provisioning"));
    assert!(compose.contains("./grafana/dashboards:/var/lib/grafana/dashboards"));
}

// ---------------------------------------------------------------------------------------------
// Logs

/// Proves the log contract: every line of both processes is JSON; each request (probes aside) is
/// one info line with `module`, `operation` (the route template), `status` and the request's
/// ids in its span; a poison message is an ERROR with its device id; and no API key, password,
/// JWT or Authorization header appears in any line.
#[tokio::test]
async fn logs_are_json_lines_with_the_house_fields_and_never_a_secret() {
    let hub = TestHub::start().await;
    let token = hub.admin_token().await;
    let device = hub.create_device(&token, "logged").await;
    let (status, _) = hub.ingest(&device.key, readings(2)).await;
    assert_eq!(status, 202);
    assert_eq!(hub.ingest(&forged(&device), readings(1)).await.0, 401);
    hub.wait_stored(device.id, 2).await;
    let (s, _) = hub
        .api(
            Method::GET,
            &format!("/devices/{}", device.id),
            &token,
            None,
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = hub
        .api(
            Method::GET,
            &format!("/readings?device_id={}", device.id),
            &token,
            None,
        )
        .await;
    assert_eq!(s, 200);
    let (js, names) = hub.jetstream().await;
    js.publish(
        names.readings_subject(device.id),
        b"\x07garbage".as_ref().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    let gateway = &hub.gateways[0].process;
    let processor = &hub.processors[0].process;
    let is_request = |l: &Value, route: &str, status: u64| {
        l["message"] == "Request."
            && l["level"] == "INFO"
            && l["module"] == "http"
            && l["operation"] == route
            && l["status"] == status
            && l["method"].is_string()
            && l["elapsed_ms"].is_number()
    };
    let device_id = device.id.to_string();
    wait_until(
        Duration::from_secs(10),
        "the gateway's request lines",
        || async {
            let lines = json_lines(gateway);
            lines.iter().any(|l| {
                is_request(l, "/ingest", 202) && l["span"]["device_id"] == device_id.as_str()
            }) && lines.iter().any(|l| is_request(l, "/ingest", 401))
        },
    )
    .await;
    wait_until(
        Duration::from_secs(10),
        "the processor's request lines and the terminated message",
        || async {
            let lines = json_lines(processor);
            lines.iter().any(|l| {
                is_request(l, "/devices/{id}", 200) && l["span"]["device_id"] == device_id.as_str()
            }) && lines.iter().any(|l| {
                is_request(l, "/readings", 200) && l["span"]["device_id"] == device_id.as_str()
            }) && lines.iter().any(|l| {
                l["level"] == "ERROR"
                    && l["status"] == "terminated"
                    && l["module"] == "consumer"
                    && l["device_id"] == device_id.as_str()
            })
        },
    )
    .await;
    let gw_lines = json_lines(gateway);
    // One line per request, not per reading or per probe.
    let ingest_lines = gw_lines
        .iter()
        .filter(|l| l["message"] == "Request." && l["operation"] == "/ingest")
        .count();
    let ingest_served = hub
        .metric(
            hub.gateway_url(),
            "hub_gateway_http_request_duration_seconds_count",
            &[("route", "/ingest")],
        )
        .await;
    assert_eq!(ingest_lines as f64, ingest_served);
    assert!(
        !gw_lines
            .iter()
            .chain(json_lines(processor).iter())
            .any(|l| l["message"] == "Request."
                && ["/readyz", "/healthz", "/metrics"]
                    .contains(&l["operation"].as_str().unwrap_or(""))),
        "probe requests are counted, not logged"
    );
    let refused = gw_lines
        .iter()
        .find(|l| l["message"] == "Device key refused.")
        .expect("a refused key is logged");
    assert_eq!(refused["reason"], "wrong_secret");
    assert_eq!(refused["module"], "ingest");

    let secrets = [
        device.key.clone(),
        forged(&device),
        shared::keys::split(&device.key).unwrap().1.to_owned(),
        token.clone(),
        hub.admin_password.clone(),
        hub.jwt_secret.clone(),
    ];
    for p in [gateway, processor] {
        for line in p.lines() {
            for s in &secrets {
                assert!(
                    !line.contains(s.as_str()),
                    "{} logged a secret: {line}",
                    p.name
                );
            }
            assert!(
                !line.to_ascii_lowercase().contains("bearer "),
                "{} logged an Authorization header: {line}",
                p.name
            );
        }
    }
}

/// `LOG_FORMAT=pretty` gives people readable lines instead of JSON, on both binaries.
#[tokio::test]
async fn log_format_pretty_prints_readable_lines() {
    let hub = TestHub::start_with(HubOptions {
        gateways: 0,
        ..Default::default()
    })
    .await;
    let pretty = [("LOG_FORMAT".to_string(), "pretty".to_string())];
    let mut gateway_env = vec![
        ("NATS_URL".to_string(), hub.opts.nats_url.clone()),
        ("HUB_NAMESPACE".to_string(), hub.namespace.clone()),
        ("GATEWAY_HTTP_ADDR".to_string(), "127.0.0.1:0".to_string()),
        ("GATEWAY_MQTT_ADDR".to_string(), "127.0.0.1:0".to_string()),
    ];
    gateway_env.extend(pretty.iter().cloned());
    let mut processor_env = hub.processor_env();
    processor_env.extend(pretty.iter().cloned());
    let bins = hub_tests::binaries();
    let suffix = hub_tests::unique_suffix();
    for (mut process, message) in [
        (
            Process::spawn(
                &format!("pretty-gateway-{suffix}"),
                &bins.gateway,
                &["serve"],
                &gateway_env,
            ),
            "Gateway listening.",
        ),
        (
            Process::spawn(
                &format!("pretty-processor-{suffix}"),
                &bins.processor,
                &["serve"],
                &processor_env,
            ),
            "Processor listening.",
        ),
    ] {
        let line = process.wait_for_line(message, Duration::from_secs(60));
        assert!(
            serde_json::from_str::<Value>(&line).is_err(),
            "{}: a JSON line under LOG_FORMAT=pretty: {line}",
            process.name
        );
        assert!(
            process.lines().iter().any(|l| l.contains("http_addr")),
            "{}: the fields are printed too",
            process.name
        );
        process.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// Readiness

/// Proves that readiness tells the truth about NATS: with the hub on a private nats-server, killing
/// the server turns `/readyz` of the gateway and the processor to 503 while `/healthz` stays 200;
/// the server restarted on the same port and store brings both back to 200, and a reading sent
/// then is stored.
#[tokio::test]
async fn readyz_of_both_processes_follows_nats_going_away_and_coming_back() {
    let mut nats = PrivateNats::start();
    let hub = TestHub::start_with(HubOptions {
        nats_url: nats.url(),
        ..Default::default()
    })
    .await;
    let (gw, pr) = (hub.gateway_url().to_owned(), hub.processor_url().to_owned());
    let token = hub.admin_token().await;
    let device = hub.create_device(&token, "nats-outage").await;
    assert_eq!(hub.ingest(&device.key, readings(1)).await.0, 202);
    hub.wait_stored(device.id, 1).await;
    for base in [&gw, &pr] {
        assert_eq!(status_of(&hub, &format!("{base}/readyz")).await, 200);
    }

    nats.kill();
    for base in [&gw, &pr] {
        wait_readyz(&hub, base, 503, Duration::from_secs(20)).await;
        assert_eq!(status_of(&hub, &format!("{base}/healthz")).await, 200);
    }
    let body: Value = hub
        .http
        .get(format!("{gw}/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["checks"]["nats"], false, "{body}");

    nats.restart();
    for base in [&gw, &pr] {
        wait_readyz(&hub, base, 200, Duration::from_secs(30)).await;
        assert_eq!(status_of(&hub, &format!("{base}/healthz")).await, 200);
    }
    // Ready means working: a reading sent now goes all the way through.
    assert_eq!(hub.ingest(&device.key, readings(2)).await.0, 202);
    hub.wait_stored(device.id, 3).await;
    // The transitions are in the log, once each, not once per probe.
    let lines = json_lines(&hub.gateways[0].process);
    let down = lines
        .iter()
        .filter(|l| l["operation"] == "readiness" && l["level"] == "WARN")
        .count();
    assert_eq!(down, 1, "one WARN when NATS went away");
    drop(hub);
}

/// Proves that readiness tells the truth about PostgreSQL: with the processor's database on a
/// private cluster, stopping the cluster turns the processor's `/readyz` to 503 while `/healthz`
/// stays 200 (and the gateway, which never touches the database, stays ready and keeps
/// accepting); starting it again brings `/readyz` back to 200 and the readings accepted during
/// the outage are stored.
#[tokio::test]
async fn processor_readyz_follows_postgresql_going_away_and_coming_back() {
    let pg = PrivatePostgres::start();
    let hub = TestHub::start_with(HubOptions {
        pg_server_url: pg.url(),
        ..Default::default()
    })
    .await;
    let (gw, pr) = (hub.gateway_url().to_owned(), hub.processor_url().to_owned());
    let token = hub.admin_token().await;
    let device = hub.create_device(&token, "pg-outage").await;
    assert_eq!(hub.ingest(&device.key, readings(1)).await.0, 202);
    hub.wait_stored(device.id, 1).await;
    assert_eq!(status_of(&hub, &format!("{pr}/readyz")).await, 200);

    pg.stop();
    wait_readyz(&hub, &pr, 503, Duration::from_secs(20)).await;
    assert_eq!(status_of(&hub, &format!("{pr}/healthz")).await, 200);
    let body: Value = hub
        .http
        .get(format!("{pr}/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["checks"]["database"], false, "{body}");
    assert_eq!(body["checks"]["nats"], true, "{body}");
    assert_eq!(status_of(&hub, &format!("{gw}/readyz")).await, 200);
    // Accepted now (JetStream holds it), stored once the database is back.
    assert_eq!(hub.ingest(&device.key, readings(2)).await.0, 202);

    pg.pg_ctl_start();
    wait_readyz(&hub, &pr, 200, Duration::from_secs(30)).await;
    assert_eq!(status_of(&hub, &format!("{pr}/healthz")).await, 200);
    hub.wait_stored(device.id, 3).await;
    drop(hub);
    drop(pg);
}

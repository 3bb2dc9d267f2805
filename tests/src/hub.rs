//! One isolated hub per test: unique database, unique NATS namespace, the real binaries on free
//! ports, configured only through the environment, and everything removed on drop.

use crate::process::Process;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The PostgreSQL server tests create their databases on (trust auth, as on our machines).
pub fn pg_server_url() -> String {
    std::env::var("HUB_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

pub fn nats_url() -> String {
    std::env::var("HUB_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

pub const ADMIN_USERNAME: &str = "admin";
/// Development-only credential, generated per test hub.
fn generated_password() -> String {
    format!("test-only-{}", crate::unique_suffix())
}

#[derive(Clone)]
pub struct HubOptions {
    pub gateways: usize,
    pub processors: usize,
    pub nats_url: String,
    /// The PostgreSQL server (URL without a database) the hub's database is created on; a test
    /// that stops its database server passes a private one here.
    pub pg_server_url: String,
    /// Extra environment for every gateway.
    pub gateway_env: Vec<(String, String)>,
    /// Extra environment for every processor.
    pub processor_env: Vec<(String, String)>,
    /// `HUB_STREAM_MAX_BYTES` of every process; `None` leaves the product default.
    pub stream_max_bytes: Option<i64>,
}

impl Default for HubOptions {
    fn default() -> Self {
        Self {
            gateways: 1,
            processors: 1,
            nats_url: nats_url(),
            pg_server_url: pg_server_url(),
            gateway_env: Vec::new(),
            // Tests log in often from one address; the login limit has its own test.
            processor_env: vec![
                ("PROCESSOR_LOGIN_RATE_PER_MIN".into(), "100000".into()),
                ("PROCESSOR_LOGIN_BURST".into(), "1000".into()),
            ],
            // JetStream reserves a stream's whole byte limit when it is created, against a store
            // sized from the free disk: tests running side by side each take a small window,
            // so that the suite does not need tens of GB free.
            stream_max_bytes: Some(256 * 1024 * 1024),
        }
    }
}

pub struct Node {
    pub process: Process,
    pub url: String,
    pub mqtt_addr: Option<SocketAddr>,
}

pub struct TestHub {
    pub namespace: String,
    pub database: String,
    pub database_url: String,
    pub jwt_secret: String,
    pub admin_password: String,
    pub opts: HubOptions,
    pub processors: Vec<Node>,
    pub gateways: Vec<Node>,
    pub http: reqwest::Client,
    pub db: sqlx::PgPool,
    started: usize,
    /// Every secret this hub handed out or used (passwords, JWT secret, tokens, device keys):
    /// on drop, the captured logs of its processes must contain none of them.
    secrets: std::sync::Mutex<Vec<String>>,
}

/// A device as the API created it, with its key.
#[derive(Debug, Clone)]
pub struct TestDevice {
    pub id: Uuid,
    pub key: String,
}

async fn check_services(opts: &HubOptions) {
    use sqlx::Connection;
    let pg = format!("{}/postgres", opts.pg_server_url);
    if let Err(e) = sqlx::PgConnection::connect(&pg).await {
        panic!("PostgreSQL is not reachable at {pg} ({e}). Start it: compose/services up");
    }
    if let Err(e) = async_nats::connect(&opts.nats_url).await {
        panic!(
            "NATS is not reachable at {} ({e}). Start it with JetStream: compose/services up",
            opts.nats_url
        );
    }
}

impl TestHub {
    pub async fn start() -> TestHub {
        Self::start_with(HubOptions::default()).await
    }

    pub async fn start_with(opts: HubOptions) -> TestHub {
        check_services(&opts).await;
        let suffix = crate::unique_suffix();
        let database = format!("hub_test_{suffix}");
        let database_url = format!("{}/{database}", opts.pg_server_url);
        let mut hub = TestHub {
            namespace: format!("t{suffix}"),
            database,
            database_url: database_url.clone(),
            jwt_secret: format!("test-only-jwt-secret-{}", Uuid::new_v4().simple()),
            admin_password: generated_password(),
            opts: opts.clone(),
            processors: Vec::new(),
            gateways: Vec::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
            db: sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .connect_lazy(&database_url)
                .expect("pool"),
            started: 0,
            secrets: Default::default(),
        };
        hub.remember_secret(&hub.admin_password.clone());
        hub.remember_secret(&hub.jwt_secret.clone());
        for _ in 0..opts.processors {
            hub.start_processor().await;
        }
        for _ in 0..opts.gateways {
            hub.start_gateway().await;
        }
        hub
    }

    /// Adds a secret that must never appear in this hub's logs.
    pub fn remember_secret(&self, secret: &str) {
        self.secrets.lock().unwrap().push(secret.to_owned());
    }

    /// Secrets found in the captured logs, as (process, secret prefix) pairs.
    pub fn leaked_secrets(&self) -> Vec<(String, String)> {
        let secrets = self.secrets.lock().unwrap().clone();
        let mut leaks = Vec::new();
        for n in self.gateways.iter().chain(&self.processors) {
            for line in n.process.lines() {
                for s in secrets.iter().filter(|s| line.contains(s.as_str())) {
                    leaks.push((n.process.name.clone(), s.chars().take(8).collect()));
                }
            }
        }
        leaks
    }

    fn common_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("NATS_URL".into(), self.opts.nats_url.clone()),
            ("HUB_NAMESPACE".into(), self.namespace.clone()),
            ("LOG_FORMAT".into(), "json".into()),
        ];
        if let Some(bytes) = self.opts.stream_max_bytes {
            env.push(("HUB_STREAM_MAX_BYTES".into(), bytes.to_string()));
        }
        env
    }

    pub fn processor_env(&self) -> Vec<(String, String)> {
        let mut env = self.common_env();
        env.extend([
            ("DATABASE_URL".into(), self.database_url.clone()),
            ("DATABASE_MAX_CONNECTIONS".into(), "8".into()),
            ("JWT_SECRET".into(), self.jwt_secret.clone()),
            ("HUB_ADMIN_USERNAME".into(), ADMIN_USERNAME.into()),
            ("HUB_ADMIN_PASSWORD".into(), self.admin_password.clone()),
            ("PROCESSOR_HTTP_ADDR".into(), "127.0.0.1:0".into()),
        ]);
        env.extend(self.opts.processor_env.iter().cloned());
        env
    }

    /// Starts one more processor and waits until it is ready; returns its index.
    pub async fn start_processor(&mut self) -> usize {
        self.start_processor_with(&[]).await
    }

    pub async fn start_processor_with(&mut self, extra: &[(&str, &str)]) -> usize {
        let mut env = self.processor_env();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.started += 1;
        let name = format!("{}-processor-{}", self.namespace, self.started);
        let mut process = Process::spawn(&name, &crate::binaries().processor, &["serve"], &env);
        let line = process.wait_for_log("Processor listening.", Duration::from_secs(60));
        let url = format!(
            "http://{}",
            line["http_addr"]
                .as_str()
                .expect("http_addr in the listening line")
        );
        self.wait_ready(&url).await;
        self.processors.push(Node {
            process,
            url,
            mqtt_addr: None,
        });
        self.processors.len() - 1
    }

    /// Starts one more gateway and waits until it is ready; returns its index.
    pub async fn start_gateway(&mut self) -> usize {
        self.start_gateway_with(&[]).await
    }

    pub async fn start_gateway_with(&mut self, extra: &[(&str, &str)]) -> usize {
        let mut env = self.common_env();
        env.extend([
            ("GATEWAY_HTTP_ADDR".to_string(), "127.0.0.1:0".to_string()),
            ("GATEWAY_MQTT_ADDR".to_string(), "127.0.0.1:0".to_string()),
        ]);
        env.extend(self.opts.gateway_env.iter().cloned());
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.started += 1;
        let name = format!("{}-gateway-{}", self.namespace, self.started);
        let mut process = Process::spawn(&name, &crate::binaries().gateway, &["serve"], &env);
        let line = process.wait_for_log("Gateway listening.", Duration::from_secs(60));
        let url = format!(
            "http://{}",
            line["http_addr"]
                .as_str()
                .expect("http_addr in the listening line")
        );
        let mqtt_addr = line["mqtt_addr"].as_str().and_then(|a| a.parse().ok());
        self.wait_ready(&url).await;
        self.gateways.push(Node {
            process,
            url,
            mqtt_addr,
        });
        self.gateways.len() - 1
    }

    pub async fn wait_ready(&self, base: &str) {
        let url = format!("{base}/readyz");
        let http = &self.http;
        wait_until(
            Duration::from_secs(30),
            &format!("{url} to answer 200"),
            || async { http.get(&url).send().await.is_ok_and(|r| r.status() == 200) },
        )
        .await;
    }

    pub fn processor_url(&self) -> &str {
        &self.processors.first().expect("no processor running").url
    }

    pub fn gateway_url(&self) -> &str {
        &self.gateways.first().expect("no gateway running").url
    }

    pub async fn login(&self, username: &str, password: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/auth/login", self.processor_url()))
            .json(&json!({ "username": username, "password": password }))
            .send()
            .await
            .expect("login request")
    }

    pub async fn admin_token(&self) -> String {
        let r = self.login(ADMIN_USERNAME, &self.admin_password).await;
        assert_eq!(r.status(), 200, "admin login failed");
        let token = r.json::<Value>().await.expect("login json")["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned();
        self.remember_secret(&token);
        token
    }

    /// `METHOD path` on the processor API with a bearer token; returns (status, JSON body).
    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.processor_url()))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("api request");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn create_device(&self, token: &str, name: &str) -> TestDevice {
        let (status, body) = self
            .api(
                reqwest::Method::POST,
                "/devices",
                token,
                Some(json!({ "name": name })),
            )
            .await;
        assert_eq!(status, 201, "create device: {body}");
        let device = TestDevice {
            id: body["id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("device id"),
            key: body["api_key"].as_str().expect("api_key").to_owned(),
        };
        self.remember_secret(&device.key);
        self.wait_key_loaded(&device).await;
        device
    }

    /// Waits until every gateway accepts the device's key (the KV watch is asynchronous).
    pub async fn wait_key_loaded(&self, device: &TestDevice) {
        for g in &self.gateways {
            let url = format!("{}/ingest", g.url);
            let http = &self.http;
            // An empty array authenticates and is refused as 422 without publishing anything.
            wait_until(
                Duration::from_secs(10),
                "the device key to reach the gateway",
                || async {
                    http.post(&url)
                        .bearer_auth(&device.key)
                        .body("[]")
                        .send()
                        .await
                        .is_ok_and(|r| r.status() != 401)
                },
            )
            .await;
        }
    }

    /// `POST /ingest` on gateway `i`.
    pub async fn ingest_on(
        &self,
        i: usize,
        key: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/ingest", self.gateways[i].url))
            .bearer_auth(key)
            .body(body)
            .send()
            .await
            .expect("ingest request");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn ingest(&self, key: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        self.ingest_on(0, key, body).await
    }

    /// Rows stored for a device, straight from the logical table.
    pub async fn stored(&self, device: Uuid) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM metric_readings WHERE device_id = $1")
            .bind(device)
            .fetch_one(&self.db)
            .await
            .expect("count query")
    }

    /// A JetStream context on this hub's NATS and the names of its objects, for tests that look
    /// at the stream itself or take it away.
    pub async fn jetstream(&self) -> (async_nats::jetstream::Context, shared::names::Names) {
        let client = async_nats::connect(&self.opts.nats_url)
            .await
            .expect("connect to NATS");
        let names = shared::names::Names::new(&self.namespace).expect("the test namespace");
        (async_nats::jetstream::new(client), names)
    }

    /// Waits until `stored(device) == expected` and stays there briefly (no late duplicates).
    pub async fn wait_stored(&self, device: Uuid, expected: i64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let n = self.stored(device).await;
            if n == expected {
                tokio::time::sleep(Duration::from_millis(300)).await;
                assert_eq!(
                    self.stored(device).await,
                    expected,
                    "row count moved past {expected}"
                );
                return;
            }
            assert!(
                n <= expected,
                "stored {n} rows, more than the {expected} expected"
            );
            assert!(
                Instant::now() < deadline,
                "stored {n} rows, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One value of a metric family from a `/metrics` page, summed over series matching `labels`.
    pub async fn metric(&self, base: &str, family: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self
            .http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        metric_value(&text, family, labels)
    }
}

/// Sums the samples of `family` whose labels include all of `labels`.
pub fn metric_value(text: &str, family: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name_labels, value) = l.rsplit_once(' ')?;
            let (name, label_text) = match name_labels.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (name_labels, ""),
            };
            (name == family
                && labels
                    .iter()
                    .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}

/// Polls `check` until it is true; panics with `what` at the deadline.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        let leaks = self.leaked_secrets();
        for n in self.gateways.iter_mut().chain(self.processors.iter_mut()) {
            n.process.kill();
        }
        let (database, namespace, nats, pg) = (
            self.database.clone(),
            self.namespace.clone(),
            self.opts.nats_url.clone(),
            self.opts.pg_server_url.clone(),
        );
        // Drop cannot be async; clean up on a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut c) = sqlx::PgConnection::connect(&format!("{pg}/postgres")).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
                    )))
                    .execute(&mut c)
                    .await;
                }
                if let (Ok(client), Ok(names)) = (
                    async_nats::connect(&nats).await,
                    shared::names::Names::new(&namespace),
                ) {
                    let js = async_nats::jetstream::new(client);
                    shared::backbone::delete_namespace(&js, &names).await;
                }
            });
        })
        .join();
        if !leaks.is_empty() && !std::thread::panicking() {
            panic!("secrets found in the hub's logs (process, secret prefix): {leaks:?}");
        }
    }
}

/// The state of a hub's telemetry stream now (messages held, last sequence); `None` while it
/// does not exist.
pub async fn stream_state(
    js: &async_nats::jetstream::Context,
    names: &shared::names::Names,
) -> Option<async_nats::jetstream::stream::State> {
    let stream = js.get_stream(names.stream()).await.ok()?;
    Some(stream.cached_info().state.clone())
}

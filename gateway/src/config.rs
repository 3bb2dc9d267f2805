//! Gateway configuration: every setting is a flag and an environment variable with a default
//! that works on one machine.

use shared::config::{HttpArgs, LogArgs, NatsArgs};
use std::net::SocketAddr;

#[derive(Debug, clap::Parser)]
#[command(
    name = "gateway",
    version,
    about = "IoT Live Metrics Hub ingest gateway"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Accept device telemetry over HTTP and MQTT and publish it to JetStream.
    Serve(GatewayConfig),
}

#[derive(Debug, Clone, clap::Args)]
pub struct GatewayConfig {
    /// Address of the HTTP listener (`POST /ingest`, `/healthz`, `/readyz`, `/metrics`).
    #[arg(long, env = "GATEWAY_HTTP_ADDR", default_value = "0.0.0.0:8081")]
    pub http_addr: SocketAddr,

    /// Address of the device MQTT 3.1.1 listener.
    #[arg(long, env = "GATEWAY_MQTT_ADDR", default_value = "0.0.0.0:1883")]
    pub mqtt_addr: SocketAddr,

    #[command(flatten)]
    pub nats: NatsArgs,

    #[command(flatten)]
    pub log: LogArgs,

    #[command(flatten)]
    pub http: HttpArgs,

    #[command(flatten)]
    pub limits: IngestLimitArgs,

    /// How long to wait for JetStream to acknowledge a batch before answering 503: long enough
    /// for a stream leader election, short enough that a device retries rather than hangs.
    #[arg(long, env = "GATEWAY_PUBLISH_TIMEOUT_MS", default_value_t = 5000)]
    pub publish_timeout_ms: u64,

    /// Sustained `POST /ingest` requests per second allowed per device key.
    #[arg(long, env = "GATEWAY_INGEST_RATE_PER_SEC", default_value_t = 200)]
    pub ingest_rate_per_sec: u32,

    /// Requests a device may send in a burst above its sustained rate.
    #[arg(long, env = "GATEWAY_INGEST_BURST", default_value_t = 400)]
    pub ingest_burst: u32,

    /// Failed device authentications allowed per client IP and minute over HTTP; past them the
    /// address's failing requests get 429 (requests with a valid key always pass). MQTT closes
    /// each failed CONNECT and logs them at a bounded rate.
    #[arg(long, env = "GATEWAY_AUTH_FAILURES_PER_MIN", default_value_t = 60)]
    pub auth_failures_per_min: u32,

    /// Failed authentications a client IP may make in a burst.
    #[arg(long, env = "GATEWAY_AUTH_FAILURE_BURST", default_value_t = 20)]
    pub auth_failure_burst: u32,

    /// Header carrying the client IP when the gateway runs behind a trusted proxy (for example
    /// `X-Forwarded-For`). Unset: the peer address is the client, and such headers are ignored,
    /// since anyone can send them.
    #[arg(long, env = "GATEWAY_TRUSTED_IP_HEADER")]
    pub trusted_ip_header: Option<String>,

    #[command(flatten)]
    pub mqtt: MqttArgs,
}

/// Limits on what one request or publish may carry.
#[derive(Debug, Clone, clap::Args)]
pub struct IngestLimitArgs {
    /// Largest accepted body (HTTP) or payload (MQTT), in bytes.
    #[arg(long, env = "GATEWAY_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Most readings accepted in one body.
    #[arg(long, env = "GATEWAY_MAX_READINGS", default_value_t = 10_000)]
    pub max_readings: usize,

    /// How far ahead of the gateway's clock a reading's timestamp may be, in seconds.
    #[arg(long, env = "GATEWAY_MAX_FUTURE_SKEW_SECS", default_value_t = 300)]
    pub max_future_skew_secs: i64,

    /// Oldest accepted timestamp (RFC 3339). The default lets years-old data replay while
    /// catching epoch seconds sent as milliseconds, which land in 1970.
    #[arg(
        long,
        env = "GATEWAY_TS_HORIZON",
        default_value = "2000-01-01T00:00:00Z"
    )]
    pub ts_horizon: chrono::DateTime<chrono::FixedOffset>,
}

impl IngestLimitArgs {
    pub fn limits(&self) -> shared::ingest::Limits {
        shared::ingest::Limits {
            max_body_bytes: self.max_body_bytes,
            max_readings: self.max_readings,
            future_skew_us: self.max_future_skew_secs.saturating_mul(1_000_000),
            horizon_us: self.ts_horizon.timestamp_micros(),
        }
    }
}

/// Limits of the MQTT endpoint.
#[derive(Debug, Clone, clap::Args)]
pub struct MqttArgs {
    /// Most simultaneous MQTT connections; further ones are closed at once.
    #[arg(long, env = "GATEWAY_MQTT_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub mqtt_max_connections: usize,

    /// Seconds a new connection has to send CONNECT before it is closed.
    #[arg(long, env = "GATEWAY_MQTT_CONNECT_TIMEOUT_SECS", default_value_t = 10)]
    pub mqtt_connect_timeout_secs: u64,

    /// Unacknowledged QoS 1 publishes per connection. When they are all waiting for JetStream,
    /// the endpoint stops reading that socket: this is how backpressure reaches the device.
    #[arg(long, env = "GATEWAY_MQTT_MAX_INFLIGHT", default_value_t = 32)]
    pub mqtt_max_inflight: usize,
}

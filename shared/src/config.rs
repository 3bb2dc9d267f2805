//! clap blocks that both binaries flatten into their own configuration.

use crate::names::Names;

/// How to reach the backbone, and which part of it is ours.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL (JetStream must be enabled on it).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// Prefix of every NATS name the hub owns (stream, subjects, consumer, KV bucket), so that
    /// several hubs or parallel test runs can share one NATS server.
    #[arg(long, env = "HUB_NAMESPACE", default_value = "hub")]
    pub namespace: String,

    /// Bytes of readings waiting for a processor that the telemetry stream may hold before it
    /// refuses new ones (the gateway then answers 503); processors trim what they acked each
    /// second. JetStream reserves this much of its store when the stream is created, so
    /// the server's `max_file_store` (by default 75% of its free disk) must be at least this.
    /// Set the same value on every gateway and processor: each brings the stream up to it.
    #[arg(
        long,
        env = "HUB_STREAM_MAX_BYTES",
        default_value_t = crate::backbone::StreamLimits::default().max_bytes,
        value_parser = clap::value_parser!(i64).range(1024 * 1024..)
    )]
    pub stream_max_bytes: i64,
}

impl NatsArgs {
    pub fn names(&self) -> Result<Names, crate::names::InvalidNamespace> {
        Names::new(&self.namespace)
    }

    pub fn stream_limits(&self) -> crate::backbone::StreamLimits {
        crate::backbone::StreamLimits {
            max_bytes: self.stream_max_bytes,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log shippers.
    Json,
    /// Human-readable, for a terminal.
    Pretty,
}

/// Logging: JSON on standard output by default, filtered by `RUST_LOG`.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// `json` for machines (the default), `pretty` for people.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
}

/// Time limits of the HTTP listener, against clients that hold connections without sending
/// (slowloris): see [`crate::http`].
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct HttpArgs {
    /// Seconds a client may take to send a request head; an idle keep-alive connection is
    /// closed after as long. 30 s, as common proxies use.
    #[arg(long, env = "HTTP_HEADER_TIMEOUT_SECS", default_value_t = 30)]
    pub http_header_timeout_secs: u64,

    /// Seconds a client may take to send a whole request body once its head has arrived
    /// (answered 408 after). Generous for 1 MiB over a slow cellular link.
    #[arg(long, env = "HTTP_BODY_TIMEOUT_SECS", default_value_t = 30)]
    pub http_body_timeout_secs: u64,
}

impl HttpArgs {
    pub fn serve_options(&self) -> crate::http::ServeOptions {
        crate::http::ServeOptions {
            header_read_timeout: std::time::Duration::from_secs(
                self.http_header_timeout_secs.max(1),
            ),
            ..Default::default()
        }
    }

    pub fn body_timeout(&self) -> crate::http::BodyTimeout {
        crate::http::BodyTimeout(std::time::Duration::from_secs(
            self.http_body_timeout_secs.max(1),
        ))
    }
}

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
}

impl NatsArgs {
    pub fn names(&self) -> Result<Names, crate::names::InvalidNamespace> {
        Names::new(&self.namespace)
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

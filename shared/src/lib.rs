//! What the gateway and the processor must agree on, and nothing that only one of them needs.
//!
//! - [`wire`]: the batch that travels over JetStream and its versioned bincode codec.
//! - [`ingest`]: parsing and validating a device's JSON body into readings (docs/api.md), pure.
//! - [`keys`]: the device API key format, its hash, and the record mirrored into the KV bucket.
//! - [`names`]: every NATS name the hub owns, derived from the namespace.
//! - [`backbone`]: idempotent creation of the stream and the key bucket (works on nats-server 2.9).
//! - [`config`]: clap blocks both binaries flatten.
//! - [`telemetry`]: log set-up and the Prometheus text encoder.
//! - [`shutdown`]: SIGTERM/SIGINT into a cancellation token.
//! - [`http`]: the HTTP server loop with its timeouts, and bounded body reads.
//!
//! This crate knows no HTTP route and no SQL.

pub mod backbone;
pub mod config;
pub mod http;
pub mod ingest;
pub mod keys;
pub mod names;
pub mod shutdown;
pub mod telemetry;
pub mod wire;

/// Microseconds since the Unix epoch, the one time unit on the wire (and PostgreSQL's
/// resolution), so that readings sent without a timestamp in quick succession keep apart.
pub fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

//! Log subscriber set-up and the Prometheus text encoder shared by both binaries.

use crate::config::LogFormat;
use tracing_subscriber::{EnvFilter, fmt::MakeWriter};

/// Installs the global subscriber. `RUST_LOG` filters (default `info`). Calling it twice is
/// harmless (the second call is ignored), which keeps in-process tests simple.
pub fn init_tracing<W>(format: LogFormat, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.pretty().try_init(),
    };
}

/// Renders a registry in the Prometheus text format.
pub fn render_metrics(registry: &prometheus::Registry) -> String {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    let encoder = prometheus::TextEncoder::new();
    if let Err(e) = encoder.encode(&registry.gather(), &mut buf) {
        tracing::error!(error = %e, "Cannot encode metrics.");
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// Histogram buckets in seconds from 0.5 ms to 10 s, for latencies that span a local database
/// write and a slow end-to-end path.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

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
            // The whole chain of spans, so that a line logged deep in the pipeline still
            // carries the ids its outer spans hold (the request's route, the device).
            .with_span_list(true)
            .try_init(),
        LogFormat::Pretty => builder.pretty().try_init(),
    };
    log_panics();
}

/// Reports a panic as one log line in the configured format instead of the default plain-text
/// message on standard error, which log shippers would not parse. The message is cut short: a
/// panic's text may quote the input that caused it, and a log line must stay bounded.
fn log_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let message: String = message.chars().take(200).collect();
            let location = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            tracing::error!(
                module = "panic",
                operation = "panic",
                status = "panicked",
                %location,
                panic = %message,
                "A task panicked; it was stopped, the process goes on."
            );
        }));
    });
}

/// The answer to a request whose handler panicked: the one error shape with status 500, and
/// nothing about the cause (the panic hook logged it). For `CatchPanicLayer::custom`.
pub fn panic_response(
    _payload: Box<dyn std::any::Any + Send + 'static>,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    (
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(serde_json::json!({
            "error": { "code": "internal", "message": "internal error" }
        })),
    )
        .into_response()
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

/// Histogram buckets in seconds for the end-to-end path (gateway receive → database commit): the
/// same fine steps as [`LATENCY_BUCKETS`] at the low end, steps of at most 1.5× between 50 ms and
/// 2 s, where a loaded hub's percentiles and an operator's "within a second" objective lie (with
/// 2.5× steps a p99 could only be placed somewhere between 0.5 and 1 s), then up to 5 minutes,
/// because during a database or consumer outage readings wait in the stream and their latency
/// is exactly what an operator needs to see.
pub const END_TO_END_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
    1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// The `method` label of the HTTP families. Clients may send any token as a method; anything
/// outside the standard set becomes `other`, so that a scanner cannot grow the label set.
pub fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

/// The `route` label for a request no route matched. The raw path would carry ids and whatever a
/// scanner tries, and make the label set unbounded.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Routes that probes and scrapers call every few seconds: counted like every route, but not
/// logged, so that the request log shows traffic rather than the monitoring of it.
fn is_probe(route: &str) -> bool {
    matches!(route, "/healthz" | "/readyz" | "/metrics")
}

/// One finished HTTP request: counted by route template, method and status, timed, and logged
/// as the one info line per request. Both binaries emit it from their outermost layer, so log
/// and metrics cannot disagree about what was served.
pub struct HttpRequest<'a> {
    /// The matched route template (`/devices/{id}`), or [`UNMATCHED_ROUTE`].
    pub route: &'a str,
    pub method: &'a str,
    pub status: u16,
    pub elapsed: std::time::Duration,
}

impl HttpRequest<'_> {
    pub fn emit(&self, requests: &prometheus::IntCounterVec, seconds: &prometheus::HistogramVec) {
        let method = method_label(self.method);
        let status = self.status.to_string();
        requests
            .with_label_values(&[self.route, method, status.as_str()])
            .inc();
        seconds
            .with_label_values(&[self.route, method])
            .observe(self.elapsed.as_secs_f64());
        if !is_probe(self.route) {
            // Target `http`, so that `RUST_LOG=info,http=warn` silences request lines alone.
            tracing::info!(
                target: "http",
                module = "http",
                operation = self.route,
                method,
                status = self.status,
                elapsed_ms = round_ms(self.elapsed),
                "Request."
            );
        }
    }
}

/// Milliseconds with microsecond precision: sub-millisecond requests are common and a whole
/// number of milliseconds would show them all as 0.
pub fn round_ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// Remembers the last answer of `/readyz` so that only changes are logged: probes arrive every
/// few seconds and must not flood the log, while the moment a dependency goes away or comes
/// back is what an operator looks for.
#[derive(Default)]
pub struct ReadinessLog {
    /// 0 = never probed, 1 = ready, 2 = not ready.
    last: std::sync::atomic::AtomicU8,
}

impl ReadinessLog {
    /// Records one readiness answer; `checks` is the JSON object `/readyz` returns.
    pub fn observe(&self, ready: bool, checks: &serde_json::Value) {
        let now = if ready { 1 } else { 2 };
        let before = self.last.swap(now, std::sync::atomic::Ordering::AcqRel);
        match (before, ready) {
            (b, _) if b == now => {}
            // The first answer after start is lifecycle, whatever it is (keys may still load).
            (0, _) | (_, true) => tracing::info!(
                module = "health",
                operation = "readiness",
                status = if ready { "ready" } else { "not_ready" },
                checks = %checks,
                "Readiness changed."
            ),
            (_, false) => tracing::warn!(
                module = "health",
                operation = "readiness",
                status = "not_ready",
                checks = %checks,
                "Readiness changed: a dependency is unreachable."
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn standard_methods_are_labels_and_anything_else_is_other() {
        for m in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
            assert_eq!(method_label(m), m);
        }
        for m in [
            "get",
            "TRACE",
            "CONNECT",
            "PROPFIND",
            "",
            "X".repeat(1000).as_str(),
        ] {
            assert_eq!(method_label(m), "other", "{m}");
        }
    }

    #[test]
    fn probes_are_the_three_monitoring_routes_only() {
        for r in ["/healthz", "/readyz", "/metrics"] {
            assert!(is_probe(r));
        }
        for r in ["/ingest", "/devices/{id}", UNMATCHED_ROUTE, "/metrics/x"] {
            assert!(!is_probe(r), "{r}");
        }
    }

    #[test]
    fn milliseconds_keep_microseconds() {
        assert_eq!(round_ms(Duration::from_micros(1_234)), 1.234);
        assert_eq!(round_ms(Duration::from_nanos(1_234_567)), 1.235);
        assert_eq!(round_ms(Duration::ZERO), 0.0);
        assert_eq!(round_ms(Duration::from_secs(2)), 2000.0);
    }

    #[test]
    fn an_http_request_is_counted_by_template_with_a_bounded_method() {
        let requests = prometheus::IntCounterVec::new(
            prometheus::Opts::new("r_total", "r"),
            &["route", "method", "status"],
        )
        .unwrap();
        let seconds = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new("s_seconds", "s"),
            &["route", "method"],
        )
        .unwrap();
        for method in ["GET", "BREW"] {
            HttpRequest {
                route: "/devices/{id}",
                method,
                status: 200,
                elapsed: Duration::from_millis(3),
            }
            .emit(&requests, &seconds);
        }
        assert_eq!(
            requests
                .with_label_values(&["/devices/{id}", "GET", "200"])
                .get(),
            1
        );
        assert_eq!(
            requests
                .with_label_values(&["/devices/{id}", "other", "200"])
                .get(),
            1
        );
        assert_eq!(
            seconds
                .with_label_values(&["/devices/{id}", "GET"])
                .get_sample_count(),
            1
        );
    }
}

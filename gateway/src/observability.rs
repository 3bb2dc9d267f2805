//! Every metric the gateway exports, by name, in one place; handlers record through these
//! fields rather than ad-hoc metric strings.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use shared::telemetry::LATENCY_BUCKETS;
use std::sync::Arc;

#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

pub struct Inner {
    pub registry: Registry,
    /// Requests (HTTP) or publishes (MQTT) by channel and outcome.
    pub ingest_requests: IntCounterVec,
    /// Readings by channel and outcome (accepted/rejected).
    pub ingest_readings: IntCounterVec,
    pub device_auth_failures: IntCounterVec,
    pub publish_seconds: HistogramVec,
    pub http_requests: IntCounterVec,
    pub http_seconds: HistogramVec,
    pub mqtt_connections_open: IntGauge,
    pub mqtt_events: IntCounterVec,
    pub device_keys_loaded: IntGauge,
}

impl std::ops::Deref for Metrics {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    c
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(h.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    h
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    g
}

impl Metrics {
    /// Metric names and labels are constants, so a failure here is a programming error caught by
    /// every test that starts a gateway; it cannot depend on input.
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("hub_gateway".into()), None)
            .unwrap_or_else(|e| panic!("registry: {e}"));
        let r = &registry;
        let inner = Inner {
            ingest_requests: counter(
                r,
                "ingest_requests_total",
                "Ingest requests (HTTP) and publishes (MQTT) by channel and outcome.",
                &["channel", "outcome"],
            ),
            ingest_readings: counter(
                r,
                "ingest_readings_total",
                "Readings received by channel and outcome.",
                &["channel", "outcome"],
            ),
            device_auth_failures: counter(
                r,
                "device_auth_failures_total",
                "Refused device authentications by channel and reason.",
                &["channel", "reason"],
            ),
            publish_seconds: histogram(
                r,
                "jetstream_publish_seconds",
                "Time from publish to JetStream acknowledgement.",
                &["channel"],
            ),
            http_requests: counter(
                r,
                "http_requests_total",
                "HTTP requests by route template, method and status.",
                &["route", "method", "status"],
            ),
            http_seconds: histogram(
                r,
                "http_request_duration_seconds",
                "HTTP request latency by route template and method.",
                &["route", "method"],
            ),
            mqtt_connections_open: gauge(
                r,
                "mqtt_connections_open",
                "MQTT connections currently open.",
            ),
            mqtt_events: counter(
                r,
                "mqtt_events_total",
                "MQTT protocol events (refused publishes, bad payloads, timeouts, …) by kind.",
                &["kind"],
            ),
            device_keys_loaded: gauge(
                r,
                "device_keys_loaded",
                "Device keys currently held by this gateway.",
            ),
            registry,
        };
        Metrics(Arc::new(inner))
    }

    pub fn render(&self) -> String {
        shared::telemetry::render_metrics(&self.registry)
    }
}

//! Every metric the gateway exports, by name, in one place, and the events that are both logged
//! and counted (so that the log line and the metric cannot drift apart). Handlers record through
//! these rather than ad-hoc metric strings. Every family is described in
//! `docs/observability.md`.

use crate::auth::AuthFailure;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use shared::telemetry::{LATENCY_BUCKETS, ReadinessLog};
use shared::wire::Channel;
use std::net::IpAddr;
use std::sync::Arc;

/// The ingest channels, as the `channel` label spells them.
pub const CHANNELS: [&str; 2] = ["http", "mqtt"];

/// Outcomes of one ingest request (HTTP) or publish (MQTT), as the `outcome` label spells them.
pub const REQUEST_OUTCOMES: [&str; 5] = [
    "accepted",
    "rejected",
    "unauthorised",
    "rate_limited",
    "unavailable",
];

/// Outcomes of one reading: stored in JetStream, or refused by validation.
pub const READING_OUTCOMES: [&str; 2] = ["accepted", "rejected"];

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
    /// The last `/readyz` answer, so that only changes are logged.
    pub readiness: ReadinessLog,
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
            readiness: ReadinessLog::default(),
            registry,
        };
        // Every combination of the closed label sets exists from the start, at zero: a
        // dashboard's rate() then sees a flat line instead of no data before the first event,
        // and an alert on "rejected > 0" has a series to compare.
        for channel in CHANNELS {
            for outcome in REQUEST_OUTCOMES {
                inner.ingest_requests.with_label_values(&[channel, outcome]);
            }
            for outcome in READING_OUTCOMES {
                inner.ingest_readings.with_label_values(&[channel, outcome]);
            }
        }
        Metrics(Arc::new(inner))
    }

    pub fn render(&self) -> String {
        shared::telemetry::render_metrics(&self.registry)
    }
}

/// A device key refused on the HTTP channel: counted by channel and reason, logged with the
/// reason and the client address. Only the reason is logged, never the presented key (not even
/// its public id: a malformed "key" may be a secret pasted into the wrong header).
pub struct DeviceAuthRefused {
    pub channel: Channel,
    pub reason: AuthFailure,
    pub client_ip: IpAddr,
}

impl DeviceAuthRefused {
    pub fn emit(&self, metrics: &Metrics) {
        metrics
            .device_auth_failures
            .with_label_values(&[self.channel.as_str(), self.reason.as_str()])
            .inc();
        tracing::info!(
            module = "ingest",
            operation = "authenticate",
            status = "refused",
            channel = self.channel.as_str(),
            reason = self.reason.as_str(),
            client_ip = %self.client_ip,
            "Device key refused."
        );
    }
}

/// The outcome of one ingest call on any channel: the request and reading counters, and a
/// debug line (never a line per request above debug here: the HTTP layer already logs one per
/// request, and MQTT publishes are too many).
pub struct BatchIngested<'a> {
    pub channel: Channel,
    /// One of [`REQUEST_OUTCOMES`].
    pub outcome: &'a str,
    pub accepted: usize,
    pub rejected: usize,
    pub duplicate: bool,
}

impl BatchIngested<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        let channel = self.channel.as_str();
        metrics
            .ingest_readings
            .with_label_values(&[channel, "accepted"])
            .inc_by(self.accepted as u64);
        metrics
            .ingest_readings
            .with_label_values(&[channel, "rejected"])
            .inc_by(self.rejected as u64);
        metrics
            .ingest_requests
            .with_label_values(&[channel, self.outcome])
            .inc();
        tracing::debug!(
            module = "ingest",
            operation = "ingest",
            status = self.outcome,
            channel,
            accepted = self.accepted,
            rejected = self.rejected,
            duplicate = self.duplicate,
            "Batch handled."
        );
    }
}

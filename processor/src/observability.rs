//! Every metric the processor exports, by name, in one place, and the consumer's events that
//! are both logged and counted (so that the log line and the metric cannot drift apart). Every
//! family is described in `docs/observability.md`.

use crate::rules::Severity;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use shared::telemetry::{END_TO_END_BUCKETS, LATENCY_BUCKETS, ReadinessLog};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// What happened to a message the consumer handled, as the `outcome` label spells it. Exclusive:
/// each delivery is counted under exactly one (redeliveries are counted separately).
pub const MESSAGE_OUTCOMES: [&str; 3] = ["stored", "retried", "terminated"];

#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

pub struct Inner {
    pub registry: Registry,
    pub readings_written: IntCounter,
    pub readings_duplicate: IntCounter,
    pub batch_messages: Histogram,
    pub batch_readings: Histogram,
    pub db_write_seconds: Histogram,
    pub ingest_latency_seconds: Histogram,
    pub messages: IntCounterVec,
    pub redeliveries: IntCounter,
    pub consumer_pending: IntGauge,
    pub consumer_ack_pending: IntGauge,
    pub stream_trimmed: IntCounter,
    pub rule_evaluations: IntCounter,
    pub rules_failures: IntCounter,
    pub alerts: IntCounterVec,
    pub http_requests: IntCounterVec,
    pub http_seconds: HistogramVec,
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

/// Names, help texts and buckets are constants: a registration failure is a programming error
/// that every test starting a processor would catch, never a run-time condition.
fn must<T>(r: prometheus::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("metric registration: {e}"))
}

impl Metrics {
    pub fn new() -> Self {
        let registry = must(Registry::new_custom(Some("hub_processor".into()), None));
        let reg = |c: Box<dyn prometheus::core::Collector>| must(registry.register(c));
        let counter = |name: &str, help: &str| {
            let c = must(IntCounter::new(name, help));
            reg(Box::new(c.clone()));
            c
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = must(IntCounterVec::new(Opts::new(name, help), labels));
            reg(Box::new(c.clone()));
            c
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = must(Histogram::with_opts(
                HistogramOpts::new(name, help).buckets(buckets),
            ));
            reg(Box::new(h.clone()));
            h
        };
        let gauge = |name: &str, help: &str| {
            let g = must(IntGauge::new(name, help));
            reg(Box::new(g.clone()));
            g
        };
        let http_seconds = must(HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "API request latency by route template and method.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "method"],
        ));
        reg(Box::new(http_seconds.clone()));
        let inner = Inner {
            readings_written: counter(
                "readings_written_total",
                "Readings newly stored (redelivered duplicates excluded).",
            ),
            readings_duplicate: counter(
                "readings_duplicate_total",
                "Readings skipped because the same (series, ts) was already stored.",
            ),
            batch_messages: histogram(
                "write_batch_messages",
                "Messages written per database statement.",
                vec![
                    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
                ],
            ),
            batch_readings: histogram(
                "write_batch_readings",
                "Readings written per database statement.",
                vec![
                    1.0, 10.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0, 50000.0, 100000.0,
                ],
            ),
            db_write_seconds: histogram(
                "db_write_seconds",
                "Time to write one batch (series lookup and insert), successful writes only.",
                LATENCY_BUCKETS.to_vec(),
            ),
            ingest_latency_seconds: histogram(
                "ingest_latency_seconds",
                "End-to-end latency per message: gateway receive to database commit.",
                END_TO_END_BUCKETS.to_vec(),
            ),
            messages: counter_vec(
                "consumer_messages_total",
                "Messages handled by the consumer by outcome (stored, retried, terminated).",
                &["outcome"],
            ),
            redeliveries: counter(
                "consumer_redeliveries_total",
                "Deliveries of a message that had been delivered before (after a nak, an ack timeout or a crash).",
            ),
            consumer_pending: gauge(
                "consumer_pending_messages",
                "Messages in the stream not yet delivered to any processor (polled).",
            ),
            consumer_ack_pending: gauge(
                "consumer_ack_pending_messages",
                "Messages delivered and not yet acknowledged (polled).",
            ),
            stream_trimmed: counter(
                "stream_trimmed_messages_total",
                "Acknowledged messages purged from the stream by this processor's trim.",
            ),
            rule_evaluations: counter(
                "rule_evaluations_total",
                "Readings evaluated against a rule.",
            ),
            rules_failures: counter(
                "rules_failures_total",
                "Batches whose rule evaluation failed (the readings stay stored).",
            ),
            alerts: counter_vec(
                "alerts_total",
                "Alert transitions by kind (opened/resolved) and severity.",
                &["transition", "severity"],
            ),
            http_requests: counter_vec(
                "http_requests_total",
                "API requests by route template, method and status.",
                &["route", "method", "status"],
            ),
            http_seconds,
            readiness: ReadinessLog::default(),
            registry: registry.clone(),
        };
        // The closed label sets exist from the start, at zero, so that rate() and alerts on
        // "terminated > 0" have a series before the first event.
        for outcome in MESSAGE_OUTCOMES {
            inner.messages.with_label_values(&[outcome]);
        }
        for transition in ["opened", "resolved"] {
            for severity in [Severity::Info, Severity::Warning, Severity::Critical] {
                inner
                    .alerts
                    .with_label_values(&[transition, severity.as_str()]);
            }
        }
        Metrics(Arc::new(inner))
    }

    pub fn render(&self) -> String {
        shared::telemetry::render_metrics(&self.registry)
    }
}

/// One set of messages written in one statement and committed.
pub struct BatchStored<'a> {
    pub messages: usize,
    /// Readings sent to the database, and how many of them were new rows (the rest were already
    /// stored: a redelivery after a crash between commit and ack).
    pub readings: u64,
    pub inserted: u64,
    pub elapsed: Duration,
    /// When the gateway received each message, for the end-to-end latency.
    pub received_at_us: &'a [i64],
    pub committed_at_us: i64,
}

impl BatchStored<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.db_write_seconds.observe(self.elapsed.as_secs_f64());
        metrics.batch_messages.observe(self.messages as f64);
        metrics.batch_readings.observe(self.readings as f64);
        metrics.readings_written.inc_by(self.inserted);
        metrics
            .readings_duplicate
            .inc_by(self.readings.saturating_sub(self.inserted));
        for received in self.received_at_us {
            metrics
                .ingest_latency_seconds
                .observe((self.committed_at_us - received).max(0) as f64 / 1e6);
        }
        // Per batch, not per reading, and at debug: a busy processor writes many per second.
        tracing::debug!(
            module = "consumer",
            operation = "write",
            status = "stored",
            messages = self.messages,
            readings = self.readings,
            inserted = self.inserted,
            elapsed_ms = shared::telemetry::round_ms(self.elapsed),
            "Batch stored."
        );
    }
}

/// A batch the database could not take: its messages are nak'ed with back-off and redelivered,
/// so nothing is lost; the operator sees it in the log and in the `retried` rate.
pub struct BatchRetried<'a> {
    pub messages: usize,
    pub error: &'a dyn std::fmt::Display,
}

impl BatchRetried<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics
            .messages
            .with_label_values(&["retried"])
            .inc_by(self.messages as u64);
        tracing::warn!(
            module = "consumer",
            operation = "write",
            status = "retry",
            messages = self.messages,
            error = %self.error,
            "Cannot store a batch; it will be redelivered."
        );
    }
}

/// A message that can never be stored (undecodable, or with a reading no valid gateway sends):
/// terminated so that it does not block the stream. Its readings are lost, hence ERROR.
pub struct MessageTerminated<'a> {
    /// From the subject, when it names one; the payload may be unreadable.
    pub device_id: Option<Uuid>,
    pub subject: &'a str,
    pub error: &'a dyn std::fmt::Display,
}

impl MessageTerminated<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.messages.with_label_values(&["terminated"]).inc();
        tracing::error!(
            module = "consumer",
            operation = "decode",
            status = "terminated",
            device_id = self.device_id.map(tracing::field::display),
            subject = self.subject,
            error = %self.error,
            "Message can never be stored; terminated."
        );
    }
}

//! Every metric the processor exports, by name, in one place.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use shared::telemetry::LATENCY_BUCKETS;
use std::sync::Arc;

#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

pub struct Inner {
    pub registry: Registry,
    pub readings_written: IntCounter,
    pub readings_duplicate: IntCounter,
    pub batch_messages: Histogram,
    pub db_write_seconds: Histogram,
    pub ingest_latency_seconds: Histogram,
    pub messages: IntCounterVec,
    pub consumer_pending: IntGauge,
    pub consumer_ack_pending: IntGauge,
    pub rule_evaluations: IntCounter,
    pub rules_failures: IntCounter,
    pub alerts: IntCounterVec,
    pub http_requests: IntCounterVec,
    pub http_seconds: HistogramVec,
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
            db_write_seconds: histogram(
                "db_write_seconds",
                "Time to write one batch (series lookup and insert).",
                LATENCY_BUCKETS.to_vec(),
            ),
            ingest_latency_seconds: histogram(
                "ingest_latency_seconds",
                "End-to-end latency: gateway receive to database commit.",
                LATENCY_BUCKETS.to_vec(),
            ),
            messages: counter_vec(
                "consumer_messages_total",
                "Messages handled by the consumer by outcome (stored, redelivered, terminated, retried).",
                &["outcome"],
            ),
            consumer_pending: gauge(
                "consumer_pending_messages",
                "Messages in the stream not yet delivered to any processor (polled).",
            ),
            consumer_ack_pending: gauge(
                "consumer_ack_pending_messages",
                "Messages delivered and not yet acknowledged (polled).",
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
            registry: registry.clone(),
        };
        Metrics(Arc::new(inner))
    }

    pub fn render(&self) -> String {
        shared::telemetry::render_metrics(&self.registry)
    }
}

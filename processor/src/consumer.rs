//! The durable pull consumer: fetch many messages, write them in one statement, commit, then
//! acknowledge. Nothing is acknowledged before it is stored.
//!
//! Outcomes map to acknowledgements in one place (`Writer::handle`):
//! stored → ack; database unavailable → nak with back-off (redelivered later, to any copy);
//! undecodable or invalid → term (counted and logged; it can never succeed, so it must not
//! block the stream).

use crate::config::ConsumerArgs;
use crate::observability::{BatchRetried, BatchStored, MessageTerminated, Metrics};
use crate::storage::{self, readings::Columns};
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use shared::names::Names;
use shared::wire::{self, Batch};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Creates (or opens) the durable consumer every processor copy shares.
pub async fn ensure_consumer(
    js: &jetstream::Context,
    names: &Names,
    args: &ConsumerArgs,
) -> anyhow::Result<PullConsumer> {
    let stream = js.get_stream(names.stream()).await?;
    let config = jetstream::consumer::pull::Config {
        durable_name: Some(names.consumer()),
        filter_subject: names.readings_wildcard(),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(args.ack_wait_secs),
        max_ack_pending: args.max_ack_pending,
        deliver_policy: jetstream::consumer::DeliverPolicy::All,
        // Unlimited: a database outage must delay readings, never drop them.
        max_deliver: -1,
        ..Default::default()
    };
    Ok(stream
        .get_or_create_consumer(&names.consumer(), config)
        .await?)
}

/// How often a device's `last_seen_at` is written at most (see `Writer::touch_devices`).
const LAST_SEEN_EVERY_US: i64 = 1_000_000;

/// When each device's `last_seen_at` was last written by this process (its receive time, µs).
pub type TouchedDevices = Arc<Mutex<HashMap<Uuid, i64>>>;

/// Series ids never change once created, so every writer of the process shares one cache. Keyed
/// by device, then metric, so that a lookup borrows the reading's metric instead of copying it.
pub type SeriesCache = Arc<Mutex<HashMap<Uuid, HashMap<String, i32>>>>;

#[derive(Clone)]
pub struct Writer {
    pub db: PgPool,
    pub metrics: Metrics,
    /// Runs after each commit and before the acks (see `Writer::handle`).
    pub alerts: crate::alerts::Engine,
    pub series: SeriesCache,
    pub touched: TouchedDevices,
    pub fetch_batch: usize,
    pub fetch_linger: Duration,
    pub fault_pause_before_ack: bool,
}

/// Why a message can never be stored.
#[derive(Debug, thiserror::Error)]
enum Poison {
    #[error(transparent)]
    Decode(#[from] wire::DecodeError),
    #[error("invalid reading in batch: {0}")]
    Invalid(String),
}

/// The gateway validated the batch already; the processor checks again, since anyone with
/// access to the subject could publish, and nothing non-finite may reach storage or rules.
fn decode_valid(bytes: &[u8]) -> Result<Batch, Poison> {
    let batch = wire::decode(bytes)?;
    if !batch
        .metrics
        .iter()
        .all(|m| shared::ingest::valid_metric(m))
    {
        return Err(Poison::Invalid("invalid metric name".into()));
    }
    for r in &batch.readings {
        if !r.value.is_finite() {
            return Err(Poison::Invalid(format!(
                "non-finite value for metric {}",
                batch.metric_of(r).unwrap_or_default()
            )));
        }
        if DateTime::<Utc>::from_timestamp_micros(r.ts_us).is_none() {
            return Err(Poison::Invalid(format!(
                "timestamp {} µs out of range",
                r.ts_us
            )));
        }
    }
    Ok(batch)
}

/// The device a message was published for, from its subject (`<namespace>.readings.<id>`), so
/// that even an undecodable message can be traced to its sender.
fn device_of_subject(subject: &str) -> Option<Uuid> {
    subject.rsplit('.').next()?.parse().ok()
}

fn backoff(delivered: i64) -> Duration {
    let exp = delivered.clamp(1, 8) as u32;
    Duration::from_millis(250 * 2u64.pow(exp - 1)).min(Duration::from_secs(30))
}

impl Writer {
    /// Pulls until cancelled. A batch in progress is finished (written and acknowledged) before
    /// returning.
    pub async fn run(self, consumer: PullConsumer, cancel: CancellationToken) {
        loop {
            let messages = consumer
                .stream()
                .max_messages_per_batch(self.fetch_batch)
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(30))
                .messages()
                .await;
            match messages {
                Ok(messages) => {
                    // Up to `fetch_batch` messages, waiting at most `fetch_linger` after the
                    // first for the rest (see `--fetch-linger-ms`).
                    let mut chunks = if self.fetch_linger.is_zero() {
                        messages.ready_chunks(self.fetch_batch).boxed()
                    } else {
                        tokio_stream::StreamExt::chunks_timeout(
                            messages,
                            self.fetch_batch,
                            self.fetch_linger,
                        )
                        .boxed()
                    };
                    loop {
                        let chunk = tokio::select! {
                            _ = cancel.cancelled() => return,
                            chunk = chunks.next() => chunk,
                        };
                        let Some(chunk) = chunk else { break };
                        let mut ok = Vec::with_capacity(chunk.len());
                        for m in chunk {
                            match m {
                                Ok(m) => ok.push(m),
                                Err(e) => {
                                    tracing::warn!(module = "consumer", error = %e, "Pull failed; continuing.")
                                }
                            }
                        }
                        if !ok.is_empty() {
                            self.handle(ok).await;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(module = "consumer", error = %e, "Cannot start pulling; retrying.")
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// Stores one fetched set of messages and acknowledges each according to its outcome.
    #[tracing::instrument(name = "write_batch", skip_all, fields(module = "consumer", operation = "write", messages = messages.len()))]
    async fn handle(&self, messages: Vec<jetstream::Message>) {
        let mut batches = Vec::with_capacity(messages.len());
        let mut good = Vec::with_capacity(messages.len());
        for m in messages {
            let delivered = m.info().map(|i| i.delivered).unwrap_or(1);
            if delivered > 1 {
                self.metrics.redeliveries.inc();
            }
            match decode_valid(&m.payload) {
                Ok(b) => {
                    batches.push(b);
                    good.push((m, delivered));
                }
                Err(e) => {
                    MessageTerminated {
                        device_id: device_of_subject(&m.subject),
                        subject: &m.subject,
                        error: &e,
                    }
                    .emit(&self.metrics);
                    if let Err(e) = m.ack_with(AckKind::Term).await {
                        tracing::warn!(error = %e, "Cannot terminate a message.");
                    }
                }
            }
        }
        if batches.is_empty() {
            return;
        }
        let started = Instant::now();
        match self.write(&batches).await {
            Ok((inserted, total)) => {
                let received: Vec<i64> = batches.iter().map(|b| b.received_at_us).collect();
                BatchStored {
                    messages: batches.len(),
                    readings: total,
                    inserted,
                    elapsed: started.elapsed(),
                    received_at_us: &received,
                    committed_at_us: shared::now_us(),
                }
                .emit(&self.metrics);
                self.touch_devices(&batches).await;
                // After the commit, before the acks: a crash in between redelivers the batch,
                // and re-evaluating it is a no-op (every rule's watermark already covers it).
                // It cannot fail the batch: failures are logged and counted inside.
                self.alerts.evaluate(&batches).await;
                if self.fault_pause_before_ack {
                    tracing::warn!(module = "consumer", "Fault injection: paused before ack.");
                    std::future::pending::<()>().await;
                }
                for (m, _) in &good {
                    if let Err(e) = m.ack().await {
                        tracing::warn!(error = %e, "Ack failed; the message will be redelivered and skipped as a duplicate.");
                    }
                }
                self.metrics
                    .messages
                    .with_label_values(&["stored"])
                    .inc_by(good.len() as u64);
            }
            Err(e) => {
                BatchRetried {
                    messages: good.len(),
                    error: &e,
                }
                .emit(&self.metrics);
                for (m, delivered) in &good {
                    let _ = m.ack_with(AckKind::Nak(Some(backoff(*delivered)))).await;
                }
            }
        }
    }

    /// Resolves series ids (cached; unknown ones created in one round trip) and writes every
    /// reading of every batch in one statement (a binary COPY; see
    /// [`storage::readings::store`]). Returns (new rows, rows sent).
    async fn write(&self, batches: &[Batch]) -> sqlx::Result<(u64, u64)> {
        // Per batch and metric, not per reading: a batch names each of its metrics once.
        let missing: Vec<(Uuid, String)> = {
            let cache = self.series.lock().unwrap_or_else(|p| p.into_inner());
            let mut missing: Vec<(Uuid, String)> = Vec::new();
            for b in batches {
                let known = cache.get(&b.device_id);
                for m in &b.metrics {
                    if !known.is_some_and(|k| k.contains_key(m)) {
                        missing.push((b.device_id, m.clone()));
                    }
                }
            }
            missing.sort_unstable();
            missing.dedup();
            missing
        };
        if !missing.is_empty() {
            let found = storage::readings::ensure_series(&self.db, &missing).await?;
            let mut cache = self.series.lock().unwrap_or_else(|p| p.into_inner());
            for (device, metric, id) in found {
                cache.entry(device).or_default().insert(metric, id);
            }
        }
        let total: usize = batches.iter().map(|b| b.readings.len()).sum();
        let mut cols = Columns {
            series: Vec::with_capacity(total),
            ts_us: Vec::with_capacity(total),
            value: Vec::with_capacity(total),
        };
        {
            let cache = self.series.lock().unwrap_or_else(|p| p.into_inner());
            let mut ids: Vec<i32> = Vec::new();
            for b in batches {
                let known = cache.get(&b.device_id);
                ids.clear();
                for m in &b.metrics {
                    let Some(&id) = known.and_then(|k| k.get(m)) else {
                        return Err(sqlx::Error::Protocol(format!(
                            "series for {} / {m} was not created",
                            b.device_id
                        )));
                    };
                    ids.push(id);
                }
                for r in &b.readings {
                    // decode() checked every position against the batch's metrics.
                    let Some(&id) = ids.get(r.metric as usize) else {
                        continue;
                    };
                    cols.series.push(id);
                    cols.ts_us.push(r.ts_us);
                    cols.value.push(r.value);
                }
            }
        }
        let inserted = storage::readings::store(&self.db, &cols).await?;
        Ok((inserted, total as u64))
    }

    /// Moves `last_seen_at` forward for the batches' devices, at most once a second per device
    /// in this process: it is a "when did we last hear from it" for people, and writing it for
    /// every batch cost a row version and a commit (an fsync) per write, as much as the readings'
    /// own commit.
    async fn touch_devices(&self, batches: &[Batch]) {
        let seen: Vec<(Uuid, DateTime<Utc>)> = {
            let mut touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
            if touched.len() > 1_000_000 {
                touched.clear();
            }
            batches
                .iter()
                .filter(|b| {
                    let last = touched.entry(b.device_id).or_insert(i64::MIN);
                    let due = b.received_at_us.saturating_sub(*last) >= LAST_SEEN_EVERY_US;
                    if due {
                        *last = b.received_at_us;
                    }
                    due
                })
                .filter_map(|b| {
                    DateTime::from_timestamp_micros(b.received_at_us).map(|t| (b.device_id, t))
                })
                .collect()
        };
        if seen.is_empty() {
            return;
        }
        if let Err(e) = storage::devices::touch_last_seen(&self.db, seen).await {
            tracing::debug!(error = %e, "Cannot update last_seen_at.");
        }
    }
}

/// How often each processor polls the consumer and trims the stream.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// Polls the consumer's pending counts into gauges (for dashboards and autoscaling), and trims
/// the stream of what the consumer has acknowledged.
///
/// The stream keeps messages by limits (see `shared::backbone::ensure_stream`), so without the
/// trim it would fill with messages already stored, and ingest would answer 503 with nothing
/// left to process. Every message at or below the consumer's ack floor has been committed and
/// acked, so purging below floor + 1 removes only those: one request a second, whole blocks at
/// a time, where a work queue would remove every message on its own ack. Every processor copy
/// trims; purging what is already gone is a no-op.
pub async fn poll_and_trim(
    consumer: PullConsumer,
    stream: jetstream::stream::Stream,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let mut trimmed_to = 0u64;
    loop {
        if let Ok(info) = consumer.get_info().await {
            metrics.consumer_pending.set(info.num_pending as i64);
            metrics
                .consumer_ack_pending
                .set(info.num_ack_pending as i64);
            let floor = info.ack_floor.stream_sequence;
            // Sequences going back mean the stream was deleted and made again.
            if floor < trimmed_to {
                trimmed_to = 0;
            }
            if floor > trimmed_to {
                match stream.purge().sequence(floor.saturating_add(1)).await {
                    Ok(purged) => {
                        trimmed_to = floor;
                        metrics.stream_trimmed.inc_by(purged.purged);
                    }
                    Err(e) => {
                        tracing::debug!(module = "consumer", operation = "trim", error = %e, "Cannot trim the stream.")
                    }
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(POLL_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::wire::{Channel, Reading};

    #[test]
    fn non_finite_and_malformed_batches_are_poison() {
        let mut batch = Batch {
            device_id: Uuid::new_v4(),
            channel: Channel::Http,
            received_at_us: 0,
            metrics: vec!["m".into()],
            readings: vec![Reading {
                metric: 0,
                ts_us: 1_700_000_000_000_000,
                value: 1.0,
            }],
        };
        assert!(decode_valid(&wire::encode(&batch)).is_ok());
        batch.readings[0].value = f64::NAN;
        assert!(matches!(
            decode_valid(&wire::encode(&batch)),
            Err(Poison::Invalid(_))
        ));
        batch.readings[0].value = 1.0;
        batch.metrics[0] = "bad metric".into();
        assert!(matches!(
            decode_valid(&wire::encode(&batch)),
            Err(Poison::Invalid(_))
        ));
        assert!(matches!(
            decode_valid(b"\x07garbage"),
            Err(Poison::Decode(_))
        ));
    }

    #[test]
    fn the_device_of_a_message_comes_from_its_subject() {
        let id = Uuid::new_v4();
        assert_eq!(device_of_subject(&format!("hub.readings.{id}")), Some(id));
        assert_eq!(device_of_subject("hub.readings.not-a-uuid"), None);
        assert_eq!(device_of_subject(""), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(250));
        assert_eq!(backoff(2), Duration::from_millis(500));
        assert!(backoff(100) <= Duration::from_secs(30));
        assert_eq!(backoff(-3), Duration::from_millis(250));
    }
}

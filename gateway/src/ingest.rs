//! The one ingest path for every channel: validate → normalise → publish.
//!
//! HTTP and MQTT differ only in how they authenticate and how they answer; both call
//! [`Ingestor::ingest`] and tell the device "OK" only when it returns `Ok`, which is after
//! JetStream has stored the batch.

pub mod http;
pub mod mqtt;
pub mod publish;

use crate::observability::{BatchIngested, Metrics};
use publish::{PublishError, Publisher};
use shared::ingest::{BodyError, Limits, Rejection};
use shared::names::Names;
use shared::wire::{Batch, Channel};
use uuid::Uuid;

#[derive(Debug)]
pub struct Accepted {
    pub accepted: usize,
    pub rejected: Vec<Rejection>,
    /// JetStream had already stored a batch with this idempotency key.
    pub duplicate: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error("no valid readings")]
    NoValidReadings(Vec<Rejection>),
    #[error("no readings")]
    NoReadings,
    #[error("publish failed: {0}")]
    Unavailable(#[from] PublishError),
}

#[derive(Clone)]
pub struct Ingestor {
    pub limits: Limits,
    pub names: Names,
    pub publisher: Publisher,
    pub metrics: Metrics,
}

impl Ingestor {
    /// Validates `body` from an authenticated device and publishes its valid readings as one
    /// message. `idempotency_key` becomes the JetStream message id (scoped to the device), so a
    /// retried batch is stored once.
    #[tracing::instrument(name = "ingest", skip_all, fields(module = "ingest", operation = "ingest", %device_id, channel = channel.as_str()))]
    pub async fn ingest(
        &self,
        device_id: Uuid,
        channel: Channel,
        body: &[u8],
        received_at_us: i64,
        idempotency_key: Option<&str>,
    ) -> Result<Accepted, IngestError> {
        let result = self
            .ingest_inner(device_id, channel, body, received_at_us, idempotency_key)
            .await;
        let (outcome, accepted, rejected, duplicate) = match &result {
            Ok(a) => ("accepted", a.accepted, a.rejected.len(), a.duplicate),
            Err(IngestError::NoValidReadings(r)) => ("rejected", 0, r.len(), false),
            Err(IngestError::Body(_) | IngestError::NoReadings) => ("rejected", 0, 0, false),
            // The valid readings of a batch JetStream did not take are neither stored nor
            // refused: the device is told to retry, and counts them when it does.
            Err(IngestError::Unavailable(_)) => ("unavailable", 0, 0, false),
        };
        BatchIngested {
            channel,
            outcome,
            accepted,
            rejected,
            duplicate,
        }
        .emit(&self.metrics);
        result
    }

    async fn ingest_inner(
        &self,
        device_id: Uuid,
        channel: Channel,
        body: &[u8],
        received_at_us: i64,
        idempotency_key: Option<&str>,
    ) -> Result<Accepted, IngestError> {
        let parsed = shared::ingest::parse(body, received_at_us, &self.limits)?;
        if parsed.readings.is_empty() {
            return Err(if parsed.rejected.is_empty() {
                IngestError::NoReadings
            } else {
                IngestError::NoValidReadings(parsed.rejected)
            });
        }
        let accepted = parsed.readings.len();
        let batch = Batch {
            device_id,
            channel,
            received_at_us,
            metrics: parsed.metrics,
            readings: parsed.readings,
        };
        let msg_id = idempotency_key.map(|k| format!("{device_id}:{k}"));
        let ack = self
            .publisher
            .publish(
                self.names.readings_subject(device_id),
                shared::wire::encode(&batch),
                msg_id,
                channel,
            )
            .await?;
        Ok(Accepted {
            accepted,
            rejected: parsed.rejected,
            duplicate: ack.duplicate,
        })
    }
}

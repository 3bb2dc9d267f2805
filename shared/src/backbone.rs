//! Idempotent set-up of the JetStream objects the hub owns. Either binary may run it at start;
//! running it again with the same settings changes nothing.

use crate::names::Names;
use async_nats::jetstream::{self, kv, stream};
use std::time::Duration;

/// Stream limits. The stream is a buffer between gateways and processors, not the archive, so
/// it keeps a bounded window; the processor normally drains it within milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    pub max_age: Duration,
    pub max_bytes: i64,
    /// Messages published with the same `Nats-Msg-Id` inside this window are stored once: this
    /// is what makes an `Idempotency-Key` retry safe.
    pub duplicate_window: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 8 * 1024 * 1024 * 1024,
            duplicate_window: Duration::from_secs(120),
        }
    }
}

/// Largest message the stream takes; the gateway's body limit keeps batches well under it.
pub const MAX_MESSAGE_BYTES: i32 = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BackboneError {
    #[error("cannot create or update stream {stream}: {source}")]
    Stream {
        stream: String,
        source: async_nats::Error,
    },
    /// Named on its own because the fix is the operator's: JetStream reserves the stream's
    /// whole byte limit up front, and a small or nearly full disk cannot hold it.
    #[error(
        "cannot create or update stream {stream}: JetStream has no room to reserve {max_bytes} \
         bytes for it; lower --stream-max-bytes (HUB_STREAM_MAX_BYTES) or give the NATS server \
         more store (max_file_store, by default 75% of its free disk)"
    )]
    NoRoom { stream: String, max_bytes: i64 },
    #[error("cannot create or open key bucket {bucket}: {source}")]
    Bucket {
        bucket: String,
        source: async_nats::Error,
    },
}

/// Creates the telemetry stream, or brings its limits up to date.
pub async fn ensure_stream(
    js: &jetstream::Context,
    names: &Names,
    limits: StreamLimits,
) -> Result<(), BackboneError> {
    let config = stream::Config {
        name: names.stream(),
        subjects: vec![names.readings_wildcard()],
        storage: stream::StorageType::File,
        // `Limits`, not `WorkQueue`: a work queue removes each message on its ack, which costs
        // nats-server 2.9 about half as much CPU again per message (docs/benchmarks.md). The
        // processors trim what they acknowledged instead, in one purge a second
        // (`processor::consumer::poll_and_trim`), so the byte limit bounds only what waits.
        retention: stream::RetentionPolicy::Limits,
        // When the stream is full, refuse new messages (the gateway answers 503 and the device
        // retries) rather than silently discarding old, not yet processed ones.
        discard: stream::DiscardPolicy::New,
        max_age: limits.max_age,
        max_bytes: limits.max_bytes,
        max_message_size: MAX_MESSAGE_BYTES,
        duplicate_window: limits.duplicate_window,
        ..Default::default()
    };
    js.create_or_update_stream(config).await.map_err(|e| {
        if let jetstream::context::CreateStreamErrorKind::JetStream(js) = e.kind()
            && js.error_code() == jetstream::ErrorCode::STORAGE_RESOURCES_EXCEEDED
        {
            return BackboneError::NoRoom {
                stream: names.stream(),
                max_bytes: limits.max_bytes,
            };
        }
        BackboneError::Stream {
            stream: names.stream(),
            source: e.into(),
        }
    })?;
    Ok(())
}

/// Opens the device key bucket, creating it first if needed.
///
/// The bucket's backing stream is created by hand instead of with `create_key_value`: on
/// nats-server 2.9 that call fails because the account-info reply lacks fields the client
/// requires. The stream below is exactly what a KV bucket is (see the KV ADR): subjects
/// `$KV.<bucket>.>`, one message per key, rollups allowed, direct get.
pub async fn ensure_key_bucket(
    js: &jetstream::Context,
    names: &Names,
) -> Result<kv::Store, BackboneError> {
    let bucket = names.key_bucket();
    let err = |e: async_nats::Error| BackboneError::Bucket {
        bucket: bucket.clone(),
        source: e,
    };
    let config = stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        storage: stream::StorageType::File,
        max_messages_per_subject: 1,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        max_age: Duration::ZERO,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    js.create_or_update_stream(config)
        .await
        .map_err(|e| err(e.into()))?;
    js.get_key_value(bucket.clone())
        .await
        .map_err(|e| err(e.into()))
}

/// Deletes everything the namespace owns on the server; used by tests and by operators who
/// retire a hub.
pub async fn delete_namespace(js: &jetstream::Context, names: &Names) {
    let _ = js.delete_stream(names.stream()).await;
    let _ = js.delete_stream(format!("KV_{}", names.key_bucket())).await;
}

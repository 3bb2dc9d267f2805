//! Publishing batches to JetStream and waiting for the stream's acknowledgement.

use crate::observability::Metrics;
use async_nats::jetstream::{self, context::PublishAckFuture};
use shared::wire::Channel;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("JetStream did not acknowledge within {0:?}")]
    Timeout(Duration),
    #[error("JetStream refused the message: {0}")]
    Refused(String),
}

#[derive(Clone)]
pub struct Publisher {
    js: jetstream::Context,
    timeout: Duration,
    metrics: Metrics,
}

pub struct Ack {
    pub duplicate: bool,
}

impl Publisher {
    /// The context waits for a free in-flight slot instead of failing when many publishes are
    /// outstanding (`backpressure_on_inflight`): a busy gateway slows down rather than answering
    /// errors, and the overall timeout still bounds each request.
    pub fn new(client: async_nats::Client, timeout: Duration, metrics: Metrics) -> Self {
        let js = jetstream::ContextBuilder::new()
            .timeout(timeout)
            .max_ack_inflight(20_000)
            .backpressure_on_inflight(true)
            .build(client);
        Self {
            js,
            timeout,
            metrics,
        }
    }

    pub fn context(&self) -> &jetstream::Context {
        &self.js
    }

    pub async fn publish(
        &self,
        subject: String,
        payload: Vec<u8>,
        msg_id: Option<String>,
        channel: Channel,
    ) -> Result<Ack, PublishError> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, async {
            let future: PublishAckFuture = match msg_id {
                Some(id) => {
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
                    self.js
                        .publish_with_headers(subject, headers, payload.into())
                        .await
                }
                None => self.js.publish(subject, payload.into()).await,
            }
            .map_err(|e| PublishError::Refused(e.to_string()))?;
            future
                .await
                .map_err(|e| PublishError::Refused(e.to_string()))
        })
        .await
        .map_err(|_| PublishError::Timeout(self.timeout))??;
        self.metrics
            .publish_seconds
            .with_label_values(&[channel.as_str()])
            .observe(started.elapsed().as_secs_f64());
        Ok(Ack {
            duplicate: result.duplicate,
        })
    }
}

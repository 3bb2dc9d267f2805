//! The gateway's HTTP router: ingest, health, readiness, metrics, and the layers around them.

use crate::AppState;
use crate::config::GatewayConfig;
use crate::error::GatewayError;
use crate::ingest::http::{post_ingest, presented_key_id};
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;
use std::time::Instant;
use tower_governor::GovernorLayer;
use tower_governor::errors::GovernorError;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor;

/// Rate-limits by the public id inside the presented key. Requests without a readable key share
/// one bucket; they are answered 401 by the handler anyway.
#[derive(Clone)]
struct DeviceKeyExtractor;

impl KeyExtractor for DeviceKeyExtractor {
    type Key = String;
    fn extract<T>(&self, req: &axum::http::Request<T>) -> Result<String, GovernorError> {
        Ok(presented_key_id(req.headers()).unwrap_or_default())
    }
}

pub fn router(state: AppState, config: &GatewayConfig) -> Router {
    let per_request_ns = 1_000_000_000u64 / u64::from(config.ingest_rate_per_sec.max(1));
    let governor = GovernorConfigBuilder::default()
        .per_nanosecond(per_request_ns.max(1))
        .burst_size(config.ingest_burst.max(1))
        .key_extractor(DeviceKeyExtractor)
        .finish();
    let ingest = Router::new().route("/ingest", post(post_ingest));
    let ingest = match governor {
        Some(governor) => {
            let metrics = state.metrics.clone();
            ingest.layer(
                GovernorLayer::new(Arc::new(governor))
                    .error_handler(move |e| rate_limited(&metrics, e)),
            )
        }
        None => ingest,
    };
    Router::new()
        .merge(ingest)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { GatewayError::NotFound })
        .method_not_allowed_fallback(|| async { GatewayError::MethodNotAllowed })
        // Outermost, so that rate-limited and refused requests are measured too.
        .layer(middleware::from_fn_with_state(state.clone(), track_http))
        .with_state(state)
}

fn rate_limited(metrics: &crate::observability::Metrics, e: GovernorError) -> Response {
    match e {
        GovernorError::TooManyRequests { wait_time, .. } => {
            metrics
                .ingest_requests
                .with_label_values(&["http", "rate_limited"])
                .inc();
            GatewayError::RateLimited {
                retry_after_secs: wait_time,
            }
            .into_response()
        }
        other => {
            tracing::error!(error = %other, "Rate limiter failed.");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn track_http(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    state
        .metrics
        .http_requests
        .with_label_values(&[&route, &method, &status])
        .inc();
    state
        .metrics
        .http_seconds
        .with_label_values(&[&route, &method])
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Ready when this gateway can do its work: NATS connected, every device key loaded and the MQTT
/// listener accepting (a gateway whose MQTT endpoint stopped must leave the load balancer).
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let nats = state.nats.connection_state() == async_nats::connection::State::Connected;
    let keys = state.registry.is_loaded();
    let mqtt = state.mqtt.is_accepting();
    let ready = nats && keys && mqtt;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({
            "status": if ready { "ready" } else { "not_ready" },
            "checks": { "nats": nats, "device_keys_loaded": keys, "mqtt_listener": mqtt },
        })),
    )
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
}

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
use shared::telemetry::HttpRequest;
use std::sync::Arc;
use std::time::Instant;
use tower_governor::GovernorLayer;
use tower_governor::errors::GovernorError;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor;
use tracing::Instrument as _;

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
        .route("/openapi.json", get(crate::openapi::openapi_json))
        .fallback(|| async { GatewayError::NotFound })
        .method_not_allowed_fallback(|| async { GatewayError::MethodNotAllowed })
        .layer(axum::Extension(config.http.body_timeout()))
        // A handler that panics answers 500 in the error shape instead of dropping the
        // connection; inside the request layer, so that the 500 is counted and logged.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            shared::telemetry::panic_response,
        ))
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
                // Whole seconds, at least one: the message says what `Retry-After` says.
                retry_after_secs: wait_time.max(1),
            }
            .into_response()
        }
        other => {
            tracing::error!(error = %other, "Rate limiter failed.");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The outermost layer: one span per request carrying the route template (handlers record the
/// authenticated `device_id` into it), then one metric sample and one log line per request
/// ([`HttpRequest`]). Labels use the matched route, never the raw path.
async fn track_http(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| shared::telemetry::UNMATCHED_ROUTE.to_owned());
    let method = req.method().clone();
    let span = tracing::info_span!(
        "http_request",
        module = "http",
        route = %route,
        method = %method,
        device_id = tracing::field::Empty,
    );
    let response = next.run(req).instrument(span.clone()).await;
    span.in_scope(|| {
        HttpRequest {
            route: &route,
            method: method.as_str(),
            status: response.status().as_u16(),
            elapsed: started.elapsed(),
        }
        .emit(&state.metrics.http_requests, &state.metrics.http_seconds)
    });
    response
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Ready when this gateway can do its work: NATS connected, every device key loaded and the MQTT
/// listener accepting (a gateway whose MQTT endpoint stopped must leave the load balancer).
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let nats = state.nats.connection_state() == async_nats::connection::State::Connected
        && stream_answers(&state).await;
    let keys = state.registry.is_loaded();
    let mqtt = state.mqtt.is_accepting();
    let ready = nats && keys && mqtt;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": { "nats": nats, "device_keys_loaded": keys, "mqtt_listener": mqtt },
    });
    state.metrics.readiness.observe(ready, &body["checks"]);
    (status, Json(body))
}

/// A connected client is not enough: JetStream must answer for our stream, or every publish
/// would time out. Bounded, so that a hung server makes the probe fail rather than hang.
async fn stream_answers(state: &AppState) -> bool {
    let js = state.ingestor.publisher.context();
    tokio::time::timeout(
        std::time::Duration::from_secs(2),
        js.get_stream(state.ingestor.names.stream()),
    )
    .await
    .is_ok_and(|r| r.is_ok())
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

//! Liveness, readiness and metrics.

use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Serialize;
use std::time::Duration;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

// Document types of the answers below (built as JSON values, which the readiness metric reads).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct Health {
    /// Always `ok`.
    status: String,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct Readiness {
    /// `ready` or `not_ready`.
    status: String,
    checks: ReadinessChecks,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct ReadinessChecks {
    database: bool,
    nats: bool,
    consumer: bool,
}

/// Alive: answers as long as the process serves HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "meta",
    responses((status = 200, description = "Alive", body = Health))
)]
async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

/// Ready when the processor can do its work: the database answers, NATS is connected and the
/// consumer exists on the server. Each check is bounded (2 s), so that a dependency that hangs
/// rather than refuses makes the probe answer 503 instead of timing out. Liveness (`/healthz`)
/// checks nothing: a process waiting for its database is alive, and restarting it would not
/// bring the database back.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "meta",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready; `checks` says what is missing", body = Readiness),
    )
)]
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let db = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(&state.db),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let nats = state.nats.connection_state() == async_nats::connection::State::Connected;
    let consumer = nats
        && tokio::time::timeout(Duration::from_secs(2), state.consumer.get_info())
            .await
            .is_ok_and(|r| r.is_ok());
    let ready = db && nats && consumer;
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": { "database": db, "nats": nats, "consumer": consumer },
    });
    state.metrics.readiness.observe(ready, &body["checks"]);
    (
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        axum::Json(body),
    )
}

/// Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "meta",
    responses((status = 200, description = "Every metric family of the processor", content_type = "text/plain", body = String))
)]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
}

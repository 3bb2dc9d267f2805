//! Liveness, readiness and metrics.

use crate::AppState;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use std::time::Duration;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// Ready when the processor can do its work: the database answers, NATS is connected and the
/// consumer exists on the server. Each check is bounded (2 s), so that a dependency that hangs
/// rather than refuses makes the probe answer 503 instead of timing out. Liveness (`/healthz`)
/// checks nothing: a process waiting for its database is alive, and restarting it would not
/// bring the database back.
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

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
}

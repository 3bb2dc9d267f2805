//! The HTTP API: one router per area, merged here, with every layer applied in one place.

pub mod alerts;
pub mod auth;
pub mod devices;
pub mod extract;
pub mod health;
pub mod openapi;
pub mod readings;
pub mod users;
pub mod rules;

use crate::AppState;
use crate::config::ServeConfig;
use crate::error::ApiError;
use axum::{Extension, Router};
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use std::time::Instant;
use utoipa::{Modify as _, OpenApi as _};
use utoipa_axum::router::OpenApiRouter;

/// Routes registered on the [`OpenApiRouter`] are in the OpenAPI document by construction (see
/// [`openapi`]); the document is finished and serialised once, here.
pub fn router(state: AppState, config: &ServeConfig) -> anyhow::Result<Router> {
    let (routes, mut doc) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(auth::router(config))
        .merge(devices::router())
        .merge(readings::router())
        .merge(users::router())
        .merge(openapi::router())
        .split_for_parts();
    openapi::CommonAnswers.modify(&mut doc);
    Ok(routes
        .merge(rules::router())
        .merge(alerts::router())
        .merge(health::router())
        .layer(Extension(openapi::DocumentJson::new(&doc)?))
        .fallback(|| async { ApiError::NoRoute })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        // Outermost, so every answer (rate-limited, refused, not found) is counted and logged.
        .layer(middleware::from_fn_with_state(state.clone(), track_http))
        .with_state(state))
}

/// One log line and one metric sample per request, keyed by the route template (never the raw
/// path, which would carry ids and make label sets unbounded).
async fn track_http(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let response = next.run(req).await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    state
        .metrics
        .http_requests
        .with_label_values(&[&route, &method, &status.to_string()])
        .inc();
    state
        .metrics
        .http_seconds
        .with_label_values(&[&route, &method])
        .observe(elapsed.as_secs_f64());
    if route != "/metrics" && route != "/healthz" && route != "/readyz" {
        tracing::info!(module = "api", operation = %route, method = %method, status, elapsed_ms = elapsed.as_millis() as u64, "Request.");
    }
    response
}

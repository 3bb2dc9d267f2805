//! The HTTP API: one router per area, merged here, with every layer applied in one place.

pub mod alerts;
pub mod auth;
pub mod devices;
pub mod extract;
pub mod health;
pub mod openapi;
pub mod readings;
pub mod rules;
pub mod users;

use crate::AppState;
use crate::config::ServeConfig;
use crate::error::ApiError;
use axum::extract::{FromRequestParts as _, MatchedPath, RawPathParams, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::{Extension, Router};
use shared::telemetry::HttpRequest;
use std::time::Instant;
use tracing::Instrument as _;
use utoipa::{Modify as _, OpenApi as _};
use utoipa_axum::router::OpenApiRouter;
use uuid::Uuid;

/// Routes registered on the [`OpenApiRouter`] are in the OpenAPI document by construction (see
/// [`openapi`]); the document is finished and serialised once, here.
pub fn router(state: AppState, config: &ServeConfig) -> anyhow::Result<Router> {
    let (routes, mut doc) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(auth::router(config))
        .merge(devices::router())
        .merge(readings::router())
        .merge(users::router())
        .merge(rules::router())
        .merge(alerts::router())
        .merge(health::router())
        .merge(openapi::router())
        .split_for_parts();
    openapi::CommonAnswers.modify(&mut doc);
    Ok(routes
        .layer(Extension(openapi::DocumentJson::new(&doc)?))
        .fallback(|| async { ApiError::NoRoute })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::Extension(config.http.body_timeout()))
        // A handler that panics answers 500 in the error shape instead of dropping the
        // connection; inside the request layer, so that the 500 is counted and logged.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            shared::telemetry::panic_response,
        ))
        // Outermost, so every answer (rate-limited, refused, not found) is counted and logged.
        .layer(middleware::from_fn_with_state(state.clone(), track_http))
        .with_state(state))
}

/// The outermost layer: one span per request carrying the route template and the domain ids the
/// request names (in its path or query), then one metric sample and one log line per request
/// ([`HttpRequest`]). Labels use the route template, never the raw path, which would carry ids
/// and make label sets unbounded.
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
        rule_id = tracing::field::Empty,
        alert_id = tracing::field::Empty,
        user_id = tracing::field::Empty,
    );
    let (mut parts, body) = req.into_parts();
    record_domain_ids(&span, &route, &mut parts).await;
    let response = next
        .run(Request::from_parts(parts, body))
        .instrument(span.clone())
        .await;
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

/// The span field an `{id}` in a route names: the first segment says which entity it is.
fn id_field(route: &str) -> Option<&'static str> {
    match route.split('/').nth(1)? {
        "devices" => Some("device_id"),
        "rules" => Some("rule_id"),
        "alerts" => Some("alert_id"),
        "users" => Some("user_id"),
        _ => None,
    }
}

/// Records the ids a request names into its span: `{id}` in the path (by the route's entity) and
/// `device_id`/`rule_id`/`alert_id` in the query. Only well-formed UUIDs are recorded, so that
/// nothing a client makes up reaches the log.
async fn record_domain_ids(
    span: &tracing::Span,
    route: &str,
    parts: &mut axum::http::request::Parts,
) {
    if let Some(field) = id_field(route)
        && let Ok(params) = RawPathParams::from_request_parts(parts, &()).await
        && let Some(id) = params
            .iter()
            .find(|(k, _)| *k == "id")
            .and_then(|(_, v)| v.parse::<Uuid>().ok())
    {
        span.record(field, tracing::field::display(id));
    }
    for (k, v) in url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()) {
        let field = match k.as_ref() {
            "device_id" => "device_id",
            "rule_id" => "rule_id",
            "alert_id" => "alert_id",
            _ => continue,
        };
        if let Ok(id) = v.parse::<Uuid>() {
            span.record(field, tracing::field::display(id));
        }
    }
}

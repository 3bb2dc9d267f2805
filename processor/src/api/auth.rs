//! `POST /auth/login`, rate-limited per client IP.

use crate::AppState;
use crate::api::extract::Json;
use crate::config::ServeConfig;
use crate::error::{ApiError, ErrorBody};
use axum::extract::{ConnectInfo, State};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tower_governor::GovernorLayer;
use tower_governor::errors::GovernorError;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(Deserialize, ToSchema)]
pub struct LoginRequest {
    pub username: String,
    #[schema(format = Password)]
    pub password: String,
}

#[derive(Serialize, ToSchema)]
pub struct LoginResponse {
    /// An HS256 JWT; send it as `Authorization: Bearer <access_token>`.
    pub access_token: String,
    /// Always `Bearer`.
    #[schema(value_type = String, example = "Bearer")]
    pub token_type: &'static str,
    /// Seconds until the token expires.
    pub expires_in: u64,
    pub role: crate::users::Role,
}

/// Exchanges a username and password for an access token. Rate-limited per client address.
#[utoipa::path(
    post,
    path = "/auth/login",
    operation_id = "login",
    tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = LoginResponse),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 401, description = "Wrong username or password (the same answer for both)", body = ErrorBody),
        (status = 422, description = "A missing or invalid field", body = ErrorBody),
        (status = 429, description = "Too many attempts from this address; retry after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 500, description = "Internal error (details only in the server log)", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
async fn login(
    State(state): State<AppState>,
    Json(req): Json<LoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    let (token, role) = crate::auth::login(&state, &req.username, req.password).await?;
    Ok(Json(LoginResponse {
        access_token: token,
        token_type: "Bearer",
        expires_in: state.tokens.ttl_secs,
        role,
    }))
}

/// The client IP: the peer address, or the configured trusted proxy header's first address.
#[derive(Clone)]
pub struct ClientIp {
    trusted_header: Option<Arc<str>>,
}

impl KeyExtractor for ClientIp {
    type Key = IpAddr;
    fn extract<T>(&self, req: &axum::http::Request<T>) -> Result<IpAddr, GovernorError> {
        if let Some(header) = &self.trusted_header
            && let Some(ip) = req
                .headers()
                .get(header.as_ref())
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .and_then(|v| v.trim().parse().ok())
        {
            return Ok(ip);
        }
        req.extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .ok_or(GovernorError::UnableToExtractKey)
    }
}

pub fn router(config: &ServeConfig) -> OpenApiRouter<AppState> {
    let per_request_ms = 60_000u64 / u64::from(config.login_rate_per_min.max(1));
    let governor = GovernorConfigBuilder::default()
        .per_millisecond(per_request_ms.max(1))
        .burst_size(config.login_burst.max(1))
        .key_extractor(ClientIp {
            trusted_header: config.trusted_ip_header.as_deref().map(Arc::from),
        })
        .finish();
    let routes = OpenApiRouter::new().routes(routes!(login));
    match governor {
        Some(g) => routes.layer(GovernorLayer::new(Arc::new(g)).error_handler(governor_error)),
        None => routes,
    }
}

pub fn governor_error(e: GovernorError) -> axum::response::Response {
    match e {
        GovernorError::TooManyRequests { wait_time, .. } => ApiError::RateLimited {
            // Whole seconds, at least one: the message says what `Retry-After` says.
            retry_after_secs: wait_time.max(1),
        }
        .into_response(),
        other => ApiError::Internal(anyhow::anyhow!("rate limiter: {other}")).into_response(),
    }
}

//! `POST /auth/login`, rate-limited per client IP.

use crate::AppState;
use crate::api::extract::Json;
use crate::config::ServeConfig;
use crate::error::ApiError;
use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::response::IntoResponse;
use axum::routing::post;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tower_governor::GovernorLayer;
use tower_governor::errors::GovernorError;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor;

#[derive(Deserialize)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

#[derive(Serialize)]
pub struct LoginResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    pub role: crate::users::Role,
}

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

pub fn router(config: &ServeConfig) -> Router<AppState> {
    let per_request_ms = 60_000u64 / u64::from(config.login_rate_per_min.max(1));
    let governor = GovernorConfigBuilder::default()
        .per_millisecond(per_request_ms.max(1))
        .burst_size(config.login_burst.max(1))
        .key_extractor(ClientIp {
            trusted_header: config.trusted_ip_header.as_deref().map(Arc::from),
        })
        .finish();
    let routes = Router::new().route("/auth/login", post(login));
    match governor {
        Some(g) => routes.layer(GovernorLayer::new(Arc::new(g)).error_handler(governor_error)),
        None => routes,
    }
}

pub fn governor_error(e: GovernorError) -> axum::response::Response {
    match e {
        GovernorError::TooManyRequests { wait_time, .. } => ApiError::RateLimited {
            retry_after_secs: wait_time,
        }
        .into_response(),
        other => ApiError::Internal(anyhow::anyhow!("rate limiter: {other}")).into_response(),
    }
}

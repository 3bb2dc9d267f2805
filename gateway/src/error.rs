//! The gateway's one error type and its one JSON shape: `{"error":{"code","message"}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use shared::ingest::{BodyError, Rejection};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("missing, unknown or disabled device key")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    RequestTimeout(String),
    #[error("none of the {} readings is valid", .0.len())]
    NoValidReadings(Vec<Rejection>),
    #[error("the body has no readings")]
    NoReadings,
    #[error("too many requests; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("the backbone cannot take the readings now; retry later")]
    Unavailable(String),
    #[error("no such route")]
    NotFound,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::Unauthorized => StatusCode::UNAUTHORIZED,
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            GatewayError::NoValidReadings(_) | GatewayError::NoReadings => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            GatewayError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::NotFound => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// Stable, machine-readable codes: clients branch on these, not on messages.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::Unauthorized => "unauthorized",
            GatewayError::BadRequest(_) => "invalid_body",
            GatewayError::PayloadTooLarge(_) => "payload_too_large",
            GatewayError::RequestTimeout(_) => "request_timeout",
            GatewayError::NoValidReadings(_) => "no_valid_readings",
            GatewayError::NoReadings => "no_readings",
            GatewayError::RateLimited { .. } => "rate_limited",
            GatewayError::Unavailable(_) => "unavailable",
            GatewayError::NotFound => "not_found",
            GatewayError::MethodNotAllowed => "method_not_allowed",
        }
    }

    /// Whether the same request may succeed later unchanged.
    pub fn is_retryable(&self) -> bool {
        match self {
            GatewayError::RateLimited { .. }
            | GatewayError::Unavailable(_)
            | GatewayError::RequestTimeout(_) => true,
            GatewayError::Unauthorized
            | GatewayError::BadRequest(_)
            | GatewayError::PayloadTooLarge(_)
            | GatewayError::NoValidReadings(_)
            | GatewayError::NoReadings
            | GatewayError::NotFound
            | GatewayError::MethodNotAllowed => false,
        }
    }

    fn retry_after_secs(&self) -> Option<u64> {
        match self {
            GatewayError::RateLimited { retry_after_secs } => Some((*retry_after_secs).max(1)),
            GatewayError::Unavailable(_) => Some(1),
            _ => None,
        }
    }
}

impl From<BodyError> for GatewayError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooLarge { .. } | BodyError::TooManyReadings { .. } => {
                GatewayError::PayloadTooLarge(e.to_string())
            }
            BodyError::Empty | BodyError::NotJson(_) | BodyError::WrongShape(_) => {
                GatewayError::BadRequest(e.to_string())
            }
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        if let GatewayError::Unavailable(cause) = &self {
            // The cause is for operators; the device only learns to retry.
            tracing::warn!(status = 503, cause = %cause, "Backbone unavailable.");
        }
        let mut body = serde_json::json!({
            "error": { "code": self.code(), "message": self.to_string() }
        });
        if let GatewayError::NoValidReadings(rejected) = &self {
            body["rejected"] = serde_json::json!(rejected);
        }
        let mut response = (self.status(), Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

//! The processor's one error type and its one JSON shape: `{"error":{"code","message"}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Validation(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    RequestTimeout(String),
    #[error("missing, invalid or expired token")]
    Unauthorized,
    #[error("invalid username or password")]
    BadCredentials,
    #[error("this action needs the admin role")]
    Forbidden,
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("too many requests; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("a dependency is unavailable; retry later")]
    Unavailable(String),
    #[error("no such route")]
    NoRoute,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unauthorized | ApiError::BadCredentials => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) | ApiError::NoRoute => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable, machine-readable codes: clients branch on these, not on messages.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Validation(_) => "validation_failed",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::Unauthorized => "unauthorized",
            ApiError::BadCredentials => "invalid_credentials",
            ApiError::Forbidden => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::NoRoute => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn is_retryable(&self) -> bool {
        match self {
            ApiError::RateLimited { .. }
            | ApiError::Unavailable(_)
            | ApiError::Internal(_)
            | ApiError::RequestTimeout(_) => true,
            ApiError::BadRequest(_)
            | ApiError::Validation(_)
            | ApiError::PayloadTooLarge(_)
            | ApiError::Unauthorized
            | ApiError::BadCredentials
            | ApiError::Forbidden
            | ApiError::NotFound(_)
            | ApiError::Conflict(_)
            | ApiError::NoRoute
            | ApiError::MethodNotAllowed => false,
        }
    }
}

/// Database faults are 503 when the database is unreachable (retry helps) and 500 otherwise.
impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                ApiError::Unavailable(e.to_string())
            }
            other => ApiError::Internal(other.into()),
        }
    }
}

/// Every code [`ApiError::code`] can return, for the OpenAPI document.
pub const CODES: [&str; 13] = [
    "bad_request",
    "validation_failed",
    "payload_too_large",
    "request_timeout",
    "unauthorized",
    "invalid_credentials",
    "forbidden",
    "not_found",
    "conflict",
    "rate_limited",
    "unavailable",
    "method_not_allowed",
    "internal",
];

/// The one error shape, `{"error":{"code","message"}}`, as a type: answers are serialised from
/// it and the OpenAPI document describes it, so the two cannot disagree.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorDetail {
    /// Stable and machine-readable: clients branch on this, never on `message`.
    #[schema(schema_with = code_schema)]
    pub code: String,
    /// For people; its wording may change.
    pub message: String,
}

fn code_schema() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(CODES))
        .build()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(e) => tracing::error!(status = 500, error = ?e, "Request failed."),
            ApiError::Unavailable(e) => {
                tracing::warn!(status = 503, error = %e, "Dependency unavailable.")
            }
            _ => {}
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.to_string(),
            },
        };
        let mut response = (self.status(), Json(body)).into_response();
        let retry = match &self {
            ApiError::RateLimited { retry_after_secs } => Some((*retry_after_secs).max(1)),
            ApiError::Unavailable(_) => Some(1),
            _ => None,
        };
        if let Some(secs) = retry {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant's code is one the OpenAPI document lists.
    #[test]
    fn every_code_is_in_the_documented_list() {
        let all = [
            ApiError::BadRequest(String::new()),
            ApiError::Validation(String::new()),
            ApiError::PayloadTooLarge(String::new()),
            ApiError::RequestTimeout(String::new()),
            ApiError::Unauthorized,
            ApiError::BadCredentials,
            ApiError::Forbidden,
            ApiError::NotFound("x"),
            ApiError::Conflict(String::new()),
            ApiError::RateLimited {
                retry_after_secs: 1,
            },
            ApiError::Unavailable(String::new()),
            ApiError::NoRoute,
            ApiError::MethodNotAllowed,
            ApiError::Internal(anyhow::anyhow!("x")),
        ];
        for e in &all {
            assert!(CODES.contains(&e.code()), "{} is not in CODES", e.code());
        }
        for c in CODES {
            assert!(all.iter().any(|e| e.code() == c), "{c} is never returned");
        }
    }
}

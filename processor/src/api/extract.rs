//! Extractors that turn axum's rejections into the one error shape.

use crate::error::ApiError;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

/// `Json` whose rejection is a 400/415/422 in our shape.
///
/// Every request body of this API is a JSON object. serde's derived structs also accept a JSON
/// array of their fields in order (`[null, null]` would be an empty update), so anything but an
/// object is refused here, before serde sees it, as a 422 like any other body of the wrong shape.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        // Content type first, so that a body sent as something else is refused as before.
        if !is_json(&parts.headers) {
            return Err(ApiError::BadRequest(
                "Expected request with `Content-Type: application/json`".into(),
            ));
        }
        let bytes = read_body(&parts, body).await?;
        // Another JSON value is the wrong shape (422); what is not JSON at all is left to serde,
        // whose syntax error says where (400).
        if let Some(b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n') =
            bytes.iter().find(|b| !b.is_ascii_whitespace())
        {
            return Err(ApiError::Validation(
                "the body must be a JSON object".into(),
            ));
        }
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::Validation(e.body_text())),
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

/// A raw body within the same limits as [`Json`], for handlers that parse it themselves.
pub struct RawBody(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;
    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        read_body(&parts, body).await.map(RawBody)
    }
}

/// The largest request body of the API: its bodies are a few fields each.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A whole request body within [`MAX_BODY_BYTES`] and the configured body timeout (the
/// router's `BodyTimeout` extension), with the answer for each way that fails (413 before
/// reading when `Content-Length` says too much, 408, 400).
pub async fn read_body(
    parts: &Parts,
    body: axum::body::Body,
) -> Result<axum::body::Bytes, ApiError> {
    use shared::http::{BodyReadError, BodyTimeout};
    let timeout = parts
        .extensions
        .get::<BodyTimeout>()
        .map(|t| t.0)
        .unwrap_or(std::time::Duration::from_secs(30));
    shared::http::read_body(&parts.headers, body, MAX_BODY_BYTES, timeout)
        .await
        .map_err(|e| match e {
            BodyReadError::TooLarge { .. } => ApiError::PayloadTooLarge(e.to_string()),
            BodyReadError::Timeout(_) => ApiError::RequestTimeout(e.to_string()),
            BodyReadError::Broken(_) => ApiError::BadRequest(e.to_string()),
        })
}

/// `application/json` or any `application/*+json`, as axum's own `Json` accepts.
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(ct) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json"))
}

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

/// `Query` whose rejection is a 400 in our shape.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e: QueryRejection| ApiError::BadRequest(e.body_text()))
    }
}

/// `Path` whose rejection is a 400 in our shape (for example an id that is not a UUID).
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e: PathRejection| ApiError::BadRequest(e.body_text()))
    }
}

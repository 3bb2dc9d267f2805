//! `POST /ingest`: the HTTP face of the ingest path.

use crate::AppState;
use crate::error::GatewayError;
use crate::ingest::IngestError;
use crate::observability::DeviceAuthRefused;
use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use serde::Serialize;
use shared::http::{BodyReadError, BodyTimeout, bearer_token, single_header};
use shared::ingest::Rejection;
use shared::wire::Channel;
use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IngestResponse {
    /// How many readings were stored.
    pub accepted: usize,
    /// The readings that were not, by position, with the reason.
    #[schema(value_type = Vec<crate::openapi::RejectionDoc>)]
    pub rejected: Vec<Rejection>,
    /// True when this was a retry of a batch already stored under the same `Idempotency-Key`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// The key a request presents: `Authorization: Bearer <key>` or `X-API-Key: <key>`. Keys are
/// never read from the URL, where proxies and access logs would keep them. A request that
/// presents a header twice, or two different keys, names no device: which one it meant is a
/// guess, and a guess is not authentication.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let from_auth = match single_header(headers, header::AUTHORIZATION.as_str())? {
        Some(auth) => Some(bearer_token(auth)?),
        None => None,
    };
    let from_header = single_header(headers, "x-api-key")?.map(str::trim);
    match (from_auth, from_header) {
        (Some(a), Some(b)) if a != b => None,
        (a, b) => a.or(b),
    }
}

/// The public key id of the presented key, for per-device rate limiting before the body is read.
pub fn presented_key_id(headers: &HeaderMap) -> Option<String> {
    presented_key(headers)
        .and_then(shared::keys::split)
        .map(|(id, _)| id.to_owned())
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, GatewayError> {
    let value = single_header(headers, "idempotency-key").ok_or_else(|| {
        GatewayError::BadRequest("Idempotency-Key must be given once, in visible ASCII".into())
    })?;
    let Some(key) = value else {
        return Ok(None);
    };
    if (1..=128).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(Some(key))
    } else {
        Err(GatewayError::BadRequest(
            "Idempotency-Key must be 1-128 visible ASCII characters".into(),
        ))
    }
}

/// The client's address: the peer, or the first address in the trusted proxy header.
pub fn client_ip(state: &AppState, headers: &HeaderMap, peer: SocketAddr) -> IpAddr {
    state
        .trusted_ip_header
        .as_deref()
        .and_then(|h| headers.get(h))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(peer.ip())
}

/// Stores a batch of readings. The answer comes only after JetStream has stored the batch: a
/// reading that got a 2xx is never lost.
#[utoipa::path(
    post,
    path = "/ingest",
    operation_id = "ingest",
    request_body(content = crate::openapi::IngestBody, content_type = "application/json"),
    params(
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[\\x21-\\x7E]{1,128}$",
            description = "Used as the JetStream message id: a retry with the same key within 2 minutes is stored once and answered with `duplicate: true`"),
    ),
    security(("device_key" = []), ("api_key_header" = [])),
    responses(
        (status = 202, description = "At least one reading valid and stored", body = IngestResponse),
        (status = 400, description = "`invalid_body`: empty, not JSON, not one of the three shapes, or a bad `Idempotency-Key`", body = crate::openapi::IngestErrorBody),
        (status = 401, description = "`unauthorized`: a missing, unknown, wrong or disabled key", body = crate::openapi::IngestErrorBody),
        (status = 408, description = "`request_timeout`: the body did not arrive within `HTTP_BODY_TIMEOUT_SECS` (default 30 s) of the request head", body = crate::openapi::IngestErrorBody),
        (status = 413, description = "`payload_too_large`: over the body size or readings limit (a `Content-Length` over the size limit is refused before the body is read)", body = crate::openapi::IngestErrorBody),
        (status = 422, description = "`no_valid_readings` (with `rejected`) or `no_readings` (an empty list)", body = crate::openapi::IngestErrorBody),
        (status = 429, description = "`rate_limited`: over the device's rate, or too many failed authentications from the address", body = crate::openapi::IngestErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "`unavailable`: JetStream could not store the batch; retry", body = crate::openapi::IngestErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub async fn post_ingest(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(BodyTimeout(body_timeout)): Extension<BodyTimeout>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<IngestResponse>), GatewayError> {
    let received_at_us = shared::now_us();
    let ip = client_ip(&state, &headers, peer);
    let device_id = match presented_key(&headers) {
        None => Err(crate::auth::AuthFailure::Missing),
        Some(key) => state.registry.authenticate(key),
    }
    .map_err(|reason| {
        // Over the address's allowance of failures: refused without a log line, so that a
        // flood of bad keys cannot flood the logs. Valid keys never reach this.
        if let Some(retry_after_secs) = state.auth_failures.record_failure(ip) {
            state
                .metrics
                .ingest_requests
                .with_label_values(&["http", "rate_limited"])
                .inc();
            return GatewayError::RateLimited { retry_after_secs };
        }
        DeviceAuthRefused {
            channel: Channel::Http,
            reason,
            client_ip: ip,
        }
        .emit(&state.metrics);
        state
            .metrics
            .ingest_requests
            .with_label_values(&["http", "unauthorised"])
            .inc();
        GatewayError::Unauthorized
    })?;
    // The request's span (opened by the HTTP layer) carries the device from here on, so its
    // request line and every line below it name the device.
    tracing::Span::current().record("device_id", tracing::field::display(device_id));
    let idempotency_key = idempotency_key(&headers).inspect_err(|_| {
        state
            .metrics
            .ingest_requests
            .with_label_values(&["http", "rejected"])
            .inc();
    })?;
    let limit = state.ingestor.limits.max_body_bytes;
    let bytes = shared::http::read_body(&headers, body, limit, body_timeout)
        .await
        .map_err(|e| {
            state
                .metrics
                .ingest_requests
                .with_label_values(&["http", "rejected"])
                .inc();
            match e {
                BodyReadError::TooLarge { .. } => GatewayError::PayloadTooLarge(e.to_string()),
                BodyReadError::Timeout(_) => GatewayError::RequestTimeout(e.to_string()),
                BodyReadError::Broken(_) => GatewayError::BadRequest(e.to_string()),
            }
        })?;
    let accepted = state
        .ingestor
        .ingest(
            device_id,
            Channel::Http,
            &bytes,
            received_at_us,
            idempotency_key,
        )
        .await
        .map_err(|e| match e {
            IngestError::Body(b) => GatewayError::from(b),
            IngestError::NoValidReadings(r) => GatewayError::NoValidReadings(r),
            IngestError::NoReadings => GatewayError::NoReadings,
            IngestError::Unavailable(p) => GatewayError::Unavailable(p.to_string()),
        })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(IngestResponse {
            accepted: accepted.accepted,
            rejected: accepted.rejected,
            duplicate: accepted.duplicate,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn a_key_comes_from_exactly_one_place() {
        assert_eq!(
            presented_key(&headers(&[("authorization", "Bearer k1")])),
            Some("k1")
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", "bearer  k1 ")])),
            Some("k1")
        );
        assert_eq!(presented_key(&headers(&[("x-api-key", "k1")])), Some("k1"));
        // The same key in both is one key.
        let both = headers(&[("authorization", "Bearer k1"), ("x-api-key", "k1")]);
        assert_eq!(presented_key(&both), Some("k1"));
        assert_eq!(presented_key(&headers(&[])), None);
    }

    #[test]
    fn two_keys_a_repeated_header_or_another_scheme_name_no_device() {
        let two = headers(&[("authorization", "Bearer k1"), ("x-api-key", "k2")]);
        assert_eq!(presented_key(&two), None);
        let repeated = headers(&[
            ("authorization", "Bearer k1"),
            ("authorization", "Bearer k1"),
        ]);
        assert_eq!(presented_key(&repeated), None);
        let repeated = headers(&[("x-api-key", "k1"), ("x-api-key", "k2")]);
        assert_eq!(presented_key(&repeated), None);
        let basic = headers(&[("authorization", "Basic azE6"), ("x-api-key", "k1")]);
        assert_eq!(presented_key(&basic), None);
        assert_eq!(
            presented_key(&headers(&[("authorization", "Bearer")])),
            None
        );
    }

    #[test]
    fn an_idempotency_key_is_given_once() {
        assert_eq!(idempotency_key(&headers(&[])).unwrap(), None);
        let one = headers(&[("idempotency-key", "batch-1")]);
        assert_eq!(idempotency_key(&one).unwrap(), Some("batch-1"));
        let twice = headers(&[("idempotency-key", "a"), ("idempotency-key", "b")]);
        assert!(idempotency_key(&twice).is_err());
        assert!(idempotency_key(&headers(&[("idempotency-key", "with space")])).is_err());
    }
}

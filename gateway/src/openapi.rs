//! The OpenAPI 3 document of the gateway's device API (`POST /ingest`), served at
//! `GET /openapi.json`.
//!
//! The operation comes from the `#[utoipa::path]` on [`post_ingest`](crate::ingest::http::post_ingest)
//! and its answer from [`IngestResponse`](crate::ingest::http::IngestResponse). The request body
//! is parsed by `shared::ingest` (which knows nothing of HTTP or OpenAPI), so its three shapes
//! are described here by types that only exist for the document; the tests below hold them to
//! what the parser and [`GatewayError`](crate::error::GatewayError) really do.

use axum::http::header;
use axum::response::IntoResponse;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi as Document, RefOr, Schema};
use utoipa::{Modify, OpenApi, ToSchema};

/// The scheme for `Authorization: Bearer <key>`.
pub const DEVICE_KEY: &str = "device_key";
/// The scheme for `X-API-Key: <key>`.
pub const API_KEY_HEADER: &str = "api_key_header";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "IoT Live Metrics Hub — gateway device API",
        description = "Devices send readings here, authenticated by their API key. Errors are \
            `{\"error\":{\"code\",\"message\"}}`; branch on `code`.",
    ),
    paths(crate::ingest::http::post_ingest),
    components(schemas(IngestBody, IngestErrorBody)),
    modifiers(&KeySchemes),
)]
pub struct ApiDoc;

struct KeySchemes;

impl Modify for KeySchemes {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            DEVICE_KEY,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The device's API key (`iotk_<keyid>_<secret>`), shown once at creation or rotation",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            API_KEY_HEADER,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "The same key, for clients that cannot set Authorization",
            ))),
        );
    }
}

/// A reading as a device sends it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadingIn {
    #[schema(pattern = "^[A-Za-z0-9_.:/-]{1,128}$", example = "temperature")]
    pub metric: String,
    /// A finite number (not a string, bool, null, NaN or Infinity).
    #[schema(example = 21.5)]
    pub value: f64,
    /// RFC 3339 with an offset, or integer epoch milliseconds; absent or null means the time the
    /// gateway received it. At most `GATEWAY_MAX_FUTURE_SKEW_SECS` ahead, and not before
    /// `GATEWAY_TS_HORIZON`.
    #[schema(schema_with = reading_ts)]
    pub ts: Option<serde_json::Value>,
}

fn reading_ts() -> RefOr<Schema> {
    use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64))),
        )
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .into()
}

/// `{"readings":[…]}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Batch {
    #[schema(max_items = 10000)]
    pub readings: Vec<ReadingIn>,
}

/// One batch of readings, in any of three shapes. Readings are validated one by one: the valid
/// ones are stored, the others are listed in `rejected` by their position.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum IngestBody {
    Batch(Batch),
    List(Vec<ReadingIn>),
    One(ReadingIn),
}

/// A reading that was not accepted, by its position in the body.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectionDoc {
    pub index: usize,
    pub error: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorDetail {
    /// Stable and machine-readable: `invalid_body`, `unauthorized`, `payload_too_large`,
    /// `no_valid_readings`, `no_readings`, `rate_limited`, `unavailable`, `not_found`,
    /// `method_not_allowed`.
    pub code: String,
    pub message: String,
}

/// The one error shape; `rejected` only with `no_valid_readings`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestErrorBody {
    pub error: ErrorDetail,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<Vec<RejectionDoc>>,
}

/// The serialised document, made once.
fn document() -> &'static Bytes {
    static JSON: OnceLock<Bytes> = OnceLock::new();
    // The document is a constant of the build, so one copy serves every gateway in the process.
    JSON.get_or_init(|| Bytes::from(serde_json::to_vec(&ApiDoc::openapi()).unwrap_or_default()))
}

/// `GET /openapi.json`: the OpenAPI 3 document of `POST /ingest`.
pub async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document().clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::GatewayError;
    use shared::ingest::Rejection;

    /// Every error the gateway answers is the documented error body, field for field.
    #[tokio::test]
    async fn every_gateway_error_is_the_documented_body() {
        let errors = [
            GatewayError::Unauthorized,
            GatewayError::BadRequest("x".into()),
            GatewayError::PayloadTooLarge("x".into()),
            GatewayError::NoValidReadings(vec![Rejection {
                index: 0,
                error: "x".into(),
            }]),
            GatewayError::NoReadings,
            GatewayError::RateLimited {
                retry_after_secs: 1,
            },
            GatewayError::Unavailable("x".into()),
            GatewayError::NotFound,
            GatewayError::MethodNotAllowed,
        ];
        for e in errors {
            let code = e.code();
            let response = e.into_response();
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap();
            let body: IngestErrorBody = serde_json::from_slice(&bytes)
                .unwrap_or_else(|err| panic!("{code}: {err}: {}", String::from_utf8_lossy(&bytes)));
            assert_eq!(body.error.code, code);
            assert_eq!(body.rejected.is_some(), code == "no_valid_readings");
        }
    }

    /// The three documented shapes are the ones the parser accepts, and each documented form
    /// of `ts` parses.
    #[test]
    fn the_documented_body_shapes_parse() {
        let limits = shared::ingest::Limits::default();
        for body in [
            r#"{"readings":[{"metric":"t","value":1.5,"ts":"2026-12-03T10:00:00Z"}]}"#,
            r#"[{"metric":"t","value":1.5,"ts":1796292000000}]"#,
            r#"{"metric":"t","value":1.5,"ts":null}"#,
            r#"{"metric":"t","value":1.5}"#,
        ] {
            let _: IngestBody = serde_json::from_str(body).unwrap();
            let parsed = shared::ingest::parse(body.as_bytes(), 1_796_292_000_000_000, &limits)
                .unwrap_or_else(|e| panic!("{body}: {e}"));
            assert_eq!(parsed.readings.len(), 1, "{body}");
            assert!(parsed.rejected.is_empty(), "{body}: {:?}", parsed.rejected);
        }
    }
}

//! The OpenAPI 3 document of the processor API, served at `GET /openapi.json`.
//!
//! It is generated from the code, so it cannot drift from what the server does: every route is
//! registered through `utoipa_axum`'s `routes!`, which takes the path and method from the
//! handler's `#[utoipa::path]` and adds the operation to the document in the same step;
//! request and response types derive `ToSchema`/`IntoParams`; errors are the [`ErrorBody`] that
//! [`ApiError`](crate::error::ApiError) serialises. What is the same for every authenticated
//! route (401, and 500/503 from the database behind the token check) is added here once, by
//! [`CommonAnswers`], rather than repeated on each handler.

use crate::AppState;
use crate::error::ErrorBody;
use axum::Extension;
use axum::http::header;
use axum::response::IntoResponse;
use bytes::Bytes;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, Ref, RefOr, ResponseBuilder, Schema};
use utoipa::{Modify, OpenApi, ToSchema as _};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The name of the security scheme every authenticated operation requires.
pub const BEARER: &str = "bearer";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "IoT Live Metrics Hub — processor API",
        description = "Devices, readings, rules, alerts and users of the hub. Every error is \
            `{\"error\":{\"code\",\"message\"}}` (see `ErrorBody`); branch on `code`. Times are RFC 3339 \
            (answers always UTC); time query parameters also take integer epoch milliseconds.",
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "auth", description = "Login and the current user"),
        (name = "users", description = "API users (admin only)"),
        (name = "devices", description = "Devices and their keys"),
        (name = "readings", description = "Reading queries: ranges, aggregates, latest values"),
        (name = "rules", description = "Alert rules"),
        (name = "alerts", description = "Alerts"),
        (name = "meta", description = "Health, readiness, metrics and this document"),
    )
)]
pub struct ApiDoc;

/// Adds the bearer scheme, and to every operation that requires it the answers any
/// authenticated request can get: 401 (no, bad or expired token, or a deleted user), 500 and
/// 503 (the token is checked against the users table on every request). Applied to the merged
/// document (see [`crate::api::router`]): the derive's `modifiers` run before any route is in it.
pub struct CommonAnswers;

impl Modify for CommonAnswers {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("The access_token of POST /auth/login"))
                    .build(),
            ),
        );
        for item in doc.paths.paths.values_mut() {
            for op in operations(item) {
                if op.request_body.is_some() {
                    add_error(
                        op,
                        "408",
                        "`request_timeout`: the body did not arrive within `HTTP_BODY_TIMEOUT_SECS` (default 30 s) of the request head",
                    );
                    add_error(op, "413", "`payload_too_large`: the body is over 1 MiB");
                }
                if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
                    add_error(
                        op,
                        "401",
                        "Missing, malformed, expired or forged token, or the user no longer exists",
                    );
                    add_error(op, "500", "Internal error (details only in the server log)");
                    add_error(
                        op,
                        "503",
                        "The database is unavailable; retry after `Retry-After` seconds",
                    );
                }
            }
        }
    }
}

fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.options.as_mut(),
        item.head.as_mut(),
        item.patch.as_mut(),
        item.trace.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// Adds an error answer with the [`ErrorBody`] schema unless the handler declared that status.
pub fn add_error(op: &mut Operation, status: &str, description: &str) {
    if op.responses.responses.contains_key(status) {
        return;
    }
    let response = ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(ErrorBody::name())))
                .build(),
        )
        .build();
    op.responses
        .responses
        .insert(status.to_owned(), RefOr::T(response));
}

/// A time query parameter: RFC 3339 with an offset, or integer epoch milliseconds within the
/// years 0000-9999 (the bounds [`parse_time`](crate::api::readings::parse_time) enforces).
/// Only a schema: handlers read the value as a string and parse it themselves.
pub struct TimeParam;

impl utoipa::PartialSchema for TimeParam {
    fn schema() -> RefOr<Schema> {
        time_param()
    }
}

impl utoipa::ToSchema for TimeParam {}

fn time_param() -> RefOr<Schema> {
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                .minimum(Some(crate::api::readings::MIN_TIME_MS))
                .maximum(Some(crate::api::readings::MAX_TIME_MS)),
        )
        .into()
}

/// The serialised document, built once at start and shared by every request.
#[derive(Clone)]
pub struct DocumentJson(pub Bytes);

impl DocumentJson {
    pub fn new(doc: &Document) -> anyhow::Result<Self> {
        Ok(Self(Bytes::from(serde_json::to_vec(doc)?)))
    }
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(openapi_json))
}

/// This document: every route of the processor, its parameters, answers and errors.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3 document of this API", content_type = "application/json", body = serde_json::Value))
)]
async fn openapi_json(Extension(doc): Extension<DocumentJson>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], doc.0)
}

//! User management (admin only) and `GET /auth/me` (any user).

use crate::AppState;
use crate::api::extract::{Json, Path};
use crate::auth::{AdminUser, CurrentUser};
use crate::error::{ApiError, ErrorBody};
use crate::users::{self, Role, User};
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    #[schema(pattern = "^[A-Za-z0-9_.@-]{1,64}$")]
    pub username: String,
    /// 12 to 1024 characters.
    #[schema(min_length = 12, max_length = 1024, format = Password)]
    pub password: String,
    pub role: Role,
}

/// Every user; `next_cursor` is always null (the list is short).
#[derive(Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(me))
        .routes(routes!(list, create))
        .routes(routes!(remove))
}

/// The user the token belongs to.
#[utoipa::path(
    get,
    path = "/auth/me",
    operation_id = "me",
    tag = "auth",
    security(("bearer" = [])),
    responses((status = 200, description = "The caller", body = User))
)]
async fn me(State(state): State<AppState>, user: CurrentUser) -> Result<Json<User>, ApiError> {
    let row = crate::storage::users::by_id(&state.db, user.id)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    Ok(Json(User::try_from(row)?))
}

/// Creates an API user.
#[utoipa::path(
    post,
    path = "/users",
    operation_id = "create_user",
    tag = "users",
    request_body = CreateUser,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = User),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 403, description = "Needs the admin role", body = ErrorBody),
        (status = 409, description = "The username is taken", body = ErrorBody),
        (status = 422, description = "A missing, invalid or unknown field", body = ErrorBody),
    )
)]
async fn create(
    State(state): State<AppState>,
    _admin: AdminUser,
    Json(req): Json<CreateUser>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    let user = users::create(&state.db, &req.username, req.password, req.role).await?;
    Ok((StatusCode::CREATED, Json(user)))
}

/// Every API user.
#[utoipa::path(
    get,
    path = "/users",
    operation_id = "list_users",
    tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The users", body = Page<User>),
        (status = 403, description = "Needs the admin role", body = ErrorBody),
    )
)]
async fn list(
    State(state): State<AppState>,
    _admin: AdminUser,
) -> Result<Json<Page<User>>, ApiError> {
    let rows = crate::storage::users::list(&state.db).await?;
    let items = rows
        .into_iter()
        .map(User::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(Page {
        items,
        next_cursor: None,
    }))
}

/// Deleting a user takes effect at once (every request re-reads the user). The last admin cannot
/// be deleted, so the hub is never left without someone who can manage it.
#[utoipa::path(
    delete,
    path = "/users/{id}",
    operation_id = "delete_user",
    tag = "users",
    params(("id" = Uuid, Path, description = "The user")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted; the user's tokens stop working at once"),
        (status = 400, description = "`id` is not a UUID", body = ErrorBody),
        (status = 403, description = "Needs the admin role", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 409, description = "The last admin cannot be deleted", body = ErrorBody),
    )
)]
async fn remove(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    users::delete(&state.db, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

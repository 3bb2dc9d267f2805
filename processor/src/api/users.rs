//! User management (admin only) and `GET /auth/me` (any user).

use crate::AppState;
use crate::api::extract::{Json, Path};
use crate::auth::{AdminUser, CurrentUser};
use crate::error::ApiError;
use crate::users::{self, Role, User};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub username: String,
    pub password: String,
    pub role: Role,
}

#[derive(Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/me", get(me))
        .route("/users", get(list).post(create))
        .route("/users/{id}", delete(remove))
}

async fn me(State(state): State<AppState>, user: CurrentUser) -> Result<Json<User>, ApiError> {
    let row = crate::storage::users::by_id(&state.db, user.id)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    Ok(Json(User::try_from(row)?))
}

async fn create(
    State(state): State<AppState>,
    _admin: AdminUser,
    Json(req): Json<CreateUser>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    let user = users::create(&state.db, &req.username, req.password, req.role).await?;
    Ok((StatusCode::CREATED, Json(user)))
}

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
async fn remove(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    users::delete(&state.db, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

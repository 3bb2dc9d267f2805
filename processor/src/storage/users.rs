//! Rows and statements of `users`.

use sqlx::PgExecutor;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: Uuid,
    pub username: String,
    pub password_hash: String,
    pub role: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

#[tracing::instrument(skip_all, fields(module = "storage", operation = "user_insert"))]
pub async fn insert(
    db: impl PgExecutor<'_>,
    id: Uuid,
    username: &str,
    password_hash: &str,
    role: &str,
) -> sqlx::Result<UserRow> {
    sqlx::query_as(
        "INSERT INTO users (id, username, password_hash, role) VALUES ($1, $2, $3, $4) RETURNING *",
    )
    .bind(id)
    .bind(username)
    .bind(password_hash)
    .bind(role)
    .fetch_one(db)
    .await
}

pub async fn by_username(db: impl PgExecutor<'_>, username: &str) -> sqlx::Result<Option<UserRow>> {
    sqlx::query_as("SELECT * FROM users WHERE username = $1")
        .bind(username)
        .fetch_optional(db)
        .await
}

pub async fn by_id(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<UserRow>> {
    sqlx::query_as("SELECT * FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
}

/// The current role of a user, the one check every authenticated request makes.
pub async fn role_of(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT role FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
}

pub async fn list(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<UserRow>> {
    sqlx::query_as("SELECT * FROM users ORDER BY username")
        .fetch_all(db)
        .await
}

pub async fn delete(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<bool> {
    Ok(sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(id)
        .execute(db)
        .await?
        .rows_affected()
        > 0)
}

pub async fn count(db: impl PgExecutor<'_>) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(db)
        .await
}

/// Ids of every admin, locked until the end of the transaction.
pub async fn lock_admins(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar("SELECT id FROM users WHERE role = 'admin' FOR UPDATE")
        .fetch_all(db)
        .await
}

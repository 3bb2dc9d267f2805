//! API users: creation with argon2id password hashes, verification, the first admin.

use crate::error::ApiError;
use crate::storage;
use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use sqlx::PgPool;
use uuid::Uuid;

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including every write.
    Admin,
    /// Read-only.
    Analyst,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Analyst => "analyst",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "analyst" => Some(Role::Analyst),
            _ => None,
        }
    }
}

pub const MIN_PASSWORD_LEN: usize = 12;
pub const MAX_PASSWORD_LEN: usize = 1024;

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct User {
    pub id: Uuid,
    pub username: String,
    pub role: Role,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl TryFrom<storage::users::UserRow> for User {
    type Error = ApiError;
    fn try_from(row: storage::users::UserRow) -> Result<Self, ApiError> {
        let role = Role::parse(&row.role).ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!(
                "user {} has unknown role {}",
                row.id,
                row.role
            ))
        })?;
        Ok(User {
            id: row.id,
            username: row.username,
            role,
            created_at: row.created_at,
        })
    }
}

pub fn validate_username(username: &str) -> Result<(), ApiError> {
    let ok = (1..=64).contains(&username.len())
        && username
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-@".contains(&b));
    ok.then_some(()).ok_or_else(|| {
        ApiError::Validation("username must be 1-64 characters of A-Z a-z 0-9 _ . - @".into())
    })
}

pub fn validate_password(password: &str) -> Result<(), ApiError> {
    let n = password.chars().count();
    if n < MIN_PASSWORD_LEN || password.len() > MAX_PASSWORD_LEN {
        return Err(ApiError::Validation(format!(
            "password must be {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters long"
        )));
    }
    Ok(())
}

/// argon2id with the crate's default (OWASP) parameters. Tens of milliseconds by design, so it
/// runs on the blocking pool, never on the async workers.
pub async fn hash_password(password: String) -> Result<String, ApiError> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("argon2 hashing failed: {e}")))
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))?
}

/// Constant-time inside argon2's verifier. A malformed stored hash verifies as false.
pub async fn verify_password(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

/// A fixed hash to verify against when the username does not exist, so that the answer takes
/// as long as for a wrong password and timing does not tell which usernames exist.
pub async fn dummy_hash() -> &'static str {
    static DUMMY: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    DUMMY
        .get_or_init(|| async {
            hash_password("dummy-password-for-timing".into())
                .await
                .unwrap_or_default()
        })
        .await
}

#[tracing::instrument(skip(pool, password), fields(module = "users", operation = "create"))]
pub async fn create(
    pool: &PgPool,
    username: &str,
    password: String,
    role: Role,
) -> Result<User, ApiError> {
    validate_username(username)?;
    validate_password(&password)?;
    let hash = hash_password(password).await?;
    let row = storage::users::insert(pool, Uuid::new_v4(), username, &hash, role.as_str())
        .await
        .map_err(|e| {
            if storage::is_unique_violation(&e, "users_username_key") {
                ApiError::Conflict(format!("a user named {username} already exists"))
            } else {
                e.into()
            }
        })?;
    tracing::info!(user_id = %row.id, role = role.as_str(), status = "created", "User created.");
    User::try_from(row)
}

/// `processor user create`: migrates first, so it works on a fresh database.
pub async fn create_from_cli(
    args: &crate::config::UserCreateArgs,
    password: String,
) -> anyhow::Result<User> {
    storage::migrate(&args.database).await?;
    let pool = storage::pool(&args.database)?;
    let user = create(&pool, &args.username, password, args.role)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create user: {e}"))?;
    pool.close().await;
    Ok(user)
}

/// Creates the configured first admin when the database has no user at all; a no-op otherwise,
/// so restarts with the same settings are harmless.
pub async fn bootstrap_admin(
    pool: &PgPool,
    username: Option<&str>,
    password: Option<&str>,
) -> anyhow::Result<()> {
    let (Some(username), Some(password)) = (username, password) else {
        return Ok(());
    };
    if storage::users::count(pool).await? > 0 {
        return Ok(());
    }
    match create(pool, username, password.to_owned(), Role::Admin).await {
        Ok(_) | Err(ApiError::Conflict(_)) => Ok(()),
        Err(e) => Err(anyhow::anyhow!("cannot create the first admin: {e}")),
    }
}

/// Deletes a user, refusing to remove the last admin. The check and the delete share a
/// transaction with the admins' rows locked, so two concurrent deletes cannot both pass.
#[tracing::instrument(skip(pool), fields(module = "users", operation = "delete"))]
pub async fn delete(pool: &PgPool, id: Uuid) -> Result<(), ApiError> {
    let mut tx = pool.begin().await?;
    let admins = storage::users::lock_admins(&mut *tx).await?;
    let target = storage::users::by_id(&mut *tx, id)
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    if target.role == Role::Admin.as_str() && admins.len() <= 1 {
        return Err(ApiError::Conflict(
            "the last admin cannot be deleted".into(),
        ));
    }
    storage::users::delete(&mut *tx, id).await?;
    tx.commit().await?;
    tracing::info!(user_id = %id, status = "deleted", "User deleted.");
    Ok(())
}

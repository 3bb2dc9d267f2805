//! Rows and statements of `devices`.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeviceRow {
    pub id: Uuid,
    pub name: String,
    pub enabled: bool,
    pub key_id: String,
    pub key_sha256: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_seen_at: Option<DateTime<Utc>>,
}

impl DeviceRow {
    pub fn key_record(&self) -> shared::keys::DeviceKeyRecord {
        shared::keys::DeviceKeyRecord {
            device_id: self.id,
            key_id: self.key_id.clone(),
            secret_sha256: self.key_sha256.clone(),
            enabled: self.enabled,
        }
    }
}

#[tracing::instrument(skip_all, fields(module = "storage", operation = "device_insert", device_id = %id))]
pub async fn insert(
    db: impl PgExecutor<'_>,
    id: Uuid,
    name: &str,
    key_id: &str,
    key_sha256: &str,
) -> sqlx::Result<DeviceRow> {
    sqlx::query_as(
        "INSERT INTO devices (id, name, key_id, key_sha256) VALUES ($1, $2, $3, $4) RETURNING *",
    )
    .bind(id)
    .bind(name)
    .bind(key_id)
    .bind(key_sha256)
    .fetch_one(db)
    .await
}

pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<DeviceRow>> {
    sqlx::query_as("SELECT * FROM devices WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
}

/// One page in creation order, after the `(created_at, id)` cursor.
pub async fn page(
    db: impl PgExecutor<'_>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> sqlx::Result<Vec<DeviceRow>> {
    let (ts, id) = after.unzip();
    sqlx::query_as(
        "SELECT * FROM devices
         WHERE $1::timestamptz IS NULL OR (created_at, id) > ($1, $2)
         ORDER BY created_at, id LIMIT $3",
    )
    .bind(ts)
    .bind(id)
    .bind(limit)
    .fetch_all(db)
    .await
}

pub async fn all(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<DeviceRow>> {
    sqlx::query_as("SELECT * FROM devices").fetch_all(db).await
}

#[tracing::instrument(skip_all, fields(module = "storage", operation = "device_update", device_id = %id))]
pub async fn update(
    db: impl PgExecutor<'_>,
    id: Uuid,
    name: Option<&str>,
    enabled: Option<bool>,
) -> sqlx::Result<Option<DeviceRow>> {
    sqlx::query_as(
        "UPDATE devices SET name = coalesce($2, name), enabled = coalesce($3, enabled), updated_at = now()
         WHERE id = $1 RETURNING *",
    )
    .bind(id)
    .bind(name)
    .bind(enabled)
    .fetch_optional(db)
    .await
}

#[tracing::instrument(skip_all, fields(module = "storage", operation = "device_rotate", device_id = %id))]
pub async fn set_key(
    db: impl PgExecutor<'_>,
    id: Uuid,
    key_id: &str,
    key_sha256: &str,
) -> sqlx::Result<Option<DeviceRow>> {
    sqlx::query_as(
        "UPDATE devices SET key_id = $2, key_sha256 = $3, updated_at = now() WHERE id = $1 RETURNING *",
    )
    .bind(id)
    .bind(key_id)
    .bind(key_sha256)
    .fetch_optional(db)
    .await
}

#[tracing::instrument(skip_all, fields(module = "storage", operation = "device_delete", device_id = %id))]
pub async fn delete(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<bool> {
    Ok(sqlx::query("DELETE FROM devices WHERE id = $1")
        .bind(id)
        .execute(db)
        .await?
        .rows_affected()
        > 0)
}

/// Moves `last_seen_at` forward for the devices of a written batch. Ids are sorted so that two
/// processors updating the same devices lock them in the same order and cannot deadlock.
pub async fn touch_last_seen(
    db: impl PgExecutor<'_>,
    mut seen: Vec<(Uuid, DateTime<Utc>)>,
) -> sqlx::Result<()> {
    seen.sort_unstable_by_key(|(id, _)| *id);
    seen.dedup_by_key(|(id, _)| *id);
    let (ids, times): (Vec<Uuid>, Vec<DateTime<Utc>>) = seen.into_iter().unzip();
    sqlx::query(
        "UPDATE devices d SET last_seen_at = v.ts
         FROM UNNEST($1::uuid[], $2::timestamptz[]) AS v(id, ts)
         WHERE d.id = v.id AND (d.last_seen_at IS NULL OR d.last_seen_at < v.ts)",
    )
    .bind(ids)
    .bind(times)
    .execute(db)
    .await?;
    Ok(())
}

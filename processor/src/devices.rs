//! Device lifecycle and the KV mirror that gateways authenticate against.
//!
//! The database is the source of truth. Every change is written in a transaction, mirrored to
//! the key bucket, and only then committed: if the bucket cannot be written the change is rolled
//! back and the caller gets a retryable error, so a device never exists in the database without
//! its key reaching the gateways. The opposite gap (bucket written, commit failed) is closed by
//! [`reconcile`], which runs at start and periodically.

use crate::error::ApiError;
use crate::storage::{self, devices::DeviceRow};
use async_nats::jetstream::kv;
use futures::TryStreamExt;
use shared::keys::{self, Secret};
use sqlx::PgPool;
use std::collections::HashSet;
use uuid::Uuid;

#[derive(Clone)]
pub struct Devices {
    pub db: PgPool,
    pub bucket: kv::Store,
}

async fn mirror_put(bucket: &kv::Store, row: &DeviceRow) -> Result<(), ApiError> {
    let json = serde_json::to_vec(&row.key_record()).map_err(|e| ApiError::Internal(e.into()))?;
    bucket
        .put(row.id.to_string(), json.into())
        .await
        .map_err(|e| ApiError::Unavailable(format!("cannot write the key bucket: {e}")))?;
    Ok(())
}

/// Control characters are refused: they have no place in a name, and PostgreSQL cannot store
/// NUL in text at all (it would be a 500).
fn validate_name(name: &str) -> Result<&str, ApiError> {
    let trimmed = name.trim();
    if trimmed.is_empty() || trimmed.chars().count() > 200 {
        return Err(ApiError::Validation("name must be 1-200 characters".into()));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(ApiError::Validation(
            "name must not contain control characters".into(),
        ));
    }
    Ok(trimmed)
}

impl Devices {
    /// Creates a device and returns it with its key, which is never shown again.
    #[tracing::instrument(skip_all, fields(module = "devices", operation = "create", device_id))]
    pub async fn create(&self, name: &str) -> Result<(DeviceRow, Secret), ApiError> {
        let name = validate_name(name)?;
        let key = keys::generate();
        let id = Uuid::new_v4();
        tracing::Span::current().record("device_id", tracing::field::display(id));
        let mut tx = self.db.begin().await?;
        let row =
            storage::devices::insert(&mut *tx, id, name, &key.key_id, &key.secret_sha256).await?;
        mirror_put(&self.bucket, &row).await?;
        tx.commit().await?;
        tracing::info!(status = "created", "Device created.");
        Ok((row, key.full))
    }

    pub async fn get(&self, id: Uuid) -> Result<DeviceRow, ApiError> {
        storage::devices::get(&self.db, id)
            .await?
            .ok_or(ApiError::NotFound("device"))
    }

    #[tracing::instrument(skip_all, fields(module = "devices", operation = "update", device_id = %id))]
    pub async fn update(
        &self,
        id: Uuid,
        name: Option<&str>,
        enabled: Option<bool>,
    ) -> Result<DeviceRow, ApiError> {
        let name = name.map(validate_name).transpose()?;
        let mut tx = self.db.begin().await?;
        let row = storage::devices::update(&mut *tx, id, name, enabled)
            .await?
            .ok_or(ApiError::NotFound("device"))?;
        mirror_put(&self.bucket, &row).await?;
        tx.commit().await?;
        tracing::info!(enabled = row.enabled, status = "updated", "Device updated.");
        Ok(row)
    }

    /// Replaces the key; the old one stops working on every gateway as soon as they see the
    /// bucket change.
    #[tracing::instrument(skip_all, fields(module = "devices", operation = "rotate_key", device_id = %id))]
    pub async fn rotate_key(&self, id: Uuid) -> Result<(DeviceRow, Secret), ApiError> {
        let key = keys::generate();
        let mut tx = self.db.begin().await?;
        let row = storage::devices::set_key(&mut *tx, id, &key.key_id, &key.secret_sha256)
            .await?
            .ok_or(ApiError::NotFound("device"))?;
        mirror_put(&self.bucket, &row).await?;
        tx.commit().await?;
        tracing::info!(status = "rotated", "Device key rotated.");
        Ok((row, key.full))
    }

    #[tracing::instrument(skip_all, fields(module = "devices", operation = "delete", device_id = %id))]
    pub async fn delete(&self, id: Uuid) -> Result<(), ApiError> {
        let mut tx = self.db.begin().await?;
        if !storage::devices::delete(&mut *tx, id).await? {
            return Err(ApiError::NotFound("device"));
        }
        self.bucket
            .delete(id.to_string())
            .await
            .map_err(|e| ApiError::Unavailable(format!("cannot write the key bucket: {e}")))?;
        tx.commit().await?;
        tracing::info!(status = "deleted", "Device deleted.");
        Ok(())
    }
}

/// Makes the bucket equal to the database: every device's record put (when it differs), every
/// entry without a device deleted.
#[tracing::instrument(skip_all, fields(module = "devices", operation = "reconcile"))]
pub async fn reconcile(db: &PgPool, bucket: &kv::Store) -> anyhow::Result<()> {
    let rows = storage::devices::all(db).await?;
    let mut wanted = HashSet::with_capacity(rows.len());
    let mut written = 0usize;
    for row in &rows {
        wanted.insert(row.id.to_string());
        let current = bucket.get(row.id.to_string()).await?;
        let record = row.key_record();
        let same = current
            .and_then(|b| serde_json::from_slice::<keys::DeviceKeyRecord>(&b).ok())
            .is_some_and(|r| r == record);
        if !same {
            bucket
                .put(row.id.to_string(), serde_json::to_vec(&record)?.into())
                .await?;
            written += 1;
        }
    }
    let existing: Vec<String> = bucket.keys().await?.try_collect().await?;
    let mut deleted = 0usize;
    for key in existing.into_iter().filter(|k| !wanted.contains(k)) {
        bucket.delete(&key).await?;
        deleted += 1;
    }
    if written + deleted > 0 {
        tracing::info!(
            devices = rows.len(),
            written,
            deleted,
            "Key bucket reconciled."
        );
    }
    Ok(())
}

//! The device-key registry: an in-memory copy of the processor's KV bucket, so that a gateway
//! authenticates every request with one hash-map lookup and never touches the database.
//!
//! The bucket is read with a history watch (the latest value of every key, then every change),
//! so a new device works, and a rotated or revoked key stops working, within about a second on
//! every gateway.

use async_nats::jetstream::kv;
use futures::StreamExt;
use shared::keys::{self, DeviceKeyRecord};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Default)]
struct Keys {
    by_key_id: HashMap<String, DeviceKeyRecord>,
    key_id_of_device: HashMap<Uuid, String>,
}

pub struct KeyRegistry {
    keys: RwLock<Keys>,
    loaded: AtomicBool,
    /// Devices whose key stopped being valid (rotated, disabled, deleted): open MQTT
    /// connections of those devices listen here and close.
    revoked: broadcast::Sender<Uuid>,
    metrics: crate::observability::Metrics,
}

/// Why a presented key was refused; never shown to the device (it gets one 401 for all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Malformed,
    Unknown,
    WrongSecret,
    Disabled,
    WrongDevice,
}

impl AuthFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::Unknown => "unknown",
            AuthFailure::WrongSecret => "wrong_secret",
            AuthFailure::Disabled => "disabled",
            AuthFailure::WrongDevice => "wrong_device",
        }
    }
}

impl KeyRegistry {
    pub fn new(metrics: crate::observability::Metrics) -> Self {
        Self {
            keys: RwLock::default(),
            loaded: AtomicBool::new(false),
            revoked: broadcast::channel(1024).0,
            metrics,
        }
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    pub fn subscribe_revocations(&self) -> broadcast::Receiver<Uuid> {
        self.revoked.subscribe()
    }

    /// The device a presented key belongs to.
    pub fn authenticate(&self, presented: &str) -> Result<Uuid, AuthFailure> {
        let (key_id, secret) = keys::split(presented).ok_or(AuthFailure::Malformed)?;
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let record = keys.by_key_id.get(key_id).ok_or(AuthFailure::Unknown)?;
        if !record.verify(secret) {
            return Err(AuthFailure::WrongSecret);
        }
        if !record.enabled {
            return Err(AuthFailure::Disabled);
        }
        Ok(record.device_id)
    }

    /// Like [`authenticate`](Self::authenticate), and the key must belong to `device_id` (MQTT
    /// sends both the device id and the key).
    pub fn authenticate_device(&self, device_id: Uuid, presented: &str) -> Result<(), AuthFailure> {
        match self.authenticate(presented)? {
            id if id == device_id => Ok(()),
            _ => Err(AuthFailure::WrongDevice),
        }
    }

    /// Whether `device_id` still has exactly the key with `key_id`, enabled.
    pub fn still_valid(&self, device_id: Uuid, key_id: &str) -> bool {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        keys.by_key_id
            .get(key_id)
            .is_some_and(|r| r.device_id == device_id && r.enabled)
    }

    fn put(&self, record: DeviceKeyRecord) {
        let device_id = record.device_id;
        let revoked = {
            let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
            let old = keys
                .key_id_of_device
                .insert(device_id, record.key_id.clone());
            let rotated = old.as_ref().is_some_and(|old| *old != record.key_id);
            if let Some(old) = old.filter(|old| *old != record.key_id) {
                keys.by_key_id.remove(&old);
            }
            let disabled = !record.enabled;
            keys.by_key_id.insert(record.key_id.clone(), record);
            self.metrics
                .device_keys_loaded
                .set(keys.by_key_id.len() as i64);
            rotated || disabled
        };
        if revoked {
            let _ = self.revoked.send(device_id);
        }
    }

    fn remove(&self, device_id: Uuid) {
        {
            let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
            if let Some(key_id) = keys.key_id_of_device.remove(&device_id) {
                keys.by_key_id.remove(&key_id);
            }
            self.metrics
                .device_keys_loaded
                .set(keys.by_key_id.len() as i64);
        }
        let _ = self.revoked.send(device_id);
    }

    fn apply(&self, entry: &kv::Entry) {
        let Ok(device_id) = entry.key.parse::<Uuid>() else {
            tracing::warn!(module = "auth", key = %entry.key, "Ignoring a key-bucket entry that is not a device id.");
            return;
        };
        match entry.operation {
            kv::Operation::Put => match serde_json::from_slice::<DeviceKeyRecord>(&entry.value) {
                Ok(record) if record.device_id == device_id => self.put(record),
                Ok(_) | Err(_) => {
                    tracing::warn!(module = "auth", %device_id, "Ignoring an unreadable key-bucket entry; the device cannot authenticate.");
                    self.remove(device_id);
                }
            },
            kv::Operation::Delete | kv::Operation::Purge => self.remove(device_id),
        }
    }
}

/// Loads the bucket, then follows it until cancelled. `loaded` turns true once every entry that
/// existed at start has been applied; if the watch breaks (NATS restarted), it resumes from the
/// last revision seen so no change is missed.
pub async fn follow_bucket(
    registry: Arc<KeyRegistry>,
    store: kv::Store,
    cancel: CancellationToken,
) {
    let mut next_revision: Option<u64> = None;
    loop {
        let watch = match next_revision {
            None => store
                .watch_with_history(">")
                .await
                .map_err(|e| e.to_string()),
            Some(rev) => store
                .watch_all_from_revision(rev)
                .await
                .map_err(|e| e.to_string()),
        };
        match watch {
            Ok(mut watch) => {
                if next_revision.is_none() && bucket_is_empty(&store).await {
                    registry.loaded.store(true, Ordering::Release);
                }
                loop {
                    let item = tokio::select! {
                        _ = cancel.cancelled() => return,
                        item = watch.next() => item,
                    };
                    match item {
                        Some(Ok(entry)) => {
                            registry.apply(&entry);
                            next_revision = Some(entry.revision + 1);
                            if entry.delta == 0 {
                                registry.loaded.store(true, Ordering::Release);
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!(module = "auth", error = %e, "Key-bucket watch failed; resuming.");
                            break;
                        }
                        None => break,
                    }
                }
            }
            Err(e) => {
                tracing::warn!(module = "auth", error = %e, "Cannot watch the key bucket; retrying.")
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

async fn bucket_is_empty(store: &kv::Store) -> bool {
    match store.keys().await {
        Ok(mut keys) => keys.next().await.is_none(),
        Err(_) => false,
    }
}

/// Limits failed device authentications per client IP over HTTP. Keys are 256-bit random, so
/// guessing is hopeless anyway; this keeps a misbehaving client from filling logs and CPU.
/// Only failures are limited: a request with a valid key always passes, however many bad ones
/// came from its address, because many devices share one address behind a carrier-grade NAT
/// and one misconfigured device must not lock out the rest.
pub struct FailureLimiter {
    limiter: governor::DefaultKeyedRateLimiter<std::net::IpAddr>,
}

impl FailureLimiter {
    pub fn new(per_min: u32, burst: u32) -> Self {
        let per = std::time::Duration::from_millis(60_000 / u64::from(per_min.max(1)));
        let burst = std::num::NonZeroU32::new(burst.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
        let quota = governor::Quota::with_period(per)
            .unwrap_or_else(|| governor::Quota::per_second(std::num::NonZeroU32::MIN))
            .allow_burst(burst);
        Self {
            limiter: governor::RateLimiter::keyed(quota),
        }
    }

    /// Records a failure from `ip`; returns the seconds to wait when it is over the allowance
    /// (answer 429, log nothing more), or `None` when it is within (answer 401 and log it).
    pub fn record_failure(&self, ip: std::net::IpAddr) -> Option<u64> {
        use governor::clock::{Clock, DefaultClock};
        let not_until = self.limiter.check_key(&ip).err()?;
        // Forget addresses whose allowance is full again, so that the map stays bounded.
        if self.limiter.len() > 100_000 {
            self.limiter.retain_recent();
        }
        Some(
            not_until
                .wait_time_from(DefaultClock::default().now())
                .as_secs()
                .max(1),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(enabled: bool) -> (DeviceKeyRecord, String) {
        let k = keys::generate();
        let rec = DeviceKeyRecord {
            device_id: Uuid::new_v4(),
            key_id: k.key_id,
            secret_sha256: k.secret_sha256,
            enabled,
        };
        (rec, k.full.expose().to_owned())
    }

    fn registry() -> KeyRegistry {
        KeyRegistry::new(crate::observability::Metrics::new())
    }

    #[test]
    fn a_known_enabled_key_authenticates_as_its_device() {
        let reg = registry();
        let (rec, key) = record(true);
        reg.put(rec.clone());
        assert_eq!(reg.authenticate(&key), Ok(rec.device_id));
        assert_eq!(reg.authenticate_device(rec.device_id, &key), Ok(()));
        assert_eq!(
            reg.authenticate_device(Uuid::new_v4(), &key),
            Err(AuthFailure::WrongDevice)
        );
    }

    #[test]
    fn rotation_disabling_and_deletion_revoke_the_old_key_and_announce_it() {
        let reg = registry();
        let mut revoked = reg.subscribe_revocations();
        let (rec, old_key) = record(true);
        reg.put(rec.clone());
        let (mut rotated, new_key) = record(true);
        rotated.device_id = rec.device_id;
        reg.put(rotated.clone());
        assert_eq!(reg.authenticate(&old_key), Err(AuthFailure::Unknown));
        assert_eq!(reg.authenticate(&new_key), Ok(rec.device_id));
        assert_eq!(revoked.try_recv().ok(), Some(rec.device_id));

        reg.put(DeviceKeyRecord {
            enabled: false,
            ..rotated.clone()
        });
        assert_eq!(reg.authenticate(&new_key), Err(AuthFailure::Disabled));
        assert_eq!(revoked.try_recv().ok(), Some(rec.device_id));

        reg.remove(rec.device_id);
        assert_eq!(reg.authenticate(&new_key), Err(AuthFailure::Unknown));
        assert!(!reg.still_valid(rec.device_id, &rotated.key_id));
    }

    #[test]
    fn a_wrong_secret_with_a_known_key_id_is_refused() {
        let reg = registry();
        let (rec, key) = record(true);
        reg.put(rec);
        let mut forged = key.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == '0' { '1' } else { '0' });
        assert_eq!(reg.authenticate(&forged), Err(AuthFailure::WrongSecret));
        assert_eq!(reg.authenticate("nonsense"), Err(AuthFailure::Malformed));
    }
}

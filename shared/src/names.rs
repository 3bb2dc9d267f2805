//! Every NATS name the hub owns, derived from one namespace so that several hubs (or parallel
//! tests) share one NATS server without touching each other.

use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
#[error("namespace {0:?} is invalid: use 1-32 characters of [a-z0-9_-], starting with a letter")]
pub struct InvalidNamespace(pub String);

#[derive(Debug, Clone)]
pub struct Names {
    namespace: String,
}

impl Names {
    /// The namespace becomes part of subjects (dot-separated) and stream names (no dots or
    /// wildcards allowed), so only a conservative character set is accepted.
    pub fn new(namespace: &str) -> Result<Self, InvalidNamespace> {
        let ok = !namespace.is_empty()
            && namespace.len() <= 32
            && namespace.starts_with(|c: char| c.is_ascii_lowercase())
            && namespace
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if ok {
            Ok(Self {
                namespace: namespace.to_owned(),
            })
        } else {
            Err(InvalidNamespace(namespace.to_owned()))
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `HUB_TELEMETRY` for namespace `hub`.
    pub fn stream(&self) -> String {
        format!(
            "{}_TELEMETRY",
            self.namespace.to_ascii_uppercase().replace('-', "_")
        )
    }

    /// The subject a device's batches are published on.
    pub fn readings_subject(&self, device_id: Uuid) -> String {
        format!("{}.readings.{device_id}", self.namespace)
    }

    /// The stream's subject filter.
    pub fn readings_wildcard(&self) -> String {
        format!("{}.readings.*", self.namespace)
    }

    /// The durable consumer every processor copy shares.
    pub fn consumer(&self) -> String {
        format!("{}_processor", self.namespace)
    }

    /// The KV bucket that mirrors device key hashes to the gateways.
    pub fn key_bucket(&self) -> String {
        format!("{}_device_keys", self.namespace)
    }

    /// Core-NATS subject on which a processor announces a rule change, so every copy refreshes
    /// its in-memory rule cache.
    pub fn rules_changed_subject(&self) -> String {
        format!("{}.events.rules_changed", self.namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_namespace_gives_the_documented_names() {
        let n = Names::new("hub").unwrap();
        let id = Uuid::nil();
        assert_eq!(n.stream(), "HUB_TELEMETRY");
        assert_eq!(n.readings_subject(id), format!("hub.readings.{id}"));
        assert_eq!(n.readings_wildcard(), "hub.readings.*");
        assert_eq!(n.consumer(), "hub_processor");
        assert_eq!(n.key_bucket(), "hub_device_keys");
    }

    #[test]
    fn namespaces_that_would_break_subjects_or_stream_names_are_refused() {
        for bad in ["", "Hub", "a.b", "a*", "a>", "a b", "1abc", &"a".repeat(33)] {
            assert!(Names::new(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["hub", "t_0123abcd", "edge-1"] {
            assert!(Names::new(good).is_ok(), "{good:?} refused");
        }
        assert_eq!(Names::new("edge-1").unwrap().stream(), "EDGE_1_TELEMETRY");
    }
}

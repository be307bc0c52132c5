//! The gossip encryption key the brokers use: the user's Secret, a generated one, or none, and
//! the generated key's Secret (created once, never rewritten).

use super::Cluster;
use crate::crd::SecretKeyRef;
use crate::Error;
use base64::Engine;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;

/// Key of the generated Secret holding the gossip key (base64 text of 32 random bytes).
pub const GENERATED_KEY: &str = "key";
/// Name of the pods' volume holding the gossip key.
pub const VOLUME: &str = "gossip-key";

/// Where the brokers' gossip key comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum GossipKey {
    /// The Secret key `spec.gossip.encryptionKeySecretRef` names.
    Spec(SecretKeyRef),
    /// The operator's generated Secret `NAME-gossip`.
    Generated,
    /// `spec.gossip.encrypt` is false.
    Disabled,
    /// Encryption is asked for, but the cluster's brokers already run without it (made by an
    /// operator older than generated keys): turning it on would split the gossip while pods
    /// roll, so it stays off until the user sets a key.
    KeptUnencrypted,
}

impl GossipKey {
    /// What the spec alone asks for; a generated key may become [`GossipKey::KeptUnencrypted`]
    /// once the running brokers are seen ([`generated_key_is_safe`]).
    pub fn from_spec(cluster_spec: &crate::crd::MqttClusterSpec) -> Self {
        let gossip = &cluster_spec.gossip;
        match (&gossip.encryption_key_secret_ref, gossip.encrypt) {
            (Some(key), _) => GossipKey::Spec(key.clone()),
            (None, false) => GossipKey::Disabled,
            (None, true) => GossipKey::Generated,
        }
    }
}

/// The Secret key the brokers read their gossip key from, if any.
pub fn key_ref(cluster: &Cluster<'_>) -> Option<SecretKeyRef> {
    match cluster.gossip_key() {
        GossipKey::Spec(key) => Some(key.clone()),
        GossipKey::Generated => Some(SecretKeyRef {
            name: cluster.gossip_secret_name(),
            key: GENERATED_KEY.to_string(),
        }),
        GossipKey::Disabled | GossipKey::KeptUnencrypted => None,
    }
}

/// Whether the brokers may be given the generated key: no broker runs yet, or they already
/// read it. A StatefulSet whose pods gossip without a key must not get one in a roll, since
/// old and new pods would not understand each other until the roll ends.
pub fn generated_key_is_safe(cluster: &Cluster<'_>, brokers: Option<&StatefulSet>) -> bool {
    let Some(brokers) = brokers else {
        return true;
    };
    let secret_name = cluster.gossip_secret_name();
    brokers
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.volumes.as_ref())
        .into_iter()
        .flatten()
        .any(|v| {
            v.name == VOLUME
                && v.secret.as_ref().and_then(|s| s.secret_name.as_deref())
                    == Some(secret_name.as_str())
        })
}

/// 32 random bytes as base64 text: an AES-256-GCM key in the form the broker reads.
pub fn generate_key() -> Result<String, Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::Random(e.to_string()))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// The generated key's Secret, owned by the cluster.
pub fn key_secret(cluster: &Cluster<'_>, key: &str) -> Secret {
    super::generated_secret(
        cluster,
        cluster.gossip_secret_name(),
        super::COMPONENT_BROKER,
        GENERATED_KEY,
        key,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::test_support::cluster_from_yaml;
    use crate::resources::{desired, Cluster};

    #[test]
    fn a_new_cluster_gets_the_generated_key_and_an_explicit_one_wins() {
        let object = cluster_from_yaml("replicas: 1");
        let c = Cluster::new(&object).unwrap();
        assert_eq!(c.gossip_key(), &GossipKey::Generated);
        assert_eq!(
            key_ref(&c),
            Some(SecretKeyRef {
                name: "demo-gossip".into(),
                key: "key".into()
            })
        );
        let object = cluster_from_yaml("gossip: {encryptionKeySecretRef: {name: g, key: k}}");
        let c = Cluster::new(&object).unwrap();
        assert_eq!(key_ref(&c).map(|k| k.name), Some("g".to_string()));
        let object = cluster_from_yaml("gossip: {encrypt: false}");
        let c = Cluster::new(&object).unwrap();
        assert_eq!(c.gossip_key(), &GossipKey::Disabled);
        assert_eq!(key_ref(&c), None);
    }

    #[test]
    fn the_generated_key_is_safe_only_for_new_brokers_or_brokers_that_read_it() {
        let object = cluster_from_yaml("replicas: 1");
        let c = Cluster::new(&object).unwrap();
        assert!(generated_key_is_safe(&c, None), "no brokers yet");
        let keyed = desired(&c).unwrap().stateful_set;
        assert!(generated_key_is_safe(&c, Some(&keyed)), "they read it");
        let unkeyed = desired(&c.clone().keeping_gossip_unencrypted())
            .unwrap()
            .stateful_set;
        assert!(
            !generated_key_is_safe(&c, Some(&unkeyed)),
            "running without a key: a roll would split the gossip"
        );
    }

    #[test]
    fn generated_keys_are_32_random_bytes_in_base64() {
        let a = generate_key().unwrap();
        let b = generate_key().unwrap();
        assert_ne!(a, b);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&a)
            .expect("base64");
        assert_eq!(bytes.len(), 32);
    }
}

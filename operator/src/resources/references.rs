//! The Secrets and ConfigMaps a cluster's spec names, and which of them the brokers read only at
//! start: a change to those rolls the pods (through a hash on the pod template); the others
//! (TLS certificate, client CA, password file, ACL) the brokers reload from their mounted files.

use super::Cluster;
use crate::crd::{MqttCluster, MqttClusterSpec, SecretKeyRef};
use kube::runtime::reflector::ObjectRef;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;

/// Pod-template annotation holding the hash of the Secret values the brokers read only at start.
pub const RESTART_SECRETS_HASH_ANNOTATION: &str = "mqtt.starling.dev/restart-secrets-hash";

/// Names of the Secrets the spec refers to (the operator's own generated ones excluded).
pub fn secret_names(spec: &MqttClusterSpec) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    if let Some(tls) = &spec.listeners.tls {
        names.insert(tls.secret_name.clone());
        names.extend(tls.client_ca_secret_ref.iter().map(|r| r.name.clone()));
    }
    names.extend(spec.auth.users_secret_ref.iter().map(|r| r.name.clone()));
    let gossip_key = spec.gossip.encryption_key_secret_ref.as_ref();
    names.extend(gossip_key.map(|r| r.name.clone()));
    if let Some(external) = &spec.redis.external {
        names.extend(external.password_secret_ref.iter().map(|r| r.name.clone()));
        let sentinel = external.sentinel_password_secret_ref.as_ref();
        names.extend(sentinel.map(|r| r.name.clone()));
        names.extend(external.ca_secret_ref.iter().map(|r| r.name.clone()));
        names.extend(external.client_cert_secret_name.iter().cloned());
    }
    names
}

/// Names of the ConfigMaps the spec refers to.
pub fn config_map_names(spec: &MqttClusterSpec) -> BTreeSet<String> {
    spec.auth
        .acl_config_map_ref
        .iter()
        .map(|r| r.name.clone())
        .collect()
}

/// What kind of object changed, for [`clusters_naming`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Referenced {
    /// A Secret.
    Secret,
    /// A ConfigMap.
    ConfigMap,
}

/// The clusters in `namespace` whose spec names the Secret or ConfigMap `name`: those to
/// reconcile when it changes.
pub fn clusters_naming<'a>(
    clusters: impl IntoIterator<Item = &'a MqttCluster>,
    kind: Referenced,
    namespace: Option<&str>,
    name: &str,
) -> Vec<ObjectRef<MqttCluster>> {
    clusters
        .into_iter()
        .filter(|c| c.metadata.namespace.as_deref() == namespace)
        .filter(|c| match kind {
            Referenced::Secret => secret_names(&c.spec).contains(name),
            Referenced::ConfigMap => config_map_names(&c.spec).contains(name),
        })
        .map(ObjectRef::from_obj)
        .collect()
}

/// The Secret keys the brokers read only when they start: an external Redis' password (an
/// environment variable, or a file for Sentinel that is read once), the sentinels' password,
/// and the CA bundle and client certificate for a Redis behind TLS.
pub fn read_at_start(cluster: &Cluster<'_>) -> Vec<SecretKeyRef> {
    let Some(external) = &cluster.spec().redis.external else {
        return Vec::new();
    };
    let client_cert = external.client_cert_secret_name.iter().flat_map(|name| {
        ["tls.crt", "tls.key"].map(|key| SecretKeyRef {
            name: name.clone(),
            key: key.to_string(),
        })
    });
    [
        &external.password_secret_ref,
        &external.sentinel_password_secret_ref,
        &external.ca_secret_ref,
    ]
    .into_iter()
    .flatten()
    .cloned()
    .chain(client_cert)
    .collect()
}

/// A hash of the values of the keys in `read_at_start` (`None`: the Secret or key is missing),
/// in that order.
pub fn values_hash(values: &[(SecretKeyRef, Option<Vec<u8>>)]) -> String {
    let mut hasher = Sha256::new();
    for (r, value) in values {
        super::hash_framed(&mut hasher, r.name.as_bytes());
        super::hash_framed(&mut hasher, r.key.as_bytes());
        match value {
            Some(v) => {
                hasher.update([1]);
                super::hash_framed(&mut hasher, v);
            }
            None => hasher.update([0]),
        }
    }
    super::hex(&hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::test_support::cluster_from_yaml;

    fn key(name: &str, key: &str) -> SecretKeyRef {
        SecretKeyRef {
            name: name.into(),
            key: key.into(),
        }
    }

    #[test]
    fn every_named_secret_and_config_map_is_found() {
        let object = cluster_from_yaml(
            r#"
listeners: {tls: {secretName: cert, clientAuth: required, clientCaSecretRef: {name: ca, key: c}}}
auth: {usersSecretRef: {name: users, key: p}, aclConfigMapRef: {name: acl, key: a}}
gossip: {encryptionKeySecretRef: {name: gk, key: k}}
redis: {external: {sentinel: {masterName: m, sentinels: ["s:26379"]}, passwordSecretRef: {name: rp, key: p}, sentinelPasswordSecretRef: {name: sp, key: p}}}
"#,
        );
        let names: Vec<_> = secret_names(&object.spec).into_iter().collect();
        assert_eq!(names, ["ca", "cert", "gk", "rp", "sp", "users"]);
        let maps: Vec<_> = config_map_names(&object.spec).into_iter().collect();
        assert_eq!(maps, ["acl"]);
        let c = Cluster::new(&object).unwrap();
        assert_eq!(read_at_start(&c), vec![key("rp", "p"), key("sp", "p")]);
    }

    #[test]
    fn a_changed_secret_or_config_map_names_the_clusters_that_use_it_in_its_namespace() {
        let mut a = cluster_from_yaml("auth: {usersSecretRef: {name: users, key: p}}");
        a.metadata.name = Some("a".into());
        let mut b = cluster_from_yaml("auth: {aclConfigMapRef: {name: users, key: acl}}");
        b.metadata.name = Some("b".into());
        let mut elsewhere = a.clone();
        elsewhere.metadata.namespace = Some("other".into());
        let all = [a.clone(), b.clone(), elsewhere];
        let names = |refs: Vec<ObjectRef<MqttCluster>>| -> Vec<String> {
            refs.into_iter().map(|r| r.name).collect()
        };
        assert_eq!(
            names(clusters_naming(
                &all,
                Referenced::Secret,
                Some("iot"),
                "users"
            )),
            ["a"]
        );
        assert_eq!(
            names(clusters_naming(
                &all,
                Referenced::ConfigMap,
                Some("iot"),
                "users"
            )),
            ["b"]
        );
        assert!(clusters_naming(&all, Referenced::Secret, Some("iot"), "other").is_empty());
    }

    #[test]
    fn a_redis_behind_tls_is_watched_and_its_files_roll_the_pods() {
        let object = cluster_from_yaml(
            "redis: {external: {url: 'rediss://r:6380', caSecretRef: {name: ca, key: ca.crt}, clientCertSecretName: client}}",
        );
        let names: Vec<_> = secret_names(&object.spec).into_iter().collect();
        assert_eq!(names, ["ca", "client"]);
        let c = Cluster::new(&object).unwrap();
        assert_eq!(
            read_at_start(&c),
            vec![
                key("ca", "ca.crt"),
                key("client", "tls.crt"),
                key("client", "tls.key")
            ]
        );
    }

    #[test]
    fn a_managed_redis_has_nothing_read_only_at_start() {
        let object = cluster_from_yaml("listeners: {tls: {secretName: cert}}");
        let c = Cluster::new(&object).unwrap();
        assert!(read_at_start(&c).is_empty());
    }

    #[test]
    fn the_hash_changes_with_any_value_and_tells_missing_from_empty() {
        let base = vec![(key("rp", "p"), Some(b"one".to_vec()))];
        let h = values_hash(&base);
        assert_eq!(h, values_hash(&base), "stable");
        assert_ne!(h, values_hash(&[(key("rp", "p"), Some(b"two".to_vec()))]));
        assert_ne!(h, values_hash(&[(key("rp", "q"), Some(b"one".to_vec()))]));
        assert_ne!(
            values_hash(&[(key("rp", "p"), None)]),
            values_hash(&[(key("rp", "p"), Some(Vec::new()))])
        );
    }
}

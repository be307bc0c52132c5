//! Pure builders: one function per child object, from the cluster to the object the operator
//! applies. Nothing here talks to the API server, so every object is unit-tested.
//!
//! Every child carries the cluster as controlling owner (so Kubernetes deletes it with the
//! cluster) and the `app.kubernetes.io/*` labels.

pub mod admin;
pub mod configmap;
pub mod gossip;
pub mod networkpolicy;
pub mod pdb;
pub mod redis;
pub mod references;
pub mod servicemonitor;
pub mod services;
pub mod statefulset;
pub mod users;

use crate::crd::MqttCluster;
use crate::Error;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::Resource;
use std::collections::BTreeMap;

/// Field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "starling-operator";
/// A label every operator pod carries (chart and `deploy/`; not renamed by the chart's
/// `nameOverride`): the brokers' NetworkPolicy admits such pods to the admin port.
pub const OPERATOR_POD_LABEL: (&str, &str) = ("mqtt.starling.dev/operator", "true");
/// `app.kubernetes.io/name` of everything the operator creates.
pub const APP_NAME: &str = "starling";
/// Pod-template annotation holding the hash of the rendered broker configuration.
pub const CONFIG_HASH_ANNOTATION: &str = "mqtt.starling.dev/config-hash";

/// Component label of the broker pods and their objects.
pub const COMPONENT_BROKER: &str = "broker";
/// Component label of the managed Redis.
pub const COMPONENT_REDIS: &str = "redis";

/// A cluster checked to have what every builder needs: name, namespace and uid.
#[derive(Debug, Clone)]
pub struct Cluster<'a> {
    /// The resource itself.
    pub object: &'a MqttCluster,
    /// `metadata.name`.
    pub name: &'a str,
    /// `metadata.namespace`.
    pub namespace: &'a str,
    owner: OwnerReference,
    gossip_key: gossip::GossipKey,
    restart_secrets_hash: Option<String>,
    operator_namespace: Option<String>,
}

impl<'a> Cluster<'a> {
    /// Checks the metadata the builders rely on.
    pub fn new(object: &'a MqttCluster) -> Result<Self, Error> {
        let name = object
            .metadata
            .name
            .as_deref()
            .ok_or(Error::MissingMetadata("name"))?;
        let namespace = object
            .metadata
            .namespace
            .as_deref()
            .ok_or(Error::MissingMetadata("namespace"))?;
        let owner = object
            .controller_owner_ref(&())
            .ok_or(Error::MissingMetadata("uid"))?;
        Ok(Cluster {
            object,
            name,
            namespace,
            owner,
            gossip_key: gossip::GossipKey::from_spec(&object.spec),
            restart_secrets_hash: None,
            operator_namespace: None,
        })
    }

    /// Where the brokers' gossip key comes from.
    pub fn gossip_key(&self) -> &gossip::GossipKey {
        &self.gossip_key
    }

    /// The hash of the Secret values the brokers read only at start
    /// ([`references::read_at_start`]), once the reconciler has read them.
    pub fn restart_secrets_hash(&self) -> Option<&str> {
        self.restart_secrets_hash.as_deref()
    }

    /// The same cluster, its brokers to be reached by the operator from pods in `namespace`.
    pub fn with_operator_namespace(mut self, namespace: Option<String>) -> Self {
        self.operator_namespace = namespace;
        self
    }

    /// The namespace the operator's own pods run in, when it runs in the cluster (the
    /// autoscaler's requests to the brokers' admin port come from there).
    pub fn operator_namespace(&self) -> Option<&str> {
        self.operator_namespace.as_deref()
    }

    /// This cluster with the hash of the Secret values its brokers read only at start: a
    /// change to it rolls the pods.
    pub fn with_restart_secrets_hash(mut self, hash: String) -> Self {
        self.restart_secrets_hash = Some(hash);
        self
    }

    /// This cluster with a generated gossip key kept off: its brokers already run without one
    /// (see [`gossip::generated_key_is_safe`]).
    pub fn keeping_gossip_unencrypted(mut self) -> Self {
        if self.gossip_key == gossip::GossipKey::Generated {
            self.gossip_key = gossip::GossipKey::KeptUnencrypted;
        }
        self
    }

    /// The spec.
    pub fn spec(&self) -> &'a crate::crd::MqttClusterSpec {
        &self.object.spec
    }

    /// Labels that select the pods of one component (stable: never change them).
    pub fn selector_labels(&self, component: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".to_string(), APP_NAME.to_string()),
            (
                "app.kubernetes.io/instance".to_string(),
                self.name.to_string(),
            ),
            (
                "app.kubernetes.io/component".to_string(),
                component.to_string(),
            ),
        ])
    }

    /// The selector labels plus `managed-by` and `part-of`.
    pub fn labels(&self, component: &str) -> BTreeMap<String, String> {
        let mut labels = self.selector_labels(component);
        labels.insert(
            "app.kubernetes.io/managed-by".to_string(),
            FIELD_MANAGER.to_string(),
        );
        labels.insert(
            "app.kubernetes.io/part-of".to_string(),
            APP_NAME.to_string(),
        );
        labels
    }

    /// A label selector matching one component's pods.
    pub fn label_selector(&self, component: &str) -> LabelSelector {
        LabelSelector {
            match_labels: Some(self.selector_labels(component)),
            ..LabelSelector::default()
        }
    }

    /// A label selector matching every pod of the cluster (brokers and managed Redis).
    pub fn pods_selector(&self) -> String {
        format!(
            "app.kubernetes.io/instance={},app.kubernetes.io/name={APP_NAME}",
            self.name
        )
    }

    /// The selector as the string `status.selector` holds for the scale subresource.
    pub fn selector_string(&self, component: &str) -> String {
        self.selector_labels(component)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Metadata of a child object: name, namespace, labels and the cluster as controller.
    pub fn child_meta(&self, name: String, component: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.to_string()),
            labels: Some(self.labels(component)),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    /// The broker StatefulSet and the client Service.
    pub fn broker_name(&self) -> String {
        self.name.to_string()
    }

    /// The ConfigMap with the broker configuration.
    pub fn config_map_name(&self) -> String {
        format!("{}-config", self.name)
    }

    /// The headless Service that gives broker pods stable DNS names.
    pub fn headless_service_name(&self) -> String {
        format!("{}-headless", self.name)
    }

    /// The Secret holding the brokers' admin API token (made by the operator).
    pub fn admin_secret_name(&self) -> String {
        format!("{}-admin", self.name)
    }

    /// The Secret holding the generated gossip key (made by the operator).
    pub fn gossip_secret_name(&self) -> String {
        format!("{}-gossip", self.name)
    }

    /// The Secret holding the generated user (made by the operator).
    pub fn users_secret_name(&self) -> String {
        format!("{}-users", self.name)
    }

    /// The managed Redis' Deployment (or StatefulSet, with Sentinel), Service, password Secret
    /// and, with Sentinel, PodDisruptionBudget.
    pub fn redis_name(&self) -> String {
        format!("{}-redis", self.name)
    }

    /// The headless Service of the managed Redis with Sentinel (its pods' DNS names).
    pub fn redis_nodes_service_name(&self) -> String {
        format!("{}-redis-nodes", self.name)
    }

    /// The managed Redis' PersistentVolumeClaim.
    pub fn redis_pvc_name(&self) -> String {
        format!("{}-redis-data", self.name)
    }

    /// The headless Service's DNS name: it resolves to the address of every broker pod, ready or
    /// not (`publishNotReadyAddresses`), whatever the number of replicas.
    pub fn headless_dns_name(&self) -> String {
        format!("{}.{}.svc", self.headless_service_name(), self.namespace)
    }

    /// The DNS name of broker pod `ordinal` through the headless Service.
    pub fn pod_dns_name(&self, ordinal: i32) -> String {
        format!(
            "{}-{ordinal}.{}.{}.svc",
            self.broker_name(),
            self.headless_service_name(),
            self.namespace
        )
    }
}

/// Every child object the cluster should have, except the managed Redis' password Secret (which
/// is created once, see [`redis::password_secret`]). `None` marks an object that must not exist.
#[derive(Debug, Clone)]
pub struct Children {
    /// The broker configuration file.
    pub config_map: ConfigMap,
    /// Stable pod DNS names and gossip.
    pub headless_service: Service,
    /// Where clients connect.
    pub client_service: Service,
    /// The brokers.
    pub stateful_set: StatefulSet,
    /// The disruption budget, unless turned off.
    pub pod_disruption_budget: Option<PodDisruptionBudget>,
    /// The managed Redis as one pod, unless Redis is external or run with Sentinel.
    pub redis_deployment: Option<Deployment>,
    /// The managed Redis' Service, unless Redis is external or run with Sentinel.
    pub redis_service: Option<Service>,
    /// The managed Redis' pods with their sentinels, when run with Sentinel.
    pub redis_stateful_set: Option<StatefulSet>,
    /// Their headless Service, when run with Sentinel.
    pub redis_nodes_service: Option<Service>,
    /// Their disruption budget, when run with Sentinel.
    pub redis_pod_disruption_budget: Option<PodDisruptionBudget>,
    /// The managed Redis' volume, when persistence is on.
    pub redis_volume: Option<PersistentVolumeClaim>,
    /// The brokers' NetworkPolicy, unless turned off.
    pub broker_network_policy: Option<NetworkPolicy>,
    /// The managed Redis' NetworkPolicy, unless turned off or Redis is external.
    pub redis_network_policy: Option<NetworkPolicy>,
}

/// Builds every child object from the cluster.
pub fn desired(cluster: &Cluster<'_>) -> Result<Children, Error> {
    let config_map = configmap::config_map(cluster)?;
    let hash = configmap::config_hash(&config_map);
    Ok(Children {
        stateful_set: statefulset::stateful_set(cluster, &hash)?,
        config_map,
        headless_service: services::headless_service(cluster),
        client_service: services::client_service(cluster),
        pod_disruption_budget: pdb::pod_disruption_budget(cluster),
        redis_deployment: redis::deployment(cluster),
        redis_service: redis::service(cluster),
        redis_stateful_set: redis::sentinel::stateful_set(cluster),
        redis_nodes_service: redis::sentinel::nodes_service(cluster),
        redis_pod_disruption_budget: redis::sentinel::pod_disruption_budget(cluster),
        redis_volume: redis::persistent_volume_claim(cluster),
        broker_network_policy: networkpolicy::broker_policy(cluster),
        redis_network_policy: networkpolicy::redis_policy(cluster),
    })
}

/// Feeds `bytes` to `hasher` preceded by their length, so that no two sequences of parts hash
/// alike by shifting a boundary.
pub(crate) fn hash_framed(hasher: &mut sha2::Sha256, bytes: &[u8]) {
    use sha2::Digest;
    hasher.update((bytes.len() as u64).to_be_bytes());
    hasher.update(bytes);
}

/// Lower-case hex of `bytes`, as hashes are written in annotations.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An Opaque Secret of the cluster named `name` holding one `key` (a generated secret such as
/// the brokers' admin token).
pub fn generated_secret(
    cluster: &Cluster<'_>,
    name: String,
    component: &str,
    key: &str,
    value: &str,
) -> k8s_openapi::api::core::v1::Secret {
    k8s_openapi::api::core::v1::Secret {
        metadata: cluster.child_meta(name, component),
        type_: Some("Opaque".to_string()),
        string_data: Some(std::collections::BTreeMap::from([(
            key.to_string(),
            value.to_string(),
        )])),
        ..Default::default()
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use crate::crd::{MqttCluster, MqttClusterSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    /// A cluster as the API server would hand it over.
    pub fn cluster(spec: MqttClusterSpec) -> MqttCluster {
        MqttCluster {
            metadata: ObjectMeta {
                name: Some("demo".into()),
                namespace: Some("iot".into()),
                uid: Some("0b8c1b7e-5a6d-4a57-9f7e-3c7b1d2e4f60".into()),
                generation: Some(4),
                ..ObjectMeta::default()
            },
            ..MqttCluster::new("demo", spec)
        }
    }

    /// A cluster built from a YAML spec (schema-less: serde defaults fill the rest).
    pub fn cluster_from_yaml(spec: &str) -> MqttCluster {
        let spec: MqttClusterSpec = serde_yaml_ng::from_str(spec).expect("spec parses");
        cluster(spec)
    }

    /// Asserts the object's metadata marks it as the cluster's child.
    pub fn assert_child(meta: &ObjectMeta, name: &str, component: &str) {
        assert_eq!(meta.name.as_deref(), Some(name));
        assert_eq!(meta.namespace.as_deref(), Some("iot"));
        let owners = meta.owner_references.as_ref().expect("owner references");
        assert_eq!(owners.len(), 1);
        let owner = &owners[0];
        assert_eq!(owner.kind, "MqttCluster");
        assert_eq!(owner.api_version, "mqtt.starling.dev/v1alpha1");
        assert_eq!(owner.name, "demo");
        assert_eq!(owner.uid, "0b8c1b7e-5a6d-4a57-9f7e-3c7b1d2e4f60");
        assert_eq!(owner.controller, Some(true));
        let labels = meta.labels.as_ref().expect("labels");
        assert_eq!(labels["app.kubernetes.io/name"], "starling");
        assert_eq!(labels["app.kubernetes.io/instance"], "demo");
        assert_eq!(labels["app.kubernetes.io/component"], component);
        assert_eq!(labels["app.kubernetes.io/managed-by"], "starling-operator");
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::cluster;
    use super::*;

    #[test]
    fn metadata_is_required() {
        let mut object = cluster(Default::default());
        object.metadata.uid = None;
        let err = Cluster::new(&object).unwrap_err();
        assert!(err.to_string().contains("uid"), "{err}");
        object.metadata.namespace = None;
        assert!(Cluster::new(&object)
            .unwrap_err()
            .to_string()
            .contains("namespace"));
    }

    #[test]
    fn selector_string_lists_the_selector_labels() {
        let object = cluster(Default::default());
        let c = Cluster::new(&object).expect("cluster");
        assert_eq!(
            c.selector_string(COMPONENT_BROKER),
            "app.kubernetes.io/component=broker,app.kubernetes.io/instance=demo,app.kubernetes.io/name=starling"
        );
        assert_eq!(c.pod_dns_name(2), "demo-2.demo-headless.iot.svc");
        assert_eq!(c.headless_dns_name(), "demo-headless.iot.svc");
    }
}

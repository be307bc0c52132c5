//! `spec.networkPolicy`: which traffic may reach the brokers and the managed Redis.

use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Label that admits a namespace's pods to the brokers' admin port under the default
/// `adminFrom` (Prometheus' namespace, say): `kubectl label namespace monitoring
/// mqtt.starling.dev/admin-access=true`.
pub const ADMIN_ACCESS_LABEL: &str = "mqtt.starling.dev/admin-access";

/// NetworkPolicies the operator applies: the gossip port admits only the cluster's own broker
/// pods, the managed Redis only them, the admin port (metrics, health, admin API) only
/// `adminFrom`, and the MQTT ports `clientsFrom`. They take effect where the network plugin
/// enforces NetworkPolicy (Calico, Cilium, ...); elsewhere they change nothing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Apply the NetworkPolicies `NAME` (brokers) and `NAME-redis` (managed Redis).
    #[serde(default = "super::default_true")]
    pub enabled: bool,
    /// Who may reach the admin port besides the cluster's own broker pods (peers as in a
    /// NetworkPolicy rule's `from`). Unset: pods in namespaces labelled
    /// `mqtt.starling.dev/admin-access: "true"`. Kubelet probes come from the node, which
    /// network plugins admit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_from: Option<Vec<NetworkPolicyPeer>>,
    /// Who may reach the MQTT, TLS and WebSocket ports. Unset: anyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients_from: Option<Vec<NetworkPolicyPeer>>,
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        NetworkPolicySpec {
            enabled: true,
            admin_from: None,
            clients_from: None,
        }
    }
}

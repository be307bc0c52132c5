//! `spec.service`: the client-facing Service (type, annotations, traffic policy, affinity).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The client-facing Service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Annotations for the Service, e.g. for a cloud load balancer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Load balancer implementation (only for type `LoadBalancer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer_class: Option<String>,
    /// `Local` keeps client source addresses but only routes to nodes with a broker pod
    /// (only for types `LoadBalancer` and `NodePort`). Unset: the Kubernetes default, `Cluster`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<ExternalTrafficPolicy>,
    /// `ClientIP` sends a client's connections to the same pod. Not needed by Starling, whose
    /// nodes share sessions.
    #[serde(default)]
    pub session_affinity: SessionAffinity,
}

/// Kubernetes Service type.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ServiceType {
    /// An external load balancer (the cloud's, MetalLB, ...). Clusters without a load balancer
    /// controller never give it an address (`status.endpointHint` then says where to connect);
    /// choose `NodePort` there.
    #[default]
    LoadBalancer,
    /// A port on every node.
    NodePort,
    /// Reachable inside the Kubernetes cluster only.
    ClusterIP,
}

impl ServiceType {
    /// The value Kubernetes expects.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::NodePort => "NodePort",
            ServiceType::ClusterIP => "ClusterIP",
        }
    }
}

/// Service external traffic policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ExternalTrafficPolicy {
    /// Any node forwards to any pod (client addresses are rewritten).
    Cluster,
    /// Nodes forward only to their own pods (client addresses are kept).
    Local,
}

impl ExternalTrafficPolicy {
    /// The value Kubernetes expects.
    pub fn as_str(self) -> &'static str {
        match self {
            ExternalTrafficPolicy::Cluster => "Cluster",
            ExternalTrafficPolicy::Local => "Local",
        }
    }
}

/// Service session affinity.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum SessionAffinity {
    /// Every connection may go to any pod.
    #[default]
    None,
    /// Connections from one client address go to the same pod.
    ClientIP,
}

impl SessionAffinity {
    /// The value Kubernetes expects.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionAffinity::None => "None",
            SessionAffinity::ClientIP => "ClientIP",
        }
    }
}

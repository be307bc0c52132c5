//! `spec.podTemplate` and `spec.podDisruptionBudget`: overrides for the broker pods and the
//! budget that limits voluntary evictions of them.

use super::default_true;
use k8s_openapi::api::core::v1::{
    Affinity, PodSecurityContext, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Overrides for the broker pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateOverrides {
    /// Extra pod labels; the operator's own `app.kubernetes.io/*` labels win on conflict.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra pod annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Node selector.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Affinity rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Topology spread constraints. Unset: pods are spread over nodes where possible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// Pod security context. Unset: non-root user 65532, RuntimeDefault seccomp profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
    /// PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

/// The broker pods' PodDisruptionBudget.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodDisruptionBudgetSpec {
    /// Create the PodDisruptionBudget.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Most broker pods that voluntary disruptions (drains, upgrades) may take down at once: a
    /// number or a percentage such as `"25%"`.
    // Option only because the generated schema marks the field nullable: an explicit null
    // must not make the whole object unreadable. `None` means the default.
    #[serde(
        default = "default_max_unavailable",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_unavailable: Option<IntOrString>,
}

/// Default `maxUnavailable` of the PodDisruptionBudget.
pub const DEFAULT_MAX_UNAVAILABLE: i32 = 1;

fn default_max_unavailable() -> Option<IntOrString> {
    Some(IntOrString::Int(DEFAULT_MAX_UNAVAILABLE))
}

impl Default for PodDisruptionBudgetSpec {
    fn default() -> Self {
        PodDisruptionBudgetSpec {
            enabled: true,
            max_unavailable: default_max_unavailable(),
        }
    }
}

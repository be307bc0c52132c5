//! `spec.autoscaling`: the operator sizes the cluster from the brokers' own connection counts
//! (no metrics adapter needed), within bounds and with stabilization windows.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Autoscaling on connections. The operator asks every broker pod for its connection count
/// (admin API `GET /api/v1/node`), wants `ceil(connections / targetConnectionsPerBroker)`
/// brokers within `minReplicas`..`maxReplicas`, and sets `spec.replicas` through the scale
/// subresource, as a HorizontalPodAutoscaler would. New brokers fill up by rebalancing; a
/// broker going away is evacuated first. Not together with an external HorizontalPodAutoscaler
/// on this cluster: the operator then stops scaling and says so in the `Autoscaling` condition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message(
    "autoscaling: minReplicas must not exceed maxReplicas"
))]
pub struct AutoscalingSpec {
    /// The fewest broker pods.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1))]
    pub min_replicas: i32,
    /// The most broker pods.
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// Connections each broker should hold on average.
    #[schemars(range(min = 1))]
    pub target_connections_per_broker: i64,
    /// Optional: the brokers' CPU use, in percent of their CPU request
    /// (`resources.requests.cpu`, required with it), to aim at as well; the cluster gets
    /// as many brokers as the stricter of the two targets needs. Read from the brokers
    /// themselves (no metrics server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub target_cpu_utilization_percent: Option<i32>,
    /// How far (percent) the connections per broker may be off the target before the cluster
    /// is resized: a cluster this close to its target stays as it is.
    #[serde(default = "default_tolerance_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub tolerance_percent: i32,
    /// A scale-up goes only as far as every recommendation of this window asked (0: at once;
    /// after an operator restart, not before it has watched this long).
    #[serde(default)]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_up_stabilization_seconds: i32,
    /// A scale-down goes only as far as every recommendation of this window allowed: the
    /// cluster is not shrunk for a dip shorter than this. After an operator restart, no
    /// scale-down until the operator has watched this long.
    #[serde(default = "default_scale_down_stabilization_seconds")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_stabilization_seconds: i32,
}

fn default_min_replicas() -> i32 {
    1
}

fn default_tolerance_percent() -> i32 {
    10
}

fn default_scale_down_stabilization_seconds() -> i32 {
    300
}

/// What the autoscaler decided last, as the status shows it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingStatus {
    /// The brokers the autoscaler wants now (it sets `spec.replicas` to this).
    pub desired_replicas: i32,
    /// The connections the brokers held at the last count, when every broker answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<i64>,
    /// When the autoscaler last changed `spec.replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

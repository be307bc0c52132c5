//! How the status shows broker pods that are going: each one's evacuation (its preStop hook asks
//! its clients to reconnect to the other brokers, at `broker.evacuationRatePerSec`), as the
//! operator last read it from the pod's admin API.

use serde::{Deserialize, Serialize};

/// One broker pod on its way out, and where its evacuation stands.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodEvacuation {
    /// The pod.
    pub pod: String,
    /// Whether it is evacuating (its preStop hook started the evacuation).
    pub evacuating: bool,
    /// Clients it asked so far to reconnect to another broker.
    pub asked: i64,
    /// Clients still connected to it.
    pub remaining: i64,
    /// Clients asked per second.
    pub rate_per_sec: i64,
    /// Why its progress is unknown (it did not answer), when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown: Option<String>,
}

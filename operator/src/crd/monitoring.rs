//! `spec.monitoring`: metrics scraping through a Prometheus Operator ServiceMonitor.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Metrics scraping.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// A Prometheus Operator ServiceMonitor for the brokers' `/metrics`.
    #[serde(default)]
    pub service_monitor: ServiceMonitorSpec,
}

/// The ServiceMonitor; created only when its CRD (`monitoring.coreos.com`) is installed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    /// Create the ServiceMonitor.
    #[serde(default)]
    pub enabled: bool,
    /// Scrape interval such as `30s`. Unset: Prometheus' default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Extra labels, e.g. the ones your Prometheus selects ServiceMonitors by.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

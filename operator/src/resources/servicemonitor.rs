//! The Prometheus Operator ServiceMonitor. Its CRD may not be installed, so it is built as
//! untyped JSON and applied only when the API server knows the kind.

use super::services::PORT_ADMIN;
use super::{Cluster, COMPONENT_BROKER};
use serde_json::{json, Value};

/// API group of the ServiceMonitor kind.
pub const GROUP: &str = "monitoring.coreos.com";
/// API version of the ServiceMonitor kind.
pub const VERSION: &str = "v1";
/// The kind.
pub const KIND: &str = "ServiceMonitor";

/// The ServiceMonitor, or `None` when monitoring is off. It selects the broker Services and
/// scrapes the port named `admin`, which only the headless Service has (one target per pod).
pub fn service_monitor(cluster: &Cluster<'_>) -> Option<Value> {
    let spec = &cluster.spec().monitoring.service_monitor;
    if !spec.enabled {
        return None;
    }
    let mut meta = cluster.child_meta(cluster.broker_name(), COMPONENT_BROKER);
    if let Some(labels) = meta.labels.as_mut() {
        for (k, v) in &spec.labels {
            labels.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    let mut endpoint = json!({"port": PORT_ADMIN, "path": "/metrics", "scheme": "http"});
    if let Some(interval) = &spec.interval {
        endpoint["interval"] = json!(interval);
    }
    Some(json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": KIND,
        "metadata": meta,
        "spec": {
            "selector": {"matchLabels": cluster.selector_labels(COMPONENT_BROKER)},
            "namespaceSelector": {"matchNames": [cluster.namespace]},
            "endpoints": [endpoint],
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::test_support::{assert_child, cluster_from_yaml};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn off_by_default() {
        let object = cluster_from_yaml("{}");
        assert!(service_monitor(&Cluster::new(&object).expect("cluster")).is_none());
    }

    #[test]
    fn scrapes_the_admin_port_of_the_broker_services() {
        let object = cluster_from_yaml(
            "monitoring: {serviceMonitor: {enabled: true, interval: 15s, labels: {release: prom, app.kubernetes.io/name: other}}}",
        );
        let c = Cluster::new(&object).expect("cluster");
        let sm = service_monitor(&c).expect("service monitor");
        assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(sm["kind"], "ServiceMonitor");
        let meta: ObjectMeta = serde_json::from_value(sm["metadata"].clone()).expect("metadata");
        assert_child(&meta, "demo", "broker");
        let labels = meta.labels.expect("labels");
        assert_eq!(labels["release"], "prom");
        assert_eq!(labels["app.kubernetes.io/name"], "starling", "ours win");
        assert_eq!(
            sm["spec"]["selector"]["matchLabels"],
            serde_json::to_value(c.selector_labels(COMPONENT_BROKER)).expect("json")
        );
        assert_eq!(sm["spec"]["namespaceSelector"]["matchNames"][0], "iot");
        let endpoint = &sm["spec"]["endpoints"][0];
        assert_eq!(endpoint["port"], "admin");
        assert_eq!(endpoint["path"], "/metrics");
        assert_eq!(endpoint["interval"], "15s");
    }
}

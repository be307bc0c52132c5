//! The broker pods' PodDisruptionBudget.

use super::{Cluster, COMPONENT_BROKER};
use crate::crd::DEFAULT_MAX_UNAVAILABLE;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The PodDisruptionBudget, or `None` when the spec turns it off.
pub fn pod_disruption_budget(cluster: &Cluster<'_>) -> Option<PodDisruptionBudget> {
    let pdb = &cluster.spec().pod_disruption_budget;
    if !pdb.enabled {
        return None;
    }
    Some(PodDisruptionBudget {
        metadata: cluster.child_meta(cluster.broker_name(), COMPONENT_BROKER),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(
                pdb.max_unavailable
                    .clone()
                    .unwrap_or(IntOrString::Int(DEFAULT_MAX_UNAVAILABLE)),
            ),
            selector: Some(cluster.label_selector(COMPONENT_BROKER)),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::test_support::{assert_child, cluster_from_yaml};

    #[test]
    fn default_budget_allows_one_pod_down() {
        let object = cluster_from_yaml("{}");
        let c = Cluster::new(&object).expect("cluster");
        let pdb = pod_disruption_budget(&c).expect("pdb");
        assert_child(&pdb.metadata, "demo", "broker");
        let spec = pdb.spec.expect("spec");
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(spec.min_available, None);
        assert_eq!(
            spec.selector.and_then(|s| s.match_labels),
            Some(c.selector_labels(COMPONENT_BROKER))
        );
    }

    #[test]
    fn percentage_and_disabled() {
        let object = cluster_from_yaml("podDisruptionBudget: {maxUnavailable: '25%'}");
        let c = Cluster::new(&object).expect("cluster");
        let spec = pod_disruption_budget(&c).expect("pdb").spec.expect("spec");
        assert_eq!(
            spec.max_unavailable,
            Some(IntOrString::String("25%".into()))
        );

        let object = cluster_from_yaml("podDisruptionBudget: {maxUnavailable: null}");
        let c = Cluster::new(&object).expect("cluster");
        let spec = pod_disruption_budget(&c).expect("pdb").spec.expect("spec");
        assert_eq!(
            spec.max_unavailable,
            Some(IntOrString::Int(1)),
            "null means the default"
        );

        let object = cluster_from_yaml("podDisruptionBudget: {enabled: false}");
        let c = Cluster::new(&object).expect("cluster");
        assert!(pod_disruption_budget(&c).is_none());
    }
}

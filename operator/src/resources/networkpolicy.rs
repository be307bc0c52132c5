//! The NetworkPolicies of a cluster: one for the broker pods (MQTT ports from `clientsFrom`,
//! gossip only from the cluster's brokers, the admin port from `adminFrom` and the brokers) and
//! one for the managed Redis (from the cluster's brokers, and with Sentinel its own pods).

use super::{
    redis::sentinel, redis::REDIS_PORT, Cluster, COMPONENT_BROKER, COMPONENT_REDIS,
    OPERATOR_POD_LABEL,
};
use crate::crd::{RedisMode, ADMIN_ACCESS_LABEL};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

fn port(number: i32, protocol: &str) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(number)),
        protocol: Some(protocol.to_string()),
        ..NetworkPolicyPort::default()
    }
}

/// The cluster's own broker pods, as a peer.
fn brokers(cluster: &Cluster<'_>) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(cluster.label_selector(COMPONENT_BROKER)),
        ..NetworkPolicyPeer::default()
    }
}

/// Pods in namespaces labelled for admin access (the default `adminFrom`).
fn admin_namespaces() -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                ADMIN_ACCESS_LABEL.to_string(),
                "true".to_string(),
            )])),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    }
}

/// The operator's own pods, when it runs in the cluster: its autoscaler asks every broker for
/// its count on the admin port.
fn operator(cluster: &Cluster<'_>) -> Option<NetworkPolicyPeer> {
    let namespace = cluster.operator_namespace()?;
    let labels = |key: &str, value: &str| LabelSelector {
        match_labels: Some(BTreeMap::from([(key.to_string(), value.to_string())])),
        ..LabelSelector::default()
    };
    Some(NetworkPolicyPeer {
        namespace_selector: Some(labels("kubernetes.io/metadata.name", namespace)),
        pod_selector: Some(labels(OPERATOR_POD_LABEL.0, OPERATOR_POD_LABEL.1)),
        ..NetworkPolicyPeer::default()
    })
}

fn ingress_only(
    cluster: &Cluster<'_>,
    name: String,
    component: &str,
    ingress: Vec<NetworkPolicyIngressRule>,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: cluster.child_meta(name, component),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(cluster.label_selector(component)),
            policy_types: Some(vec!["Ingress".to_string()]),
            ingress: Some(ingress),
            ..NetworkPolicySpec::default()
        }),
    }
}

/// The broker pods' NetworkPolicy, or `None` when the spec turns policies off.
pub fn broker_policy(cluster: &Cluster<'_>) -> Option<NetworkPolicy> {
    let spec = cluster.spec();
    let policy = &spec.network_policy;
    if !policy.enabled {
        return None;
    }
    let listeners = &spec.listeners;
    let mut client_ports = Vec::new();
    if listeners.mqtt.enabled {
        client_ports.push(port(listeners.mqtt.port, "TCP"));
    }
    if let Some(tls) = &listeners.tls {
        client_ports.push(port(tls.port, "TCP"));
    }
    if let Some(ws) = &listeners.websocket {
        client_ports.push(port(ws.port, "TCP"));
    }
    let mut admin_from = vec![brokers(cluster)];
    match &policy.admin_from {
        Some(peers) => admin_from.extend(peers.iter().cloned()),
        None => admin_from.push(admin_namespaces()),
    }
    if spec.autoscaling.is_some() {
        admin_from.extend(operator(cluster));
    }
    let mut ingress = Vec::new();
    if !client_ports.is_empty() {
        ingress.push(NetworkPolicyIngressRule {
            // `None` admits every source; an empty list would admit none.
            from: policy.clients_from.clone(),
            ports: Some(client_ports),
        });
    }
    ingress.push(NetworkPolicyIngressRule {
        from: Some(vec![brokers(cluster)]),
        ports: Some(vec![
            port(spec.gossip.port, "TCP"),
            port(spec.gossip.port, "UDP"),
        ]),
    });
    ingress.push(NetworkPolicyIngressRule {
        from: Some(admin_from),
        ports: Some(vec![port(spec.broker.admin_port, "TCP")]),
    });
    Some(ingress_only(
        cluster,
        cluster.broker_name(),
        COMPONENT_BROKER,
        ingress,
    ))
}

/// The managed Redis' NetworkPolicy: only the cluster's brokers reach it, and with Sentinel
/// also the Redis pods one another (replication, the sentinels' watch and votes); the brokers
/// then reach the sentinels as well. `None` for an external Redis or when the spec turns
/// policies off.
pub fn redis_policy(cluster: &Cluster<'_>) -> Option<NetworkPolicy> {
    let spec = cluster.spec();
    if !spec.network_policy.enabled || !matches!(spec.redis.mode(), Some(RedisMode::Managed(_))) {
        return None;
    }
    let ingress = if sentinel::settings(cluster).is_some() {
        let ports = || {
            Some(vec![
                port(REDIS_PORT, "TCP"),
                port(sentinel::SENTINEL_PORT, "TCP"),
            ])
        };
        vec![
            NetworkPolicyIngressRule {
                from: Some(vec![brokers(cluster)]),
                ports: ports(),
            },
            NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    pod_selector: Some(cluster.label_selector(COMPONENT_REDIS)),
                    ..NetworkPolicyPeer::default()
                }]),
                ports: ports(),
            },
        ]
        .into_iter()
        // The operator asks the sentinels which pod is the primary, for the status.
        .chain(operator(cluster).map(|peer| NetworkPolicyIngressRule {
            from: Some(vec![peer]),
            ports: Some(vec![port(sentinel::SENTINEL_PORT, "TCP")]),
        }))
        .collect()
    } else {
        vec![NetworkPolicyIngressRule {
            from: Some(vec![brokers(cluster)]),
            ports: Some(vec![port(REDIS_PORT, "TCP")]),
        }]
    };
    Some(ingress_only(
        cluster,
        cluster.redis_name(),
        COMPONENT_REDIS,
        ingress,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::test_support::{assert_child, cluster_from_yaml};

    fn rules(policy: &NetworkPolicy) -> Vec<NetworkPolicyIngressRule> {
        policy
            .spec
            .as_ref()
            .and_then(|s| s.ingress.clone())
            .expect("ingress rules")
    }

    fn ports(rule: &NetworkPolicyIngressRule) -> Vec<(i32, String)> {
        rule.ports
            .iter()
            .flatten()
            .map(|p| match (&p.port, &p.protocol) {
                (Some(IntOrString::Int(n)), Some(proto)) => (*n, proto.clone()),
                other => panic!("unexpected port {other:?}"),
            })
            .collect()
    }

    #[test]
    fn brokers_admit_clients_from_anywhere_gossip_from_brokers_and_admin_from_labelled_namespaces()
    {
        let object = cluster_from_yaml(
            "listeners: {tls: {secretName: c, port: 8883}, websocket: {port: 8080}}",
        );
        let c = Cluster::new(&object).expect("cluster");
        let policy = broker_policy(&c).expect("on by default");
        assert_child(&policy.metadata, "demo", "broker");
        let spec = policy.spec.as_ref().expect("spec");
        assert_eq!(spec.pod_selector, Some(c.label_selector(COMPONENT_BROKER)));
        assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]));
        let rules = rules(&policy);
        assert_eq!(rules.len(), 3);
        assert_eq!(rules[0].from, None, "MQTT from anywhere");
        assert_eq!(
            ports(&rules[0]),
            vec![
                (1883, "TCP".into()),
                (8883, "TCP".into()),
                (8080, "TCP".into())
            ]
        );
        assert_eq!(rules[1].from, Some(vec![brokers(&c)]), "gossip");
        assert_eq!(
            ports(&rules[1]),
            vec![(7946, "TCP".into()), (7946, "UDP".into())]
        );
        assert_eq!(
            rules[2].from,
            Some(vec![brokers(&c), admin_namespaces()]),
            "admin"
        );
        assert_eq!(ports(&rules[2]), vec![(9090, "TCP".into())]);
    }

    #[test]
    fn an_autoscaled_cluster_admits_the_operators_pods_to_the_admin_port() {
        let object =
            cluster_from_yaml("autoscaling: {maxReplicas: 5, targetConnectionsPerBroker: 1000}");
        let c = Cluster::new(&object)
            .expect("cluster")
            .with_operator_namespace(Some("starling-system".into()));
        let rules = rules(&broker_policy(&c).expect("policy"));
        let admin = rules[2].from.as_ref().expect("admin");
        assert_eq!(admin.len(), 3, "{admin:?}");
        let operator = &admin[2];
        let labels = |selector: &Option<LabelSelector>| {
            selector
                .as_ref()
                .and_then(|s| s.match_labels.clone())
                .expect("labels")
        };
        assert_eq!(
            labels(&operator.namespace_selector)["kubernetes.io/metadata.name"],
            "starling-system"
        );
        assert_eq!(
            labels(&operator.pod_selector)["mqtt.starling.dev/operator"],
            "true"
        );
        // Without autoscaling, or with an operator outside the cluster: not admitted.
        let plain = cluster_from_yaml("{}");
        let c = Cluster::new(&plain)
            .expect("cluster")
            .with_operator_namespace(Some("starling-system".into()));
        assert_eq!(rules_of(&c)[2].from.as_ref().map(Vec::len), Some(2));
        let c = Cluster::new(&object).expect("cluster");
        assert_eq!(rules_of(&c)[2].from.as_ref().map(Vec::len), Some(2));
    }

    fn rules_of(c: &Cluster<'_>) -> Vec<NetworkPolicyIngressRule> {
        rules(&broker_policy(c).expect("policy"))
    }

    #[test]
    fn peers_from_the_spec_replace_the_defaults() {
        let object = cluster_from_yaml(
            r#"
networkPolicy:
  clientsFrom: [{ipBlock: {cidr: 10.0.0.0/8}}]
  adminFrom: [{namespaceSelector: {matchLabels: {team: obs}}}]
"#,
        );
        let c = Cluster::new(&object).expect("cluster");
        let rules = rules(&broker_policy(&c).expect("policy"));
        let clients = rules[0].from.as_ref().expect("clients");
        assert_eq!(
            clients[0].ip_block.as_ref().map(|b| b.cidr.as_str()),
            Some("10.0.0.0/8")
        );
        let admin = rules[2].from.as_ref().expect("admin");
        assert_eq!(admin.len(), 2, "{admin:?}");
        assert_eq!(admin[0], brokers(&c), "the brokers always reach each other");
        assert_eq!(
            admin[1]
                .namespace_selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref())
                .and_then(|l| l.get("team"))
                .map(String::as_str),
            Some("obs")
        );
    }

    #[test]
    fn no_client_rule_without_client_listeners() {
        let object = cluster_from_yaml("listeners: {mqtt: {enabled: false}}");
        let c = Cluster::new(&object).expect("cluster");
        let rules = rules(&broker_policy(&c).expect("policy"));
        assert_eq!(rules.len(), 2, "gossip and admin only: {rules:?}");
    }

    #[test]
    fn managed_redis_admits_only_the_brokers_and_policies_can_be_turned_off() {
        let object = cluster_from_yaml("{}");
        let c = Cluster::new(&object).expect("cluster");
        let policy = redis_policy(&c).expect("managed Redis");
        assert_child(&policy.metadata, "demo-redis", "redis");
        let rules = rules(&policy);
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].from, Some(vec![brokers(&c)]));
        assert_eq!(ports(&rules[0]), vec![(6379, "TCP".into())]);

        let object = cluster_from_yaml("redis: {external: {url: \"redis://r:6379\"}}");
        let c = Cluster::new(&object).expect("cluster");
        assert!(redis_policy(&c).is_none(), "external Redis");
        assert!(broker_policy(&c).is_some());

        let object = cluster_from_yaml("networkPolicy: {enabled: false}");
        let c = Cluster::new(&object).expect("cluster");
        assert!(broker_policy(&c).is_none());
        assert!(redis_policy(&c).is_none());
    }
}

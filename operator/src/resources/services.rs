//! The broker Services: a headless one for gossip and stable pod DNS names, and the client
//! Service (LoadBalancer, NodePort or ClusterIP) for the MQTT, TLS and WebSocket ports.

use super::{Cluster, COMPONENT_BROKER};
use crate::crd::ServiceType;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Port name of plain MQTT, in pods and Services.
pub const PORT_MQTT: &str = "mqtt";
/// Port name of MQTT over TLS.
pub const PORT_MQTTS: &str = "mqtts";
/// Port name of MQTT over WebSocket.
pub const PORT_WS: &str = "ws";
/// Port name of the admin HTTP endpoint.
pub const PORT_ADMIN: &str = "admin";
/// Port name of gossip over TCP.
pub const PORT_GOSSIP: &str = "gossip";
/// Port name of gossip over UDP.
pub const PORT_GOSSIP_UDP: &str = "gossip-udp";

fn port(name: &str, port: i32, protocol: &str, app_protocol: Option<&str>) -> ServicePort {
    ServicePort {
        name: Some(name.to_string()),
        port,
        target_port: Some(IntOrString::String(name.to_string())),
        protocol: Some(protocol.to_string()),
        app_protocol: app_protocol.map(str::to_string),
        ..ServicePort::default()
    }
}

/// The client ports the spec enables, as Service ports targeting the pods' named ports.
pub fn client_ports(cluster: &Cluster<'_>) -> Vec<ServicePort> {
    let listeners = &cluster.spec().listeners;
    let mut ports = Vec::new();
    if listeners.mqtt.enabled {
        ports.push(port(PORT_MQTT, listeners.mqtt.port, "TCP", Some("mqtt")));
    }
    if let Some(tls) = &listeners.tls {
        ports.push(port(PORT_MQTTS, tls.port, "TCP", Some("mqtts")));
    }
    if let Some(ws) = &listeners.websocket {
        ports.push(port(PORT_WS, ws.port, "TCP", Some("kubernetes.io/ws")));
    }
    ports
}

/// The headless Service: gives each broker pod a DNS name
/// (`<name>-<i>.<name>-headless.<namespace>.svc`) that exists before the pod is ready, so
/// nodes can find each other while they start.
pub fn headless_service(cluster: &Cluster<'_>) -> Service {
    let spec = cluster.spec();
    let gossip = spec.gossip.port;
    Service {
        metadata: cluster.child_meta(cluster.headless_service_name(), COMPONENT_BROKER),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            publish_not_ready_addresses: Some(true),
            selector: Some(cluster.selector_labels(COMPONENT_BROKER)),
            ports: Some(vec![
                port(PORT_GOSSIP, gossip, "TCP", None),
                port(PORT_GOSSIP_UDP, gossip, "UDP", None),
                port(PORT_ADMIN, spec.broker.admin_port, "TCP", Some("http")),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The client Service that MQTT clients connect to.
pub fn client_service(cluster: &Cluster<'_>) -> Service {
    let svc = &cluster.spec().service;
    let mut metadata = cluster.child_meta(cluster.broker_name(), COMPONENT_BROKER);
    if !svc.annotations.is_empty() {
        metadata.annotations = Some(svc.annotations.clone());
    }
    let external = matches!(svc.type_, ServiceType::LoadBalancer | ServiceType::NodePort);
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(svc.type_.as_str().to_string()),
            selector: Some(cluster.selector_labels(COMPONENT_BROKER)),
            ports: Some(client_ports(cluster)),
            session_affinity: Some(svc.session_affinity.as_str().to_string()),
            load_balancer_class: if svc.type_ == ServiceType::LoadBalancer {
                svc.load_balancer_class.clone()
            } else {
                None
            },
            external_traffic_policy: if external {
                svc.external_traffic_policy.map(|p| p.as_str().to_string())
            } else {
                None
            },
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::test_support::{assert_child, cluster_from_yaml};

    fn ports_of(svc: &Service) -> Vec<(String, i32, String)> {
        svc.spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .expect("ports")
            .iter()
            .map(|p| {
                (
                    p.name.clone().unwrap_or_default(),
                    p.port,
                    p.protocol.clone().unwrap_or_default(),
                )
            })
            .collect()
    }

    #[test]
    fn headless_service_publishes_not_ready_pods_for_gossip() {
        let object = cluster_from_yaml("gossip: {port: 7000}");
        let c = Cluster::new(&object).expect("cluster");
        let svc = headless_service(&c);
        assert_child(&svc.metadata, "demo-headless", "broker");
        let spec = svc.spec.as_ref().expect("spec");
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        assert_eq!(
            spec.selector.as_ref(),
            Some(&c.selector_labels(COMPONENT_BROKER))
        );
        assert_eq!(
            ports_of(&svc),
            vec![
                ("gossip".into(), 7000, "TCP".into()),
                ("gossip-udp".into(), 7000, "UDP".into()),
                ("admin".into(), 9090, "TCP".into()),
            ]
        );
    }

    #[test]
    fn default_client_service_is_a_load_balancer_for_mqtt() {
        let object = cluster_from_yaml("{}");
        let c = Cluster::new(&object).expect("cluster");
        let svc = client_service(&c);
        assert_child(&svc.metadata, "demo", "broker");
        assert_eq!(svc.metadata.annotations, None);
        let spec = svc.spec.as_ref().expect("spec");
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(spec.session_affinity.as_deref(), Some("None"));
        assert_eq!(spec.external_traffic_policy, None);
        assert_eq!(spec.load_balancer_class, None);
        assert_eq!(ports_of(&svc), vec![("mqtt".into(), 1883, "TCP".into())]);
        let mqtt = &spec.ports.as_ref().expect("ports")[0];
        assert_eq!(
            mqtt.target_port,
            Some(IntOrString::String("mqtt".into())),
            "targets the pods' named port"
        );
    }

    #[test]
    fn client_service_carries_every_listener_and_the_service_settings() {
        let object = cluster_from_yaml(
            r#"
listeners:
  tls: {secretName: cert}
  websocket: {}
service:
  type: LoadBalancer
  annotations: {service.beta.kubernetes.io/aws-load-balancer-type: nlb}
  loadBalancerClass: example.com/lb
  externalTrafficPolicy: Local
  sessionAffinity: ClientIP
"#,
        );
        let c = Cluster::new(&object).expect("cluster");
        let svc = client_service(&c);
        let spec = svc.spec.as_ref().expect("spec");
        assert_eq!(
            ports_of(&svc),
            vec![
                ("mqtt".into(), 1883, "TCP".into()),
                ("mqtts".into(), 8883, "TCP".into()),
                ("ws".into(), 8083, "TCP".into()),
            ]
        );
        assert_eq!(
            svc.metadata.annotations.as_ref().expect("annotations")
                ["service.beta.kubernetes.io/aws-load-balancer-type"],
            "nlb"
        );
        assert_eq!(spec.load_balancer_class.as_deref(), Some("example.com/lb"));
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
        assert_eq!(spec.session_affinity.as_deref(), Some("ClientIP"));
    }

    #[test]
    fn load_balancer_settings_are_dropped_where_kubernetes_rejects_them() {
        let object = cluster_from_yaml(
            "service: {type: ClusterIP, loadBalancerClass: x/y, externalTrafficPolicy: Local}",
        );
        let c = Cluster::new(&object).expect("cluster");
        let spec = client_service(&c).spec.expect("spec");
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(spec.load_balancer_class, None);
        assert_eq!(spec.external_traffic_policy, None);

        let object = cluster_from_yaml(
            "service: {type: NodePort, loadBalancerClass: x/y, externalTrafficPolicy: Local}",
        );
        let c = Cluster::new(&object).expect("cluster");
        let spec = client_service(&c).spec.expect("spec");
        assert_eq!(spec.load_balancer_class, None);
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
    }

    #[test]
    fn tls_only_cluster_exposes_no_plain_port() {
        let object = cluster_from_yaml("listeners: {mqtt: {enabled: false}, tls: {secretName: c}}");
        let c = Cluster::new(&object).expect("cluster");
        assert_eq!(
            ports_of(&client_service(&c)),
            vec![("mqtts".into(), 8883, "TCP".into())]
        );
    }
}

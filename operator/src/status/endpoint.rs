//! Where MQTT clients connect (`status.endpoint`), and where to connect meanwhile while a
//! `LoadBalancer` Service has no address (`status.endpointHint`).

use crate::crd::ServiceType;
use crate::resources::Cluster;
use k8s_openapi::api::core::v1::Service;

/// Where clients connect: the load balancer's address, or the Service's in-cluster DNS name
/// for `ClusterIP` and `NodePort` (node addresses are not the operator's to know).
pub fn endpoint(cluster: &Cluster<'_>, service: Option<&Service>) -> Option<String> {
    let spec = cluster.spec();
    let listeners = &spec.listeners;
    let port = if listeners.mqtt.enabled {
        listeners.mqtt.port
    } else if let Some(tls) = &listeners.tls {
        tls.port
    } else {
        listeners.websocket.as_ref()?.port
    };
    match spec.service.type_ {
        ServiceType::LoadBalancer => {
            let ingress = service?
                .status
                .as_ref()?
                .load_balancer
                .as_ref()?
                .ingress
                .as_ref()?
                .first()?;
            let host = ingress.hostname.clone().or_else(|| ingress.ip.clone())?;
            if host.contains(':') {
                Some(format!("[{host}]:{port}"))
            } else {
                Some(format!("{host}:{port}"))
            }
        }
        ServiceType::ClusterIP | ServiceType::NodePort => Some(format!(
            "{}.{}.svc:{port}",
            cluster.broker_name(),
            cluster.namespace
        )),
    }
}

/// Where to connect while a `LoadBalancer` Service has no address: its node port on any node
/// and its in-cluster name. `None` for other types and once the load balancer has an address.
pub fn endpoint_hint(cluster: &Cluster<'_>, service: Option<&Service>) -> Option<String> {
    let spec = cluster.spec();
    if spec.service.type_ != ServiceType::LoadBalancer || endpoint(cluster, service).is_some() {
        return None;
    }
    let name = cluster.broker_name();
    let ns = cluster.namespace;
    let mut hint = format!(
        "the LoadBalancer Service {name} has no address yet (without a load balancer \
         controller, e.g. on kind, k3d or bare metal, it never gets one; spec.service.type \
         NodePort suits those clusters)"
    );
    let ports = service
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.ports.as_ref());
    let Some(port) = ports.and_then(|p| p.first()) else {
        return Some(hint);
    };
    hint.push_str(&format!(
        "; meanwhile connect inside the cluster to {name}.{ns}.svc:{}",
        port.port
    ));
    if let Some(node_port) = port.node_port {
        hint.push_str(&format!(", from outside to port {node_port} of any node"));
    }
    hint.push_str(&format!(
        ", or through `kubectl port-forward -n {ns} svc/{name} {}`",
        port.port
    ));
    Some(hint)
}

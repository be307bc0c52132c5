//! What a configuration leaves open to other machines, said once at start: the standalone
//! defaults are convenient on a laptop (anonymous clients on every address), and a node that
//! serves a network should know it.

use crate::BrokerConfig;
use std::net::SocketAddr;

/// One sentence per way the configuration is open to anyone who reaches it: anonymous clients
/// on a listener not bound to loopback, and cluster gossip without encryption on such an
/// address. Empty when nothing is.
pub fn exposure_warnings(config: &BrokerConfig) -> Vec<String> {
    let reachable = |addr: &SocketAddr| !addr.ip().is_loopback();
    let mut warnings = Vec::new();
    if config.auth.allow_anonymous {
        let listeners = [
            config.listeners.tcp.map(|a| ("MQTT", a)),
            config
                .listeners
                .tls
                .as_ref()
                .map(|t| ("MQTT over TLS", t.bind)),
            config.listeners.ws.map(|a| ("WebSocket", a)),
        ];
        for (kind, addr) in listeners
            .into_iter()
            .flatten()
            .filter(|(_, a)| reachable(a))
        {
            warnings.push(format!(
                "anonymous clients are accepted on the {kind} listener {addr}, reachable from \
                 other machines: set auth.allow_anonymous = false with auth.password_file, or \
                 bind 127.0.0.1"
            ));
        }
    }
    let cluster = &config.cluster;
    let clustered = cluster.redis_url.is_some() || cluster.redis_sentinel.is_some();
    if let (true, Some(bind), None) = (clustered, cluster.gossip_bind, &cluster.gossip_key_file) {
        if reachable(&bind) {
            warnings.push(format!(
                "gossip on {bind} is not encrypted: anything that reaches it can join the cluster \
                 or report a node dead; set cluster.gossip_key_file"
            ));
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standalone_defaults_warn_about_anonymous_clients_on_every_address() {
        let warnings = exposure_warnings(&BrokerConfig::default());
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("0.0.0.0:1883"), "{}", warnings[0]);
        assert!(warnings[0].contains("auth.allow_anonymous"));
    }

    #[test]
    fn loopback_or_authenticated_listeners_are_quiet() {
        let mut config = BrokerConfig::default();
        config.listeners.tcp = Some("127.0.0.1:1883".parse().unwrap());
        assert!(exposure_warnings(&config).is_empty());
        let mut config = BrokerConfig::default();
        config.auth.allow_anonymous = false;
        config.listeners.ws = Some("0.0.0.0:8080".parse().unwrap());
        assert!(exposure_warnings(&config).is_empty());
    }

    #[test]
    fn clustered_gossip_without_a_key_on_a_network_address_is_named() {
        let mut config = BrokerConfig::default();
        config.auth.allow_anonymous = false;
        config.cluster.redis_url = Some("redis://127.0.0.1:6379".into());
        config.cluster.gossip_bind = Some("0.0.0.0:7946".parse().unwrap());
        let warnings = exposure_warnings(&config);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("cluster.gossip_key_file"));
        config.cluster.gossip_key_file = Some("/k".into());
        assert!(exposure_warnings(&config).is_empty());
        config.cluster.gossip_key_file = None;
        config.cluster.gossip_bind = Some("127.0.0.1:7946".parse().unwrap());
        assert!(exposure_warnings(&config).is_empty());
    }
}

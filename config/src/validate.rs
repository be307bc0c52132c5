//! Validation of a parsed configuration: every check that parsing alone cannot make, each error
//! naming the offending field and a fix.

use crate::types::{
    BrokerConfig, CertificateUsername, ClientAuth, RedisSentinelConfig, TlsListenerConfig,
};
use crate::ConfigError;
use std::net::SocketAddr;

impl BrokerConfig {
    /// Checks every value that parsing alone cannot; the error names the field and the fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id.trim().is_empty() || self.node_id.contains(['/', '+', '#']) {
            return Err(ConfigError::invalid(
                "node_id",
                format!("{:?} is empty or contains '/', '+' or '#'", self.node_id),
                "use a name such as `starling-0` (letters, digits, '-', '_', '.')",
            ));
        }
        let l = &self.listeners;
        if l.tcp.is_none() && l.tls.is_none() && l.ws.is_none() {
            return Err(ConfigError::invalid(
                "listeners",
                "no listener is enabled",
                "set at least one of `listeners.tcp`, `listeners.tls` or `listeners.ws`",
            ));
        }
        let mut binds: Vec<(&'static str, SocketAddr)> = Vec::new();
        if let Some(a) = l.tcp {
            binds.push(("listeners.tcp", a));
        }
        if let Some(t) = &l.tls {
            binds.push(("listeners.tls.bind", t.bind));
            t.validate()?;
        }
        if let Some(a) = l.ws {
            binds.push(("listeners.ws", a));
        }
        if let Some(a) = self.admin.bind {
            binds.push(("admin.bind", a));
        }
        for (i, (field, addr)) in binds.iter().enumerate() {
            if addr.port() == 0 {
                continue;
            }
            if let Some((other, _)) = binds[..i].iter().find(|(_, a)| a == addr) {
                return Err(ConfigError::invalid(
                    field,
                    format!("{addr} is already used by `{other}`"),
                    "give every listener its own port",
                ));
            }
        }
        let lim = &self.limits;
        if !(64..=268_435_455).contains(&lim.max_packet_size) {
            return Err(ConfigError::invalid(
                "limits.max_packet_size",
                format!("{} is outside 64..=268435455", lim.max_packet_size),
                "choose a size in bytes between 64 and 268435455 (MQTT's largest packet)",
            ));
        }
        if lim.max_connect_size < 64 {
            return Err(ConfigError::invalid(
                "limits.max_connect_size",
                format!("{} is below 64", lim.max_connect_size),
                "choose a size in bytes of at least 64 (a CONNECT holds the client id, credentials and the will message; limits.max_packet_size bounds it too)",
            ));
        }
        if lim.max_retained_payload_size == 0 {
            return Err(ConfigError::invalid(
                "limits.max_retained_payload_size",
                "0 would refuse every retained message",
                "choose a size in bytes such as 262144, or limits.max_packet_size to not limit retained payloads beyond every packet (limits.max_retained_messages = 0 lifts the count limit)",
            ));
        }
        if lim.max_retained_bytes > 0
            && lim.max_retained_bytes < u64::from(lim.max_retained_payload_size)
        {
            return Err(ConfigError::invalid(
                "limits.max_retained_bytes",
                format!(
                    "{} is below limits.max_retained_payload_size ({}), so some payloads that size allows could never be retained",
                    lim.max_retained_bytes, lim.max_retained_payload_size
                ),
                "choose a total of at least limits.max_retained_payload_size, or 0 for no total limit",
            ));
        }
        if !(1..=65535).contains(&lim.max_topic_length) {
            return Err(ConfigError::invalid(
                "limits.max_topic_length",
                format!("{} is outside 1..=65535", lim.max_topic_length),
                "choose a length in bytes between 1 and 65535",
            ));
        }
        if lim.max_inflight == 0 {
            return Err(ConfigError::invalid(
                "limits.max_inflight",
                "0 would stop every QoS 1/2 delivery",
                "choose a value between 1 and 65535 (100 is a good default)",
            ));
        }
        for (field, value) in [
            (
                "limits.max_subscriptions_per_client",
                lim.max_subscriptions_per_client,
            ),
            ("limits.max_queued_messages", lim.max_queued_messages),
            ("limits.max_connections", lim.max_connections),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(
                    field,
                    "0 leaves nothing allowed",
                    "choose a positive number",
                ));
            }
        }
        if self.reload.interval_secs > 86_400 {
            return Err(ConfigError::invalid(
                "reload.interval_secs",
                format!("{} is more than a day", self.reload.interval_secs),
                "choose a number of seconds up to 86400, or 0 to reload only on SIGHUP",
            ));
        }
        if lim.connect_timeout_secs == 0 {
            return Err(ConfigError::invalid(
                "limits.connect_timeout_secs",
                "0 would close every connection before its CONNECT arrives",
                "choose a number of seconds such as 10",
            ));
        }
        if let Some(reference) = &self.shutdown.server_reference {
            if reference.trim().is_empty() {
                return Err(ConfigError::invalid(
                    "shutdown.server_reference",
                    "the reference is empty",
                    "remove the field or name a server such as `mqtt.example.com:1883`",
                ));
            }
        }
        if !self.auth.allow_anonymous && self.auth.password_file.is_none() {
            return Err(ConfigError::invalid(
                "auth.allow_anonymous",
                "anonymous access is off but no `auth.password_file` is set, so nobody could connect",
                "set `auth.password_file` or allow anonymous clients",
            ));
        }
        let cluster = &self.cluster;
        let rebalance = &cluster.rebalance;
        if !(1..=100).contains(&rebalance.tolerance_percent) {
            return Err(ConfigError::invalid(
                "cluster.rebalance.tolerance_percent",
                format!("{} is outside 1..=100", rebalance.tolerance_percent),
                "choose how far above the mean a node may be, e.g. 10 (the default)",
            ));
        }
        if rebalance.enabled && rebalance.rate_per_sec == 0 {
            return Err(ConfigError::invalid(
                "cluster.rebalance.rate_per_sec",
                "0 would never move a connection",
                "choose a rate the other nodes can take in, e.g. 50 (the default), or set `cluster.rebalance.enabled = false`",
            ));
        }
        if let Some(url) = &cluster.redis_url {
            let schemes = ["redis://", "rediss://", "redis+unix://", "unix://"];
            if !schemes.iter().any(|s| url.starts_with(s)) || url.contains(char::is_whitespace) {
                return Err(ConfigError::invalid(
                    "cluster.redis_url",
                    format!("{url:?} is not a Redis URL"),
                    "write a URL such as `redis://redis:6379/0` (or rediss://, redis+unix://, unix://)",
                ));
            }
        }
        if let Some(sentinel) = &cluster.redis_sentinel {
            check_sentinel(sentinel, cluster.redis_url.is_some())?;
        }
        let tls = &cluster.redis_tls;
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return Err(ConfigError::invalid(
                if tls.cert_file.is_some() {
                    "cluster.redis_tls.key_file"
                } else {
                    "cluster.redis_tls.cert_file"
                },
                "a client certificate needs both its certificate and its key",
                "set both `cluster.redis_tls.cert_file` and `cluster.redis_tls.key_file`, or neither",
            ));
        }
        let uses_tls = cluster
            .redis_url
            .as_deref()
            .is_some_and(|url| url.starts_with("rediss://"))
            || cluster.redis_sentinel.as_ref().is_some_and(|s| s.tls);
        if tls.is_set() && !uses_tls {
            return Err(ConfigError::invalid(
                "cluster.redis_tls",
                "TLS files are set but the connection to Redis does not use TLS",
                "use a `rediss://` URL (or `tls = true` under `cluster.redis_sentinel`), or remove `cluster.redis_tls`",
            ));
        }
        let replication = &cluster.redis_replication;
        if replication.wait_replicas > 0 {
            if !cluster.has_redis() {
                return Err(ConfigError::invalid(
                    "cluster.redis_replication.wait_replicas",
                    "there is no Redis to wait for",
                    "set `cluster.redis_url` or `cluster.redis_sentinel`, or remove the setting",
                ));
            }
            if !(1..=60_000).contains(&replication.wait_timeout_ms) {
                return Err(ConfigError::invalid(
                    "cluster.redis_replication.wait_timeout_ms",
                    format!("{} is outside 1..=60000", replication.wait_timeout_ms),
                    "choose a few hundred milliseconds to a few seconds (1000 is the default)",
                ));
            }
        }
        for seed in &cluster.gossip_seeds {
            if let Err(problem) = check_host_port(seed) {
                return Err(ConfigError::invalid(
                    "cluster.gossip_seeds",
                    format!("{seed:?}: {problem}"),
                    "write each seed as `host:port`, e.g. `starling-0.starling:7946`, `10.0.0.5:7946` or `[fd00::5]:7946`",
                ));
            }
        }
        if cluster.gossip_bind.is_none() {
            let needs_bind = [
                ("cluster.gossip_seeds", !cluster.gossip_seeds.is_empty()),
                (
                    "cluster.gossip_advertise",
                    cluster.gossip_advertise.is_some(),
                ),
                ("cluster.gossip_key_file", cluster.gossip_key_file.is_some()),
            ];
            if let Some((field, _)) = needs_bind.iter().find(|(_, set)| *set) {
                return Err(ConfigError::invalid(
                    "cluster.gossip_bind",
                    format!("`{field}` is set but gossip is off"),
                    "set `cluster.gossip_bind` (e.g. `0.0.0.0:7946`) or remove the other gossip settings",
                ));
            }
        }
        if let Some(bind) = cluster.gossip_bind {
            if let Some((other, _)) = binds.iter().find(|(_, a)| *a == bind && bind.port() != 0) {
                return Err(ConfigError::invalid(
                    "cluster.gossip_bind",
                    format!("{bind} is already used by `{other}`"),
                    "give gossip its own port, e.g. 7946",
                ));
            }
        }
        if let Some(addr) = cluster.gossip_advertise {
            if addr.ip().is_unspecified() || addr.port() == 0 {
                return Err(ConfigError::invalid(
                    "cluster.gossip_advertise",
                    format!("{addr} cannot be reached by other nodes"),
                    "advertise this node's own IP and gossip port, e.g. the pod IP and 7946",
                ));
            }
        }
        if let Some(path) = &cluster.gossip_key_file {
            if path.as_os_str().is_empty() {
                return Err(ConfigError::invalid(
                    "cluster.gossip_key_file",
                    "the path is empty",
                    "remove the field or name a file holding a base64 key of 16, 24 or 32 bytes",
                ));
            }
        }
        Ok(())
    }
}
/// Checks `cluster.redis_sentinel` (`with_url`: `cluster.redis_url` is set too).
fn check_sentinel(sentinel: &RedisSentinelConfig, with_url: bool) -> Result<(), ConfigError> {
    if with_url {
        return Err(ConfigError::invalid(
            "cluster.redis_sentinel",
            "`cluster.redis_url` is set too, so the store would be ambiguous",
            "remove `cluster.redis_url` (the sentinels name the primary) or `cluster.redis_sentinel`",
        ));
    }
    let name = &sentinel.master_name;
    if name.trim().is_empty() || name.contains(char::is_whitespace) {
        return Err(ConfigError::invalid(
            "cluster.redis_sentinel.master_name",
            format!("{name:?} is empty or contains whitespace"),
            "write the name the sentinels monitor, e.g. `mymaster` (`sentinel monitor mymaster …`)",
        ));
    }
    if sentinel.sentinels.is_empty() {
        return Err(ConfigError::invalid(
            "cluster.redis_sentinel.sentinels",
            "no sentinel is listed",
            "list the sentinels as `host:port`, e.g. [\"sentinel-0:26379\", \"sentinel-1:26379\", \"sentinel-2:26379\"]",
        ));
    }
    for address in &sentinel.sentinels {
        if let Err(problem) = check_host_port(address) {
            return Err(ConfigError::invalid(
                "cluster.redis_sentinel.sentinels",
                format!("{address:?}: {problem}"),
                "write each sentinel as `host:port`, e.g. `sentinel-0:26379` or `10.0.0.7:26379`",
            ));
        }
    }
    if sentinel.db < 0 {
        return Err(ConfigError::invalid(
            "cluster.redis_sentinel.db",
            format!("{} is negative", sentinel.db),
            "use a database number such as 0",
        ));
    }
    Ok(())
}
/// Checks that `text` is `host:port`: a DNS name or IP (IPv6 in brackets) and a port 1..=65535.
fn check_host_port(text: &str) -> Result<(), String> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| "no `:port`".to_string())?;
    match port.parse::<u16>() {
        Ok(p) if p != 0 => {}
        _ => return Err(format!("port {port:?} is not a number in 1..=65535")),
    }
    let host = match host.strip_prefix('[') {
        Some(inner) => {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| "unclosed `[`".to_string())?;
            return inner
                .parse::<std::net::Ipv6Addr>()
                .map(|_| ())
                .map_err(|_| format!("{inner:?} is not an IPv6 address"));
        }
        None => host,
    };
    // A fully qualified name may end in a dot.
    let host = host.strip_suffix('.').unwrap_or(host);
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|label| !label.is_empty() && label.len() <= 63)
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    if name_ok {
        Ok(())
    } else {
        Err(format!(
            "{host:?} is not a host name or IPv4 address (IPv6 goes in brackets)"
        ))
    }
}

impl TlsListenerConfig {
    /// Client certificates need a CA to check them against, and are asked for only when used.
    fn validate(&self) -> Result<(), ConfigError> {
        let asks = self.client_auth != ClientAuth::None;
        if asks && self.client_ca_file.is_none() {
            return Err(ConfigError::invalid(
                "listeners.tls.client_ca_file",
                format!(
                    "`client_auth = \"{}\"` needs the CA bundle that client certificates are checked against",
                    client_auth_name(self.client_auth)
                ),
                "set `listeners.tls.client_ca_file` to a PEM file of the CA certificates that sign your clients' certificates, or set `client_auth = \"none\"`",
            ));
        }
        if !asks && self.client_ca_file.is_some() {
            return Err(ConfigError::invalid(
                "listeners.tls.client_auth",
                "`client_ca_file` is set but `client_auth` is \"none\", so clients are never asked for a certificate",
                "set `client_auth = \"optional\"` or `\"required\"`, or remove `client_ca_file`",
            ));
        }
        if !asks && self.username_from_certificate != CertificateUsername::None {
            return Err(ConfigError::invalid(
                "listeners.tls.username_from_certificate",
                "a username is to come from client certificates, but `client_auth` is \"none\", so clients are never asked for one",
                "set `client_auth = \"optional\"` or `\"required\"` and `client_ca_file`, or set `username_from_certificate = \"none\"`",
            ));
        }
        Ok(())
    }
}

fn client_auth_name(mode: ClientAuth) -> &'static str {
    match mode {
        ClientAuth::None => "none",
        ClientAuth::Optional => "optional",
        ClientAuth::Required => "required",
    }
}

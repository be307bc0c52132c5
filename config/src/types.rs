//! The configuration types, their defaults and their validation.

use crate::ConfigError;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything a broker node needs to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Name of this node: used in logs, `$SYS` topics and (in a cluster) as its identity.
    pub node_id: String,
    /// Where clients connect.
    pub listeners: ListenersConfig,
    /// The HTTP admin endpoint (`/healthz`, `/readyz`, `/metrics`).
    pub admin: AdminConfig,
    /// Protocol and resource limits.
    pub limits: LimitsConfig,
    /// Session and message lifetimes.
    pub session: SessionConfig,
    /// Authentication and authorisation.
    pub auth: AuthConfig,
    /// Logging.
    pub log: LogConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// `$SYS/` broker statistics.
    pub sys: SysConfig,
    /// Reloading changed files (TLS certificate, password and ACL files, admin token).
    pub reload: ReloadConfig,
    /// Clustering: gossip membership and the shared store. All unset means a standalone node.
    pub cluster: ClusterConfig,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            node_id: "starling-0".to_string(),
            listeners: ListenersConfig::default(),
            admin: AdminConfig::default(),
            limits: LimitsConfig::default(),
            session: SessionConfig::default(),
            auth: AuthConfig::default(),
            log: LogConfig::default(),
            shutdown: ShutdownConfig::default(),
            sys: SysConfig::default(),
            reload: ReloadConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

/// The client-facing listeners; each is optional and any combination may run at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenersConfig {
    /// Plain MQTT over TCP; `"off"` disables it.
    #[serde(with = "address_or_off")]
    pub tcp: Option<SocketAddr>,
    /// MQTT over TLS.
    pub tls: Option<TlsListenerConfig>,
    /// MQTT over WebSocket (subprotocol `mqtt`), plain.
    pub ws: Option<SocketAddr>,
}

impl Default for ListenersConfig {
    fn default() -> Self {
        ListenersConfig {
            tcp: Some(SocketAddr::from(([0, 0, 0, 0], 1883))),
            tls: None,
            ws: None,
        }
    }
}

/// An address that is on by default, written `"off"` when disabled: TOML has no null, and an
/// omitted key means the default.
mod address_or_off {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::net::SocketAddr;

    const OFF: &str = "off";

    pub fn serialize<S: Serializer>(value: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_str(OFF),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        if text == OFF {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!(
                "{text:?} is neither an address such as \"0.0.0.0:1883\" nor \"off\""
            ))
        })
    }
}

/// A TLS listener: address plus PEM certificate chain and private key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListenerConfig {
    /// Address to bind.
    pub bind: SocketAddr,
    /// PEM file with the certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// The HTTP admin endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin HTTP server; `"off"` disables it.
    #[serde(with = "address_or_off")]
    pub bind: Option<SocketAddr>,
    /// A file holding the bearer token the admin API (`/api/v1/...`) requires; without one the
    /// API is off (health, readiness and metrics stay open). Read again when it changes.
    pub token_file: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            bind: Some(SocketAddr::from(([0, 0, 0, 0], 9090))),
            token_file: None,
        }
    }
}

/// Limits that protect the broker from misbehaving or hostile clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest MQTT packet accepted from a client, in bytes (advertised in v5 CONNACK).
    pub max_packet_size: u32,
    /// Longest topic name or filter accepted, in bytes.
    pub max_topic_length: usize,
    /// Most subscriptions one client may hold.
    pub max_subscriptions_per_client: usize,
    /// Most unacknowledged QoS 1/2 messages in flight to one client (also capped by the
    /// client's own receive maximum), and the receive maximum advertised to v5 clients.
    pub max_inflight: u16,
    /// Most messages queued for one client (offline, or online beyond the in-flight window).
    /// When full, the newest message is dropped and counted in `starling_messages_dropped_total`.
    pub max_queued_messages: usize,
    /// Milliseconds a publisher waits for room when a subscriber's queue is full (backpressure)
    /// before the message is dropped for that subscriber. A subscriber that stays full this long is
    /// treated as slow: its messages are dropped without waiting until it reads again.
    pub delivery_wait_ms: u64,
    /// Most simultaneous client connections; further connections are refused.
    pub max_connections: usize,
    /// Topic alias maximum advertised to v5 clients (0 disables topic aliases).
    pub max_topic_alias: u16,
    /// Longest keep-alive a client may ask for, in seconds (v5 clients are told via Server Keep Alive).
    pub max_keep_alive_secs: u16,
    /// Seconds a client has to send CONNECT after opening the connection.
    pub connect_timeout_secs: u64,
    /// Largest CONNECT packet accepted, in bytes (`max_packet_size` too bounds it): a client is not
    /// authenticated yet when it sends one, so it may not make the broker hold much for it.
    /// A larger CONNECT closes the connection at its header.
    pub max_connect_size: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_packet_size: 1024 * 1024,
            max_topic_length: 1024,
            max_subscriptions_per_client: 1000,
            max_inflight: 100,
            max_queued_messages: 1000,
            delivery_wait_ms: 250,
            max_connections: 100_000,
            max_topic_alias: 64,
            max_keep_alive_secs: 3600,
            connect_timeout_secs: 10,
            max_connect_size: 64 * 1024,
        }
    }
}

/// Session and message lifetimes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// Upper bound on a session's expiry interval, in seconds. MQTT 3.1.1 persistent sessions
    /// (clean session = 0) get this expiry.
    pub max_session_expiry_secs: u32,
    /// Upper bound on a message's expiry interval, in seconds (0 = no bound).
    pub max_message_expiry_secs: u32,
    /// Queue QoS 0 messages for offline persistent sessions too.
    pub queue_qos0: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_session_expiry_secs: 2 * 60 * 60,
            max_message_expiry_secs: 0,
            queue_qos0: false,
        }
    }
}

/// Authentication and authorisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Accept clients that send no username.
    pub allow_anonymous: bool,
    /// File of `username:hash` lines (argon2 PHC strings); see `starling-broker passwd`.
    pub password_file: Option<PathBuf>,
    /// File of topic access rules; without it every client may publish and subscribe anywhere.
    pub acl_file: Option<PathBuf>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            allow_anonymous: true,
            password_file: None,
            acl_file: None,
        }
    }
}

/// Log output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `starling_broker=debug,info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".to_string(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Graceful shutdown on SIGTERM / SIGINT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// When set, v5 clients are disconnected with 0x9C "use another server" and this reference
    /// instead of 0x8B "server shutting down".
    pub server_reference: Option<String>,
    /// Seconds to wait for connections to close after they were told to go.
    pub drain_timeout_secs: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            server_reference: None,
            drain_timeout_secs: 10,
        }
    }
}

/// `$SYS/` statistics topics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SysConfig {
    /// Seconds between `$SYS/` updates; 0 disables them.
    pub interval_secs: u64,
}

impl Default for SysConfig {
    fn default() -> Self {
        SysConfig { interval_secs: 10 }
    }
}

/// When the broker reads its files again (they are always read again on `SIGHUP`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReloadConfig {
    /// Seconds between checks of the TLS certificate and key, the password and ACL files and
    /// the admin token for changes; 0 checks only on `SIGHUP`.
    pub interval_secs: u64,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig { interval_secs: 5 }
    }
}

/// Clustering. With every field unset (the default) the node runs standalone.
///
/// Nodes find each other by gossip (SWIM) on `gossip_bind`; a new node contacts the
/// `gossip_seeds` (retried in the background until one answers) and learns the rest from it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Redis URL of the shared cluster store (`redis://`, `rediss://`, `redis+unix://` or
    /// `unix://`). Set this or `redis_sentinel`, not both.
    pub redis_url: Option<String>,
    /// A Redis run by Sentinel: the store is whichever server the sentinels name the primary,
    /// and a failover is followed without a restart. Set this or `redis_url`, not both.
    pub redis_sentinel: Option<RedisSentinelConfig>,
    /// How acknowledgements wait for Redis replication (off unless set).
    pub redis_replication: RedisReplicationConfig,
    /// TLS material for Redis (`rediss://`, or Sentinel with `tls = true`) beyond the system's
    /// roots: a CA bundle, and a client certificate for Redis' `tls-auth-clients`.
    pub redis_tls: RedisTlsConfig,
    /// Address the gossip protocol binds, TCP and UDP on the same port (7946 by convention).
    /// Required for clustering.
    pub gossip_bind: Option<SocketAddr>,
    /// Address other nodes reach this node's gossip at, when it differs from `gossip_bind`
    /// (e.g. the pod IP when binding `0.0.0.0`). Unset: the bind address, or, when that is
    /// unspecified, the first private address of the host.
    pub gossip_advertise: Option<SocketAddr>,
    /// Gossip addresses of other nodes as `host:port` (DNS names, or IPs; IPv6 in brackets).
    /// Names are resolved by the system resolver and every address of a name is tried, so one
    /// Kubernetes headless Service name (`NAME-headless.NS.svc:7946`) finds every pod.
    pub gossip_seeds: Vec<String>,
    /// File holding the gossip encryption key: base64 text (surrounding whitespace ignored)
    /// of 16, 24 or 32 bytes, for AES-128/192/256-GCM, e.g. from `openssl rand -base64 32`.
    /// Every node needs the same key; unset means gossip is not encrypted.
    pub gossip_key_file: Option<PathBuf>,
}

/// Where the sentinels of a Sentinel-run Redis are, and how to log in to them and to the data
/// nodes (the primary and its replicas).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSentinelConfig {
    /// The name the sentinels monitor the primary under (`sentinel monitor <name> …`).
    pub master_name: String,
    /// The sentinels as `host:port` (26379 by convention); asked in order until one answers.
    pub sentinels: Vec<String>,
    /// TLS to the sentinels and the data nodes, verified against the system's roots or
    /// `cluster.redis_tls.ca_file`.
    pub tls: bool,
    /// The data nodes' database number.
    pub db: i64,
    /// ACL user on the data nodes (unset: `default`).
    pub username: Option<String>,
    /// File holding the data nodes' password (surrounding whitespace ignored).
    pub password_file: Option<PathBuf>,
    /// ACL user on the sentinels (unset: `default`).
    pub sentinel_username: Option<String>,
    /// File holding the sentinels' password (surrounding whitespace ignored).
    pub sentinel_password_file: Option<PathBuf>,
}

/// TLS files for the connections to Redis (PEM).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisTlsConfig {
    /// CA certificates that Redis' certificate must chain to, instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// This node's client certificate (with `key_file`), for a Redis that asks for one.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key.
    pub key_file: Option<PathBuf>,
}

impl RedisTlsConfig {
    /// Whether any file is set.
    pub fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }
}

/// Whether a QoS 1/2 acknowledgement waits until Redis replicas hold what it depends on (Redis'
/// `WAIT`), so that a failover right after it cannot lose the message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisReplicationConfig {
    /// How many replicas must confirm before an acknowledgement goes out; 0 (the default) does
    /// not wait.
    pub wait_replicas: u32,
    /// How long to wait for them; when fewer confirm in time the acknowledgement goes out anyway
    /// and `starling_cluster_replication_waits_short_total` counts it.
    pub wait_timeout_ms: u64,
}

impl Default for RedisReplicationConfig {
    fn default() -> Self {
        RedisReplicationConfig {
            wait_replicas: 0,
            wait_timeout_ms: 1000,
        }
    }
}

impl ClusterConfig {
    /// Whether a Redis is configured (by URL or by Sentinel): the node then shares its state.
    pub fn has_redis(&self) -> bool {
        self.redis_url.is_some() || self.redis_sentinel.is_some()
    }
}

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

/// Checks that `text` is `host:port`: a DNS name or IP (IPv6 in brackets) and a port 1..=65535.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        BrokerConfig::default()
            .validate()
            .expect("defaults validate");
    }

    #[test]
    fn toml_round_trip_keeps_every_value() {
        let mut config = BrokerConfig::default();
        config.limits.max_packet_size = 4096;
        config.listeners.ws = Some("127.0.0.1:8083".parse().expect("addr"));
        config.shutdown.server_reference = Some("other:1883".into());
        let text = config.to_toml_string().expect("render");
        let parsed = BrokerConfig::from_toml_str(&text).expect("parse");
        assert_eq!(parsed, config);
    }

    #[test]
    fn listeners_switched_off_stay_off_through_toml() {
        let mut config = BrokerConfig::default();
        config.listeners.tcp = None;
        config.listeners.ws = Some("127.0.0.1:8083".parse().expect("addr"));
        config.admin.bind = None;
        let text = config.to_toml_string().expect("render");
        assert!(text.contains("tcp = \"off\""), "{text}");
        assert_eq!(BrokerConfig::from_toml_str(&text).expect("parse"), config);
    }

    #[test]
    fn a_bad_address_names_the_field() {
        let err = BrokerConfig::from_toml_str("[listeners]\ntcp = \"nowhere\"\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("listeners.tcp") && text.contains("\"off\""),
            "{text}"
        );
    }

    #[test]
    fn unknown_field_is_named() {
        let err = BrokerConfig::from_toml_str("[limits]\nmax_packet_sise = 10\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("max_packet_sise"), "{text}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let err = BrokerConfig::from_toml_str("[limits]\nmax_inflight = \"many\"\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("limits.max_inflight"), "{text}");
    }

    #[test]
    fn packet_size_out_of_range_names_field_and_fix() {
        let err = BrokerConfig::from_toml_str("[limits]\nmax_packet_size = 10\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("limits.max_packet_size"), "{text}");
        assert!(text.contains("between 64 and"), "{text}");
    }

    #[test]
    fn clashing_ports_are_rejected() {
        let err = BrokerConfig::from_toml_str(
            "[listeners]\ntcp = \"127.0.0.1:1883\"\nws = \"127.0.0.1:1883\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("listeners.ws"), "{err}");
    }

    #[test]
    fn no_listener_is_rejected() {
        let mut config = BrokerConfig::default();
        config.listeners.tcp = None;
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("`listeners`"), "{err}");
    }

    #[test]
    fn closed_broker_without_users_is_rejected() {
        let err = BrokerConfig::from_toml_str("[auth]\nallow_anonymous = false\n").unwrap_err();
        assert!(err.to_string().contains("auth.password_file"), "{err}");
    }

    #[test]
    fn cluster_defaults_to_standalone_and_takes_gossip_settings() {
        assert_eq!(BrokerConfig::default().cluster, ClusterConfig::default());
        let config = BrokerConfig::from_toml_str(
            "[cluster]\ngossip_bind = \"0.0.0.0:7946\"\n\
             gossip_advertise = \"10.1.2.3:7946\"\n\
             gossip_seeds = [\"starling-0.starling:7946\", \"10.0.0.5:7946\", \"[fd00::5]:7946\", \"a.b.svc.cluster.local.:7946\"]\n\
             gossip_key_file = \"/etc/starling/gossip.key\"\n\
             redis_url = \"redis://redis:6379/0\"\n",
        )
        .expect("valid cluster section");
        assert_eq!(config.cluster.gossip_seeds.len(), 4);
    }

    #[test]
    fn cluster_seeds_must_be_host_port() {
        for bad in [
            "starling-0",
            "starling-0:",
            "starling-0:0",
            "starling-0:70000",
            ":7946",
            "fd00::5:7946",
            "[fd00::5:7946",
            "bad host:7946",
            "a..b:7946",
        ] {
            let text =
                format!("[cluster]\ngossip_bind = \"0.0.0.0:7946\"\ngossip_seeds = [{bad:?}]\n");
            let err = BrokerConfig::from_toml_str(&text).unwrap_err().to_string();
            assert!(err.contains("cluster.gossip_seeds"), "{bad}: {err}");
        }
    }

    #[test]
    fn gossip_settings_need_gossip_bind() {
        for line in [
            "gossip_seeds = [\"a:7946\"]",
            "gossip_advertise = \"10.0.0.1:7946\"",
            "gossip_key_file = \"/k\"",
        ] {
            let err = BrokerConfig::from_toml_str(&format!("[cluster]\n{line}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("cluster.gossip_bind"), "{line}: {err}");
        }
    }

    #[test]
    fn cluster_values_that_cannot_work_are_named() {
        let cases = [
            ("redis_url = \"localhost:6379\"", "cluster.redis_url"),
            (
                "gossip_bind = \"0.0.0.0:7946\"\ngossip_advertise = \"0.0.0.0:7946\"",
                "cluster.gossip_advertise",
            ),
            ("gossip_bind = \"0.0.0.0:1883\"", "cluster.gossip_bind"),
            (
                "gossip_bind = \"0.0.0.0:7946\"\ngossip_key_file = \"\"",
                "cluster.gossip_key_file",
            ),
        ];
        for (body, field) in cases {
            let err = BrokerConfig::from_toml_str(&format!("[cluster]\n{body}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{body}: {err}");
        }
    }

    #[test]
    fn a_sentinel_run_redis_is_accepted_with_a_replication_wait() {
        let config = BrokerConfig::from_toml_str(
            "[cluster]\n[cluster.redis_sentinel]\nmaster_name = \"mymaster\"\n\
             sentinels = [\"sentinel-0:26379\", \"10.0.0.7:26379\"]\n\
             password_file = \"/run/secrets/redis-password\"\n\
             [cluster.redis_replication]\nwait_replicas = 1\n",
        )
        .expect("valid sentinel section");
        assert!(config.cluster.has_redis());
        let sentinel = config.cluster.redis_sentinel.expect("sentinel");
        assert_eq!(sentinel.master_name, "mymaster");
        assert_eq!(sentinel.sentinels.len(), 2);
        assert_eq!(config.cluster.redis_replication.wait_replicas, 1);
        assert_eq!(config.cluster.redis_replication.wait_timeout_ms, 1000);
        let tls = BrokerConfig::from_toml_str(
            "[cluster]\nredis_url = \"rediss://r:6379\"\n[cluster.redis_tls]\nca_file = \"/ca.crt\"\ncert_file = \"/c.crt\"\nkey_file = \"/c.key\"\n",
        )
        .expect("TLS files with a rediss URL");
        assert!(tls.cluster.redis_tls.is_set());
    }

    #[test]
    fn sentinel_and_replication_values_that_cannot_work_are_named() {
        let sentinel = "[cluster.redis_sentinel]\nmaster_name = \"m\"\nsentinels = [\"s:26379\"]\n";
        let cases = [
            (
                format!("redis_url = \"redis://r:6379\"\n{sentinel}"),
                "cluster.redis_sentinel",
            ),
            (
                "[cluster.redis_sentinel]\nsentinels = [\"s:26379\"]\n".to_string(),
                "cluster.redis_sentinel.master_name",
            ),
            (
                "[cluster.redis_sentinel]\nmaster_name = \"m\"\n".to_string(),
                "cluster.redis_sentinel.sentinels",
            ),
            (
                "[cluster.redis_sentinel]\nmaster_name = \"m\"\nsentinels = [\"s\"]\n".to_string(),
                "cluster.redis_sentinel.sentinels",
            ),
            (
                "redis_url = \"redis://r:6379\"\n[cluster.redis_tls]\nca_file = \"/ca.crt\"\n".to_string(),
                "cluster.redis_tls",
            ),
            (
                "redis_url = \"rediss://r:6379\"\n[cluster.redis_tls]\ncert_file = \"/c.crt\"\n".to_string(),
                "cluster.redis_tls.key_file",
            ),
            (
                "[cluster.redis_replication]\nwait_replicas = 1\n".to_string(),
                "cluster.redis_replication.wait_replicas",
            ),
            (
                format!("{sentinel}[cluster.redis_replication]\nwait_replicas = 1\nwait_timeout_ms = 0\n"),
                "cluster.redis_replication.wait_timeout_ms",
            ),
        ];
        for (body, field) in cases {
            let err = BrokerConfig::from_toml_str(&format!("[cluster]\n{body}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{body}: {err}");
        }
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's signature, not ours
    fn environment_overrides_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("starling.toml", "[limits]\nmax_inflight = 5\n")?;
            jail.set_env("STARLING_LIMITS__MAX_INFLIGHT", "7");
            jail.set_env("STARLING_NODE_ID", "node-b");
            let figment = BrokerConfig::figment(Some(std::path::Path::new("starling.toml")));
            let config = BrokerConfig::from_figment(&figment).expect("config");
            assert_eq!(config.limits.max_inflight, 7);
            assert_eq!(config.node_id, "node-b");
            Ok(())
        });
    }
}

#[cfg(test)]
mod example_file {
    use super::*;

    /// The example configuration shipped with the broker must stay valid and complete.
    #[test]
    fn example_configuration_parses() {
        let text = include_str!("../../broker/starling.example.toml");
        let config = BrokerConfig::from_toml_str(text).expect("example parses and validates");
        assert_eq!(
            config.listeners.ws,
            Some("0.0.0.0:8083".parse().expect("addr"))
        );
        let mut defaults = BrokerConfig::default();
        defaults.listeners.ws = config.listeners.ws;
        assert_eq!(
            config, defaults,
            "the example's values are the defaults it claims"
        );
    }
}

//! The configuration types and their defaults (their validation is in `validate.rs`).

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

/// A TLS listener: address plus PEM certificate chain and private key, and optionally client
/// certificates checked against a CA bundle (mutual TLS).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListenerConfig {
    /// Address to bind.
    pub bind: SocketAddr,
    /// PEM file with the certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// Whether clients are asked for a certificate, and whether they must present one.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// PEM bundle of the CA certificates that client certificates must chain to; required when
    /// `client_auth` is not `none`. Read again when it changes, like `cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
    /// Which field of a verified client certificate becomes the client's username (instead of
    /// the CONNECT username, whose password is then not checked).
    #[serde(default)]
    pub username_from_certificate: CertificateUsername,
}

impl TlsListenerConfig {
    /// A listener on `bind` serving the certificate and key in these files, without client
    /// certificates.
    pub fn new(bind: SocketAddr, cert_file: PathBuf, key_file: PathBuf) -> Self {
        TlsListenerConfig {
            bind,
            cert_file,
            key_file,
            client_auth: ClientAuth::None,
            client_ca_file: None,
            username_from_certificate: CertificateUsername::None,
        }
    }
}

/// Client certificates on a TLS listener (`listeners.tls.client_auth`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// Clients are not asked for a certificate.
    #[default]
    None,
    /// Clients are asked for one; a client without one is admitted (and logs in with its CONNECT
    /// username and password), a client whose certificate does not verify is refused.
    Optional,
    /// Every client must present a certificate that verifies against `client_ca_file`; the TLS
    /// handshake fails otherwise.
    Required,
}

/// Where a client's username comes from when it presents a verified certificate
/// (`listeners.tls.username_from_certificate`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertificateUsername {
    /// Not from the certificate: the CONNECT username and password are checked as usual.
    #[default]
    None,
    /// The subject's common name (the first CN).
    Cn,
    /// The first DNS name among the subject alternative names.
    SanDns,
    /// The first e-mail address (RFC 822 name) among the subject alternative names.
    SanEmail,
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
    /// Most topic aliases the broker assigns on the PUBLISH packets it sends to one v5 client
    /// (0 = off): the client gets up to the lower of this and the Topic Alias Maximum it
    /// announced in CONNECT (a client announcing none, and every 3.x client, gets no aliases).
    /// The first message on a topic carries the topic and an alias, later ones only the two-byte
    /// alias. When every alias is taken, the least recently used one is reassigned to the new
    /// topic (sent with the topic again). The default, 16, covers a device's usual handful of
    /// topics for a client that asked for aliases, while its table stays small: about 1.3 KiB
    /// with 16 topics, allocated when the connection first sends an alias, plus the topic names
    /// it keeps. A connection whose client allows none holds only an empty pointer (8 bytes).
    pub max_outbound_topic_alias: u16,
    /// Longest keep-alive a client may have, in seconds; 0 = no maximum (the client's own, even
    /// 0, which never closes a silent connection). An MQTT 5 client asking for more, or for none,
    /// is given this one in CONNACK (Server Keep Alive) and closed when silent for 1.5 times it;
    /// an MQTT 3.x client, which cannot be told, is refused (CONNACK 0x02, as Mosquitto does).
    pub max_keep_alive_secs: u16,
    /// Seconds a client has to send CONNECT after opening the connection.
    pub connect_timeout_secs: u64,
    /// Largest CONNECT packet accepted, in bytes (`max_packet_size` too bounds it): a client is not
    /// authenticated yet when it sends one, so it may not make the broker hold much for it.
    /// A larger CONNECT closes the connection at its header.
    pub max_connect_size: u32,
    /// Most retained messages kept (all topics; in a cluster, all nodes together); 0 = no limit.
    /// A retained publish to a new topic beyond it is still delivered, but not retained, and
    /// counted in `starling_retained_refused_total{reason="count"}`; replacing or deleting a
    /// topic's retained message is always allowed.
    pub max_retained_messages: usize,
    /// Largest payload, in bytes, of a message kept as retained. A larger retained publish is
    /// delivered but not retained (the topic keeps any earlier retained message), counted in
    /// `starling_retained_refused_total{reason="payload"}`.
    pub max_retained_payload_size: u32,
    /// Most bytes of retained payloads kept, summed over all topics (in a cluster, all nodes
    /// together); 0 = no limit. A retained publish that would take the sum beyond it (counting
    /// the message it replaces as gone) is delivered but not retained, counted in
    /// `starling_retained_refused_total{reason="bytes"}`. Topics and properties are not counted.
    pub max_retained_bytes: u64,
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
            max_outbound_topic_alias: 16,
            max_keep_alive_secs: 3600,
            connect_timeout_secs: 10,
            max_connect_size: 64 * 1024,
            max_retained_messages: 1_000_000,
            max_retained_payload_size: 256 * 1024,
            max_retained_bytes: 1024 * 1024 * 1024,
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
    /// Moving connections from busy nodes to idle ones (after a scale-up, or as nodes drift).
    pub rebalance: RebalanceConfig,
}

/// Rebalancing: every node shares its connection count through Redis each second; a node
/// holding more than the cluster's mean by more than the tolerance asks clients, at a bounded
/// rate, to reconnect elsewhere (v5: DISCONNECT 0x9C, sessions kept) and refuses new ones
/// until it is down to the mean, so the balancer sends them to the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RebalanceConfig {
    /// Whether this node gives connections away when it holds too many (it always shares its
    /// count, and takes what others give).
    pub enabled: bool,
    /// How far above the mean a node may be before it gives connections away, in percent of
    /// the mean.
    pub tolerance_percent: u32,
    /// Nor does it while it holds no more than this many above the mean (small clusters are
    /// left be).
    pub min_excess: u32,
    /// Clients asked to reconnect elsewhere per second, at most.
    pub rate_per_sec: u32,
}

impl Default for RebalanceConfig {
    fn default() -> Self {
        RebalanceConfig {
            enabled: true,
            tolerance_percent: 10,
            min_excess: 50,
            rate_per_sec: 50,
        }
    }
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

//! `spec.broker`: the broker settings written into every node's configuration file, with
//! defaults taken from the broker's own.

use super::unsigned_as_kubernetes_integers;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use starling_config::BrokerConfig;

/// Broker settings; defaults are the broker's own.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = unsigned_as_kubernetes_integers)]
pub struct BrokerSettings {
    /// Upper bound on a session's expiry interval, in seconds; MQTT 3.1.1 persistent sessions
    /// get this expiry.
    #[serde(default = "defaults::max_session_expiry_secs")]
    pub max_session_expiry_secs: u32,
    /// Upper bound on a message's expiry interval (message TTL), in seconds; 0 means no bound.
    #[serde(default = "defaults::max_message_expiry_secs")]
    pub max_message_expiry_secs: u32,
    /// Most messages queued for one client; when full, the newest message is dropped.
    #[serde(default = "defaults::max_queued_messages")]
    #[schemars(range(min = 1))]
    pub max_queued_messages: u32,
    /// Most unacknowledged QoS 1/2 messages in flight to one client.
    #[serde(default = "defaults::max_inflight")]
    #[schemars(range(min = 1, max = 65535))]
    pub max_inflight: u16,
    /// Queue QoS 0 messages for offline persistent sessions too.
    #[serde(default = "defaults::queue_qos0")]
    pub queue_qos0: bool,
    /// Largest MQTT packet accepted from a client, in bytes.
    #[serde(default = "defaults::max_packet_size")]
    #[schemars(range(min = 64, max = 268_435_455))]
    pub max_packet_size: u32,
    /// Most simultaneous client connections per broker pod.
    #[serde(default = "defaults::max_connections")]
    #[schemars(range(min = 1))]
    pub max_connections: u32,
    /// Longest keep-alive a client may have, in seconds; 0 = no maximum. MQTT 5 clients asking
    /// for more (or for none) are told this one (Server Keep Alive); MQTT 3.x clients asking for
    /// more, or for none, are refused (CONNACK 0x02). Raise it (up to 65535) for 3.x devices
    /// that sleep longer than an hour.
    #[serde(default = "defaults::max_keep_alive_secs")]
    pub max_keep_alive_secs: u16,
    /// Largest CONNECT packet accepted, in bytes: a client is not authenticated yet when it
    /// sends one, so it may not make a broker hold much for it.
    #[serde(default = "defaults::max_connect_size")]
    #[schemars(range(min = 64, max = 268_435_455))]
    pub max_connect_size: u32,
    /// Most retained messages kept, all topics of the cluster together; 0 = no limit. A retained
    /// publish to a new topic beyond it is delivered but not retained (counted in
    /// `starling_retained_refused_total{reason="count"}`).
    #[serde(default = "defaults::max_retained_messages")]
    pub max_retained_messages: u32,
    /// Largest payload, in bytes, of a message kept as retained; a larger one is delivered but
    /// not retained (`reason="payload"`).
    #[serde(default = "defaults::max_retained_payload_size")]
    #[schemars(range(max = 268_435_455))]
    pub max_retained_payload_size: u32,
    /// Most bytes of retained payloads kept, all topics of the cluster together; 0 = no limit
    /// (`reason="bytes"` when refused).
    #[serde(default = "defaults::max_retained_bytes")]
    pub max_retained_bytes: u64,
    /// Seconds a stopping broker waits for its clients to leave. The pods' termination grace
    /// period is set longer than this.
    #[serde(default = "defaults::drain_timeout_secs")]
    #[schemars(range(min = 0, max = 3600))]
    pub drain_timeout_secs: u32,
    /// Clients a stopping broker pod asks per second to reconnect to another pod (MQTT 5:
    /// DISCONNECT 0x9C) before it is stopped: its evacuation, run by the pod's preStop hook.
    #[serde(default = "defaults::evacuation_rate_per_sec")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub evacuation_rate_per_sec: u32,
    /// Seconds the preStop hook waits for the evacuation to empty the pod; the pod is stopped
    /// then, emptied or not (what is left is drained as on any stop).
    #[serde(default = "defaults::evacuation_timeout_secs")]
    #[schemars(range(min = 0, max = 3600))]
    pub evacuation_timeout_secs: u32,
    /// Port of the admin HTTP endpoint (`/healthz`, `/readyz`, `/metrics`).
    #[serde(default = "defaults::admin_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub admin_port: i32,
    /// Log filter such as `info` or `starling_broker=debug,info`.
    #[serde(default = "defaults::log_level")]
    #[schemars(length(min = 1))]
    pub log_level: String,
    /// Log line format.
    #[serde(default = "defaults::log_format")]
    pub log_format: LogFormat,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            max_session_expiry_secs: defaults::max_session_expiry_secs(),
            max_message_expiry_secs: defaults::max_message_expiry_secs(),
            max_queued_messages: defaults::max_queued_messages(),
            max_inflight: defaults::max_inflight(),
            queue_qos0: defaults::queue_qos0(),
            max_packet_size: defaults::max_packet_size(),
            max_connections: defaults::max_connections(),
            max_keep_alive_secs: defaults::max_keep_alive_secs(),
            max_connect_size: defaults::max_connect_size(),
            max_retained_messages: defaults::max_retained_messages(),
            max_retained_payload_size: defaults::max_retained_payload_size(),
            max_retained_bytes: defaults::max_retained_bytes(),
            drain_timeout_secs: defaults::drain_timeout_secs(),
            evacuation_rate_per_sec: defaults::evacuation_rate_per_sec(),
            evacuation_timeout_secs: defaults::evacuation_timeout_secs(),
            admin_port: defaults::admin_port(),
            log_level: defaults::log_level(),
            log_format: defaults::log_format(),
        }
    }
}
/// Broker log format.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Defaults of [`BrokerSettings`], taken from the broker's own configuration defaults so the two
/// cannot drift.
mod defaults {
    use super::{BrokerConfig, LogFormat};

    fn broker() -> BrokerConfig {
        BrokerConfig::default()
    }

    fn saturate(value: usize) -> u32 {
        u32::try_from(value).unwrap_or(u32::MAX)
    }

    pub fn max_session_expiry_secs() -> u32 {
        broker().session.max_session_expiry_secs
    }
    pub fn max_message_expiry_secs() -> u32 {
        broker().session.max_message_expiry_secs
    }
    pub fn max_queued_messages() -> u32 {
        saturate(broker().limits.max_queued_messages)
    }
    pub fn max_inflight() -> u16 {
        broker().limits.max_inflight
    }
    pub fn queue_qos0() -> bool {
        broker().session.queue_qos0
    }
    pub fn max_packet_size() -> u32 {
        broker().limits.max_packet_size
    }
    pub fn max_connections() -> u32 {
        saturate(broker().limits.max_connections)
    }
    pub fn max_keep_alive_secs() -> u16 {
        broker().limits.max_keep_alive_secs
    }
    pub fn max_connect_size() -> u32 {
        broker().limits.max_connect_size
    }
    pub fn max_retained_messages() -> u32 {
        saturate(broker().limits.max_retained_messages)
    }
    pub fn max_retained_payload_size() -> u32 {
        broker().limits.max_retained_payload_size
    }
    pub fn max_retained_bytes() -> u64 {
        broker().limits.max_retained_bytes
    }
    pub fn drain_timeout_secs() -> u32 {
        u32::try_from(broker().shutdown.drain_timeout_secs).unwrap_or(u32::MAX)
    }
    pub fn evacuation_rate_per_sec() -> u32 {
        100
    }
    pub fn evacuation_timeout_secs() -> u32 {
        30
    }
    pub fn admin_port() -> i32 {
        broker().admin.bind.map_or(9090, |a| i32::from(a.port()))
    }
    pub fn log_level() -> String {
        broker().log.level
    }
    /// JSON, unlike the standalone broker's text: pods' logs are read by collectors.
    pub fn log_format() -> LogFormat {
        LogFormat::Json
    }
}

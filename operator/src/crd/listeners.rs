//! `spec.listeners`: the client-facing listeners (plain MQTT, TLS, WebSocket) and their ports.

use super::default_true;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Client-facing listeners. At least one must be enabled, and each needs its own port.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.mqtt.enabled || has(self.tls) || has(self.websocket)")
        .message("enable at least one listener: listeners.mqtt.enabled, listeners.tls or listeners.websocket"),
    validation = Rule::new("!has(self.tls) || !self.mqtt.enabled || self.tls.port != self.mqtt.port")
        .message("listeners.tls.port must differ from listeners.mqtt.port"),
    validation = Rule::new("!has(self.websocket) || !self.mqtt.enabled || self.websocket.port != self.mqtt.port")
        .message("listeners.websocket.port must differ from listeners.mqtt.port"),
    validation = Rule::new("!has(self.websocket) || !has(self.tls) || self.websocket.port != self.tls.port")
        .message("listeners.websocket.port must differ from listeners.tls.port")
)]
pub struct ListenersSpec {
    /// Plain MQTT over TCP.
    #[serde(default)]
    pub mqtt: MqttListener,
    /// MQTT over TLS; the certificate comes from a Secret of type `kubernetes.io/tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsListener>,
    /// MQTT over WebSocket (subprotocol `mqtt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket: Option<WebSocketListener>,
}

/// The plain MQTT listener.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MqttListener {
    /// Serve plain MQTT. Turn off to accept TLS or WebSocket clients only.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Port, in the pods and on the Service.
    #[serde(default = "default_mqtt_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

impl Default for MqttListener {
    fn default() -> Self {
        MqttListener {
            enabled: true,
            port: default_mqtt_port(),
        }
    }
}

fn default_mqtt_port() -> i32 {
    1883
}

/// The TLS listener.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsListener {
    /// Port, in the pods and on the Service.
    #[serde(default = "default_tls_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Secret of type `kubernetes.io/tls` (keys `tls.crt`, `tls.key`) in the cluster's namespace,
    /// for example one issued by cert-manager.
    #[schemars(length(min = 1))]
    pub secret_name: String,
}

fn default_tls_port() -> i32 {
    8883
}

/// The WebSocket listener.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebSocketListener {
    /// Port, in the pods and on the Service.
    #[serde(default = "default_ws_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

fn default_ws_port() -> i32 {
    8083
}

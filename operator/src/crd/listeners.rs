//! `spec.listeners`: the client-facing listeners (plain MQTT, TLS, WebSocket) and their ports.

use super::{default_true, SecretKeyRef};
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

/// The TLS listener, optionally asking clients for certificates (mutual TLS).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.clientAuth) || self.clientAuth == 'none' || has(self.clientCaSecretRef)")
        .message("listeners.tls.clientCaSecretRef is required when clientAuth is optional or required: the CA bundle client certificates are checked against"),
    validation = Rule::new("(has(self.clientAuth) && self.clientAuth != 'none') || !has(self.clientCaSecretRef)")
        .message("listeners.tls.clientCaSecretRef is set but clientAuth is none: set clientAuth to optional or required, or remove clientCaSecretRef"),
    validation = Rule::new("(has(self.clientAuth) && self.clientAuth != 'none') || !has(self.usernameFromCertificate) || self.usernameFromCertificate == 'none'")
        .message("listeners.tls.usernameFromCertificate needs clientAuth optional or required")
)]
pub struct TlsListener {
    /// Port, in the pods and on the Service.
    #[serde(default = "default_tls_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Secret of type `kubernetes.io/tls` (keys `tls.crt`, `tls.key`) in the cluster's namespace,
    /// for example one issued by cert-manager.
    #[schemars(length(min = 1))]
    pub secret_name: String,
    /// Client certificates: `none` (not asked for), `optional` (a client without one logs in
    /// with its username and password) or `required` (the TLS handshake fails without one).
    /// A presented certificate must chain to a CA in `clientCaSecretRef`.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// The key of a Secret holding the PEM bundle of the CAs that sign client certificates
    /// (with cert-manager, often the `ca.crt` key of the listener's own Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_secret_ref: Option<SecretKeyRef>,
    /// The username of a client with a verified certificate: `none` (its CONNECT username and
    /// password, as usual), `cn` (the subject's common name), `san_dns` or `san_email` (the
    /// first DNS name or e-mail address among its subject alternative names). ACLs apply to it.
    #[serde(default)]
    pub username_from_certificate: CertificateUsername,
}

/// Client certificates on the TLS listener (the broker's `listeners.tls.client_auth`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// Not asked for.
    #[default]
    None,
    /// Asked for; clients without one log in with a username and password.
    Optional,
    /// Every client must present one.
    Required,
}

/// Where the username of a client with a verified certificate comes from (the broker's
/// `listeners.tls.username_from_certificate`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CertificateUsername {
    /// Not from the certificate.
    #[default]
    None,
    /// The subject's common name.
    Cn,
    /// The first DNS subject alternative name.
    SanDns,
    /// The first e-mail subject alternative name.
    SanEmail,
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

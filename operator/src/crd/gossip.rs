//! `spec.gossip`: gossip membership between the broker pods (port and encryption key).

use super::{default_true, SecretKeyRef};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Gossip membership between broker pods. Encrypted by default: a pod that could join the
/// gossip, or fake a node's death, could make a survivor take over a live node's sessions.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.encrypt || !has(self.encryptionKeySecretRef)").message(
    "gossip: encrypt is false but encryptionKeySecretRef is set; remove one of them"
))]
pub struct GossipSpec {
    /// Gossip port (TCP and UDP).
    #[serde(default = "default_gossip_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Encrypt the gossip (AES-256-GCM). Without `encryptionKeySecretRef`, a new cluster gets a
    /// generated key in the Secret `NAME-gossip` (kept with the cluster). A cluster created by
    /// an operator older than this setting keeps its unencrypted gossip (condition
    /// `GossipEncrypted` says so): turning encryption on rolls every pod, and old and new pods
    /// do not understand each other's gossip until the roll ends.
    #[serde(default = "default_true")]
    pub encrypt: bool,
    /// Secret key holding the gossip encryption key (base64 of 16, 24 or 32 bytes, e.g. from
    /// `openssl rand -base64 32`). Unset: a generated key (see `encrypt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_key_secret_ref: Option<SecretKeyRef>,
}

fn default_gossip_port() -> i32 {
    7946
}

impl Default for GossipSpec {
    fn default() -> Self {
        GossipSpec {
            port: default_gossip_port(),
            encrypt: true,
            encryption_key_secret_ref: None,
        }
    }
}

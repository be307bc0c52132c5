//! `spec.gossip`: gossip membership between the broker pods (port and encryption key).

use super::SecretKeyRef;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Gossip membership between broker pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GossipSpec {
    /// Gossip port (TCP and UDP).
    #[serde(default = "default_gossip_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Secret key holding the gossip encryption key (base64 of 16, 24 or 32 bytes, e.g. from
    /// `openssl rand -base64 32`). Unset: gossip is not encrypted.
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
            encryption_key_secret_ref: None,
        }
    }
}

//! `spec.auth`: authentication and topic authorisation of MQTT clients.

use super::{default_true, ConfigMapKeyRef, SecretKeyRef};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Authentication and authorisation of MQTT clients.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// Accept clients that send no username. When `false` and `usersSecretRef` is unset, the
    /// operator generates one user, `starling`, with a random password in the Secret
    /// `NAME-users` (keys `username`, `password`, and `passwd`, the brokers' password file).
    /// The default stays `true` so that clusters made before keep serving their clients (a new
    /// default would be applied to them at their next server-side apply or replace); the
    /// examples and the Helm chart's cluster set `false`.
    #[serde(default = "default_true")]
    pub allow_anonymous: bool,
    /// Secret key holding the password file: `username:hash` lines with argon2 PHC hashes, as
    /// written by `starling-broker passwd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users_secret_ref: Option<SecretKeyRef>,
    /// ConfigMap key holding the topic ACL file. Unset: every client may publish and subscribe
    /// anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl_config_map_ref: Option<ConfigMapKeyRef>,
}

impl Default for AuthSpec {
    fn default() -> Self {
        AuthSpec {
            allow_anonymous: true,
            users_secret_ref: None,
            acl_config_map_ref: None,
        }
    }
}

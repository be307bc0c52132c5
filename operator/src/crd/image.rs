//! `spec.image`: which image runs the brokers and how it is pulled.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which image runs the brokers and how it is pulled.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    /// Image repository, without the tag.
    #[serde(default = "default_image_repository")]
    #[schemars(length(min = 1))]
    pub repository: String,
    /// Image tag, or a digest such as `sha256:…`. Unset: the operator's own version, so
    /// upgrading the operator upgrades the brokers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// When the kubelet pulls the image.
    #[serde(default)]
    pub pull_policy: PullPolicy,
    /// Names of Secrets (in the cluster's namespace) holding registry credentials.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pull_secrets: Vec<String>,
}

/// Default broker image repository.
pub const DEFAULT_IMAGE_REPOSITORY: &str = "ghcr.io/starling-mqtt/starling-broker";

fn default_image_repository() -> String {
    DEFAULT_IMAGE_REPOSITORY.to_string()
}

impl Default for ImageSpec {
    fn default() -> Self {
        ImageSpec {
            repository: default_image_repository(),
            tag: None,
            pull_policy: PullPolicy::default(),
            pull_secrets: Vec::new(),
        }
    }
}

impl ImageSpec {
    /// `repository:tag` (or `repository@digest`), the tag defaulting to the operator's version.
    pub fn reference(&self) -> String {
        let tag = self.tag.as_deref().unwrap_or(env!("CARGO_PKG_VERSION"));
        if tag.starts_with("sha256:") {
            format!("{}@{}", self.repository, tag)
        } else {
            format!("{}:{}", self.repository, tag)
        }
    }
}

/// Kubernetes image pull policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum PullPolicy {
    /// Pull on every pod start.
    Always,
    /// Pull when the node does not have the image yet.
    #[default]
    IfNotPresent,
    /// Never pull; the image must be on the node.
    Never,
}

impl PullPolicy {
    /// The value Kubernetes expects.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

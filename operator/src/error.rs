//! The operator's one error type.

/// Everything that can go wrong while building or applying a cluster's objects.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object lacks a field the API server always sets (name, namespace or uid).
    #[error("MqttCluster has no metadata.{0}; it must come from the API server")]
    MissingMetadata(&'static str),
    /// The spec cannot work; the CRD's validation normally rejects it first.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// The rendered broker configuration does not validate.
    #[error("rendered broker configuration is invalid: {0}")]
    BrokerConfig(#[from] starling_config::ConfigError),
    /// The system's random source failed.
    #[error("no randomness for the Redis password: {0}")]
    Random(String),
    /// A call to the API server failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The managed Redis' Secret has no password the operator can read.
    #[error("Secret {secret}: {source}; delete it to have the operator generate a new password")]
    RedisSecret {
        /// The Secret's name.
        secret: String,
        /// What is wrong with it.
        source: crate::resources::redis::AuthConfigError,
    },
    /// The generated gossip key's Secret is gone while the brokers read their key from it: a new
    /// key would keep restarted pods out of the running pods' gossip.
    #[error(
        "Secret {0}, which holds the gossip key the running brokers use, is missing: recreate it \
         with the key `key` holding the value of /etc/starling/gossip/key in a running broker pod"
    )]
    GossipSecretMissing(String),
    /// An object could not be serialized.
    #[error("serialization: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl Error {
    /// A short, stable name of the variant, for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::MissingMetadata(_) => "missing_metadata",
            Error::InvalidSpec(_) => "invalid_spec",
            Error::BrokerConfig(_) => "broker_config",
            Error::Random(_) => "random",
            Error::Kube(_) => "kube_api",
            Error::RedisSecret { .. } => "redis_secret",
            Error::GossipSecretMissing(_) => "gossip_secret",
            Error::Serialize(_) => "serialize",
        }
    }
}

//! Configuration of one Starling broker node.
//!
//! The same types are used by the broker (which loads them from a TOML file, `STARLING_*`
//! environment variables and its command line) and by the operator (which renders them into the
//! ConfigMap it mounts into broker pods), so the two can never drift apart.
//!
//! Loading is layered: built-in defaults, then the TOML file, then environment variables
//! (`STARLING_LIMITS__MAX_PACKET_SIZE=65536` sets `limits.max_packet_size`), then whatever the
//! caller merges on top (command-line flags). [`BrokerConfig::validate`] then checks every value
//! and names the offending field together with a fix.

mod error;
mod exposure;
pub mod redis_url;
mod types;
mod validate;

pub use error::ConfigError;
pub use exposure::exposure_warnings;
pub use types::*;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use std::path::Path;

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "STARLING_";

impl BrokerConfig {
    /// The figment with defaults, the optional TOML file and the environment, in that order.
    ///
    /// Callers may merge more providers (such as command-line flags) before extracting.
    pub fn figment(file: Option<&Path>) -> Figment {
        let mut figment = Figment::from(Serialized::defaults(BrokerConfig::default()));
        if let Some(path) = file {
            figment = figment.merge(Toml::file_exact(path));
        }
        figment.merge(Env::prefixed(ENV_PREFIX).split("__"))
    }

    /// Extracts and validates a configuration from a figment.
    pub fn from_figment(figment: &Figment) -> Result<Self, ConfigError> {
        let config = Self::extract(figment)?;
        config.validate()?;
        Ok(config)
    }

    /// Extracts a configuration without validating it, for callers that adjust it first.
    pub fn extract(figment: &Figment) -> Result<Self, ConfigError> {
        figment.extract().map_err(ConfigError::from_figment)
    }

    /// Parses and validates a configuration from TOML text (defaults fill what it omits).
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let figment =
            Figment::from(Serialized::defaults(BrokerConfig::default())).merge(Toml::string(text));
        Self::from_figment(&figment)
    }

    /// The configuration with secrets written inline (the Redis URL's password) replaced by
    /// `REDACTED`, for printing (`check-config`).
    pub fn redacted(&self) -> BrokerConfig {
        let mut shown = self.clone();
        if let Some(url) = &mut shown.cluster.redis_url {
            *url = redis_url::redacted(url);
        }
        shown
    }

    /// Renders the configuration as TOML (used by the operator for its ConfigMap).
    pub fn to_toml_string(&self) -> Result<String, ConfigError> {
        toml::to_string_pretty(self).map_err(|e| ConfigError::Render(e.to_string()))
    }
}

#[cfg(test)]
mod tests;

//! Configuration errors: each names the field and says how to fix it.

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value could not be read (wrong type, unknown key, unreadable file).
    #[error("configuration: {0}")]
    Parse(String),
    /// A value was read but cannot work.
    #[error("configuration field `{field}`: {problem}; {fix}")]
    Invalid {
        /// Dotted path of the field, as written in the TOML file.
        field: &'static str,
        /// What is wrong with the value.
        problem: String,
        /// What to do about it.
        fix: &'static str,
    },
    /// The configuration could not be rendered as TOML.
    #[error("configuration could not be rendered: {0}")]
    Render(String),
}

impl ConfigError {
    pub(crate) fn from_figment(error: figment::Error) -> Self {
        let messages: Vec<String> = error
            .into_iter()
            .map(|e| {
                let path = e.path.join(".");
                let env_hint = if path.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (environment: {}{})",
                        crate::ENV_PREFIX,
                        e.path.join("__").to_uppercase()
                    )
                };
                if path.is_empty() {
                    e.kind.to_string()
                } else {
                    format!("field `{path}`{env_hint}: {}", e.kind)
                }
            })
            .collect();
        ConfigError::Parse(messages.join("; "))
    }

    pub(crate) fn invalid(
        field: &'static str,
        problem: impl Into<String>,
        fix: &'static str,
    ) -> Self {
        ConfigError::Invalid {
            field,
            problem: problem.into(),
            fix,
        }
    }
}

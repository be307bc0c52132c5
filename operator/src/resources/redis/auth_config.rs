//! The managed Redis' password as a configuration file in its Secret, so that it never appears
//! on `redis-server`'s command line (where `ps` and `/proc/<pid>/cmdline` show it).
//!
//! The operator's Secret `<name>-redis` holds the password (key [`super::PASSWORD_KEY`], which
//! broker pods load into their environment) and, under [`CONFIG_KEY`], one Redis configuration
//! line `requirepass "<password>"` that the Redis pod mounts read-only at [`CONFIG_PATH`] and
//! passes to `redis-server` as its configuration file. Secrets written by operators older than
//! this file hold only the password; [`missing_config`] derives the line from it so that the
//! reconciler can add it.

use k8s_openapi::api::core::v1::Secret;
use std::collections::BTreeMap;

/// Key of the Redis configuration line in the managed Redis' Secret.
pub const CONFIG_KEY: &str = "redis.conf";
/// Directory where the Redis pod mounts that key.
pub const CONFIG_DIR: &str = "/etc/redis-auth";
/// The configuration file `redis-server` is started with.
pub const CONFIG_PATH: &str = "/etc/redis-auth/redis.conf";

/// Why a Secret's password cannot be turned into a configuration line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthConfigError {
    /// The Secret has no such key.
    #[error("key {key:?} is missing")]
    Missing {
        /// The key looked for.
        key: String,
    },
    /// The key's value is not UTF-8 text.
    #[error("key {key:?} is not UTF-8 text")]
    NotText {
        /// The key read.
        key: String,
    },
}

/// The configuration file for `password`: `requirepass` followed by the password as a Redis
/// double-quoted string (backslash and double quote escaped, bytes outside printable ASCII
/// written as `\xHH`), so any password reads back exactly.
pub fn config_for(password: &str) -> String {
    let mut quoted = String::with_capacity(password.len() + 16);
    for byte in password.bytes() {
        match byte {
            b'\\' => quoted.push_str("\\\\"),
            b'"' => quoted.push_str("\\\""),
            0x20..=0x7e => quoted.push(char::from(byte)),
            other => quoted.push_str(&format!("\\x{other:02x}")),
        }
    }
    format!("requirepass \"{quoted}\"\n")
}

/// The key/value pairs of the Secret the operator creates for `password`.
pub fn secret_data(password_key: &str, password: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (password_key.to_string(), password.to_string()),
        (CONFIG_KEY.to_string(), config_for(password)),
    ])
}

/// The configuration line an existing Secret lacks: `Ok(None)` when it has [`CONFIG_KEY`]
/// already, `Ok(Some(line))` derived from its `password_key` otherwise.
pub fn missing_config(
    secret: &Secret,
    password_key: &str,
) -> Result<Option<String>, AuthConfigError> {
    let has = |key: &str| {
        secret.data.as_ref().is_some_and(|d| d.contains_key(key))
            || secret
                .string_data
                .as_ref()
                .is_some_and(|d| d.contains_key(key))
    };
    if has(CONFIG_KEY) {
        return Ok(None);
    }
    let missing = || AuthConfigError::Missing {
        key: password_key.to_string(),
    };
    let password = match secret.data.as_ref().and_then(|d| d.get(password_key)) {
        Some(bytes) => std::str::from_utf8(&bytes.0)
            .map_err(|_| AuthConfigError::NotText {
                key: password_key.to_string(),
            })?
            .to_string(),
        None => secret
            .string_data
            .as_ref()
            .and_then(|d| d.get(password_key))
            .cloned()
            .ok_or_else(missing)?,
    };
    Ok(Some(config_for(&password)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret_with(data: &[(&str, &[u8])]) -> Secret {
        Secret {
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    #[test]
    fn a_generated_password_is_written_as_is_between_quotes() {
        assert_eq!(config_for("Ab3xY9"), "requirepass \"Ab3xY9\"\n");
    }

    #[test]
    fn quotes_backslashes_spaces_and_control_bytes_are_escaped() {
        assert_eq!(
            config_for("a\"b\\c d\n#é"),
            "requirepass \"a\\\"b\\\\c d\\x0a#\\xc3\\xa9\"\n"
        );
    }

    #[test]
    fn a_new_secret_holds_the_password_and_its_configuration_line() {
        let data = secret_data("password", "s3cret");
        assert_eq!(data["password"], "s3cret");
        assert_eq!(data[CONFIG_KEY], "requirepass \"s3cret\"\n");
    }

    #[test]
    fn an_older_secret_gets_the_line_derived_from_its_password() {
        let old = secret_with(&[("password", b"s3cret")]);
        assert_eq!(
            missing_config(&old, "password"),
            Ok(Some("requirepass \"s3cret\"\n".to_string()))
        );
        let current = secret_with(&[("password", b"s3cret"), (CONFIG_KEY, b"requirepass x")]);
        assert_eq!(missing_config(&current, "password"), Ok(None));
    }

    #[test]
    fn a_secret_without_a_readable_password_is_named_as_such() {
        let empty = secret_with(&[]);
        assert_eq!(
            missing_config(&empty, "password"),
            Err(AuthConfigError::Missing {
                key: "password".to_string()
            })
        );
        let binary = secret_with(&[("password", &[0xff, 0xfe])]);
        assert_eq!(
            missing_config(&binary, "password"),
            Err(AuthConfigError::NotText {
                key: "password".to_string()
            })
        );
    }
}

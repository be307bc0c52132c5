//! The brokers' password file: the user's Secret, or, for a cluster that refuses anonymous
//! clients without naming one, a generated user in the Secret `NAME-users` (created once).

use super::Cluster;
use crate::crd::SecretKeyRef;
use crate::Error;
use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::Argon2;
use k8s_openapi::api::core::v1::Secret;
use std::collections::BTreeMap;

/// The generated user's name.
pub const GENERATED_USERNAME: &str = "starling";
/// Keys of the generated Secret: the user's name and password, for clients, and the password
/// file (`username:argon2-hash`), which the brokers mount.
pub const USERNAME_KEY: &str = "username";
/// See [`USERNAME_KEY`].
pub const PASSWORD_KEY: &str = "password";
/// See [`USERNAME_KEY`].
pub const PASSWORD_FILE_KEY: &str = "passwd";

/// Whether the operator generates the cluster's user: anonymous clients are refused and no
/// password file is named.
pub fn generates_user(cluster: &Cluster<'_>) -> bool {
    let auth = &cluster.spec().auth;
    !auth.allow_anonymous && auth.users_secret_ref.is_none()
}

/// The Secret key the brokers read their password file from, if any.
pub fn password_file_ref(cluster: &Cluster<'_>) -> Option<SecretKeyRef> {
    match &cluster.spec().auth.users_secret_ref {
        Some(users) => Some(users.clone()),
        None if generates_user(cluster) => Some(SecretKeyRef {
            name: cluster.users_secret_name(),
            key: PASSWORD_FILE_KEY.to_string(),
        }),
        None => None,
    }
}

/// The generated user's Secret: name, `password`, and the password file with its argon2id hash
/// (the broker's default cost, a random salt).
pub fn generated_user_secret(cluster: &Cluster<'_>, password: &str) -> Result<Secret, Error> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| Error::Random(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| Error::Random(e.to_string()))?;
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| Error::Random(format!("hashing the generated password: {e}")))?;
    Ok(Secret {
        metadata: cluster.child_meta(cluster.users_secret_name(), super::COMPONENT_BROKER),
        type_: Some("Opaque".to_string()),
        string_data: Some(BTreeMap::from([
            (USERNAME_KEY.to_string(), GENERATED_USERNAME.to_string()),
            (PASSWORD_KEY.to_string(), password.to_string()),
            (
                PASSWORD_FILE_KEY.to_string(),
                format!("{GENERATED_USERNAME}:{hash}\n"),
            ),
        ])),
        ..Secret::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::test_support::cluster_from_yaml;
    use argon2::password_hash::{PasswordHash, PasswordVerifier};

    #[test]
    fn a_closed_cluster_without_users_gets_the_generated_user() {
        let object = cluster_from_yaml("auth: {allowAnonymous: false}");
        let c = Cluster::new(&object).unwrap();
        assert!(generates_user(&c));
        assert_eq!(
            password_file_ref(&c),
            Some(SecretKeyRef {
                name: "demo-users".into(),
                key: "passwd".into()
            })
        );
        for (yaml, file) in [
            ("{}", None),
            (
                "auth: {allowAnonymous: false, usersSecretRef: {name: u, key: k}}",
                Some("u"),
            ),
            ("auth: {usersSecretRef: {name: u, key: k}}", Some("u")),
        ] {
            let object = cluster_from_yaml(yaml);
            let c = Cluster::new(&object).unwrap();
            assert!(!generates_user(&c), "{yaml}");
            assert_eq!(
                password_file_ref(&c).map(|r| r.name).as_deref(),
                file,
                "{yaml}"
            );
        }
    }

    #[test]
    fn the_generated_password_file_verifies_the_generated_password() {
        let object = cluster_from_yaml("auth: {allowAnonymous: false}");
        let c = Cluster::new(&object).unwrap();
        let secret = generated_user_secret(&c, "s3cret-Pass").unwrap();
        let data = secret.string_data.expect("stringData");
        assert_eq!(data["username"], "starling");
        assert_eq!(data["password"], "s3cret-Pass");
        let line = data["passwd"].trim_end();
        let (user, hash) = line.split_once(':').expect("user:hash");
        assert_eq!(user, "starling");
        let parsed = PasswordHash::new(hash).expect("PHC string");
        assert!(Argon2::default()
            .verify_password(b"s3cret-Pass", &parsed)
            .is_ok());
        assert!(Argon2::default()
            .verify_password(b"wrong", &parsed)
            .is_err());
    }
}

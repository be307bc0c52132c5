//! The brokers' admin API token: a Secret the operator makes once per cluster (never rewritten,
//! so the token stays stable), mounted into every broker pod, where the preStop hook uses it to
//! evacuate the pod before it stops.

use super::{Cluster, COMPONENT_BROKER};
use k8s_openapi::api::core::v1::Secret;

/// The key in the Secret that holds the token.
pub const TOKEN_KEY: &str = "token";

/// The admin token Secret holding `token`.
pub fn token_secret(cluster: &Cluster<'_>, token: &str) -> Secret {
    super::generated_secret(
        cluster,
        cluster.admin_secret_name(),
        COMPONENT_BROKER,
        TOKEN_KEY,
        token,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::test_support::{assert_child, cluster_from_yaml};

    #[test]
    fn the_token_secret_is_owned_by_the_cluster_and_holds_the_token() {
        let object = cluster_from_yaml("{}");
        let cluster = Cluster::new(&object).expect("cluster");
        let secret = token_secret(&cluster, "t0ken");
        assert_child(&secret.metadata, "demo-admin", "broker");
        assert_eq!(secret.string_data.expect("data")[TOKEN_KEY], "t0ken");
    }
}

//! The Secrets a reconcile makes or reads before it applies the children: the managed Redis'
//! password, the admin token, the generated gossip key and user (each created once, never
//! rewritten), and the values the brokers read only at start (hashed onto the pod template).

use crate::resources::{admin, gossip, redis, references, users, Cluster};
use crate::Error;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;

/// Creates the managed Redis' password Secret unless it exists. The password is never
/// rewritten, so it stays stable; a Secret from an older operator, which holds only the
/// password, gains the Redis configuration line derived from it (the Redis pod reads its
/// password from that file, not from its command line).
pub(super) async fn ensure_redis_secret(
    client: &Client,
    cluster: &Cluster<'_>,
) -> Result<(), Error> {
    let name = cluster.redis_name();
    let api: Api<Secret> = Api::namespaced(client.clone(), cluster.namespace);
    let Some(existing) = api.get_opt(&name).await? else {
        let secret = redis::password_secret(cluster, &redis::generate_password()?);
        return match api.create(&PostParams::default(), &secret).await {
            Ok(_) => Ok(()),
            // Another reconcile created it meanwhile: keep that one (checked next time).
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        };
    };
    let line = redis::missing_config(&existing, redis::PASSWORD_KEY).map_err(|source| {
        Error::RedisSecret {
            secret: name.clone(),
            source,
        }
    })?;
    if let Some(line) = line {
        let patch = serde_json::json!({ "stringData": { redis::CONFIG_KEY: line } });
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    Ok(())
}

/// Settles where the brokers' gossip key comes from, creating the generated key's Secret for a
/// cluster whose brokers do not run yet. A cluster whose brokers already gossip without a key
/// keeps doing so: giving them one would roll the pods into two gossip groups.
pub(super) async fn settle_gossip_key<'a>(
    client: &Client,
    cluster: Cluster<'a>,
) -> Result<Cluster<'a>, Error> {
    if cluster.gossip_key() != &gossip::GossipKey::Generated {
        return Ok(cluster);
    }
    let name = cluster.gossip_secret_name();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), cluster.namespace);
    if secrets.get_opt(&name).await?.is_some() {
        return Ok(cluster);
    }
    let brokers = Api::<StatefulSet>::namespaced(client.clone(), cluster.namespace)
        .get_opt(&cluster.broker_name())
        .await?;
    match &brokers {
        None => {
            let secret = gossip::key_secret(&cluster, &gossip::generate_key()?);
            create_secret(&secrets, &secret).await?;
            Ok(cluster)
        }
        Some(_) if gossip::generated_key_is_safe(&cluster, brokers.as_ref()) => {
            Err(Error::GossipSecretMissing(name))
        }
        Some(_) => Ok(cluster.keeping_gossip_unencrypted()),
    }
}

/// Reads the Secret values the brokers read only at start and puts their hash on the cluster,
/// so that a changed value (an external Redis' rotated password) rolls the pods. A missing
/// Secret or key counts as a value of its own; the pods then report it (and the status too).
pub(super) async fn with_restart_secrets_hash<'a>(
    client: &Client,
    cluster: Cluster<'a>,
) -> Result<Cluster<'a>, Error> {
    let keys = references::read_at_start(&cluster);
    if keys.is_empty() {
        return Ok(cluster);
    }
    let api: Api<Secret> = Api::namespaced(client.clone(), cluster.namespace);
    let mut values = Vec::with_capacity(keys.len());
    for key in keys {
        let value = api
            .get_opt(&key.name)
            .await?
            .and_then(|s| s.data)
            .and_then(|mut data| data.remove(&key.key))
            .map(|bytes| bytes.0);
        values.push((key, value));
    }
    Ok(cluster.with_restart_secrets_hash(references::values_hash(&values)))
}

/// Creates the brokers' admin token Secret unless it exists (never rewritten: the token stays
/// stable).
pub(super) async fn ensure_admin_secret(
    client: &Client,
    cluster: &Cluster<'_>,
) -> Result<(), Error> {
    let secret = admin::token_secret(cluster, &redis::generate_password()?);
    create_unless_present(client, cluster, &cluster.admin_secret_name(), &secret).await
}

/// Creates the generated user's Secret unless it exists (never rewritten: the password stays
/// stable; deleting the Secret makes a new password).
pub(super) async fn ensure_generated_user(
    client: &Client,
    cluster: &Cluster<'_>,
) -> Result<(), Error> {
    let name = cluster.users_secret_name();
    let api: Api<Secret> = Api::namespaced(client.clone(), cluster.namespace);
    if api.get_opt(&name).await?.is_some() {
        return Ok(());
    }
    let secret = users::generated_user_secret(cluster, &redis::generate_password()?)?;
    create_secret(&api, &secret).await
}

/// Creates `secret` (named `name`) unless a Secret of that name exists.
async fn create_unless_present(
    client: &Client,
    cluster: &Cluster<'_>,
    name: &str,
    secret: &Secret,
) -> Result<(), Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), cluster.namespace);
    if api.get_opt(name).await?.is_some() {
        return Ok(());
    }
    create_secret(&api, secret).await
}

/// Creates `secret`; one made meanwhile (by another reconcile) is kept.
async fn create_secret(api: &Api<Secret>, secret: &Secret) -> Result<(), Error> {
    match api.create(&PostParams::default(), secret).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

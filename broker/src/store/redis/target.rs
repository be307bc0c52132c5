//! Where this node's Redis is: one address, or whichever server Redis Sentinel names the primary.
//!
//! Every connection the node opens to Redis (the store's, the relay writer's, the inbox
//! reader's, the announcement channel's, recovery reads) asks its [`RedisTarget`] for a client
//! when it connects, and again when it reconnects: with Sentinel, a connection opened after a
//! failover reaches the new primary without the node restarting.

use parking_lot::Mutex;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    Client, ErrorKind, IntoConnectionInfo, RedisError, RedisResult, ServerErrorKind,
    TlsCertificates, TlsMode,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long asking the sentinels for the primary (and checking that it is one) may take.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the sentinels are and how to log in to them and to the data nodes.
#[derive(Debug, Clone, Default)]
pub struct SentinelSettings {
    /// The name the sentinels monitor the primary under.
    pub master_name: String,
    /// The sentinels, as `host:port`.
    pub sentinels: Vec<String>,
    /// TLS to the sentinels and the data nodes.
    pub tls: bool,
    /// The data nodes' database.
    pub db: i64,
    /// The data nodes' ACL user and password.
    pub username: Option<String>,
    pub password: Option<String>,
    /// The sentinels' ACL user and password.
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<String>,
    /// A CA bundle and client certificate for TLS, to the sentinels and the data nodes alike.
    pub certificates: Option<TlsCertificates>,
}

/// Where this node's Redis is; clones share the same target (and Sentinel's view of it).
#[derive(Clone)]
pub struct RedisTarget {
    inner: Arc<Target>,
}

enum Target {
    /// One address, for the node's lifetime.
    Address(Client),
    /// The primary the sentinels name, asked again at every (re)connection.
    Sentinel(Sentinel),
}

struct Sentinel {
    master_name: String,
    client: tokio::sync::Mutex<SentinelClient>,
    /// The primary named last, as `host:port`.
    primary: Mutex<Option<String>>,
    /// How many times the primary named changed.
    changes: AtomicU64,
}

impl std::fmt::Debug for RedisTarget {
    /// Names the target without its credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.inner {
            Target::Address(client) => {
                write!(f, "RedisTarget({})", client.get_connection_info().addr())
            }
            Target::Sentinel(sentinel) => {
                write!(f, "RedisTarget(sentinel master {:?})", sentinel.master_name)
            }
        }
    }
}

impl RedisTarget {
    /// A Redis at `url` (`redis://`, `rediss://`, `redis+unix://`, `unix://`).
    pub fn address(url: &str) -> RedisResult<Self> {
        Self::address_with_tls(url, None)
    }

    /// A Redis at `url` with TLS `certificates` (a CA bundle, a client certificate) instead of
    /// the system's roots alone; `None` is [`Self::address`].
    pub fn address_with_tls(url: &str, certificates: Option<TlsCertificates>) -> RedisResult<Self> {
        let client = match certificates {
            Some(certificates) => Client::build_with_tls(url, certificates)?,
            None => Client::open(url)?,
        };
        Ok(Self {
            inner: Arc::new(Target::Address(client)),
        })
    }

    /// The primary that the sentinels of `settings` name.
    pub fn sentinel(settings: &SentinelSettings) -> RedisResult<Self> {
        let scheme = if settings.tls { "rediss" } else { "redis" };
        let sentinels = settings
            .sentinels
            .iter()
            .map(|address| {
                format!("{scheme}://{address}")
                    .into_connection_info()
                    .map(|info| info.addr().clone())
            })
            .collect::<RedisResult<Vec<_>>>()?;
        let mut builder = SentinelClientBuilder::new(
            sentinels,
            settings.master_name.clone(),
            SentinelServerType::Master,
        )?
        .set_client_to_redis_db(settings.db);
        if let Some(user) = &settings.username {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = &settings.password {
            builder = builder.set_client_to_redis_password(password);
        }
        if let Some(user) = &settings.sentinel_username {
            builder = builder.set_client_to_sentinel_username(user);
        }
        if let Some(password) = &settings.sentinel_password {
            builder = builder.set_client_to_sentinel_password(password);
        }
        if settings.tls {
            builder = builder
                .set_client_to_redis_tls_mode(TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(TlsMode::Secure);
            if let Some(certificates) = &settings.certificates {
                builder = builder
                    .set_client_to_redis_certificates(certificates.clone())
                    .set_client_to_sentinel_certificates(certificates.clone());
            }
        }
        let client: SentinelClient = builder.build()?;
        Ok(Self {
            inner: Arc::new(Target::Sentinel(Sentinel {
                master_name: settings.master_name.clone(),
                client: tokio::sync::Mutex::new(client),
                primary: Mutex::new(None),
                changes: AtomicU64::new(0),
            })),
        })
    }

    /// A client for the Redis to use now: with Sentinel, the primary the sentinels name (checked
    /// to be one), within [`RESOLVE_TIMEOUT`].
    pub async fn client(&self) -> RedisResult<Client> {
        match &*self.inner {
            Target::Address(client) => Ok(client.clone()),
            Target::Sentinel(sentinel) => sentinel.primary().await,
        }
    }

    /// Whether the server behind this target can change (a failover): connections then open
    /// anew, asking the target again, when the server they reach stops answering or refuses
    /// writes as a replica.
    pub fn follows_failover(&self) -> bool {
        matches!(&*self.inner, Target::Sentinel(_))
    }

    /// How many times the sentinels named another primary than before (0 without Sentinel).
    pub fn primary_changes(&self) -> u64 {
        match &*self.inner {
            Target::Address(_) => 0,
            Target::Sentinel(sentinel) => sentinel.changes.load(Ordering::Relaxed),
        }
    }
}

impl Sentinel {
    async fn primary(&self) -> RedisResult<Client> {
        let mut sentinels = self.client.lock().await;
        let client = match tokio::time::timeout(RESOLVE_TIMEOUT, sentinels.async_get_client()).await
        {
            Ok(found) => found?,
            Err(_) => {
                return Err(RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "the sentinels did not name a primary for {:?} within {RESOLVE_TIMEOUT:?}",
                        self.master_name
                    ),
                )))
            }
        };
        drop(sentinels);
        let named = client.get_connection_info().addr().to_string();
        let mut primary = self.primary.lock();
        if primary.as_deref() != Some(named.as_str()) {
            if let Some(before) = primary.as_deref() {
                self.changes.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(master = %self.master_name, before, now = %named, "redis sentinel names a new primary: connections move to it");
            } else {
                tracing::info!(master = %self.master_name, primary = %named, "redis sentinel names the primary");
            }
            *primary = Some(named);
        }
        Ok(client)
    }
}

/// Whether `error`, met on a connection to a target that [follows
/// failovers](RedisTarget::follows_failover), means the server it reaches is no longer the
/// primary: it is gone (the connection broke or is refused) or it answers as a replica.
pub fn lost_the_primary(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
}

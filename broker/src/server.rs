//! A running node: binds the listeners and the admin endpoint, runs the background tasks, and
//! drains connections on shutdown.

use crate::admin::token::{AdminToken, TokenError};
use crate::admin::{AdminServer, AdminState};
use crate::auth::{AuthError, LiveAuth};
use crate::broker::{AdoptionOutcome, Broker};
use crate::cluster::membership::MemberEvent;
use crate::cluster::membership::{self, GossipConfig, Membership, MembershipError, SingleNode};
use crate::cluster::rebalance;
use crate::cluster::recovery::Leftovers;
use crate::cluster::relay::ClusterLink;
use crate::connection;
use crate::listener::tls::TlsListener;
use crate::listener::{self, ListenerError};
use crate::reload::Reload;
use crate::store::redis::target::{RedisTarget, SentinelSettings};
use crate::store::{self, MemoryStore, RedisStoreConfig, RetainedLimits, Store, StoreError};
use redis::{ClientTlsConfig, TlsCertificates};
use starling_config::{BrokerConfig, ClusterConfig, RedisTlsConfig};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener address could not be bound.
    #[error("cannot listen on {addr} (`{field}`): {source}")]
    Bind {
        /// The configuration field naming the address.
        field: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// TLS material could not be loaded.
    #[error("`listeners.tls`: {0}")]
    Tls(#[from] ListenerError),
    /// The password or ACL file could not be loaded.
    #[error("`auth`: {0}")]
    Auth(#[from] AuthError),
    /// The admin API's token file cannot be used.
    #[error("{0}")]
    AdminToken(#[from] TokenError),
    /// The cluster store could not be reached.
    #[error("the cluster's redis: {0}")]
    Store(#[from] StoreError),
    /// The cluster's Redis is not usable as configured.
    #[error("`{field}`: {reason}")]
    RedisConfig {
        /// The configuration field at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Gossip could not start.
    #[error("`cluster`: {0}")]
    Membership(#[from] MembershipError),
    /// The relay between nodes could not start.
    #[error("the cluster relay: {0}")]
    Relay(String),
}

/// The addresses actually bound (useful when the configuration asked for port 0).
#[derive(Debug, Clone, Default)]
pub struct BoundAddresses {
    /// MQTT over TCP.
    pub tcp: Option<SocketAddr>,
    /// MQTT over TLS.
    pub tls: Option<SocketAddr>,
    /// MQTT over WebSocket.
    pub ws: Option<SocketAddr>,
    /// The admin HTTP endpoint.
    pub admin: Option<SocketAddr>,
}

#[derive(Clone)]
enum Transport {
    Tcp,
    Tls(Arc<TlsListener>),
    WebSocket,
}

/// A node whose sockets are bound, ready to run.
pub struct Server {
    broker: Arc<Broker>,
    membership: Arc<dyn Membership>,
    listeners: Vec<(TcpListener, Transport)>,
    admin: Option<AdminServer>,
    addresses: BoundAddresses,
    /// What is reloaded when its files change (see [`crate::reload`]).
    reloadables: Vec<Arc<dyn Reload>>,
}

async fn bind(field: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind {
            field,
            addr,
            source,
        })
}

impl Server {
    /// Loads auth and TLS material and binds every configured socket. The admin endpoint is
    /// served at once (alive, not ready); a cluster node then waits for Redis as long as it
    /// takes (see [`store::connect_when_up`]).
    pub async fn bind(config: BrokerConfig) -> Result<Server, ServerError> {
        let auth = Arc::new(LiveAuth::load(&config.auth)?);
        let mut reloadables: Vec<Arc<dyn Reload>> = Vec::new();
        if config.auth.password_file.is_some() || config.auth.acl_file.is_some() {
            reloadables.push(auth.clone());
        }
        let admin_token = match &config.admin.token_file {
            Some(path) => {
                let token = Arc::new(AdminToken::load(path)?);
                reloadables.push(token.clone());
                Some(token)
            }
            None => None,
        };
        let mut addresses = BoundAddresses::default();
        let admin = match config.admin.bind {
            Some(addr) => {
                let l = bind("admin.bind", addr).await?;
                addresses.admin = l.local_addr().ok();
                Some(AdminServer::start(
                    l,
                    AdminState::starting("connecting to the store", admin_token.clone()),
                ))
            }
            None => None,
        };
        let redis = redis_target(&config.cluster)?;
        let store = open_store(
            &config,
            redis.clone(),
            admin.as_ref().map(AdminServer::state),
        )
        .await?;
        let mut listeners = Vec::new();
        if let Some(addr) = config.listeners.tcp {
            let l = bind("listeners.tcp", addr).await?;
            addresses.tcp = l.local_addr().ok();
            listeners.push((l, Transport::Tcp));
        }
        if let Some(tls) = &config.listeners.tls {
            let tls_listener = Arc::new(TlsListener::load(tls)?);
            reloadables.extend(tls_listener.reloadables());
            let l = bind("listeners.tls.bind", tls.bind).await?;
            addresses.tls = l.local_addr().ok();
            listeners.push((l, Transport::Tls(tls_listener)));
        }
        if let Some(addr) = config.listeners.ws {
            let l = bind("listeners.ws", addr).await?;
            addresses.ws = l.local_addr().ok();
            listeners.push((l, Transport::WebSocket));
        }
        let broker = Broker::with_live_auth(config, auth, store);
        let mut run = None;
        if let Some(redis) = redis {
            let link = ClusterLink::start(&redis, &broker.config.node_id, "starling:", &broker)
                .await
                .map_err(|e| ServerError::Relay(e.to_string()))?;
            run = Some(link.run());
            tokio::spawn(rebalance::run(
                link.clone(),
                Arc::downgrade(&broker),
                broker.config.cluster.rebalance.clone(),
                crate::admin::peers::advertised(addresses.admin, &broker.config.cluster),
            ));
            broker.attach_cluster(link);
            // Sessions an earlier run of this node held or parked (it may have crashed and come
            // back before gossip noticed): parked ones are routed here again, and the wills of
            // connections that died with it are published.
            let node_id = broker.config.node_id.clone();
            broker
                .adopt_sessions_of(&node_id, None, Leftovers::EarlierRuns)
                .await;
        }
        // Gossip starts once the run is known, so that it is published from the first message.
        let membership = join_cluster(&broker.config, run).await?;
        Ok(Server {
            broker,
            membership,
            listeners,
            admin,
            addresses,
            reloadables,
        })
    }

    /// The bound addresses.
    pub fn addresses(&self) -> &BoundAddresses {
        &self.addresses
    }

    /// The broker core (for tests and embedding).
    pub fn broker(&self) -> Arc<Broker> {
        self.broker.clone()
    }

    /// Serves until `shutdown` completes, then drains: listeners close, clients are told to go
    /// (v5: DISCONNECT 0x8B, or 0x9C with the configured server reference), sessions are kept.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let broker = self.broker;
        let max_connections = broker.config.limits.max_connections.min(u32::MAX as usize);
        let permits = Arc::new(Semaphore::new(max_connections));
        let mut accept_tasks = Vec::new();
        for (listener, transport) in self.listeners {
            accept_tasks.push(tokio::spawn(accept_loop(
                broker.clone(),
                listener,
                transport,
                permits.clone(),
            )));
        }
        // The admin endpoint (served since `bind`) outlives the drain, so /readyz can answer
        // 503 while connections are told to go (and a load balancer stops sending new ones).
        if let Some(admin) = &self.admin {
            admin.state().serve(broker.clone());
        }
        // Only now may rebalancing send this node clients.
        broker.rebalancing.mark_serving();
        tokio::spawn(watch_members(broker.clone(), self.membership.clone()));
        // Without gossip a node cannot tell a departed node from a live one.
        if broker.config.cluster.gossip_bind.is_some() {
            tokio::spawn(crate::cluster::sweep::run(
                broker.clone(),
                self.membership.clone(),
            ));
        }
        let interval = broker.config.reload.interval_secs;
        tokio::spawn(crate::reload::watch(
            self.reloadables,
            broker.metrics.clone(),
            (interval > 0).then(|| Duration::from_secs(interval)),
        ));
        tokio::spawn(broker.clone().run_expiry());
        tokio::spawn(broker.clone().run_keep_alive());
        if broker.config.sys.interval_secs > 0 {
            let interval = Duration::from_secs(broker.config.sys.interval_secs);
            tokio::spawn(crate::sys::run(broker.clone(), interval));
        }
        tracing::info!(node_id = %broker.config.node_id, "broker running");

        shutdown.await;
        tracing::info!("shutting down: draining connections");
        broker.begin_shutdown();
        // The listeners close when their accept loops end: wait, so no connection is accepted
        // after `run` returns.
        for task in accept_tasks {
            let _ = task.await;
        }
        let drain = Duration::from_secs(broker.config.shutdown.drain_timeout_secs);
        let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
        let drained = tokio::time::timeout(drain, permits.acquire_many(all)).await;
        match drained {
            Ok(_) => tracing::info!("all connections closed"),
            Err(_) => tracing::warn!(
                open = broker.online_count(),
                "drain timeout reached with connections still open"
            ),
        }
        // What the drained connections handed back (journal deletions, hand-overs) reaches Redis
        // before the node goes; otherwise its next run (or the adopter) would deliver those
        // copies again.
        if let Some(link) = broker.cluster() {
            if tokio::time::timeout(Duration::from_secs(2), link.barrier())
                .await
                .is_err()
            {
                tracing::warn!("relay writes still pending at shutdown");
            }
        }
        if let Err(e) = self.membership.leave(Duration::from_secs(2)).await {
            tracing::warn!(error = %e, "leaving the cluster");
        }
        if let Some(admin) = self.admin {
            admin.stop().await;
        }
    }
}

/// Where the cluster's Redis is: `cluster.redis_url`, or the primary `cluster.redis_sentinel`'s
/// sentinels name (with the passwords of its files); `None` when neither is set.
fn redis_target(cluster: &ClusterConfig) -> Result<Option<RedisTarget>, ServerError> {
    let certificates = redis_certificates(&cluster.redis_tls)?;
    if let Some(url) = &cluster.redis_url {
        return RedisTarget::address_with_tls(url, certificates)
            .map(Some)
            .map_err(|e| ServerError::RedisConfig {
                field: "cluster.redis_url",
                reason: e.to_string(),
            });
    }
    let Some(sentinel) = &cluster.redis_sentinel else {
        return Ok(None);
    };
    let read = |field: &'static str, path: &Option<PathBuf>| match path {
        None => Ok(None),
        Some(path) => std::fs::read_to_string(path)
            .map(|text| Some(text.trim().to_string()))
            .map_err(|e| ServerError::RedisConfig {
                field,
                reason: format!("cannot read {}: {e}", path.display()),
            }),
    };
    let settings = SentinelSettings {
        master_name: sentinel.master_name.clone(),
        sentinels: sentinel.sentinels.clone(),
        tls: sentinel.tls,
        db: sentinel.db,
        username: sentinel.username.clone(),
        password: read(
            "cluster.redis_sentinel.password_file",
            &sentinel.password_file,
        )?,
        sentinel_username: sentinel.sentinel_username.clone(),
        sentinel_password: read(
            "cluster.redis_sentinel.sentinel_password_file",
            &sentinel.sentinel_password_file,
        )?,
        certificates,
    };
    RedisTarget::sentinel(&settings)
        .map(Some)
        .map_err(|e| ServerError::RedisConfig {
            field: "cluster.redis_sentinel.sentinels",
            reason: e.to_string(),
        })
}

/// The CA bundle and client certificate of `cluster.redis_tls`, read now; `None` when it sets
/// no file (the system's roots, no client certificate).
fn redis_certificates(tls: &RedisTlsConfig) -> Result<Option<TlsCertificates>, ServerError> {
    if !tls.is_set() {
        return Ok(None);
    }
    let read = |field: &'static str, path: &PathBuf| {
        std::fs::read(path).map_err(|e| ServerError::RedisConfig {
            field,
            reason: format!("cannot read {}: {e}", path.display()),
        })
    };
    let root_cert = match &tls.ca_file {
        Some(path) => Some(read("cluster.redis_tls.ca_file", path)?),
        None => None,
    };
    let client_tls = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read("cluster.redis_tls.cert_file", cert)?,
            client_key: read("cluster.redis_tls.key_file", key)?,
        }),
        _ => None,
    };
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// The state store: Redis when `redis` is set (waited for until it answers, saying why on
/// `admin`'s `/readyz` meanwhile), else in memory.
async fn open_store(
    config: &BrokerConfig,
    redis: Option<RedisTarget>,
    admin: Option<&Arc<AdminState>>,
) -> Result<Arc<dyn Store>, ServerError> {
    let max_queued = config.limits.max_queued_messages;
    let retained_limits = RetainedLimits {
        max_messages: config.limits.max_retained_messages,
        max_bytes: config.limits.max_retained_bytes,
    };
    Ok(match redis {
        None => Arc::new(MemoryStore::new(max_queued).with_retained_limits(retained_limits)),
        Some(target) => {
            let mut store_config = RedisStoreConfig::new(target, &config.node_id, max_queued);
            store_config.retained_limits = retained_limits;
            let store = store::connect_when_up(store_config, |waiting| {
                if let Some(admin) = admin {
                    admin.set_starting(format!(
                        "waiting for redis (attempt {}): {}",
                        waiting.attempts, waiting.reason
                    ));
                }
            })
            .await?;
            if let Some(admin) = admin {
                admin.set_starting("connected to redis; starting");
            }
            Arc::new(store)
        }
    })
}

/// Gossip membership when `cluster.gossip_bind` is set, else a cluster of one.
async fn join_cluster(
    config: &BrokerConfig,
    run: Option<u64>,
) -> Result<Arc<dyn Membership>, ServerError> {
    let cluster = &config.cluster;
    let Some(bind) = cluster.gossip_bind else {
        return Ok(Arc::new(SingleNode::new(config.node_id.as_str())));
    };
    let mut gossip = GossipConfig::new(config.node_id.as_str(), bind);
    gossip.advertise = cluster.gossip_advertise;
    gossip.run = run;
    gossip.seeds = cluster.gossip_seeds.clone();
    if let Some(path) = &cluster.gossip_key_file {
        gossip.secret_key = Some(membership::load_key_file(path)?);
    }
    Ok(membership::start(gossip).await?)
}

/// Whether this node is the one that adopts a departed node's sessions: the live node with the
/// lowest id, so the survivors agree without talking (and should two disagree for a moment,
/// adoption is atomic in the store: a session is adopted, and its will fired, once).
async fn is_adopter(membership: &dyn Membership, departed: &str) -> bool {
    let me = membership.local_id();
    let lowest = membership
        .members()
        .await
        .into_iter()
        .map(|m| m.id)
        .filter(|id| id != departed)
        .min();
    lowest.is_none_or(|id| id.as_str() >= me)
}

/// How long a node keeps routing to a departed node's inbox (see [`crate::cluster::recovery`]).
const FORGET_DEPARTED_AFTER: Duration = Duration::from_secs(5);

/// Logs membership changes and keeps the members gauge true, until shutdown.
async fn watch_members(broker: Arc<Broker>, membership: Arc<dyn Membership>) {
    let mut events = membership.events();
    let mut state = broker.run_state();
    broker
        .metrics
        .cluster_members
        .set(membership.members().await.len() as i64);
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(MemberEvent::Joined(node)) => {
                    tracing::info!(node = %node.id, addr = %node.addr, "node joined");
                    if let Some(link) = broker.cluster() {
                        link.node_joined(&node.id);
                    }
                }
                Ok(MemberEvent::Left(node)) => {
                    tracing::info!(node = %node.id, "node left or failed");
                    if let Some(link) = broker.cluster() {
                        link.node_departed(&node.id);
                        // Messages go on being relayed to the departed node's inbox for a while
                        // (the adopter recovers them from there) until the adopter's own routes
                        // for the adopted sessions have reached this node.
                        let (later, broker_later, departed) =
                            (link.clone(), broker.clone(), node.id.clone());
                        tokio::spawn(async move {
                            tokio::time::sleep(FORGET_DEPARTED_AFTER).await;
                            if later.is_departed(&departed) {
                                later.forget_node(&departed, &*broker_later).await;
                            }
                        });
                        // Its registration goes once the adoption worked; otherwise the
                        // adoption sweep tries again. The run is the one that departed: a
                        // node back under a newer run keeps its sessions and registration.
                        if is_adopter(&*membership, &node.id).await
                            && broker
                                .adopt_sessions_of(&node.id, node.run, Leftovers::Departed)
                                .await
                                == AdoptionOutcome::Adopted
                        {
                            link.remove_node_entries(&node.id, node.run);
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            _ = state.changed() => return,
        }
        broker
            .metrics
            .cluster_members
            .set(membership.members().await.len() as i64);
    }
}

async fn accept_loop(
    broker: Arc<Broker>,
    listener: TcpListener,
    transport: Transport,
    permits: Arc<Semaphore>,
) {
    let mut state = broker.run_state();
    // A shutdown before this task subscribed would never show up as a change.
    if broker.is_shutting_down() {
        return;
    }
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = state.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection refused: limits.max_connections reached");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let broker = broker.clone();
        // One task type per transport: a task is as large as its future, and the TLS and
        // WebSocket futures are much larger than the plain TCP one.
        match &transport {
            Transport::Tcp => tokio::spawn(async move {
                connection::serve(broker, stream, peer).await;
                drop(permit);
            }),
            secured => {
                let transport = secured.clone();
                tokio::spawn(async move {
                    serve_wrapped(broker, stream, peer, transport).await;
                    drop(permit);
                })
            }
        };
    }
}

/// Serves a connection that needs a TLS or WebSocket handshake first.
async fn serve_wrapped(
    broker: Arc<Broker>,
    stream: TcpStream,
    peer: SocketAddr,
    transport: Transport,
) {
    let handshake_timeout = Duration::from_secs(broker.config.limits.connect_timeout_secs);
    match transport {
        Transport::Tcp => connection::serve(broker, stream, peer).await,
        Transport::Tls(tls_listener) => {
            let accepting = tls_listener.acceptor().accept(stream);
            match tokio::time::timeout(handshake_timeout, accepting).await {
                Ok(Ok(tls)) => {
                    let identity = tls_listener.identity(tls.get_ref().1);
                    connection::serve_as(broker, tls, peer, identity).await;
                }
                Ok(Err(e)) if listener::tls::is_client_certificate_error(&e) => {
                    tracing::info!(%peer, error = %e, "TLS handshake failed: client certificate refused");
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
        Transport::WebSocket => {
            let max = broker.config.limits.max_packet_size as usize;
            match tokio::time::timeout(handshake_timeout, listener::ws::accept(stream, max)).await {
                Ok(Ok(ws)) => connection::serve(broker, ws, peer).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "WebSocket handshake failed"),
                Err(_) => tracing::debug!(%peer, "WebSocket handshake timed out"),
            }
        }
    }
}

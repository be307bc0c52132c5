//! The relay between cluster nodes, over Redis.
//!
//! - **Entries**: each node keeps the set of filters its sessions subscribe to in
//!   `<prefix>v1:node:<id>:entries` and announces every change on the Pub/Sub channel
//!   `<prefix>v1:entries` (`<node>\n+<filter>` or `<node>\n-<filter>`). Every node keeps a replica
//!   of the others' entries ([`RemoteFilters`]), rebuilt from the sets at start and whenever the
//!   announcement channel reconnects, so a missed announcement heals.
//! - **Messages**: a publish that originated here is matched against the replica and appended once
//!   to the inbox stream `<prefix>v1:inbox:<node>` of each node that needs it, with the origin node
//!   id. A node reads only its own inbox and delivers what it reads locally, never relaying it
//!   again, so nothing loops.
//!
//! Writes are batched by one writer task (pipelined); reads use their own connections, as
//! `XREAD BLOCK` and Pub/Sub would hold up a shared connection. Shared subscriptions are not
//! relayed yet (each node load-balances its own members); see docs/cluster.md.

use crate::broker::Broker;
use crate::message::Message;
use crate::router::remote::{NodeId, RemoteFilters};
use crate::store::redis::codec;
use futures_util::StreamExt;
use parking_lot::RwLock;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::{Client, Value};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::mpsc;

/// Messages kept per inbox stream (approximate trimming); a node that falls this far behind loses
/// the oldest.
const INBOX_MAX_LEN: usize = 100_000;
/// Items the writer gathers into one pipeline.
const WRITE_BATCH: usize = 512;
/// How long one XREAD waits for new entries before it is issued again.
const INBOX_BLOCK: Duration = Duration::from_secs(1);
/// Items waiting for the writer before new ones are dropped (and counted).
const WRITE_QUEUE: usize = 65_536;

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
#[error("cluster relay: {0}")]
pub struct RelayError(String);

fn relay_error(e: impl std::fmt::Display) -> RelayError {
    RelayError(e.to_string())
}

enum Outbound {
    Entry { raw: String, added: bool },
    Forward { node: NodeId, payload: Vec<u8> },
}

/// Key names under one prefix.
#[derive(Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn entries(&self, node: &str) -> String {
        format!("{}v1:node:{node}:entries", self.prefix)
    }
    fn nodes(&self) -> String {
        format!("{}v1:nodes", self.prefix)
    }
    fn channel(&self) -> String {
        format!("{}v1:entries", self.prefix)
    }
    fn inbox(&self, node: &str) -> String {
        format!("{}v1:inbox:{node}", self.prefix)
    }
}

/// This node's end of the relay: what the broker core calls.
pub struct ClusterLink {
    node_id: NodeId,
    remote: RwLock<RemoteFilters>,
    outbound: mpsc::Sender<Outbound>,
    keys: Keys,
}

impl ClusterLink {
    /// Connects to Redis, registers this node (forgetting entries a previous run left), and
    /// starts the writer, the inbox reader and the entries watcher. Received messages are
    /// delivered through `broker`.
    pub async fn start(
        url: &str,
        node_id: &str,
        prefix: &str,
        broker: &Arc<Broker>,
    ) -> Result<Arc<Self>, RelayError> {
        let client = Client::open(url).map_err(relay_error)?;
        let mut writer = ConnectionManager::new(client.clone())
            .await
            .map_err(relay_error)?;
        let keys = Keys {
            prefix: prefix.to_string(),
        };
        redis::pipe()
            .cmd("DEL")
            .arg(keys.entries(node_id))
            .ignore()
            .cmd("SADD")
            .arg(keys.nodes())
            .arg(node_id)
            .ignore()
            .query_async::<()>(&mut writer)
            .await
            .map_err(relay_error)?;
        let (outbound, queue) = mpsc::channel(WRITE_QUEUE);
        let link = Arc::new(ClusterLink {
            node_id: node_id.into(),
            remote: RwLock::new(RemoteFilters::default()),
            outbound,
            keys,
        });
        link.resync(&mut writer, broker)
            .await
            .map_err(relay_error)?;
        tokio::spawn(write_loop(link.clone(), writer.clone(), queue));
        // XREAD BLOCK answers after up to INBOX_BLOCK: the connection must wait longer than that.
        let inbox_config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(INBOX_BLOCK + Duration::from_secs(5)));
        let mut inbox = client
            .get_multiplexed_async_connection_with_config(&inbox_config)
            .await
            .map_err(relay_error)?;
        // Read what arrives from now on (by Redis's clock, which stream ids follow), not what an
        // earlier run of this node left unread.
        let (seconds, micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut inbox)
            .await
            .map_err(relay_error)?;
        let start_id = format!("{}-0", seconds * 1000 + micros / 1000);
        tokio::spawn(read_inbox(
            link.keys.inbox(node_id),
            start_id,
            inbox,
            Arc::downgrade(broker),
        ));
        tokio::spawn(watch_entries(
            link.clone(),
            client,
            writer,
            Arc::downgrade(broker),
        ));
        Ok(link)
    }

    /// A local entry got its first subscriber (`added`) or lost its last one.
    pub fn entry_changed(&self, raw: &str, added: bool) {
        if raw.starts_with("$share/") {
            return;
        }
        let item = Outbound::Entry {
            raw: raw.to_string(),
            added,
        };
        if self.outbound.try_send(item).is_err() {
            tracing::warn!(filter = raw, "relay queue full: entry change not announced");
        }
    }

    /// Appends a message that was published on this node to the inbox of every other node that
    /// has a matching entry.
    pub fn forward(&self, broker: &Broker, message: &Message) {
        if message.topic.starts_with("$SYS") {
            return;
        }
        let nodes = self.remote.read().route(&message.topic).nodes;
        if nodes.is_empty() {
            return;
        }
        let payload = match codec::encode_message(message) {
            Ok(payload) => payload,
            Err(e) => {
                tracing::warn!(error = %e, "message not relayed: encoding failed");
                return;
            }
        };
        for node in nodes {
            let item = Outbound::Forward {
                node,
                payload: payload.clone(),
            };
            if self.outbound.try_send(item).is_err() {
                broker.metrics.relay_dropped.inc();
            }
        }
    }

    /// Forgets a node that left the cluster from the replica (its entry set stays in Redis until
    /// it starts again, which replaces it).
    pub async fn forget_node(&self, node: &str, broker: &Broker) {
        let removed = {
            let mut remote = self.remote.write();
            let removed = remote.remove_node(node);
            broker.metrics.remote_entries.set(remote.len() as i64);
            removed
        };
        tracing::debug!(node, removed, "forgot a departed node's entries");
    }

    /// Rebuilds the replica of the other nodes' entries from Redis.
    async fn resync(&self, con: &mut ConnectionManager, broker: &Broker) -> redis::RedisResult<()> {
        let nodes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.nodes())
            .query_async(con)
            .await?;
        let mut listings = Vec::new();
        for node in nodes.into_iter().filter(|n| **n != *self.node_id) {
            let entries: Vec<String> = redis::cmd("SMEMBERS")
                .arg(self.keys.entries(&node))
                .query_async(con)
                .await?;
            listings.push((node, entries));
        }
        let mut remote = self.remote.write();
        for (node, entries) in listings {
            remote.replace_node(&NodeId::from(node.as_str()), entries);
        }
        broker.metrics.remote_entries.set(remote.len() as i64);
        Ok(())
    }

    fn apply_announcement(&self, text: &str, broker: &Broker) {
        let Some((node, change)) = text.split_once('\n') else {
            return;
        };
        if node == &*self.node_id {
            return;
        }
        let node: NodeId = node.into();
        let mut remote = self.remote.write();
        match change.split_at_checked(1) {
            Some(("+", raw)) => {
                remote.add(&node, raw);
            }
            Some(("-", raw)) => {
                remote.remove(&node, raw);
            }
            _ => tracing::debug!(announcement = text, "unreadable entry announcement"),
        }
        broker.metrics.remote_entries.set(remote.len() as i64);
    }
}

/// Writes entry changes and relayed messages in pipelined batches, retrying a failed batch
/// until Redis takes it (the connection manager reconnects meanwhile).
async fn write_loop(
    link: Arc<ClusterLink>,
    mut con: ConnectionManager,
    mut queue: mpsc::Receiver<Outbound>,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while queue.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        let mut pipe = redis::pipe();
        for item in &batch {
            match item {
                Outbound::Entry { raw, added } => {
                    let (command, sign) = if *added { ("SADD", '+') } else { ("SREM", '-') };
                    pipe.cmd(command)
                        .arg(link.keys.entries(&link.node_id))
                        .arg(raw)
                        .ignore();
                    pipe.cmd("PUBLISH")
                        .arg(link.keys.channel())
                        .arg(format!("{}\n{sign}{raw}", link.node_id))
                        .ignore();
                }
                Outbound::Forward { node, payload } => {
                    pipe.cmd("XADD")
                        .arg(link.keys.inbox(node))
                        .arg("MAXLEN")
                        .arg("~")
                        .arg(INBOX_MAX_LEN)
                        .arg("*")
                        .arg("o")
                        .arg(&*link.node_id)
                        .arg("m")
                        .arg(payload.as_slice())
                        .ignore();
                }
            }
        }
        let mut delay = Duration::from_millis(50);
        while let Err(e) = pipe.query_async::<()>(&mut con).await {
            tracing::warn!(error = %e, "relay write failed; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
        batch.clear();
    }
}

/// Reads this node's inbox and delivers each message to local subscribers only.
async fn read_inbox(
    key: String,
    start_id: String,
    mut con: MultiplexedConnection,
    broker: Weak<Broker>,
) {
    let mut last_id = start_id;
    loop {
        let reply: redis::RedisResult<Value> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(WRITE_BATCH)
            .arg("BLOCK")
            .arg(INBOX_BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&key)
            .arg(&last_id)
            .query_async(&mut con)
            .await;
        let Some(broker) = broker.upgrade() else {
            return;
        };
        if broker.is_shutting_down() {
            return;
        }
        match reply {
            Ok(value) => {
                for (id, message) in stream_entries(value) {
                    last_id = id;
                    match message {
                        Some(message) => {
                            broker.route_local(&Arc::new(message)).await;
                        }
                        None => tracing::warn!(stream = %key, "unreadable relayed message skipped"),
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the relay inbox failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Entries of an XREAD reply for one stream: (id, decoded message or None if unreadable).
fn stream_entries(value: Value) -> Vec<(String, Option<Message>)> {
    let mut out = Vec::new();
    let Value::Array(streams) = value else {
        return out;
    };
    for stream in streams {
        let Value::Array(parts) = stream else {
            continue;
        };
        let Some(Value::Array(entries)) = parts.into_iter().nth(1) else {
            continue;
        };
        for entry in entries {
            let Value::Array(mut fields) = entry else {
                continue;
            };
            if fields.len() != 2 {
                continue;
            }
            let Some(Value::Array(kv)) = fields.pop() else {
                continue;
            };
            let id = match fields.pop() {
                Some(Value::BulkString(id)) => String::from_utf8_lossy(&id).into_owned(),
                Some(Value::SimpleString(id)) => id,
                _ => continue,
            };
            let message = kv.chunks(2).find_map(|pair| match pair {
                [Value::BulkString(k), Value::BulkString(v)] if k.as_slice() == b"m" => {
                    codec::decode_message(v).ok()
                }
                _ => None,
            });
            out.push((id, message));
        }
    }
    out
}

/// Follows entry announcements; on every (re)subscription the replica is rebuilt from Redis.
async fn watch_entries(
    link: Arc<ClusterLink>,
    client: Client,
    mut con: ConnectionManager,
    broker: Weak<Broker>,
) {
    loop {
        let mut pubsub = match client.get_async_pubsub().await {
            Ok(pubsub) => pubsub,
            Err(e) => {
                tracing::warn!(error = %e, "entry announcements unavailable; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = pubsub.subscribe(link.keys.channel()).await {
            tracing::warn!(error = %e, "subscribing to entry announcements failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        {
            let Some(broker) = broker.upgrade() else {
                return;
            };
            if let Err(e) = link.resync(&mut con, &broker).await {
                tracing::warn!(error = %e, "entry resynchronisation failed");
            }
        }
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            let Some(broker) = broker.upgrade() else {
                return;
            };
            if let Ok(text) = message.get_payload::<String>() {
                link.apply_announcement(&text, &broker);
            }
        }
        tracing::warn!("entry announcements disconnected; reconnecting");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

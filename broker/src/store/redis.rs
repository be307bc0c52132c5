//! Redis store: the shared state of a cluster.
//!
//! Every node of a cluster points at the same Redis, so a session can be resumed on any node and
//! retained messages are seen by all. The key schema (version 1) is documented in
//! `docs/redis-schema.md`; in short, under a configurable prefix (`starling:` by default):
//!
//! | key                               | type   | holds                                         |
//! |-----------------------------------|--------|-----------------------------------------------|
//! | `v1:session:<client id>`          | hash   | `online`, `node`, `expiry`, `disconnected_at` |
//! | `v1:subs:<client id>`             | hash   | filter → encoded subscription options         |
//! | `v1:inflight:<client id>`         | list   | encoded in-flight messages, in order          |
//! | `v1:queue:<client id>`            | list   | encoded queued messages, oldest first         |
//! | `v1:qos2:<client id>`             | list   | incoming QoS 2 packet ids (decimal)           |
//! | `v1:sessions`                     | set    | client ids of all sessions                    |
//! | `v1:expiry`                       | zset   | offline client ids by expiry time (ms)        |
//! | `v1:retained:<topic>`             | string | encoded retained message                      |
//! | `v1:retained-topics`              | set    | topics with a retained message                |
//!
//! Operations that the in-memory store performs under its lock run here as Lua scripts, so they
//! are atomic against every node: attach, detach, enqueue and the expiry sweep. An offline
//! session's keys carry a TTL (its expiry interval plus a grace period), so sessions vanish even
//! when no node is alive to sweep them; retained messages with an expiry carry theirs too.

mod codec;

pub use codec::{DecodeError, ENCODING_VERSION};

use super::{
    Enqueued, InflightMessage, QueuedMessage, Store, StoreError, StoredSession, StoredSubscription,
};
use crate::message::{ClientId, Message};
use crate::protocol::topic;
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Cmd, RedisError, Script, Value};
use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The version of the key schema, part of every key name.
pub const SCHEMA_VERSION: u32 = 1;

/// Sessions the expiry sweep takes per script run (keeps each run short).
const SWEEP_BATCH: usize = 256;
/// Keys fetched per MGET when collecting retained messages.
const MGET_BATCH: usize = 512;

/// How a [`RedisStore`] reaches Redis and names its keys.
#[derive(Debug, Clone)]
pub struct RedisStoreConfig {
    /// Connection URL: `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS.
    pub url: String,
    /// Prefix of every key (the schema version follows it).
    pub key_prefix: String,
    /// This node's identity, recorded in the sessions it holds.
    pub node_id: String,
    /// Maximum number of messages in one session's queue.
    pub max_queued: usize,
    /// How long an offline session's keys outlive its expiry, so a live node's sweep can still
    /// return the session's subscriptions before Redis drops the keys by itself.
    pub expiry_grace: Duration,
    /// Upper bound of one store operation, reconnection included; past it the operation fails
    /// with [`StoreError::Unavailable`].
    pub operation_timeout: Duration,
}

impl RedisStoreConfig {
    /// A configuration with the default prefix (`starling:`), a 30 s expiry grace and a 5 s
    /// operation timeout.
    pub fn new(url: impl Into<String>, node_id: impl Into<String>, max_queued: usize) -> Self {
        RedisStoreConfig {
            url: url.into(),
            key_prefix: "starling:".to_string(),
            node_id: node_id.into(),
            max_queued,
            expiry_grace: Duration::from_secs(30),
            operation_timeout: Duration::from_secs(5),
        }
    }
}

/// Where a session stands, as far as Redis knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// Whether a connection holds the session right now.
    pub online: bool,
    /// The node that holds it (online) or last held it (offline).
    pub node: Option<String>,
    /// Session expiry interval in seconds (recorded when the session went offline).
    pub expiry_secs: Option<u32>,
    /// When the session went offline.
    pub disconnected_at: Option<SystemTime>,
}

struct Scripts {
    attach: Script,
    detach: Script,
    enqueue: Script,
    take_expired: Script,
}

/// Sessions and retained messages kept in Redis, shared by the nodes of a cluster.
pub struct RedisStore {
    manager: ConnectionManager,
    scripts: Scripts,
    /// `<prefix>v1:`.
    base: String,
    node_id: String,
    max_queued: usize,
    expiry_grace: Duration,
    operation_timeout: Duration,
}

/// The five keys of one session, in the order the scripts expect them.
struct SessionKeys([String; 5]);

fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

fn malformed(what: &str) -> StoreError {
    StoreError::Unavailable(format!("redis: unexpected reply: {what}"))
}

fn encode_failed(e: postcard::Error) -> StoreError {
    StoreError::Unavailable(format!("value not encodable: {e}"))
}

fn millis_since_epoch(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl RedisStore {
    /// Connects to Redis. Fails if Redis cannot be reached now; once connected, the connection is
    /// re-established in the background whenever it breaks.
    pub async fn connect(config: RedisStoreConfig) -> Result<Self, StoreError> {
        let client = Client::open(config.url.as_str()).map_err(unavailable)?;
        let timeout = config.operation_timeout;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.min(Duration::from_secs(2))))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let manager = tokio::time::timeout(
            timeout,
            ConnectionManager::new_with_config(client, manager_config),
        )
        .await
        .map_err(|_| StoreError::Unavailable("redis: connect timed out".to_string()))?
        .map_err(unavailable)?;
        tracing::info!(
            node_id = %config.node_id,
            prefix = %config.key_prefix,
            "connected to the redis store"
        );
        Ok(RedisStore {
            manager,
            scripts: Scripts {
                attach: Script::new(include_str!("redis/attach.lua")),
                detach: Script::new(include_str!("redis/detach.lua")),
                enqueue: Script::new(include_str!("redis/enqueue.lua")),
                take_expired: Script::new(include_str!("redis/take_expired.lua")),
            },
            base: format!("{}v{SCHEMA_VERSION}:", config.key_prefix),
            node_id: config.node_id,
            max_queued: config.max_queued,
            expiry_grace: config.expiry_grace,
            operation_timeout: config.operation_timeout,
        })
    }

    /// The node id recorded in the sessions this store attaches.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// What Redis knows of a session's owner and expiry, without taking it.
    pub async fn session_info(&self, client_id: &str) -> Result<Option<SessionInfo>, StoreError> {
        let key = self.session_keys(client_id).0[0].clone();
        let reply = self
            .query(redis::cmd("HGETALL").arg(key).to_owned())
            .await?;
        let fields = array(reply)?;
        if fields.is_empty() {
            return Ok(None);
        }
        let hash = SessionHash::parse(client_id, fields)?;
        Ok(Some(SessionInfo {
            online: hash.online,
            node: hash.node,
            expiry_secs: hash.expiry_secs,
            disconnected_at: hash.disconnected_at,
        }))
    }

    fn session_keys(&self, client_id: &str) -> SessionKeys {
        let b = &self.base;
        SessionKeys([
            format!("{b}session:{client_id}"),
            format!("{b}subs:{client_id}"),
            format!("{b}inflight:{client_id}"),
            format!("{b}queue:{client_id}"),
            format!("{b}qos2:{client_id}"),
        ])
    }

    fn key_prefixes(&self) -> [String; 5] {
        ["session:", "subs:", "inflight:", "queue:", "qos2:"].map(|kind| {
            let mut prefix = self.base.clone();
            prefix.push_str(kind);
            prefix
        })
    }

    fn sessions_key(&self) -> String {
        format!("{}sessions", self.base)
    }

    fn expiry_key(&self) -> String {
        format!("{}expiry", self.base)
    }

    fn retained_key(&self, topic: &str) -> String {
        format!("{}retained:{topic}", self.base)
    }

    fn retained_topics_key(&self) -> String {
        format!("{}retained-topics", self.base)
    }

    /// Runs one Redis exchange within the operation timeout.
    async fn bounded<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, RedisError>>,
    {
        match tokio::time::timeout(self.operation_timeout, work).await {
            Ok(result) => result.map_err(unavailable),
            Err(_) => Err(StoreError::Unavailable(format!(
                "redis: no answer within {:?}",
                self.operation_timeout
            ))),
        }
    }

    async fn query(&self, cmd: Cmd) -> Result<Value, StoreError> {
        let mut con = self.manager.clone();
        self.bounded(async move { cmd.query_async::<Value>(&mut con).await })
            .await
    }

    async fn query_pipeline(&self, pipe: redis::Pipeline) -> Result<Value, StoreError> {
        let mut con = self.manager.clone();
        self.bounded(async move { pipe.query_async::<Value>(&mut con).await })
            .await
    }

    async fn run_script(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<Value, StoreError> {
        let mut con = self.manager.clone();
        self.bounded(async move { invocation.invoke_async::<Value>(&mut con).await })
            .await
    }
}

/// The fields of a session hash.
#[derive(Default)]
struct SessionHash {
    online: bool,
    node: Option<String>,
    expiry_secs: Option<u32>,
    disconnected_at: Option<SystemTime>,
}

impl SessionHash {
    /// Reads an HGETALL reply. Unknown fields are ignored; a field that does not parse is logged
    /// and left unset.
    fn parse(client_id: &str, flat: Vec<Value>) -> Result<Self, StoreError> {
        let mut hash = SessionHash::default();
        for (name, value) in pairs(flat)? {
            let value = String::from_utf8_lossy(&value).into_owned();
            match name.as_slice() {
                b"online" => hash.online = value == "1",
                b"node" => hash.node = Some(value),
                b"expiry" => match value.parse::<u32>() {
                    Ok(secs) => hash.expiry_secs = Some(secs),
                    Err(_) => tracing::warn!(client_id, value, "session expiry unreadable"),
                },
                b"disconnected_at" => match value.parse::<u64>() {
                    Ok(ms) => {
                        hash.disconnected_at = UNIX_EPOCH.checked_add(Duration::from_millis(ms))
                    }
                    Err(_) => tracing::warn!(client_id, value, "disconnect time unreadable"),
                },
                _ => {}
            }
        }
        Ok(hash)
    }
}

/// The elements of an array reply.
fn array(value: Value) -> Result<Vec<Value>, StoreError> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        Value::ServerError(e) => Err(StoreError::Unavailable(format!("redis: {e:?}"))),
        other => Err(malformed(&format!("expected an array, got {other:?}"))),
    }
}

/// The bytes of a string reply.
fn bytes(value: Value) -> Result<Vec<u8>, StoreError> {
    match value {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        Value::ServerError(e) => Err(StoreError::Unavailable(format!("redis: {e:?}"))),
        other => Err(malformed(&format!("expected a string, got {other:?}"))),
    }
}

/// The value of an integer reply.
fn int(value: Value) -> Result<i64, StoreError> {
    match value {
        Value::Int(i) => Ok(i),
        Value::BulkString(b) => std::str::from_utf8(&b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| malformed("expected an integer")),
        Value::ServerError(e) => Err(StoreError::Unavailable(format!("redis: {e:?}"))),
        other => Err(malformed(&format!("expected an integer, got {other:?}"))),
    }
}

/// A hash field's name and value.
type Field = (Vec<u8>, Vec<u8>);

/// Field/value pairs of a flat HGETALL reply.
fn pairs(flat: Vec<Value>) -> Result<Vec<Field>, StoreError> {
    if !flat.len().is_multiple_of(2) {
        return Err(malformed("odd number of hash elements"));
    }
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut items = flat.into_iter();
    while let (Some(name), Some(value)) = (items.next(), items.next()) {
        out.push((bytes(name)?, bytes(value)?));
    }
    Ok(out)
}

/// Decodes every element of a list reply, leaving out (and logging) those that do not decode.
fn decode_list<T>(
    client_id: &str,
    what: &'static str,
    list: Value,
    decode: impl Fn(&[u8]) -> Result<T, DecodeError>,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for item in array(list)? {
        match decode(&bytes(item)?) {
            Ok(value) => out.push(value),
            Err(e) => tracing::warn!(client_id, what, error = %e, "stored value dropped"),
        }
    }
    Ok(out)
}

/// Builds a session from the parts the scripts return: the session hash, the subscriptions hash,
/// the in-flight, queue and incoming QoS 2 lists. Returns whether the session was online.
fn decode_session(client_id: &str, parts: Vec<Value>) -> Result<(bool, StoredSession), StoreError> {
    let [hash, subs, inflight, queue, qos2]: [Value; 5] = parts
        .try_into()
        .map_err(|_| malformed("a session has five parts"))?;
    let hash = SessionHash::parse(client_id, array(hash)?)?;
    let queue: VecDeque<QueuedMessage> =
        decode_list(client_id, "queued message", queue, codec::decode_queued)?.into();
    if hash.online {
        // An attached session keeps its state in its connection: the store only holds what was
        // forced into its queue meanwhile.
        return Ok((
            true,
            StoredSession {
                queue,
                ..StoredSession::default()
            },
        ));
    }
    let mut subscriptions = Vec::new();
    for (filter, options) in pairs(array(subs)?)? {
        let Ok(filter) = String::from_utf8(filter) else {
            tracing::warn!(client_id, "subscription filter is not UTF-8: dropped");
            continue;
        };
        match codec::decode_options(&options) {
            Ok(options) => subscriptions.push(StoredSubscription { filter, options }),
            Err(e) => tracing::warn!(client_id, filter, error = %e, "subscription dropped"),
        }
    }
    // A hash has no order: give the subscriptions the order a connection keeps them in.
    subscriptions.sort_by(|a, b| a.filter.cmp(&b.filter));
    let inflight: Vec<InflightMessage> = decode_list(
        client_id,
        "in-flight message",
        inflight,
        codec::decode_inflight,
    )?;
    let incoming_qos2 = decode_list(client_id, "QoS 2 packet id", qos2, |b| {
        std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or(DecodeError::Field {
                field: "packet id",
                value: 0,
            })
    })?;
    Ok((
        false,
        StoredSession {
            expiry_secs: hash.expiry_secs.unwrap_or(0),
            subscriptions,
            inflight,
            queue,
            incoming_qos2,
            disconnected_at: hash.disconnected_at,
        },
    ))
}

#[async_trait]
impl Store for RedisStore {
    async fn set_retained(&self, message: Arc<Message>) -> Result<(), StoreError> {
        let key = self.retained_key(&message.topic);
        let index = self.retained_topics_key();
        let mut pipe = redis::pipe();
        pipe.atomic();
        if message.payload.is_empty() {
            pipe.del(&key).ignore();
            pipe.srem(&index, &*message.topic).ignore();
        } else {
            let encoded = codec::encode_message(&message).map_err(encode_failed)?;
            let mut set = redis::cmd("SET");
            set.arg(&key).arg(encoded);
            if let Some(at) = message.expires_at {
                // Redis drops the key itself when the message expires (at once if that is past).
                set.arg("PXAT").arg(millis_since_epoch(at).max(1));
            }
            pipe.add_command(set).ignore();
            pipe.sadd(&index, &*message.topic).ignore();
        }
        self.query_pipeline(pipe).await.map(|_| ())
    }

    async fn retained_matching(&self, filter: &str) -> Result<Vec<Arc<Message>>, StoreError> {
        let topics: Vec<String> = if filter.contains(['+', '#']) {
            let members = array(
                self.query(
                    redis::cmd("SMEMBERS")
                        .arg(self.retained_topics_key())
                        .to_owned(),
                )
                .await?,
            )?;
            let mut topics = Vec::new();
            for member in members {
                if let Ok(t) = String::from_utf8(bytes(member)?) {
                    if topic::matches(filter, &t) {
                        topics.push(t);
                    }
                }
            }
            topics
        } else {
            vec![filter.to_string()]
        };
        let now = SystemTime::now();
        let mut found = Vec::new();
        let mut vanished = Vec::new();
        for chunk in topics.chunks(MGET_BATCH) {
            let mut mget = redis::cmd("MGET");
            for t in chunk {
                mget.arg(self.retained_key(t));
            }
            let values = array(self.query(mget).await?)?;
            if values.len() != chunk.len() {
                return Err(malformed("MGET answered a different number of values"));
            }
            for (t, value) in chunk.iter().zip(values) {
                if value == Value::Nil {
                    // Expired by its TTL (or deleted meanwhile): tidy the index.
                    vanished.push(t.clone());
                    continue;
                }
                match codec::decode_message(&bytes(value)?) {
                    Ok(m) if m.is_expired(now) => {}
                    Ok(m) => found.push(Arc::new(m)),
                    Err(e) => tracing::warn!(topic = %t, error = %e, "retained message unreadable"),
                }
            }
        }
        if !vanished.is_empty() {
            let mut srem = redis::cmd("SREM");
            srem.arg(self.retained_topics_key()).arg(&vanished);
            if let Err(e) = self.query(srem).await {
                tracing::debug!(error = %e, "retained index not tidied");
            }
        }
        Ok(found)
    }

    async fn retained_count(&self) -> Result<usize, StoreError> {
        let n = int(self
            .query(
                redis::cmd("SCARD")
                    .arg(self.retained_topics_key())
                    .to_owned(),
            )
            .await?)?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    async fn attach_session(
        &self,
        client_id: &ClientId,
    ) -> Result<Option<StoredSession>, StoreError> {
        let keys = self.session_keys(client_id);
        let mut invocation = self.scripts.attach.prepare_invoke();
        invocation
            .key(&keys.0[..])
            .key(self.sessions_key())
            .key(self.expiry_key())
            .arg(&**client_id)
            .arg(&self.node_id);
        let mut reply = array(self.run_script(invocation).await?)?.into_iter();
        match reply.next().map(int).transpose()? {
            Some(0) => Ok(None),
            Some(1) => {
                let (_, session) = decode_session(client_id, reply.collect())?;
                Ok(Some(session))
            }
            _ => Err(malformed("attach answered neither 0 nor 1")),
        }
    }

    async fn detach_session(
        &self,
        client_id: &ClientId,
        session: StoredSession,
    ) -> Result<(), StoreError> {
        let now = SystemTime::now();
        let now_ms = millis_since_epoch(now);
        // MQTT 5: an expiry interval of 0xFFFFFFFF means the session never expires.
        let (score, ttl) = if session.expiry_secs == u32::MAX {
            (String::new(), String::new())
        } else {
            let expiry_ms = u64::from(session.expiry_secs) * 1000;
            let grace_ms = u64::try_from(self.expiry_grace.as_millis()).unwrap_or(u64::MAX);
            (
                now_ms.saturating_add(expiry_ms).to_string(),
                expiry_ms.saturating_add(grace_ms).to_string(),
            )
        };
        let keys = self.session_keys(client_id);
        let mut invocation = self.scripts.detach.prepare_invoke();
        invocation
            .key(&keys.0[..])
            .key(self.sessions_key())
            .key(self.expiry_key())
            .arg(&**client_id)
            .arg(&self.node_id)
            .arg(session.expiry_secs)
            .arg(now_ms)
            .arg(score)
            .arg(ttl)
            .arg(self.max_queued)
            .arg(session.subscriptions.len())
            .arg(session.inflight.len())
            .arg(session.queue.len())
            .arg(session.incoming_qos2.len());
        for s in &session.subscriptions {
            invocation
                .arg(&s.filter)
                .arg(codec::encode_options(&s.options).map_err(encode_failed)?);
        }
        for m in &session.inflight {
            invocation.arg(codec::encode_inflight(m).map_err(encode_failed)?);
        }
        for q in &session.queue {
            invocation.arg(codec::encode_queued(q).map_err(encode_failed)?);
        }
        for id in &session.incoming_qos2 {
            invocation.arg(*id);
        }
        self.run_script(invocation).await.map(|_| ())
    }

    async fn remove_session(&self, client_id: &str) -> Result<(), StoreError> {
        let keys = self.session_keys(client_id);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(&keys.0[..])
            .ignore()
            .srem(self.sessions_key(), client_id)
            .ignore()
            .zrem(self.expiry_key(), client_id)
            .ignore();
        self.query_pipeline(pipe).await.map(|_| ())
    }

    async fn enqueue(
        &self,
        client_id: &str,
        message: QueuedMessage,
        force: bool,
    ) -> Result<Enqueued, StoreError> {
        let keys = self.session_keys(client_id);
        let encoded = codec::encode_queued(&message).map_err(encode_failed)?;
        let mut invocation = self.scripts.enqueue.prepare_invoke();
        invocation
            .key(&keys.0[0])
            .key(&keys.0[3])
            .arg(encoded)
            .arg(if force { "1" } else { "0" })
            .arg(self.max_queued);
        match int(self.run_script(invocation).await?)? {
            0 => Ok(Enqueued::Queued),
            1 => Ok(Enqueued::Full),
            2 => Ok(Enqueued::Online),
            3 => Ok(Enqueued::NoSession),
            other => Err(malformed(&format!("enqueue answered {other}"))),
        }
    }

    async fn take_expired_sessions(
        &self,
        now: SystemTime,
    ) -> Result<Vec<(ClientId, StoredSession)>, StoreError> {
        let now_ms = millis_since_epoch(now);
        let prefixes = self.key_prefixes();
        let mut expired = Vec::new();
        loop {
            let mut invocation = self.scripts.take_expired.prepare_invoke();
            invocation
                .key(self.sessions_key())
                .key(self.expiry_key())
                .arg(now_ms)
                .arg(SWEEP_BATCH)
                .arg(&prefixes[..]);
            let [examined, taken]: [Value; 2] = array(self.run_script(invocation).await?)?
                .try_into()
                .map_err(|_| malformed("the sweep answers two values"))?;
            for entry in array(taken)? {
                let mut parts = array(entry)?.into_iter();
                let id = parts
                    .next()
                    .map(bytes)
                    .transpose()?
                    .ok_or_else(|| malformed("a swept session without a client id"))?;
                let id: ClientId = String::from_utf8_lossy(&id).into();
                let (_, session) = decode_session(&id, parts.collect())?;
                expired.push((id, session));
            }
            if usize::try_from(int(examined)?).unwrap_or(0) < SWEEP_BATCH {
                return Ok(expired);
            }
        }
    }

    async fn session_count(&self) -> Result<usize, StoreError> {
        let n = int(self
            .query(redis::cmd("SCARD").arg(self.sessions_key()).to_owned())
            .await?)?;
        Ok(usize::try_from(n).unwrap_or(0))
    }
}

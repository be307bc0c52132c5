//! Redis store: the shared state of a cluster.
//!
//! Every node of a cluster points at the same Redis, so a session can be resumed on any node and
//! retained messages are seen by all. The key schema (version 1) is documented in
//! `docs/redis-schema.md`; in short, under a configurable prefix (`starling:` by default):
//!
//! | key                               | type   | holds                                         |
//! |-----------------------------------|--------|-----------------------------------------------|
//! | `v1:session:<client id>`          | hash   | `state`, `node`, `gen`, `expiry`, `will`, ... |
//! | `v1:subs:<client id>`             | hash   | filter → encoded subscription options         |
//! | `v1:inflight:<client id>`         | list   | encoded in-flight messages, in order          |
//! | `v1:queue:<client id>`            | list   | encoded queued messages, oldest first         |
//! | `v1:qos2:<client id>`             | list   | incoming QoS 2 packet ids (decimal)           |
//! | `v1:sessions`                     | set    | client ids of all sessions                    |
//! | `v1:expiry`                       | zset   | offline client ids by expiry time (ms)        |
//! | `v1:node:<node>:sessions`         | set    | sessions a node holds or has parked           |
//! | `v1:node:<node>:moved`            | zset   | sessions claimed away from it (last minute)   |
//! | `v1:retained:<topic>`             | string | encoded retained message                      |
//! | `v1:retained-topics`              | set    | topics with a retained message                |
//!
//! Operations that the in-memory store performs under its lock run here as Lua scripts, so they
//! are atomic against every node: claiming (and completing a claim), detaching, removing, writing
//! subscriptions through, enqueueing, adopting a departed node's sessions and the expiry sweep.
//! Each claim increments the session's generation, which fences a stale holder. An offline
//! session's keys carry a TTL (its expiry interval plus a grace period), so sessions vanish even
//! when no node is alive to sweep them; retained messages with an expiry carry theirs too.

pub(crate) mod codec;
pub mod eviction;
mod plain;
pub mod renewing;
pub mod target;

pub use codec::{DecodeError, ENCODING_VERSION};

use super::{
    AdoptedSession, Adoption, Attached, Completed, Detached, Enqueued, ExpiredSession, Holder,
    InflightMessage, QueuedMessage, SessionClaim, Store, StoreError, StoredSession,
    StoredSubscription,
};
use crate::message::{ClientId, Message};
use crate::protocol::topic;
use crate::store::journal_hold::JournalReservation;
use async_trait::async_trait;
use redis::aio::ConnectionManagerConfig;
use redis::{Cmd, RedisError, Script, Value};
use renewing::RenewingConnection;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use target::RedisTarget;

/// The version of the key schema, part of every key name.
pub const SCHEMA_VERSION: u32 = 1;

/// Sessions the expiry sweep takes per script run (keeps each run short).
const SWEEP_BATCH: usize = 256;
/// Keys fetched per MGET when collecting retained messages.
const MGET_BATCH: usize = 512;

/// How a [`RedisStore`] reaches Redis and names its keys.
#[derive(Debug, Clone)]
pub struct RedisStoreConfig {
    /// Where Redis is: one address, or the primary Sentinel names.
    pub target: RedisTarget,
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
    pub fn new(target: RedisTarget, node_id: impl Into<String>, max_queued: usize) -> Self {
        RedisStoreConfig {
            target,
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
    /// Whether a connection holds the session right now, or a node is claiming it.
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
    complete: Script,
    detach: Script,
    remove: Script,
    enqueue: Script,
    subscribe: Script,
    adopt: Script,
    take_expired: Script,
}

/// Sessions and retained messages kept in Redis, shared by the nodes of a cluster.
pub struct RedisStore {
    manager: RenewingConnection,
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
    /// Connects to Redis. Fails if Redis cannot be reached now ([`StoreError::Unavailable`]; see
    /// [`super::connect_when_up`] to wait for it); once connected, the connection is re-established in the
    /// background whenever it breaks.
    pub async fn connect(config: RedisStoreConfig) -> Result<Self, StoreError> {
        let timeout = config.operation_timeout;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.min(Duration::from_secs(2))))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let manager = tokio::time::timeout(
            timeout,
            RenewingConnection::connect(config.target.clone(), manager_config, "store"),
        )
        .await
        .map_err(|_| StoreError::Unavailable("redis: connect timed out".to_string()))?
        .map_err(unavailable)?;
        tracing::info!(
            node_id = %config.node_id,
            prefix = %config.key_prefix,
            "connected to the redis store"
        );
        eviction::warn_if_evicting(&mut manager.clone()).await;
        Ok(RedisStore {
            manager,
            scripts: Scripts {
                attach: Script::new(concat!(
                    include_str!("redis/journal.lua"),
                    include_str!("redis/attach.lua")
                )),
                complete: Script::new(concat!(
                    include_str!("redis/journal.lua"),
                    include_str!("redis/complete.lua")
                )),
                detach: Script::new(include_str!("redis/detach.lua")),
                remove: Script::new(include_str!("redis/remove.lua")),
                enqueue: Script::new(include_str!("redis/enqueue.lua")),
                subscribe: Script::new(include_str!("redis/subscribe.lua")),
                adopt: Script::new(include_str!("redis/adopt.lua")),
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

    /// Prefix of the per-node session sets: `<prefix>v1:node:`.
    fn node_prefix(&self) -> String {
        format!("{}node:", self.base)
    }

    /// The set of sessions a node holds or has parked.
    fn node_sessions_key(&self, node: &str) -> String {
        format!("{}node:{node}:sessions", self.base)
    }

    /// Stores a session when its connection ends (`detach.lua`), leaving its will stored when
    /// `keep_will` (see [`Store::detach_session_keeping_will`]).
    async fn detach(
        &self,
        client_id: &ClientId,
        generation: u64,
        session: StoredSession,
        keep_will: bool,
    ) -> Result<Detached, StoreError> {
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
        let mut invocation = self.session_invocation(&self.scripts.detach, &keys);
        invocation
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
            .arg(session.incoming_qos2.len())
            .arg(generation)
            .arg(if keep_will { "1" } else { "0" });
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
        detached(int(self.run_script(invocation).await?)?)
    }

    /// This node's stash of its adoption of `departed` (adopt.lua), until it has the answer.
    fn adoption_stash_key(&self, departed: &str) -> String {
        format!("{}node:{}:adopting:{departed}", self.base, self.node_id)
    }

    /// The run a node registered when it last started (written by the cluster link, see
    /// `cluster::relay`): adoption of an earlier run stops at it.
    fn node_run_key(&self, node: &str) -> String {
        format!("{}node:{node}:run", self.base)
    }

    /// The sessions claimed away from a node in the last minute (zset scored by time, ms).
    fn node_moved_key(&self, node: &str) -> String {
        format!("{}node:{node}:moved", self.base)
    }

    /// The invocation of a script whose keys are one session's plus the indexes.
    fn session_invocation<'a>(
        &self,
        script: &'a Script,
        keys: &SessionKeys,
    ) -> redis::ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(&keys.0[..])
            .key(self.sessions_key())
            .key(self.expiry_key())
            .key(self.node_sessions_key(&self.node_id));
        invocation
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
                b"state" => hash.online = value != "offline",
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

/// What a detach or remove script answered.
fn detached(code: i64) -> Result<Detached, StoreError> {
    match code {
        1 => Ok(Detached::Stored),
        2 => Ok(Detached::HandedOver),
        3 => Ok(Detached::Fenced),
        other => Err(malformed(&format!("detach answered {other}"))),
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
/// `each` is told every element's position, with the decoded value or `None` if it was left out.
fn decode_list<T>(
    client_id: &str,
    what: &'static str,
    list: Vec<Value>,
    decode: impl Fn(&[u8]) -> Result<T, DecodeError>,
    mut each: impl FnMut(usize, Option<&mut T>),
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::with_capacity(list.len());
    for (index, item) in list.into_iter().enumerate() {
        match decode(&bytes(item)?) {
            Ok(mut value) => {
                each(index, Some(&mut value));
                out.push(value);
            }
            Err(e) => {
                tracing::warn!(client_id, what, error = %e, "stored value dropped");
                each(index, None);
            }
        }
    }
    Ok(out)
}

/// Adds the optional journal key and arguments of `attach.lua` and `complete.lua`.
fn journal_arguments(
    invocation: &mut redis::ScriptInvocation<'_>,
    journal: Option<&JournalReservation>,
) {
    if let Some(journal) = journal {
        invocation
            .key(journal.key())
            .arg(journal.field_prefix())
            .arg(journal.value_prefix());
    }
}

/// Builds a session from the parts the scripts return: the session hash, the subscriptions hash,
/// the in-flight, queue and incoming QoS 2 lists. With the claim's journal reservation, each
/// in-flight and queued copy takes charge of the field the script journalled it in.
fn decode_session(
    client_id: &str,
    parts: Vec<Value>,
    journal: Option<&JournalReservation>,
) -> Result<StoredSession, StoreError> {
    let [hash, subs, inflight, queue, qos2]: [Value; 5] = parts
        .try_into()
        .map_err(|_| malformed("a session has five parts"))?;
    let hash = SessionHash::parse(client_id, array(hash)?)?;
    let subscriptions = decode_subscriptions(client_id, subs)?;
    let inflight = array(inflight)?;
    let queue_start = inflight.len();
    let journalled = |index: usize, copy: Option<&mut QueuedMessage>| {
        if let Some(journal) = journal {
            match copy {
                Some(copy) => journal.attach(index, copy),
                None => journal.release(index),
            }
        }
    };
    let inflight: Vec<InflightMessage> = decode_list(
        client_id,
        "in-flight message",
        inflight,
        codec::decode_inflight,
        |index, inflight| journalled(index, inflight.map(|m| &mut m.queued)),
    )?;
    let queue: VecDeque<QueuedMessage> = decode_list(
        client_id,
        "queued message",
        array(queue)?,
        codec::decode_queued,
        |index, queued| journalled(queue_start + index, queued),
    )?
    .into();
    let incoming_qos2 = decode_list(
        client_id,
        "QoS 2 packet id",
        array(qos2)?,
        |b| {
            std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse::<u16>().ok())
                .ok_or(DecodeError::Field {
                    field: "packet id",
                    value: 0,
                })
        },
        |_, _| {},
    )?;
    Ok(StoredSession {
        expiry_secs: hash.expiry_secs.unwrap_or(0),
        subscriptions,
        inflight,
        queue,
        incoming_qos2,
        disconnected_at: hash.disconnected_at,
    })
}

/// Reads a subscriptions hash (HGETALL), leaving out (and logging) entries that do not decode.
fn decode_subscriptions(
    client_id: &str,
    subs: Value,
) -> Result<Vec<StoredSubscription>, StoreError> {
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
    Ok(subscriptions)
}

/// A will stored with a session, if it decodes (an undecodable one is logged and dropped).
fn decode_stored_will(
    client_id: &str,
    value: Value,
) -> Result<Option<super::StoredWill>, StoreError> {
    let raw = bytes(value)?;
    if raw.is_empty() {
        return Ok(None);
    }
    match codec::decode_will(&raw) {
        Ok(will) => Ok(Some(will)),
        Err(e) => {
            tracing::warn!(client_id, error = %e, "stored will unreadable: dropped");
            Ok(None)
        }
    }
}

/// The text of a string reply.
fn text(value: Value) -> Result<String, StoreError> {
    String::from_utf8(bytes(value)?).map_err(|_| malformed("expected UTF-8 text"))
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
        claim: &SessionClaim,
    ) -> Result<Attached, StoreError> {
        let will = match &claim.will {
            Some(will) => codec::encode_will(will).map_err(encode_failed)?,
            None => Vec::new(),
        };
        let keys = self.session_keys(client_id);
        let mut invocation = self.session_invocation(&self.scripts.attach, &keys);
        invocation
            .arg(&**client_id)
            .arg(&self.node_id)
            .arg(claim.expiry_secs)
            .arg(will)
            .arg(if claim.clean_start { "1" } else { "0" })
            .arg(self.node_prefix());
        journal_arguments(&mut invocation, claim.journal.as_ref());
        let mut reply = array(self.run_script(invocation).await?)?.into_iter();
        let code = reply.next().map(int).transpose()?;
        let generation = |value: Option<Value>| -> Result<u64, StoreError> {
            let n = value.map(int).transpose()?;
            n.and_then(|n| u64::try_from(n).ok())
                .ok_or_else(|| malformed("attach: no generation"))
        };
        match code {
            Some(2) => {
                // {2, holder, gen}: the holder comes first.
                let holder = reply
                    .next()
                    .map(text)
                    .transpose()?
                    .ok_or_else(|| malformed("attach: no holder"))?;
                let generation = generation(reply.next())?;
                Ok(Attached {
                    generation,
                    previous: None,
                    holder: Holder::Elsewhere(holder),
                })
            }
            Some(code @ (0 | 1)) => {
                let generation = generation(reply.next())?;
                let previous_node = reply.next().map(text).transpose()?.unwrap_or_default();
                let previous = if code == 1 {
                    Some(decode_session(
                        client_id,
                        reply.collect(),
                        claim.journal.as_ref(),
                    )?)
                } else {
                    None
                };
                let parked_on = (!previous_node.is_empty() && previous_node != self.node_id)
                    .then_some(previous_node);
                Ok(Attached {
                    generation,
                    previous,
                    holder: Holder::Free { parked_on },
                })
            }
            _ => Err(malformed("attach answered an unknown code")),
        }
    }

    async fn complete_attach(
        &self,
        client_id: &ClientId,
        generation: u64,
        journal: Option<&JournalReservation>,
    ) -> Result<Completed, StoreError> {
        let keys = self.session_keys(client_id);
        let mut invocation = self.scripts.complete.prepare_invoke();
        invocation
            .key(&keys.0[..])
            .arg(&self.node_id)
            .arg(generation);
        journal_arguments(&mut invocation, journal);
        let mut reply = array(self.run_script(invocation).await?)?.into_iter();
        match reply.next().map(int).transpose()? {
            Some(0) => Ok(Completed::Superseded),
            Some(1) => Ok(Completed::Taken(None)),
            Some(2) => Ok(Completed::Taken(Some(decode_session(
                client_id,
                reply.collect(),
                journal,
            )?))),
            _ => Err(malformed("complete answered an unknown code")),
        }
    }

    async fn detach_session(
        &self,
        client_id: &ClientId,
        generation: u64,
        session: StoredSession,
    ) -> Result<Detached, StoreError> {
        self.detach(client_id, generation, session, false).await
    }

    async fn detach_session_keeping_will(
        &self,
        client_id: &ClientId,
        generation: u64,
        session: StoredSession,
    ) -> Result<Detached, StoreError> {
        self.detach(client_id, generation, session, true).await
    }

    async fn remove_session(
        &self,
        client_id: &str,
        generation: u64,
    ) -> Result<Detached, StoreError> {
        let keys = self.session_keys(client_id);
        let mut invocation = self.session_invocation(&self.scripts.remove, &keys);
        invocation.arg(client_id).arg(&self.node_id).arg(generation);
        detached(int(self.run_script(invocation).await?)?)
    }

    async fn save_subscriptions(
        &self,
        client_id: &str,
        generation: u64,
        added: &[StoredSubscription],
        removed: &[String],
    ) -> Result<(), StoreError> {
        if added.is_empty() && removed.is_empty() {
            return Ok(());
        }
        let keys = self.session_keys(client_id);
        let mut invocation = self.scripts.subscribe.prepare_invoke();
        invocation
            .key(&keys.0[0])
            .key(&keys.0[1])
            .arg(&self.node_id)
            .arg(generation)
            .arg(added.len());
        for s in added {
            invocation
                .arg(&s.filter)
                .arg(codec::encode_options(&s.options).map_err(encode_failed)?);
        }
        for filter in removed {
            invocation.arg(filter);
        }
        self.run_script(invocation).await.map(|_| ())
    }

    async fn adopt_sessions(
        &self,
        departed: &str,
        run: Option<u64>,
    ) -> Result<Adoption, StoreError> {
        let grace_ms = u64::try_from(self.expiry_grace.as_millis()).unwrap_or(u64::MAX);
        let mut invocation = self.scripts.adopt.prepare_invoke();
        invocation
            .key(self.node_sessions_key(departed))
            .key(self.node_sessions_key(&self.node_id))
            .key(self.sessions_key())
            .key(self.expiry_key())
            .key(self.node_moved_key(departed))
            .key(self.adoption_stash_key(departed))
            .key(self.node_run_key(departed))
            .arg(departed)
            .arg(&self.node_id)
            .arg(millis_since_epoch(SystemTime::now()))
            .arg(grace_ms)
            .arg(&self.key_prefixes()[..])
            .arg(run.map(|r| r.to_string()).unwrap_or_default());
        let [returned, entries]: [Value; 2] = array(self.run_script(invocation).await?)?
            .try_into()
            .map_err(|_| malformed("an adoption answers a flag and a list"))?;
        let mut adopted = Vec::new();
        for entry in array(entries)? {
            let [id, will, subs, was_online, _ended, moved]: [Value; 6] = array(entry)?
                .try_into()
                .map_err(|_| malformed("an adopted session has six parts"))?;
            let client_id: ClientId = text(id)?.into();
            adopted.push(AdoptedSession {
                will: decode_stored_will(&client_id, will)?,
                subscriptions: decode_subscriptions(&client_id, subs)?,
                was_online: int(was_online)? == 1,
                moved: int(moved)? == 1,
                client_id,
            });
        }
        // The answer arrived: the stash is no longer needed (should this fail, it expires).
        let mut con = self.manager.clone();
        let stash = self.adoption_stash_key(departed);
        if let Err(e) = self
            .bounded(async move {
                redis::cmd("DEL")
                    .arg(stash)
                    .query_async::<()>(&mut con)
                    .await
            })
            .await
        {
            tracing::debug!(error = %e, "adoption stash not deleted");
        }
        Ok(Adoption {
            sessions: adopted,
            node_returned: int(returned)? == 1,
        })
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
            .arg(self.max_queued)
            .arg(&self.node_id);
        match self.run_script(invocation).await? {
            Value::Int(0) => Ok(Enqueued::Queued),
            Value::Int(1) => Ok(Enqueued::Full),
            Value::Int(2) => Ok(Enqueued::Online),
            Value::Int(3) => Ok(Enqueued::NoSession),
            other @ (Value::BulkString(_) | Value::SimpleString(_)) => {
                Ok(Enqueued::Elsewhere(text(other)?))
            }
            other => Err(malformed(&format!("enqueue answered {other:?}"))),
        }
    }

    async fn take_expired_sessions(
        &self,
        now: SystemTime,
    ) -> Result<Vec<ExpiredSession>, StoreError> {
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
                .arg(&prefixes[..])
                .arg(self.node_prefix());
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
                let node = parts.next().map(text).transpose()?.unwrap_or_default();
                let session = decode_session(&id, parts.collect(), None)?;
                expired.push(ExpiredSession {
                    client_id: id,
                    parked_on: (!node.is_empty()).then_some(node),
                    session,
                });
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

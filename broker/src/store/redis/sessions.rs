//! One session's life in Redis: claiming it (attach, complete), storing it when its connection
//! ends (detach), removing it, writing subscriptions through, queueing for it while offline, and
//! what Redis knows of it.

use super::reply::{array, int, malformed, text};
use super::scripts::journal_arguments;
use super::session_reply::{decode_session, detached, SessionHash};
use super::{codec, encode_failed, millis_since_epoch, RedisStore, SessionInfo};
use crate::message::ClientId;
use crate::store::journal_hold::JournalReservation;
use crate::store::{
    Attached, Completed, Detached, Enqueued, Holder, QueuedMessage, SessionClaim, SessionSummary,
    StoreError, StoredSession, StoredSubscription,
};
use redis::Value;
use std::time::SystemTime;

impl RedisStore {
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

    /// What Redis holds of a session (its hash, and the lengths of its queue and in-flight
    /// lists), read in one pipeline without taking it.
    pub(super) async fn session_summary(
        &self,
        client_id: &str,
    ) -> Result<Option<SessionSummary>, StoreError> {
        let [session, _, inflight, queue, _] = self.session_keys(client_id).0;
        let mut pipe = redis::pipe();
        pipe.cmd("HGETALL")
            .arg(session)
            .cmd("LLEN")
            .arg(queue)
            .cmd("LLEN")
            .arg(inflight);
        let mut con = self.manager.clone();
        let replies: Vec<Value> = self
            .bounded(async move { pipe.query_async::<Vec<Value>>(&mut con).await })
            .await?;
        let [fields, queued, inflight] = <[Value; 3]>::try_from(replies)
            .map_err(|_| malformed("a session summary of other than three replies"))?;
        let fields = array(fields)?;
        if fields.is_empty() {
            return Ok(None);
        }
        let hash = SessionHash::parse(client_id, fields)?;
        let count = |reply| int(reply).map(|n| usize::try_from(n).unwrap_or(0));
        Ok(Some(SessionSummary {
            online: hash.online,
            node: hash.node,
            expiry_secs: hash.expiry_secs,
            disconnected_at_ms: hash.disconnected_at.map(millis_since_epoch),
            queued: count(queued)?,
            inflight: count(inflight)?,
        }))
    }

    /// Stores a session when its connection ends (`detach.lua`), leaving its will stored when
    /// `keep_will` (see [`crate::store::Store::detach_session_keeping_will`]).
    pub(super) async fn detach(
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

    pub(super) async fn attach_session(
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

    pub(super) async fn complete_attach(
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

    pub(super) async fn remove_session(
        &self,
        client_id: &str,
        generation: u64,
    ) -> Result<Detached, StoreError> {
        let keys = self.session_keys(client_id);
        let mut invocation = self.session_invocation(&self.scripts.remove, &keys);
        invocation.arg(client_id).arg(&self.node_id).arg(generation);
        detached(int(self.run_script(invocation).await?)?)
    }

    pub(super) async fn save_subscriptions(
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

    pub(super) async fn enqueue(
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

    pub(super) async fn session_count(&self) -> Result<usize, StoreError> {
        let n = int(self
            .query(redis::cmd("SCARD").arg(self.sessions_key()).to_owned())
            .await?)?;
        Ok(usize::try_from(n).unwrap_or(0))
    }
}

//! In-memory store: the embedded default of a standalone node.

use super::retained_map::RetainedMap;
use super::{
    millis_since_epoch, Attached, Completed, Detached, Enqueued, ExpiredSession, Holder,
    QueuedMessage, Retained, RetainedLimits, SessionClaim, SessionSummary, Store, StoreError,
    StoredSession,
};
use crate::message::{ClientId, Message};
use crate::store::journal_hold::JournalReservation;
use async_trait::async_trait;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A session as the store holds it. Online sessions keep their state in their connection, so
/// the store only keeps what is forced into their queue meanwhile (kept small: one per client).
/// Both keep the generation of the session's latest claim, which fences older ones.
enum Entry {
    Online {
        forced: VecDeque<QueuedMessage>,
        generation: u64,
    },
    Offline {
        session: Box<StoredSession>,
        generation: u64,
    },
}

impl Entry {
    /// The generation of the claim that holds (or last held) the session.
    fn generation(&self) -> u64 {
        match self {
            Entry::Online { generation, .. } | Entry::Offline { generation, .. } => *generation,
        }
    }
}

/// Sessions and retained messages held in this process.
pub struct MemoryStore {
    sessions: Mutex<HashMap<ClientId, Entry>>,
    retained: Mutex<RetainedMap>,
    retained_limits: RetainedLimits,
    max_queued: usize,
    generations: std::sync::atomic::AtomicU64,
}

impl MemoryStore {
    /// A store whose session queues hold at most `max_queued` messages each, and which keeps
    /// any number of retained messages.
    pub fn new(max_queued: usize) -> Self {
        MemoryStore {
            sessions: Mutex::new(HashMap::new()),
            retained: Mutex::new(RetainedMap::default()),
            retained_limits: RetainedLimits::default(),
            max_queued,
            generations: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// This store keeping retained messages within `limits`.
    pub fn with_retained_limits(mut self, limits: RetainedLimits) -> Self {
        self.retained_limits = limits;
        self
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn set_retained(&self, message: Arc<Message>) -> Result<Retained, StoreError> {
        let now = SystemTime::now();
        let message = Message::unstamped(message);
        Ok(self.retained.lock().set(message, self.retained_limits, now))
    }

    async fn retained_matching(&self, filter: &str) -> Result<Vec<Arc<Message>>, StoreError> {
        Ok(self.retained.lock().matching(filter, SystemTime::now()))
    }

    async fn retained_count(&self) -> Result<usize, StoreError> {
        Ok(self.retained.lock().len())
    }

    async fn attach_session(
        &self,
        client_id: &ClientId,
        _claim: &SessionClaim,
    ) -> Result<Attached, StoreError> {
        let generation = self
            .generations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let mut sessions = self.sessions.lock();
        let previous = match sessions.remove(client_id) {
            Some(Entry::Offline { session, .. }) => Some(*session),
            Some(Entry::Online { forced, .. }) => Some(StoredSession {
                queue: forced,
                ..StoredSession::default()
            }),
            None => None,
        };
        sessions.insert(
            client_id.clone(),
            Entry::Online {
                forced: VecDeque::new(),
                generation,
            },
        );
        Ok(Attached {
            generation,
            previous,
            holder: Holder::Free { parked_on: None },
        })
    }

    async fn complete_attach(
        &self,
        _client_id: &ClientId,
        _generation: u64,
        _journal: Option<&JournalReservation>,
    ) -> Result<Completed, StoreError> {
        // Only one node uses this store: no claim ever waits for another node.
        Ok(Completed::Superseded)
    }

    async fn detach_session(
        &self,
        client_id: &ClientId,
        generation: u64,
        mut session: StoredSession,
    ) -> Result<Detached, StoreError> {
        let mut sessions = self.sessions.lock();
        let arrived_meanwhile = match sessions.remove(client_id) {
            Some(Entry::Online {
                forced,
                generation: held,
            }) if held == generation => forced,
            Some(other) => {
                sessions.insert(client_id.clone(), other);
                return Ok(Detached::Fenced);
            }
            // Ended meanwhile (removed by a newer claim, or swept after it went offline): this
            // connection's copy is stale.
            None => return Ok(Detached::Fenced),
        };
        for message in arrived_meanwhile {
            if session.queue.len() >= self.max_queued {
                break;
            }
            session.queue.push_back(message);
        }
        // What waits for the session's return is no live delivery any more.
        session.queue = session
            .queue
            .drain(..)
            .map(QueuedMessage::unstamped)
            .collect();
        for inflight in &mut session.inflight {
            inflight.queued.message = Message::unstamped(inflight.queued.message.clone());
        }
        session.disconnected_at = Some(SystemTime::now());
        sessions.insert(
            client_id.clone(),
            Entry::Offline {
                session: Box::new(session),
                generation,
            },
        );
        Ok(Detached::Stored)
    }

    async fn remove_session(
        &self,
        client_id: &str,
        generation: u64,
    ) -> Result<Detached, StoreError> {
        let mut sessions = self.sessions.lock();
        match sessions.get(client_id) {
            Some(entry) if entry.generation() != generation => Ok(Detached::Fenced),
            _ => {
                sessions.remove(client_id);
                Ok(Detached::Stored)
            }
        }
    }

    async fn enqueue(
        &self,
        client_id: &str,
        message: QueuedMessage,
        force: bool,
    ) -> Result<Enqueued, StoreError> {
        let mut sessions = self.sessions.lock();
        let queue = match sessions.get_mut(client_id) {
            None => return Ok(Enqueued::NoSession),
            Some(Entry::Online { .. }) if !force => return Ok(Enqueued::Online),
            Some(Entry::Online { forced, .. }) => forced,
            Some(Entry::Offline { session, .. }) => &mut session.queue,
        };
        if queue.len() >= self.max_queued {
            return Ok(Enqueued::Full);
        }
        queue.push_back(message.unstamped());
        Ok(Enqueued::Queued)
    }

    async fn take_expired_sessions(
        &self,
        now: SystemTime,
    ) -> Result<Vec<ExpiredSession>, StoreError> {
        let mut sessions = self.sessions.lock();
        let expired: Vec<ClientId> = sessions
            .iter()
            .filter(|(_, e)| match e {
                // MQTT 5: an expiry interval of 0xFFFFFFFF means the session never expires.
                Entry::Offline { session: s, .. } => {
                    s.expiry_secs != u32::MAX
                        && s.disconnected_at.is_some_and(|at| {
                            at + Duration::from_secs(u64::from(s.expiry_secs)) <= now
                        })
                }
                Entry::Online { .. } => false,
            })
            .map(|(id, _)| id.clone())
            .collect();
        Ok(expired
            .into_iter()
            .filter_map(|id| match sessions.remove(&id) {
                Some(Entry::Offline { session, .. }) => Some(ExpiredSession {
                    client_id: id,
                    parked_on: None,
                    session: *session,
                }),
                _ => None,
            })
            .collect())
    }

    async fn session_count(&self) -> Result<usize, StoreError> {
        Ok(self.sessions.lock().len())
    }

    async fn session_summary(&self, client_id: &str) -> Result<Option<SessionSummary>, StoreError> {
        let sessions = self.sessions.lock();
        Ok(sessions.get(client_id).map(|entry| match entry {
            Entry::Online { forced, .. } => SessionSummary {
                online: true,
                node: None,
                expiry_secs: None,
                disconnected_at_ms: None,
                queued: forced.len(),
                inflight: 0,
            },
            Entry::Offline { session, .. } => SessionSummary {
                online: false,
                node: None,
                expiry_secs: Some(session.expiry_secs),
                disconnected_at_ms: session.disconnected_at.map(millis_since_epoch),
                queued: session.queue.len(),
                inflight: session.inflight.len(),
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::QoS;
    use bytes::Bytes;

    fn queued(payload: &'static str) -> QueuedMessage {
        super::super::test_queued(payload, QoS::AtLeastOnce)
    }

    async fn attach(store: &MemoryStore, id: &ClientId) -> Attached {
        store
            .attach_session(id, &SessionClaim::default())
            .await
            .expect("attach")
    }

    #[tokio::test]
    async fn offline_queue_is_bounded_and_returned_on_attach() {
        let store = MemoryStore::new(2);
        let id: ClientId = "c".into();
        assert_eq!(
            store.enqueue("c", queued("x"), false).await.ok(),
            Some(Enqueued::NoSession)
        );
        let held = attach(&store, &id).await;
        assert_eq!(
            store.enqueue("c", queued("x"), false).await.ok(),
            Some(Enqueued::Online)
        );
        store
            .detach_session(
                &id,
                held.generation,
                StoredSession {
                    expiry_secs: 60,
                    ..Default::default()
                },
            )
            .await
            .expect("detach");
        for p in ["1", "2"] {
            assert_eq!(
                store.enqueue("c", queued(p), false).await.ok(),
                Some(Enqueued::Queued)
            );
        }
        assert_eq!(
            store.enqueue("c", queued("3"), false).await.ok(),
            Some(Enqueued::Full)
        );
        let session = attach(&store, &id).await.previous.expect("session");
        let payloads: Vec<_> = session
            .queue
            .iter()
            .map(|q| q.message.payload.clone())
            .collect();
        assert_eq!(payloads, ["1", "2"]);
    }

    #[tokio::test]
    async fn messages_forced_while_detaching_follow_the_session_queue() {
        let store = MemoryStore::new(10);
        let id: ClientId = "c".into();
        let held = attach(&store, &id).await;
        assert_eq!(
            store.enqueue("c", queued("late"), true).await.ok(),
            Some(Enqueued::Queued)
        );
        let mut own = StoredSession {
            expiry_secs: 60,
            ..Default::default()
        };
        own.queue.push_back(queued("early"));
        store
            .detach_session(&id, held.generation, own)
            .await
            .expect("detach");
        let session = attach(&store, &id).await.previous.expect("session");
        let payloads: Vec<_> = session
            .queue
            .iter()
            .map(|q| q.message.payload.clone())
            .collect();
        assert_eq!(payloads, ["early", "late"]);
    }

    #[tokio::test]
    async fn expiry_removes_and_reattach_returns_the_session() {
        let store = MemoryStore::new(10);
        let id: ClientId = "c".into();
        let held = attach(&store, &id).await;
        store
            .detach_session(
                &id,
                held.generation,
                StoredSession {
                    expiry_secs: 0,
                    ..Default::default()
                },
            )
            .await
            .expect("detach");
        let expired = store
            .take_expired_sessions(SystemTime::now() + Duration::from_secs(1))
            .await
            .expect("sweep");
        assert_eq!(expired.len(), 1);
        assert_eq!(store.session_count().await.ok(), Some(0));
        let held = attach(&store, &id).await;
        store
            .detach_session(
                &id,
                held.generation,
                StoredSession {
                    expiry_secs: 60,
                    ..Default::default()
                },
            )
            .await
            .expect("detach");
        assert!(attach(&store, &id).await.previous.is_some());
    }

    #[tokio::test]
    async fn a_stale_connection_cannot_store_over_a_newer_one() {
        let store = MemoryStore::new(10);
        let id: ClientId = "c".into();
        let old = attach(&store, &id).await;
        let new = attach(&store, &id).await;
        assert!(new.generation > old.generation);
        let stale = StoredSession {
            expiry_secs: 60,
            ..Default::default()
        };
        assert_eq!(
            store.detach_session(&id, old.generation, stale).await.ok(),
            Some(Detached::Fenced)
        );
        assert_eq!(
            store.remove_session("c", old.generation).await.ok(),
            Some(Detached::Fenced)
        );
        assert_eq!(
            store.enqueue("c", queued("x"), false).await.ok(),
            Some(Enqueued::Online),
            "the newer connection still holds the session"
        );
    }

    #[tokio::test]
    async fn retained_set_match_and_delete() {
        let store = MemoryStore::new(10);
        let mut m = queued("v").message.as_ref().clone();
        m.topic = "a/b".into();
        store.set_retained(Arc::new(m.clone())).await.expect("set");
        assert_eq!(
            store.retained_matching("a/+").await.expect("match").len(),
            1
        );
        assert_eq!(
            store.retained_matching("b/#").await.expect("match").len(),
            0
        );
        m.payload = Bytes::new();
        store.set_retained(Arc::new(m)).await.expect("delete");
        assert_eq!(store.retained_count().await.ok(), Some(0));
    }
}

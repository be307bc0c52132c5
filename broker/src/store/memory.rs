//! In-memory store: the embedded default of a standalone node.

use super::{Enqueued, QueuedMessage, Store, StoreError, StoredSession};
use crate::message::{ClientId, Message};
use crate::protocol::topic;
use async_trait::async_trait;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A session as the store holds it. Online sessions keep their state in their connection, so
/// the store only keeps what is forced into their queue meanwhile (kept small: one per client).
enum Entry {
    Online { forced: VecDeque<QueuedMessage> },
    Offline(Box<StoredSession>),
}

/// Sessions and retained messages held in this process.
pub struct MemoryStore {
    sessions: Mutex<HashMap<ClientId, Entry>>,
    retained: Mutex<HashMap<Arc<str>, Arc<Message>>>,
    max_queued: usize,
}

impl MemoryStore {
    /// A store whose session queues hold at most `max_queued` messages each.
    pub fn new(max_queued: usize) -> Self {
        MemoryStore {
            sessions: Mutex::new(HashMap::new()),
            retained: Mutex::new(HashMap::new()),
            max_queued,
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn set_retained(&self, message: Arc<Message>) -> Result<(), StoreError> {
        let mut retained = self.retained.lock();
        if message.payload.is_empty() {
            retained.remove(&message.topic);
        } else {
            retained.insert(message.topic.clone(), message);
        }
        Ok(())
    }

    async fn retained_matching(&self, filter: &str) -> Result<Vec<Arc<Message>>, StoreError> {
        let now = SystemTime::now();
        let mut retained = self.retained.lock();
        retained.retain(|_, m| !m.is_expired(now));
        Ok(retained
            .values()
            .filter(|m| topic::matches(filter, &m.topic))
            .cloned()
            .collect())
    }

    async fn retained_count(&self) -> Result<usize, StoreError> {
        Ok(self.retained.lock().len())
    }

    async fn attach_session(
        &self,
        client_id: &ClientId,
    ) -> Result<Option<StoredSession>, StoreError> {
        let mut sessions = self.sessions.lock();
        let previous = match sessions.remove(client_id) {
            Some(Entry::Offline(session)) => Some(*session),
            Some(Entry::Online { forced }) => Some(StoredSession {
                queue: forced,
                ..StoredSession::default()
            }),
            None => None,
        };
        sessions.insert(
            client_id.clone(),
            Entry::Online {
                forced: VecDeque::new(),
            },
        );
        Ok(previous)
    }

    async fn detach_session(
        &self,
        client_id: &ClientId,
        mut session: StoredSession,
    ) -> Result<(), StoreError> {
        let mut sessions = self.sessions.lock();
        let arrived_meanwhile = match sessions.remove(client_id) {
            Some(Entry::Online { forced }) => forced,
            Some(Entry::Offline(session)) => session.queue,
            None => VecDeque::new(),
        };
        for message in arrived_meanwhile {
            if session.queue.len() >= self.max_queued {
                break;
            }
            session.queue.push_back(message);
        }
        session.disconnected_at = Some(SystemTime::now());
        sessions.insert(client_id.clone(), Entry::Offline(Box::new(session)));
        Ok(())
    }

    async fn remove_session(&self, client_id: &str) -> Result<(), StoreError> {
        self.sessions.lock().remove(client_id);
        Ok(())
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
            Some(Entry::Online { forced }) => forced,
            Some(Entry::Offline(session)) => &mut session.queue,
        };
        if queue.len() >= self.max_queued {
            return Ok(Enqueued::Full);
        }
        queue.push_back(message);
        Ok(Enqueued::Queued)
    }

    async fn take_expired_sessions(
        &self,
        now: SystemTime,
    ) -> Result<Vec<(ClientId, StoredSession)>, StoreError> {
        let mut sessions = self.sessions.lock();
        let expired: Vec<ClientId> = sessions
            .iter()
            .filter(|(_, e)| match e {
                Entry::Offline(s) => s
                    .disconnected_at
                    .is_some_and(|at| at + Duration::from_secs(u64::from(s.expiry_secs)) <= now),
                Entry::Online { .. } => false,
            })
            .map(|(id, _)| id.clone())
            .collect();
        Ok(expired
            .into_iter()
            .filter_map(|id| match sessions.remove(&id) {
                Some(Entry::Offline(session)) => Some((id, *session)),
                _ => None,
            })
            .collect())
    }

    async fn session_count(&self) -> Result<usize, StoreError> {
        Ok(self.sessions.lock().len())
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

    #[tokio::test]
    async fn offline_queue_is_bounded_and_returned_on_attach() {
        let store = MemoryStore::new(2);
        let id: ClientId = "c".into();
        assert_eq!(
            store.enqueue("c", queued("x"), false).await.ok(),
            Some(Enqueued::NoSession)
        );
        store.attach_session(&id).await.expect("attach");
        assert_eq!(
            store.enqueue("c", queued("x"), false).await.ok(),
            Some(Enqueued::Online)
        );
        store
            .detach_session(
                &id,
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
        let session = store
            .attach_session(&id)
            .await
            .expect("attach")
            .expect("session");
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
        store.attach_session(&id).await.expect("attach");
        assert_eq!(
            store.enqueue("c", queued("late"), true).await.ok(),
            Some(Enqueued::Queued)
        );
        let mut own = StoredSession {
            expiry_secs: 60,
            ..Default::default()
        };
        own.queue.push_back(queued("early"));
        store.detach_session(&id, own).await.expect("detach");
        let session = store
            .attach_session(&id)
            .await
            .expect("attach")
            .expect("session");
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
        store.attach_session(&id).await.expect("attach");
        store
            .detach_session(
                &id,
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
        store.attach_session(&id).await.expect("attach");
        store
            .detach_session(
                &id,
                StoredSession {
                    expiry_secs: 60,
                    ..Default::default()
                },
            )
            .await
            .expect("detach");
        assert!(store.attach_session(&id).await.expect("attach").is_some());
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

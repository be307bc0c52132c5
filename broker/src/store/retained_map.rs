//! The memory store's retained messages: one per topic, bounded in number, with expired ones
//! purged when a look-up or the limit meets them.

use super::Retained;
use crate::message::Message;
use crate::protocol::topic;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

/// Retained messages by topic, and the earliest instant one of them expires.
#[derive(Default)]
pub(super) struct RetainedMap {
    messages: HashMap<Arc<str>, Arc<Message>>,
    /// No message expires before this (it may be earlier than the earliest one left, after a
    /// removal: a purge then finds nothing and sets it right).
    earliest_expiry: Option<SystemTime>,
}

impl RetainedMap {
    /// Stores `message` as its topic's retained message, or deletes the topic's one when the
    /// payload is empty. A new topic is refused ([`Retained::Full`]) while `max` (0: no limit)
    /// messages that have not expired are held; a topic that has one may always replace it.
    pub(super) fn set(&mut self, message: Arc<Message>, max: usize, now: SystemTime) -> Retained {
        if message.payload.is_empty() {
            self.messages.remove(&message.topic);
            return Retained::Deleted;
        }
        if max > 0 && self.messages.len() >= max && !self.messages.contains_key(&message.topic) {
            self.purge_expired(now);
            if self.messages.len() >= max {
                return Retained::Full;
            }
        }
        if let Some(at) = message.expires_at {
            self.earliest_expiry = Some(self.earliest_expiry.map_or(at, |e| e.min(at)));
        }
        self.messages.insert(message.topic.clone(), message);
        Retained::Stored
    }

    /// The retained messages whose topics match `filter`, expired ones purged first.
    pub(super) fn matching(&mut self, filter: &str, now: SystemTime) -> Vec<Arc<Message>> {
        self.purge_expired(now);
        self.messages
            .values()
            .filter(|m| topic::matches(filter, &m.topic))
            .cloned()
            .collect()
    }

    /// Number of retained messages held (expired ones not yet purged included).
    pub(super) fn len(&self) -> usize {
        self.messages.len()
    }

    /// Drops the messages expired at `now`, unless none can have (a walk only when one is due).
    fn purge_expired(&mut self, now: SystemTime) {
        if self.earliest_expiry.is_none_or(|at| at > now) {
            return;
        }
        self.messages.retain(|_, m| !m.is_expired(now));
        self.earliest_expiry = self.messages.values().filter_map(|m| m.expires_at).min();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::MessageProperties;
    use crate::protocol::QoS;
    use bytes::Bytes;
    use std::time::Duration;

    fn message(
        topic: &str,
        payload: &'static [u8],
        expires_at: Option<SystemTime>,
    ) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.into(),
            payload: Bytes::from_static(payload),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: MessageProperties::default(),
            expires_at,
            publisher: None,
        })
    }

    #[test]
    fn a_full_map_refuses_new_topics_but_replaces_and_deletes() {
        let now = SystemTime::now();
        let mut map = RetainedMap::default();
        assert_eq!(map.set(message("a", b"1", None), 2, now), Retained::Stored);
        assert_eq!(map.set(message("b", b"1", None), 2, now), Retained::Stored);
        assert_eq!(map.set(message("c", b"1", None), 2, now), Retained::Full);
        assert_eq!(map.set(message("a", b"2", None), 2, now), Retained::Stored);
        assert_eq!(map.matching("a", now)[0].payload, Bytes::from_static(b"2"));
        assert_eq!(map.set(message("b", b"", None), 2, now), Retained::Deleted);
        assert_eq!(map.set(message("c", b"1", None), 2, now), Retained::Stored);
        assert_eq!(map.len(), 2);
        assert_eq!(
            map.set(message("d", b"1", None), 0, now),
            Retained::Stored,
            "0: no limit"
        );
    }

    #[test]
    fn expired_messages_make_room() {
        let now = SystemTime::now();
        let mut map = RetainedMap::default();
        let soon = now + Duration::from_secs(5);
        assert_eq!(
            map.set(message("a", b"1", Some(soon)), 2, now),
            Retained::Stored
        );
        assert_eq!(map.set(message("b", b"1", None), 2, now), Retained::Stored);
        assert_eq!(map.set(message("c", b"1", None), 2, now), Retained::Full);
        let later = soon + Duration::from_secs(1);
        assert_eq!(
            map.set(message("c", b"1", None), 2, later),
            Retained::Stored
        );
        assert!(map.matching("a", later).is_empty());
        assert_eq!(map.len(), 2);
    }
}

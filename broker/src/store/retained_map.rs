//! The memory store's retained messages: one per topic, bounded in number and in total payload
//! bytes, with expired ones purged when a look-up or a limit meets them.

use super::{Retained, RetainedLimits};
use crate::message::Message;
use crate::protocol::topic;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

/// Retained messages by topic, the sum of their payload sizes, and the earliest instant one of
/// them expires.
#[derive(Default)]
pub(super) struct RetainedMap {
    messages: HashMap<Arc<str>, Arc<Message>>,
    /// Bytes of payload held, summed over `messages`.
    bytes: u64,
    /// No message expires before this (it may be earlier than the earliest one left, after a
    /// removal: a purge then finds nothing and sets it right).
    earliest_expiry: Option<SystemTime>,
}

/// A payload's size as counted against [`RetainedLimits::max_bytes`].
fn size(message: &Message) -> u64 {
    u64::try_from(message.payload.len()).unwrap_or(u64::MAX)
}

impl RetainedMap {
    /// Stores `message` as its topic's retained message, or deletes the topic's one when the
    /// payload is empty (never refused). A new topic is refused ([`Retained::CountFull`]) while
    /// `limits.max_messages` messages are held; a topic that has one may always replace it. A
    /// message that would take the payloads beyond `limits.max_bytes` is refused
    /// ([`Retained::BytesFull`]), counting the one it replaces as gone. Expired messages are
    /// purged before a refusal.
    pub(super) fn set(
        &mut self,
        message: Arc<Message>,
        limits: RetainedLimits,
        now: SystemTime,
    ) -> Retained {
        if message.payload.is_empty() {
            if let Some(old) = self.messages.remove(&message.topic) {
                self.bytes -= size(&old);
            }
            return Retained::Deleted;
        }
        let mut purged = false;
        loop {
            let old = self.messages.get(&message.topic).map(|m| size(m));
            let refusal = if limits.max_messages > 0
                && old.is_none()
                && self.messages.len() >= limits.max_messages
            {
                Retained::CountFull
            } else if limits.max_bytes > 0
                && (self.bytes - old.unwrap_or(0)).saturating_add(size(&message)) > limits.max_bytes
            {
                Retained::BytesFull
            } else {
                break;
            };
            if purged || !self.purge_expired(now) {
                return refusal;
            }
            purged = true;
        }
        if let Some(at) = message.expires_at {
            self.earliest_expiry = Some(self.earliest_expiry.map_or(at, |e| e.min(at)));
        }
        self.bytes += size(&message);
        if let Some(old) = self.messages.insert(message.topic.clone(), message) {
            self.bytes -= size(&old);
        }
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

    /// Drops the messages expired at `now`, unless none can have (a walk only when one is due);
    /// returns whether it walked.
    fn purge_expired(&mut self, now: SystemTime) -> bool {
        if self.earliest_expiry.is_none_or(|at| at > now) {
            return false;
        }
        let mut freed = 0;
        self.messages.retain(|_, m| {
            let keep = !m.is_expired(now);
            if !keep {
                freed += size(m);
            }
            keep
        });
        self.bytes -= freed;
        self.earliest_expiry = self.messages.values().filter_map(|m| m.expires_at).min();
        true
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
            received_at: None,
        })
    }

    fn count(max_messages: usize) -> RetainedLimits {
        RetainedLimits {
            max_messages,
            max_bytes: 0,
        }
    }

    #[test]
    fn payload_bytes_are_limited_in_total_counting_what_a_message_replaces() {
        let now = SystemTime::now();
        let limits = RetainedLimits {
            max_messages: 0,
            max_bytes: 10,
        };
        let mut map = RetainedMap::default();
        assert_eq!(
            map.set(message("a", b"123456", None), limits, now),
            Retained::Stored
        );
        assert_eq!(
            map.set(message("b", b"1234", None), limits, now),
            Retained::Stored
        );
        assert_eq!(
            map.set(message("c", b"1", None), limits, now),
            Retained::BytesFull
        );
        assert_eq!(
            map.set(message("a", b"1234567", None), limits, now),
            Retained::BytesFull
        );
        assert_eq!(
            map.set(message("a", b"12345", None), limits, now),
            Retained::Stored
        );
        assert_eq!(
            map.set(message("c", b"1", None), limits, now),
            Retained::Stored
        );
        assert_eq!(map.bytes, 10);
        assert_eq!(
            map.set(message("b", b"", None), limits, now),
            Retained::Deleted
        );
        assert_eq!(map.bytes, 6);
        let soon = now + Duration::from_secs(5);
        assert_eq!(
            map.set(message("d", b"1234", Some(soon)), limits, now),
            Retained::Stored
        );
        assert_eq!(
            map.set(message("e", b"1234", None), limits, now),
            Retained::BytesFull
        );
        let later = soon + Duration::from_secs(1);
        assert_eq!(
            map.set(message("e", b"1234", None), limits, later),
            Retained::Stored
        );
        assert_eq!(map.bytes, 10);
    }

    #[test]
    fn a_full_map_refuses_new_topics_but_replaces_and_deletes() {
        let now = SystemTime::now();
        let mut map = RetainedMap::default();
        assert_eq!(
            map.set(message("a", b"1", None), count(2), now),
            Retained::Stored
        );
        assert_eq!(
            map.set(message("b", b"1", None), count(2), now),
            Retained::Stored
        );
        assert_eq!(
            map.set(message("c", b"1", None), count(2), now),
            Retained::CountFull
        );
        assert_eq!(
            map.set(message("a", b"2", None), count(2), now),
            Retained::Stored
        );
        assert_eq!(map.matching("a", now)[0].payload, Bytes::from_static(b"2"));
        assert_eq!(
            map.set(message("b", b"", None), count(2), now),
            Retained::Deleted
        );
        assert_eq!(
            map.set(message("c", b"1", None), count(2), now),
            Retained::Stored
        );
        assert_eq!(map.len(), 2);
        assert_eq!(
            map.set(message("d", b"1", None), RetainedLimits::default(), now),
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
            map.set(message("a", b"1", Some(soon)), count(2), now),
            Retained::Stored
        );
        assert_eq!(
            map.set(message("b", b"1", None), count(2), now),
            Retained::Stored
        );
        assert_eq!(
            map.set(message("c", b"1", None), count(2), now),
            Retained::CountFull
        );
        let later = soon + Duration::from_secs(1);
        assert_eq!(
            map.set(message("c", b"1", None), count(2), later),
            Retained::Stored
        );
        assert!(map.matching("a", later).is_empty());
        assert_eq!(map.len(), 2);
    }
}

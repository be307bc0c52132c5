//! Outgoing delivery state of one session: packet ids, the in-flight window and the queue behind it.
//!
//! QoS 1 and 2 messages take a packet id and a slot in the in-flight window (the smaller of the
//! client's receive maximum and the broker's `max_inflight`); when the window is full they wait in
//! a bounded queue. QoS 0 messages never wait for the window.

use crate::protocol::QoS;
use crate::store::{InflightMessage, InflightState, QueuedMessage};
use std::collections::{BTreeMap, VecDeque};

/// What to do with a message offered for delivery.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// Send it now with this packet id (0 for QoS 0).
    Send(u16, QueuedMessage),
    /// The window is full; it waits in the queue.
    Queued,
    /// The queue is full; it was dropped.
    Dropped,
}

/// Packet ids, in-flight messages and the pending queue of one session.
#[derive(Debug)]
pub struct Outgoing {
    inflight: BTreeMap<u16, InflightMessage>,
    pending: VecDeque<QueuedMessage>,
    next_id: u16,
    window: usize,
    max_pending: usize,
    /// Restored in-flight PUBLISHes not yet resent on this connection, in packet-id order. They
    /// are resent as the window allows: a client's receive maximum counts resent PUBLISHes too
    /// (MQTT-3.3.4-9), and a reconnecting client may ask for a smaller one.
    unsent: VecDeque<u16>,
}

impl Outgoing {
    /// An empty state with the given window and queue bound.
    pub fn new(window: usize, max_pending: usize) -> Self {
        Outgoing {
            inflight: BTreeMap::new(),
            pending: VecDeque::new(),
            next_id: 1,
            window: window.max(1),
            max_pending,
            unsent: VecDeque::new(),
        }
    }

    /// Restores what a previous connection of the session left.
    pub fn restore(&mut self, inflight: Vec<InflightMessage>, queue: VecDeque<QueuedMessage>) {
        for m in inflight {
            self.next_id = m.packet_id.wrapping_add(1).max(1);
            self.inflight.insert(m.packet_id, m);
        }
        self.unsent = self
            .inflight
            .values()
            .filter(|m| m.state == InflightState::AwaitingAck)
            .map(|m| m.packet_id)
            .collect();
        self.pending = queue;
    }

    /// The next restored in-flight PUBLISH to resend (with DUP and its packet id), if the
    /// window has room for it beside those already sent on this connection.
    pub fn next_resend(&mut self) -> Option<(u16, QueuedMessage)> {
        let sent = self.inflight.len().saturating_sub(self.unsent.len());
        if sent >= self.window {
            return None;
        }
        let id = self.unsent.pop_front()?;
        let m = self.inflight.get(&id)?;
        Some((id, m.queued.clone()))
    }

    /// `id` left the in-flight window or its PUBLISH needs no resending any more.
    fn sent_or_gone(&mut self, id: u16) {
        if !self.unsent.is_empty() {
            self.unsent.retain(|&unsent| unsent != id);
        }
    }

    fn allocate_id(&mut self) -> Option<u16> {
        if self.inflight.len() >= usize::from(u16::MAX) {
            return None;
        }
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1).max(1);
            if !self.inflight.contains_key(&id) {
                return Some(id);
            }
        }
    }

    fn window_open(&self) -> bool {
        self.inflight.len() < self.window && self.pending.is_empty()
    }

    /// Offers a message for delivery.
    pub fn offer(&mut self, queued: QueuedMessage) -> Offer {
        if queued.qos == QoS::AtMostOnce {
            return Offer::Send(0, queued);
        }
        if self.window_open() {
            if let Some(id) = self.allocate_id() {
                self.track(id, &queued);
                return Offer::Send(id, queued);
            }
        }
        if self.pending.len() >= self.max_pending {
            return Offer::Dropped;
        }
        self.pending.push_back(queued);
        Offer::Queued
    }

    fn track(&mut self, id: u16, queued: &QueuedMessage) {
        self.inflight.insert(
            id,
            InflightMessage {
                packet_id: id,
                state: InflightState::AwaitingAck,
                queued: queued.clone(),
            },
        );
    }

    /// The next queued message that fits in the window, with its new packet id.
    pub fn next_ready(&mut self) -> Option<(u16, QueuedMessage)> {
        if self.inflight.len() >= self.window {
            return None;
        }
        let queued = self.pending.pop_front()?;
        if queued.qos == QoS::AtMostOnce {
            return Some((0, queued));
        }
        match self.allocate_id() {
            Some(id) => {
                self.track(id, &queued);
                Some((id, queued))
            }
            None => {
                self.pending.push_front(queued);
                None
            }
        }
    }

    /// Forgets an in-flight message the broker could not send (expired or too large).
    pub fn abandon(&mut self, id: u16) {
        self.inflight.remove(&id);
        self.sent_or_gone(id);
    }

    /// PUBACK received; false if the id was not awaiting one.
    pub fn puback(&mut self, id: u16) -> bool {
        match self.inflight.get(&id) {
            Some(m)
                if m.state == InflightState::AwaitingAck && m.queued.qos == QoS::AtLeastOnce =>
            {
                self.inflight.remove(&id);
                self.sent_or_gone(id);
                true
            }
            _ => false,
        }
    }

    /// PUBREC received; returns whether a PUBREL should follow. An error reason ends the flow.
    pub fn pubrec(&mut self, id: u16, accepted: bool) -> bool {
        match self.inflight.get_mut(&id) {
            Some(m) if m.queued.qos == QoS::ExactlyOnce => {
                if m.state == InflightState::AwaitingAck && !self.unsent.is_empty() {
                    self.unsent.retain(|&unsent| unsent != id);
                }
                if accepted {
                    m.state = InflightState::AwaitingComplete;
                    true
                } else {
                    self.inflight.remove(&id);
                    false
                }
            }
            _ => false,
        }
    }

    /// PUBCOMP received; false if the id was not awaiting one.
    pub fn pubcomp(&mut self, id: u16) -> bool {
        match self.inflight.get(&id) {
            Some(m) if m.state == InflightState::AwaitingComplete => {
                self.inflight.remove(&id);
                true
            }
            _ => false,
        }
    }

    /// In-flight messages to resend after a reconnect, in packet-id order.
    pub fn inflight(&self) -> impl Iterator<Item = &InflightMessage> {
        self.inflight.values()
    }

    /// How many more messages the queue can take.
    pub fn room(&self) -> usize {
        self.max_pending.saturating_sub(self.pending.len())
    }

    /// Number of messages in flight.
    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    /// Number of messages queued behind the in-flight window.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Appends a message at the back of the queue regardless of the window (used when a
    /// connection ends and its undelivered messages are kept).
    pub fn keep(&mut self, queued: QueuedMessage) -> bool {
        if self.pending.len() >= self.max_pending {
            return false;
        }
        self.pending.push_back(queued);
        true
    }

    /// Everything left, for storing with the session.
    pub fn into_parts(self) -> (Vec<InflightMessage>, VecDeque<QueuedMessage>) {
        (self.inflight.into_values().collect(), self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(qos: QoS, tag: &'static str) -> QueuedMessage {
        crate::store::test_queued(tag, qos)
    }

    #[test]
    fn window_limits_inflight_and_queue_drains_in_order() {
        let mut out = Outgoing::new(2, 10);
        assert!(matches!(
            out.offer(q(QoS::AtLeastOnce, "a")),
            Offer::Send(1, _)
        ));
        assert!(matches!(
            out.offer(q(QoS::AtLeastOnce, "b")),
            Offer::Send(2, _)
        ));
        assert_eq!(out.offer(q(QoS::AtLeastOnce, "c")), Offer::Queued);
        assert!(matches!(
            out.offer(q(QoS::AtMostOnce, "z")),
            Offer::Send(0, _)
        ));
        assert_eq!(out.next_ready(), None);
        assert!(out.puback(1));
        assert!(!out.puback(1));
        let (id, m) = out.next_ready().expect("c is ready");
        assert_eq!((id, &m.message.payload[..]), (3, &b"c"[..]));
    }

    #[test]
    fn queue_is_bounded() {
        let mut out = Outgoing::new(1, 1);
        assert!(matches!(
            out.offer(q(QoS::AtLeastOnce, "a")),
            Offer::Send(..)
        ));
        assert_eq!(out.offer(q(QoS::AtLeastOnce, "b")), Offer::Queued);
        assert_eq!(out.offer(q(QoS::AtLeastOnce, "c")), Offer::Dropped);
    }

    #[test]
    fn qos2_needs_rec_then_comp() {
        let mut out = Outgoing::new(5, 5);
        assert!(matches!(
            out.offer(q(QoS::ExactlyOnce, "a")),
            Offer::Send(1, _)
        ));
        assert!(!out.puback(1), "PUBACK does not complete QoS 2");
        assert!(!out.pubcomp(1), "PUBCOMP before PUBREC is ignored");
        assert!(out.pubrec(1, true));
        assert!(out.pubcomp(1));
        assert_eq!(out.inflight_len(), 0);
    }

    #[test]
    fn restored_ids_are_not_reused() {
        let mut first = Outgoing::new(5, 5);
        first.offer(q(QoS::AtLeastOnce, "a"));
        let (inflight, queue) = first.into_parts();
        let mut second = Outgoing::new(5, 5);
        second.restore(inflight, queue);
        assert_eq!(
            second.inflight().map(|m| m.packet_id).collect::<Vec<_>>(),
            vec![1]
        );
        assert!(matches!(
            second.offer(q(QoS::AtLeastOnce, "b")),
            Offer::Send(2, _)
        ));
    }

    #[test]
    fn restored_inflight_beyond_a_smaller_window_is_resent_as_it_frees() {
        let mut first = Outgoing::new(5, 5);
        for tag in ["a", "b", "c"] {
            first.offer(q(QoS::AtLeastOnce, tag));
        }
        first.offer(q(QoS::ExactlyOnce, "d"));
        assert!(first.pubrec(4, true));
        let (inflight, queue) = first.into_parts();
        let mut second = Outgoing::new(2, 5);
        second.restore(inflight, queue);
        // 4 awaits PUBCOMP (its PUBREL is resent regardless) and holds a place in the window of
        // 2, 1 takes the other; the rest follow as places free, in packet-id order.
        assert_eq!(second.next_resend().map(|(id, _)| id), Some(1));
        assert_eq!(second.next_resend(), None);
        assert_eq!(second.offer(q(QoS::AtLeastOnce, "e")), Offer::Queued);
        assert!(second.puback(1));
        assert_eq!(second.next_resend().map(|(id, _)| id), Some(2));
        assert_eq!(second.next_resend(), None);
        assert!(second.pubcomp(4));
        assert_eq!(second.next_resend().map(|(id, _)| id), Some(3));
        assert_eq!(second.next_resend(), None);
        assert!(second.next_ready().is_none(), "the window is full");
        assert!(second.puback(2));
        assert!(second.next_resend().is_none());
        assert!(
            matches!(second.next_ready(), Some((5, _))),
            "then the queue"
        );
    }
}

//! The mailbox of an online session: where routing drops messages for its connection task.
//!
//! A mutex-guarded queue plus a [`Notify`], rather than a channel, for two reasons: an idle
//! connection's mailbox allocates nothing (a channel allocates its first block up front), and the
//! connection takes everything waiting in one lock, which batches its socket writes.

use crate::store::QueuedMessage;
use parking_lot::Mutex;
use std::collections::VecDeque;
use tokio::sync::Notify;

/// Why a message could not be put in a mailbox; the message is handed back.
#[derive(Debug)]
pub enum Refused {
    /// The mailbox holds its capacity already.
    Full(QueuedMessage),
    /// The connection has ended.
    Closed(QueuedMessage),
}

#[derive(Default)]
struct State {
    queue: VecDeque<QueuedMessage>,
    closed: bool,
}

/// Messages waiting for one connection task.
pub struct Mailbox {
    state: Mutex<State>,
    ready: Notify,
    capacity: usize,
}

impl Mailbox {
    /// An empty mailbox holding at most `capacity` messages.
    pub fn new(capacity: usize) -> Self {
        Mailbox {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    /// Adds a message and wakes the connection if it was waiting.
    pub fn push(&self, message: QueuedMessage) -> Result<(), Refused> {
        let was_empty = {
            let mut state = self.state.lock();
            if state.closed {
                return Err(Refused::Closed(message));
            }
            if state.queue.len() >= self.capacity {
                return Err(Refused::Full(message));
            }
            state.queue.push_back(message);
            state.queue.len() == 1
        };
        if was_empty {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Moves everything waiting into `into` (which should be empty), keeping order.
    pub fn take_all(&self, into: &mut VecDeque<QueuedMessage>) {
        let mut state = self.state.lock();
        std::mem::swap(&mut state.queue, into);
    }

    /// Waits until a message may be waiting (a wake-up is never lost between `take_all` and
    /// `wait`, though a wake-up may find the mailbox empty).
    pub async fn wait(&self) {
        self.ready.notified().await;
    }

    /// Closes the mailbox and returns what was left in it; later pushes are refused.
    pub fn close(&self) -> VecDeque<QueuedMessage> {
        let mut state = self.state.lock();
        state.closed = true;
        std::mem::take(&mut state.queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Message, MessageProperties};
    use crate::protocol::QoS;
    use bytes::Bytes;
    use std::sync::Arc;

    fn q(tag: &'static str) -> QueuedMessage {
        QueuedMessage {
            message: Arc::new(Message {
                topic: "t".into(),
                payload: Bytes::from_static(tag.as_bytes()),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: MessageProperties::default(),
                expires_at: None,
                publisher: None,
            }),
            qos: QoS::AtMostOnce,
            retain: false,
            subscription_ids: vec![],
        }
    }

    #[tokio::test]
    async fn push_wakes_a_waiter_and_take_all_keeps_order() {
        let mailbox = Arc::new(Mailbox::new(10));
        let waiter = {
            let mailbox = mailbox.clone();
            tokio::spawn(async move {
                mailbox.wait().await;
                let mut got = VecDeque::new();
                mailbox.take_all(&mut got);
                got
            })
        };
        mailbox.push(q("a")).expect("push");
        mailbox.push(q("b")).expect("push");
        let got = waiter.await.expect("waiter");
        assert!(!got.is_empty());
        assert_eq!(got[0].message.payload, "a");
    }

    #[test]
    fn full_and_closed_hand_the_message_back() {
        let mailbox = Mailbox::new(1);
        mailbox.push(q("a")).expect("push");
        assert!(matches!(mailbox.push(q("b")), Err(Refused::Full(m)) if m.message.payload == "b"));
        let left = mailbox.close();
        assert_eq!(left.len(), 1);
        assert!(matches!(mailbox.push(q("c")), Err(Refused::Closed(_))));
    }
}

//! The mailbox of an online session: where routing drops messages for its connection task.
//!
//! A mutex-guarded queue plus a [`Notify`], rather than a channel, for two reasons: an idle
//! connection's mailbox allocates nothing (a channel allocates its first block up front), and the
//! connection takes what it has room for in one lock, which batches its socket writes.
//!
//! A full mailbox pushes back on publishers: [`Mailbox::push_or_wait`] waits a bounded time for
//! room. A subscriber that stays full for that long is marked slow, and messages for it are
//! dropped without waiting until it takes messages again, so one stuck client cannot stall
//! publishers for long.
//!
//! The mailbox also carries the connection's liveness: when its client was last heard from, on
//! the broker's coarse clock. The broker's keep-alive sweep reads it and signals connections whose
//! client has been silent for 1.5 × keep-alive, so no connection needs a timer of its own.
//!
//! Beside it: [`Arrival`] (how a copy reached this node, which decides its DUP flag) and
//! [`Wakes`] (connections woken once per run of deliveries rather than per message).

use crate::store::QueuedMessage;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// How a copy reached this node, which decides whether it is marked DUP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Published here, or sent on here for one session.
    Here,
    /// Read from this node's inbox, where it was appended at `appended_ms` (Redis's clock).
    Relayed { appended_ms: u64 },
    /// Read from this node's inbox after the cluster had declared this node dead (another node
    /// may have delivered it already): always marked DUP.
    Suspect,
}

/// Connections to wake once a run of deliveries is done: a connection woken for every message
/// of a run would take them one or two at a time, each wake-up a switch between threads.
#[derive(Default)]
pub struct Wakes(Vec<Arc<Mailbox>>);

impl Wakes {
    /// Adds a connection to wake, unless it is the one added last.
    pub(crate) fn add(&mut self, mailbox: &Arc<Mailbox>) {
        if !self.0.last().is_some_and(|last| Arc::ptr_eq(last, mailbox)) {
            self.0.push(mailbox.clone());
        }
    }

    /// Wakes every connection added since the last call.
    pub fn wake_all(&mut self) {
        for mailbox in self.0.drain(..) {
            mailbox.wake();
        }
    }
}

impl Drop for Wakes {
    /// Nothing is left unwoken.
    fn drop(&mut self) {
        self.wake_all();
    }
}

/// Why a message could not be put in a mailbox; the message is handed back.
#[derive(Debug)]
pub enum Refused {
    /// The mailbox holds its capacity already.
    Full(QueuedMessage),
    /// The connection has ended.
    Closed(QueuedMessage),
}

/// Something the broker tells a connection besides messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Another connection took the session over.
    TakenOver,
    /// The broker is shutting down.
    Shutdown,
    /// Nothing arrived from the client within 1.5 × keep-alive.
    KeepAliveTimeout,
    /// The cluster declared this node dead and another node adopted the session (and
    /// published its will): the connection ends without storing anything or a will.
    Adopted,
    /// An operator disconnected the client (admin API); with `discard_session` its session
    /// goes too.
    Kicked { discard_session: bool },
    /// The node is being evacuated: the client is asked to use another server (v5 0x9C), its
    /// session is kept for wherever it reconnects.
    Evacuate,
    /// The node holds more than its share of the cluster's clients and stays up: the client
    /// is asked to use another server (v5 0x9C), its session kept, and a delayed will waits
    /// here (cancelled when the session resumes anywhere).
    Rebalance,
}

#[derive(Default)]
struct State {
    queue: VecDeque<QueuedMessage>,
    closed: bool,
    slow: bool,
    signal: Option<Signal>,
}

/// Messages waiting for one connection task.
pub struct Mailbox {
    state: Mutex<State>,
    ready: Notify,
    signalled: Notify,
    room: Notify,
    capacity: usize,
    last_heard_ms: AtomicU64,
    silence_allowed_ms: u64,
    /// What the connection last said of its session (see [`SessionCounts`]), packed: in flight
    /// (16 bits), subscriptions (16 bits, saturating), queued (32 bits, saturating).
    session_counts: AtomicU64,
}

/// A connected session's counts, as its connection last reported them (for the admin API).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionCounts {
    /// Messages sent to the client and not yet acknowledged.
    pub inflight: usize,
    /// Messages queued behind the in-flight window.
    pub queued: usize,
    /// Subscriptions it holds (65,535 at most shown).
    pub subscriptions: usize,
}

impl Mailbox {
    /// An empty mailbox holding at most `capacity` messages, for a client that may stay silent
    /// for `silence_allowed` (1.5 × its keep-alive; `None` for no keep-alive), heard at `now_ms`.
    pub fn new(capacity: usize, silence_allowed: Option<Duration>, now_ms: u64) -> Self {
        Mailbox {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            signalled: Notify::new(),
            room: Notify::new(),
            capacity: capacity.max(1),
            last_heard_ms: AtomicU64::new(now_ms),
            session_counts: AtomicU64::new(0),
            silence_allowed_ms: silence_allowed
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0),
        }
    }

    /// Records the session's counts (its connection does, once per turn of its loop).
    pub fn note_session(&self, counts: SessionCounts) {
        let saturate = |n: usize, max: u64| u64::try_from(n).unwrap_or(u64::MAX).min(max);
        let packed = saturate(counts.inflight, 0xFFFF)
            | saturate(counts.subscriptions, 0xFFFF) << 16
            | saturate(counts.queued, 0xFFFF_FFFF) << 32;
        // Read first: most turns change nothing, and a store would dirty the cache line.
        if self.session_counts.load(Ordering::Relaxed) != packed {
            self.session_counts.store(packed, Ordering::Relaxed);
        }
    }

    /// The session's counts as its connection last reported them.
    pub fn session_counts(&self) -> SessionCounts {
        let packed = self.session_counts.load(Ordering::Relaxed);
        let part = |shift: u32, mask: u64| usize::try_from((packed >> shift) & mask).unwrap_or(0);
        SessionCounts {
            inflight: part(0, 0xFFFF),
            subscriptions: part(16, 0xFFFF),
            queued: part(32, 0xFFFF_FFFF),
        }
    }

    /// Records that the client was heard from at `now_ms`.
    pub fn heard(&self, now_ms: u64) {
        self.last_heard_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Whether the client has been silent longer than its keep-alive allows at `now_ms`.
    pub fn is_overdue(&self, now_ms: u64) -> bool {
        self.silence_allowed_ms > 0
            && now_ms.saturating_sub(self.last_heard_ms.load(Ordering::Relaxed))
                > self.silence_allowed_ms
    }

    /// Adds a message and wakes the connection if it was waiting.
    pub fn push(&self, message: QueuedMessage) -> Result<(), Refused> {
        if self.push_unwoken(message)? {
            self.wake();
        }
        Ok(())
    }

    /// Adds a message without waking the connection; returns whether it may be waiting for
    /// messages (the mailbox was empty), in which case the caller must [`Self::wake`] it.
    pub fn push_unwoken(&self, message: QueuedMessage) -> Result<bool, Refused> {
        let mut state = self.state.lock();
        if state.closed {
            return Err(Refused::Closed(message));
        }
        if state.queue.len() >= self.capacity {
            return Err(Refused::Full(message));
        }
        state.queue.push_back(message);
        Ok(state.queue.len() == 1)
    }

    /// Wakes the connection to take its messages.
    pub fn wake(&self) {
        self.ready.notify_one();
    }

    /// Adds a message, waiting up to `patience` for room if the mailbox is full, unless the
    /// mailbox is marked slow.
    pub async fn push_or_wait(
        &self,
        message: QueuedMessage,
        patience: Duration,
    ) -> Result<(), Refused> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut message = message;
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.push(message) {
                Ok(()) => return Ok(()),
                Err(Refused::Full(back)) if !self.state.lock().slow => message = back,
                Err(refused) => return Err(refused),
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                self.state.lock().slow = true;
                return Err(Refused::Full(message));
            }
        }
    }

    /// Moves up to `limit` waiting messages to the back of `into`, keeping order.
    pub fn take_up_to(&self, into: &mut VecDeque<QueuedMessage>, limit: usize) {
        let taken = {
            let mut state = self.state.lock();
            let n = limit.min(state.queue.len());
            if n == state.queue.len() && into.is_empty() {
                std::mem::swap(&mut state.queue, into);
            } else {
                into.extend(state.queue.drain(..n));
            }
            if n > 0 {
                state.slow = false;
            }
            n
        };
        if taken > 0 {
            self.room.notify_waiters();
        }
    }

    /// Tells the connection something; the first signal sticks. Wakes both [`Mailbox::wait`] and
    /// [`Mailbox::wait_signal`].
    pub fn signal(&self, signal: Signal) {
        self.state.lock().signal.get_or_insert(signal);
        self.ready.notify_one();
        self.signalled.notify_one();
    }

    /// Waits for a signal only (used while blocked on a write, where a wake-up for messages
    /// must not be consumed).
    pub async fn wait_signal(&self) {
        self.signalled.notified().await;
    }

    /// The signal sent to the connection, if any.
    pub fn signalled(&self) -> Option<Signal> {
        self.state.lock().signal
    }

    /// How many messages are waiting.
    pub fn len(&self) -> usize {
        self.state.lock().queue.len()
    }

    /// Whether messages are waiting.
    pub fn is_empty(&self) -> bool {
        self.state.lock().queue.is_empty()
    }

    /// Waits until a message may be waiting (a wake-up is never lost between `take_all` and
    /// `wait`, though a wake-up may find the mailbox empty).
    pub async fn wait(&self) {
        self.ready.notified().await;
    }

    /// Closes the mailbox and returns what was left in it; later pushes are refused.
    pub fn close(&self) -> VecDeque<QueuedMessage> {
        let left = {
            let mut state = self.state.lock();
            state.closed = true;
            std::mem::take(&mut state.queue)
        };
        self.room.notify_waiters();
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::QoS;
    use std::sync::Arc;

    fn q(tag: &'static str) -> QueuedMessage {
        crate::store::test_queued(tag, QoS::AtMostOnce)
    }

    #[tokio::test]
    async fn push_wakes_a_waiter_and_take_all_keeps_order() {
        let mailbox = Arc::new(Mailbox::new(10, None, 0));
        let waiter = {
            let mailbox = mailbox.clone();
            tokio::spawn(async move {
                mailbox.wait().await;
                let mut got = VecDeque::new();
                mailbox.take_up_to(&mut got, 10);
                got
            })
        };
        mailbox.push(q("a")).expect("push");
        mailbox.push(q("b")).expect("push");
        let got = waiter.await.expect("waiter");
        assert!(!got.is_empty());
        assert_eq!(got[0].message.payload, "a");
    }

    #[tokio::test]
    async fn an_unwoken_push_says_when_to_wake_and_wakes_nobody_by_itself() {
        use futures_util::FutureExt;
        let mailbox = Mailbox::new(10, None, 0);
        assert_eq!(
            mailbox.push_unwoken(q("a")).ok(),
            Some(true),
            "it was empty"
        );
        assert_eq!(mailbox.push_unwoken(q("b")).ok(), Some(false));
        assert!(mailbox.wait().now_or_never().is_none(), "not woken yet");
        mailbox.wake();
        assert!(mailbox.wait().now_or_never().is_some(), "woken");
        let mut got = VecDeque::new();
        mailbox.take_up_to(&mut got, 10);
        let payloads: Vec<_> = got.iter().map(|q| q.message.payload.clone()).collect();
        assert_eq!(payloads, vec!["a", "b"]);
    }

    #[tokio::test]
    async fn full_mailbox_waits_for_room_then_marks_a_stuck_reader_slow() {
        let mailbox = Arc::new(Mailbox::new(1, None, 0));
        mailbox.push(q("a")).expect("push");
        let publisher = {
            let mailbox = mailbox.clone();
            tokio::spawn(async move { mailbox.push_or_wait(q("b"), Duration::from_secs(10)).await })
        };
        // The publisher is waiting for room; taking "a" lets "b" in.
        let mut got = VecDeque::new();
        while got.is_empty() {
            mailbox.wait().await;
            mailbox.take_up_to(&mut got, 1);
        }
        publisher
            .await
            .expect("task")
            .expect("b gets in once there is room");
        got.clear();
        mailbox.take_up_to(&mut got, 1);
        assert_eq!(got[0].message.payload, "b");

        // Nobody takes: the wait times out, the mailbox is marked slow, later pushes do not wait.
        mailbox.push(q("c")).expect("push");
        let waited = mailbox
            .push_or_wait(q("d"), Duration::from_millis(50))
            .await;
        assert!(matches!(waited, Err(Refused::Full(_))));
        let started = std::time::Instant::now();
        let again = mailbox.push_or_wait(q("e"), Duration::from_secs(10)).await;
        assert!(matches!(again, Err(Refused::Full(_))));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a slow mailbox must not make publishers wait"
        );
    }

    #[tokio::test]
    async fn a_signal_wakes_the_connection_and_sticks() {
        let mailbox = Mailbox::new(4, None, 0);
        assert_eq!(mailbox.signalled(), None);
        mailbox.signal(Signal::TakenOver);
        mailbox.signal(Signal::Shutdown);
        mailbox.wait().await;
        assert_eq!(mailbox.signalled(), Some(Signal::TakenOver));
    }

    #[test]
    fn silence_longer_than_allowed_is_overdue() {
        let mailbox = Mailbox::new(1, Some(Duration::from_millis(1500)), 1000);
        assert!(!mailbox.is_overdue(2500));
        assert!(mailbox.is_overdue(2501));
        mailbox.heard(2400);
        assert!(!mailbox.is_overdue(3900));
        assert!(
            !Mailbox::new(1, None, 0).is_overdue(u64::MAX),
            "no keep-alive, never overdue"
        );
    }

    #[test]
    fn full_and_closed_hand_the_message_back() {
        let mailbox = Mailbox::new(1, None, 0);
        mailbox.push(q("a")).expect("push");
        assert!(matches!(mailbox.push(q("b")), Err(Refused::Full(m)) if m.message.payload == "b"));
        let left = mailbox.close();
        assert_eq!(left.len(), 1);
        assert!(matches!(mailbox.push(q("c")), Err(Refused::Closed(_))));
    }
}

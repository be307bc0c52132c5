//! Delivery of routed copies to sessions: into an online session's mailbox (waiting, bounded,
//! for room), into the store's queue for one that is offline, or on to the node that holds it.

use super::registry::moved_in_copy;
use super::Broker;
use crate::mailbox::{Arrival, Mailbox, Refused, Wakes};
use crate::message::ClientId;
use crate::protocol::QoS;
use crate::store::journal_hold::JournalReservation;
use crate::store::{Enqueued, QueuedMessage};
use std::sync::Arc;
use std::time::Duration;

/// How long a copy recovered from a dead node waits for room in a session's mailbox (live
/// messages wait `limits.delivery_wait_ms`). A mailbox that stays full is marked slow after one
/// such wait, and then refuses at once.
const RECOVERED_PATIENCE: Duration = Duration::from_secs(10);

/// Delivery work that could not be finished without waiting.
pub(super) enum Deferred {
    /// The session's mailbox is full: wait (bounded) for room.
    WaitForRoom {
        client_id: ClientId,
        mailbox: Arc<Mailbox>,
        queued: QueuedMessage,
    },
    /// The session has no connection here: queue the message in the store.
    Enqueue {
        client_id: ClientId,
        queued: QueuedMessage,
    },
}

/// Whether a message for a session held by another node may be sent on to that node: not for a
/// message that was itself sent on, so nothing bounces between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Onward {
    Allowed,
    Forbidden,
}

impl Broker {
    /// Delivers a message another node sent on for one session of this node (the session moved
    /// here while the message was on its way).
    pub(super) async fn deliver_direct(&self, client_id: ClientId, queued: QueuedMessage) {
        if let Some(later) = self.deliver_now(&client_id, queued, None, Arrival::Here) {
            Box::pin(self.deliver_deferred(vec![later], Onward::Forbidden)).await;
        }
    }

    /// Puts a message in an online session's mailbox if there is room, waking its connection
    /// now or, given `wakes`, adding it there; otherwise says what is left to do (wait for room,
    /// or queue it in the store). A copy for a session that just moved here is marked DUP (see
    /// [`SessionHandle::moved_in_until_ms`]) by what `arrival` says.
    pub(super) fn deliver_now(
        &self,
        client_id: &ClientId,
        mut queued: QueuedMessage,
        wakes: Option<&mut Wakes>,
        arrival: Arrival,
    ) -> Option<Deferred> {
        let queued = {
            let online = self.online.read();
            match online.get(client_id) {
                None => queued,
                Some(handle) => {
                    if handle.persistent {
                        self.journal_copy(client_id, &mut queued);
                    }
                    if moved_in_copy(handle, self.clock_ms(), arrival) {
                        queued.maybe_sent = true;
                    }
                    match handle.mailbox.push_unwoken(queued) {
                        Ok(false) => return None,
                        Ok(true) => {
                            match wakes {
                                Some(wakes) => wakes.add(&handle.mailbox),
                                None => handle.mailbox.wake(),
                            }
                            return None;
                        }
                        Err(Refused::Full(queued)) => {
                            return Some(Deferred::WaitForRoom {
                                mailbox: handle.mailbox.clone(),
                                client_id: client_id.clone(),
                                queued,
                            })
                        }
                        Err(Refused::Closed(queued)) => queued,
                    }
                }
            }
        };
        self.offline(client_id, queued)
    }

    /// In a cluster, records a QoS 1/2 copy for a persistent session connected here in the
    /// delivery journal, so it survives this node's death (see [`crate::cluster::journal`]).
    fn journal_copy(&self, client_id: &str, queued: &mut QueuedMessage) {
        if queued.qos == QoS::AtMostOnce || queued.journal.is_some() {
            return;
        }
        if let Some(link) = self.cluster.get() {
            queued.journal = link.journal(client_id, queued);
        }
    }

    /// In a cluster, journal fields for the copies a claim of `client_id`'s persistent session
    /// moves from the store into this node (see [`crate::cluster::journal`]).
    pub fn journal_reservation(&self, client_id: &str) -> Option<JournalReservation> {
        self.cluster
            .get()
            .map(|link| link.reserve_journal(client_id))
    }

    /// Delivers a copy recovered from a node that stopped while holding it (see
    /// [`crate::cluster::recovery`]): to the session's connection here, its stored queue, or the
    /// node that holds it now.
    pub async fn deliver_recovered(&self, client_id: ClientId, queued: QueuedMessage) {
        if let Some(later) = self.deliver_now(&client_id, queued, None, Arrival::Here) {
            Box::pin(self.deliver_deferred(vec![later], Onward::Allowed)).await;
        }
    }

    /// What to do for a session that is not online (here).
    fn offline(&self, client_id: &ClientId, queued: QueuedMessage) -> Option<Deferred> {
        if queued.qos == QoS::AtMostOnce && !self.config.session.queue_qos0 {
            return None;
        }
        Some(Deferred::Enqueue {
            client_id: client_id.clone(),
            queued,
        })
    }

    pub(super) async fn deliver_deferred(&self, deferred: Vec<Deferred>, onward: Onward) {
        for work in deferred {
            match work {
                Deferred::WaitForRoom {
                    client_id,
                    mailbox,
                    queued,
                } => {
                    // Copies recovered from a dead node come in bursts, often alongside the live
                    // stream: they wait longer for a session's room than live messages do.
                    let patience = if queued.maybe_sent {
                        RECOVERED_PATIENCE.max(self.delivery_patience)
                    } else {
                        self.delivery_patience
                    };
                    match mailbox.push_or_wait(queued, patience).await {
                        Ok(()) => {}
                        Err(Refused::Full(_)) => {
                            self.metrics.dropped_queue_full.inc();
                        }
                        Err(Refused::Closed(queued)) => {
                            if let Some(Deferred::Enqueue { client_id, queued }) =
                                self.offline(&client_id, queued)
                            {
                                self.enqueue(&client_id, queued, onward).await;
                            }
                        }
                    }
                }
                Deferred::Enqueue { client_id, queued } => {
                    self.enqueue(&client_id, queued, onward).await
                }
            }
        }
    }

    /// Queues a message for a session that has no connection here, re-checking whether it
    /// came online meanwhile.
    async fn enqueue(&self, client_id: &ClientId, mut queued: QueuedMessage, onward: Onward) {
        if self.adopted.contains(client_id)
            || (self.hand_offs.any() && self.hand_offs.is_leaving(client_id))
        {
            // Its former node may be alive after all and have delivered it (see `adopted`), or
            // the session left this node and its new node's routes may deliver it too (see
            // `handoff`).
            queued.maybe_sent = true;
        }
        for attempt in 0..2 {
            match self
                .store
                .enqueue(client_id, queued.clone(), attempt == 1)
                .await
            {
                Ok(Enqueued::Queued) | Ok(Enqueued::NoSession) => return,
                Ok(Enqueued::Full) => {
                    self.metrics.dropped_queue_full.inc();
                    return;
                }
                Ok(Enqueued::Elsewhere(node)) => {
                    // The session moved to another node while this one still routed for it.
                    match (self.cluster.get(), onward) {
                        (Some(link), Onward::Allowed) => {
                            // The new node's own routes may have delivered it as well.
                            let mut copy = queued;
                            copy.maybe_sent = true;
                            link.send_direct(&node, client_id, &copy)
                        }
                        _ => {
                            self.metrics.relay_dropped.inc();
                        }
                    }
                    return;
                }
                Ok(Enqueued::Online) => {
                    // It attached between our look-up and the store's answer: hand it over.
                    let pushed = self.online.read().get(client_id).map(|handle| {
                        let mut copy = queued.clone();
                        if handle.persistent {
                            self.journal_copy(client_id, &mut copy);
                        }
                        handle.mailbox.push(copy)
                    });
                    match pushed {
                        Some(Ok(())) => return,
                        Some(Err(Refused::Full(_))) => {
                            self.metrics.dropped_queue_full.inc();
                            return;
                        }
                        Some(Err(Refused::Closed(_))) | None => continue,
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, client_id = %client_id, "message not queued");
                    return;
                }
            }
        }
    }
}

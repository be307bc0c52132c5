//! Delayed wills: published once their delay has passed, unless their session reconnects first.

use super::Broker;
use crate::message::{ClientId, Message};
use std::sync::Arc;
use std::time::Duration;

impl Broker {
    /// Publishes a will after `delay`, unless the session reconnects first (a will without delay
    /// is published by its connection directly).
    pub fn schedule_will(
        self: &Arc<Self>,
        client_id: ClientId,
        will: Arc<Message>,
        delay: Duration,
    ) {
        let broker = self.clone();
        let id = client_id.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            broker.pending_wills.lock().remove(&id);
            broker.metrics.messages_received[will.qos as usize].inc();
            broker.publish(will).await;
        });
        if let Some(previous) = self
            .pending_wills
            .lock()
            .insert(client_id, task.abort_handle())
        {
            previous.abort();
        }
    }

    /// Cancels a delayed will because its session reconnected.
    pub fn cancel_will(&self, client_id: &str) {
        if let Some(task) = self.pending_wills.lock().remove(client_id) {
            task.abort();
        }
    }
}

//! What an operator sees of and does to this node's connected clients (the admin API): who is
//! connected and how, disconnecting one, and evacuating the node (every client asked, at a
//! bounded rate, to reconnect elsewhere, their sessions kept).

use crate::broker::{Broker, SessionHandle};
pub use crate::client_info::{ClientInfo, ClientView, EvacuationStatus};
use crate::mailbox::Signal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How long a client must have been connected before rebalancing may move it.
pub const SETTLED_FOR_MS: u64 = 10_000;

impl Broker {
    /// Every client connected to this node, sorted by client id.
    pub fn clients(&self) -> Vec<ClientView> {
        let mut views: Vec<ClientView> = self
            .online_handles()
            .into_iter()
            .filter_map(|(client_id, handle)| self.client_view(&client_id, &handle))
            .collect();
        views.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        views
    }

    /// `client_id`, if it is connected to this node.
    pub fn client(&self, client_id: &str) -> Option<ClientView> {
        let handle = self.online_handle(client_id)?;
        self.client_view(client_id, &handle)
    }

    /// How the admin API shows a connected client (`None` until its connection said who it is).
    fn client_view(&self, client_id: &str, handle: &SessionHandle) -> Option<ClientView> {
        let counts = handle.mailbox.session_counts();
        Some(ClientView {
            client_id: client_id.to_string(),
            node: self.config.node_id.clone(),
            waiting: handle.mailbox.len(),
            inflight: counts.inflight,
            queued: counts.queued,
            subscriptions: counts.subscriptions,
            info: (*handle.info.clone()?).clone(),
        })
    }

    /// Disconnects `client_id` if it is connected here (v5: DISCONNECT 0x98); with
    /// `discard_session` its session is removed rather than kept. Returns whether it was.
    pub fn kick(&self, client_id: &str, discard_session: bool) -> bool {
        match self.online_handle(client_id) {
            Some(handle) => {
                handle.mailbox.signal(Signal::Kicked { discard_session });
                true
            }
            None => false,
        }
    }

    /// Starts evacuating this node: new clients are refused (and `/readyz` says so), and the
    /// connected ones are asked, `rate_per_sec` at a time, to reconnect elsewhere (v5:
    /// DISCONNECT 0x9C), their sessions kept. Asking again changes nothing but the rate.
    pub fn evacuate(self: &Arc<Self>, rate_per_sec: u32) -> EvacuationStatus {
        let rate_per_sec = rate_per_sec.max(1);
        let evacuation = &self.evacuation;
        evacuation.status.lock().rate_per_sec = rate_per_sec;
        if !evacuation.evacuating.swap(true, Ordering::Relaxed) {
            evacuation.status.lock().evacuating = true;
            self.metrics.evacuating.set(1);
            tracing::warn!(
                rate_per_sec,
                "evacuating: new clients are refused, connected ones asked to reconnect elsewhere"
            );
            let broker = self.clone();
            tokio::spawn(async move { broker.run_evacuation().await });
        }
        self.evacuation_status()
    }

    /// Connected clients not yet asked to leave (by an evacuation or rebalancing).
    pub fn connections_staying(&self) -> usize {
        self.count_online(|handle| handle.mailbox.signalled().is_none())
    }

    /// Asks up to `count` connected clients not yet asked to reconnect elsewhere (v5: DISCONNECT
    /// 0x9C), their sessions kept, for an evacuation; returns how many were asked.
    pub fn ask_to_reconnect_elsewhere(&self, count: usize) -> usize {
        self.ask_to_move(count, Signal::Evacuate, |_| true)
    }

    /// Asks up to `count` clients to reconnect elsewhere to even out the cluster (v5: DISCONNECT
    /// 0x9C): clients with persistent sessions only (a clean session would lose what it held),
    /// none connected for less than [`SETTLED_FOR_MS`] (it may just have been moved here);
    /// returns how many were asked.
    pub fn ask_to_rebalance(&self, count: usize) -> usize {
        let now = crate::client_info::now_unix_ms();
        self.ask_to_move(count, Signal::Rebalance, |handle| {
            handle.persistent
                && handle
                    .info
                    .as_ref()
                    .is_some_and(|info| now.saturating_sub(info.connected_at_ms) >= SETTLED_FOR_MS)
        })
    }

    /// Sends `signal` to up to `count` connected clients that `eligible` accepts and nothing
    /// asked to leave yet, counting them as on their way; returns how many.
    fn ask_to_move(
        &self,
        count: usize,
        signal: Signal,
        eligible: impl Fn(&crate::broker::SessionHandle) -> bool,
    ) -> usize {
        let batch: Vec<_> = self
            .online_handles()
            .into_iter()
            .filter(|(_, handle)| handle.mailbox.signalled().is_none() && eligible(handle))
            .take(count)
            .collect();
        for (_, handle) in &batch {
            handle.mailbox.signal(signal);
        }
        self.rebalancing.note_asked(batch.len());
        batch.len()
    }

    /// The cluster's load as this node last read it (see [`crate::cluster::load`]).
    pub fn cluster_load(&self) -> Vec<crate::cluster::load::NodeLoad> {
        self.rebalancing.loads()
    }

    /// Where the evacuation stands.
    pub fn evacuation_status(&self) -> EvacuationStatus {
        let mut status = self.evacuation.status.lock().clone();
        status.remaining = self.online_count();
        status
    }

    /// Asks the connected clients to leave, a second's worth at a time, until none is left.
    async fn run_evacuation(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let rate = self.evacuation.status.lock().rate_per_sec as usize;
            let asked = self.ask_to_reconnect_elsewhere(rate);
            if asked == 0 {
                if self.online_count() == 0 {
                    tracing::info!("evacuated: no client is connected");
                }
                if self.is_shutting_down() {
                    return;
                }
                continue;
            }
            self.evacuation.status.lock().asked += asked;
            self.metrics.evacuation_asked.inc_by(asked as u64);
        }
    }
}

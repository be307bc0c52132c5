//! Session expiry: the periodic sweep that removes offline sessions whose expiry has passed.

use super::Broker;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

impl Broker {
    /// Removes offline sessions whose expiry has passed, with their subscriptions.
    pub async fn expire_sessions(&self) {
        match self.store.take_expired_sessions(SystemTime::now()).await {
            Ok(expired) => {
                for gone in expired {
                    tracing::debug!(client_id = %gone.client_id, "session expired");
                    match (gone.parked_on, self.cluster.get()) {
                        (Some(node), Some(link)) if node != link.node_id() => {
                            let filters = gone
                                .session
                                .subscriptions
                                .into_iter()
                                .map(|s| s.filter)
                                .collect();
                            link.forget_parked(&node, &gone.client_id, filters, false);
                        }
                        _ => {
                            self.remove_subscriptions(&gone.client_id, &gone.session.subscriptions)
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "session expiry sweep failed"),
        }
        if let Ok(n) = self.store.session_count().await {
            self.metrics.sessions.set(n as i64);
        }
    }

    /// Runs the periodic session-expiry sweep until shutdown.
    pub async fn run_expiry(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut state = self.run_state();
        loop {
            tokio::select! {
                _ = tick.tick() => self.expire_sessions().await,
                _ = state.changed() => return,
            }
        }
    }
}

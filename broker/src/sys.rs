//! `$SYS/broker/...` topics: broker statistics published as retained messages at an interval.

use crate::broker::{Broker, RunState};
use crate::message::{Message, MessageProperties};
use crate::protocol::QoS;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// Publishes the statistics once.
pub async fn publish_stats(broker: &Broker) {
    let m = &broker.metrics;
    let retained = broker.store.retained_count().await.unwrap_or(0);
    let stats: [(&str, String); 10] = [
        ("version", format!("starling {}", env!("CARGO_PKG_VERSION"))),
        ("uptime", broker.started_at.elapsed().as_secs().to_string()),
        ("clients/connected", broker.online_count().to_string()),
        ("clients/total", m.sessions.get().to_string()),
        ("messages/received", m.received_total().to_string()),
        ("messages/sent", m.sent_total().to_string()),
        ("messages/dropped", m.dropped_total().to_string()),
        ("subscriptions/count", m.subscriptions.get().to_string()),
        ("retained messages/count", retained.to_string()),
        ("bytes/received", m.bytes_received.get().to_string()),
    ];
    for (name, value) in stats {
        let message = Message {
            topic: format!("$SYS/broker/{name}").into(),
            payload: Bytes::from(value),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: MessageProperties::default(),
            expires_at: None,
            publisher: None,
            received_at: None,
        };
        broker.publish(Arc::new(message)).await;
    }
}

/// Publishes the statistics every `interval` until shutdown.
pub async fn run(broker: Arc<Broker>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    let mut state = broker.run_state();
    loop {
        tokio::select! {
            _ = tick.tick() => publish_stats(&broker).await,
            _ = state.changed() => {
                if *state.borrow() == RunState::ShuttingDown {
                    return;
                }
            }
        }
    }
}

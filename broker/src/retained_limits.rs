//! Retained-message limits: a retained publish they refuse is still delivered, only not kept;
//! the refusal is counted (`starling_retained_refused_total{reason}`) and logged, at most one
//! warning per [`WARN_EVERY`].

use crate::message::Message;
use crate::metrics::Metrics;
use crate::store::{Retained, Store};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Shortest time between two warnings about refused retained messages.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// Why a retained publish was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The store held `limits.max_retained_messages` and the topic had none.
    Count,
    /// The payload exceeded `limits.max_retained_payload_size`.
    Payload,
    /// The retained payloads would have exceeded `limits.max_retained_bytes`.
    Bytes,
}

impl Refusal {
    /// The metric label and log word.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Count => "count",
            Refusal::Payload => "payload",
            Refusal::Bytes => "bytes",
        }
    }

    /// The setting (under `limits.`) that refused it.
    pub fn setting(self) -> &'static str {
        match self {
            Refusal::Count => "max_retained_messages",
            Refusal::Payload => "max_retained_payload_size",
            Refusal::Bytes => "max_retained_bytes",
        }
    }
}

/// Applies the retained-message limits in front of the store.
pub struct RetainGate {
    max_payload: usize,
    /// When the last warning went out, and how many refusals went unlogged since.
    warned: Mutex<(Option<Instant>, u64)>,
}

impl RetainGate {
    /// A gate refusing payloads larger than `max_payload_size` bytes (the count and total-bytes
    /// limits are the store's).
    pub fn new(max_payload_size: u32) -> Self {
        RetainGate {
            max_payload: usize::try_from(max_payload_size).unwrap_or(usize::MAX),
            warned: Mutex::new((None, 0)),
        }
    }

    /// Keeps `message` as its topic's retained message (or deletes the topic's one, for an
    /// empty payload, which no limit refuses); returns why it was not kept, if it was refused.
    /// A store that fails is logged; the message is still delivered.
    pub async fn retain(
        &self,
        store: &dyn Store,
        metrics: &Metrics,
        message: &Arc<Message>,
    ) -> Option<Refusal> {
        let refusal = if message.payload.len() > self.max_payload {
            Refusal::Payload
        } else {
            match store.set_retained(message.clone()).await {
                Ok(Retained::Stored | Retained::Deleted) => return None,
                Ok(Retained::CountFull) => Refusal::Count,
                Ok(Retained::BytesFull) => Refusal::Bytes,
                Err(e) => {
                    tracing::warn!(error = %e, topic = %message.topic, "retained message not stored");
                    return None;
                }
            }
        };
        match refusal {
            Refusal::Count => metrics.retained_refused_count.inc(),
            Refusal::Payload => metrics.retained_refused_payload.inc(),
            Refusal::Bytes => metrics.retained_refused_bytes.inc(),
        };
        self.warn(refusal, message);
        Some(refusal)
    }

    /// Logs a refusal, unless one was logged within [`WARN_EVERY`] (then it is only counted,
    /// and the next warning says how many were not logged).
    fn warn(&self, refusal: Refusal, message: &Message) {
        let mut warned = self.warned.lock();
        let now = Instant::now();
        if warned
            .0
            .is_some_and(|at| now.duration_since(at) < WARN_EVERY)
        {
            warned.1 += 1;
            return;
        }
        let unlogged = std::mem::take(&mut warned.1);
        warned.0 = Some(now);
        drop(warned);
        tracing::warn!(
            topic = %message.topic,
            payload_bytes = message.payload.len(),
            reason = refusal.label(),
            unlogged_since_last_warning = unlogged,
            "retained message delivered but not retained: limits.{} reached \
             (starling_retained_refused_total counts every one)",
            refusal.setting()
        );
    }
}

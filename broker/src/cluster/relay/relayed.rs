//! Delivery of relayed messages, one inbox read at a time. Messages relayed in one read mostly
//! repeat a few topics and publishers: the read makes each topic and publisher string once, and
//! looks up each topic's plain subscriptions once, instead of once per message. A message that
//! serves share groups is matched on its own (the member chosen rotates).
//!
//! Connections are woken once per run of deliveries, not once per message (see [`Wakes`]).
//!
//! What a read keeps is current: it is looked up after the read's reply arrived, so every
//! subscription made or removed before any message of the reply was published is seen.

use crate::cluster::local::LocalBroker;
use crate::cluster::packed::{decode_groups, Record};
use crate::mailbox::{Arrival, Wakes};
use crate::message::ClientId;
use crate::router::SubscriptionOptions;
use crate::store::redis::codec;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Distinct topics (and, apart, publisher ids) a read keeps at most; beyond that it still
/// delivers, without keeping more.
const MAX_KEPT: usize = 1024;

/// Messages delivered at most before the connections that got them are woken: the connections
/// write while the rest of the read is delivered.
const WAKE_EVERY: usize = 256;

type Fast = foldhash::fast::RandomState;

/// The plain subscriptions of a topic on this node, as [`LocalBroker::direct_matches`] found
/// them.
type Matches = Vec<(ClientId, SubscriptionOptions)>;

/// The work shared by the relayed messages of one inbox read.
pub(super) struct ReadBatch<'b, B: LocalBroker> {
    broker: &'b B,
    /// Each topic met so far, with its plain subscriptions.
    topics: Vec<(Arc<str>, Matches)>,
    /// Where each topic met so far is in `topics`.
    topic_index: HashMap<Arc<str>, usize, Fast>,
    /// The topic of the message before (an index into `topics`): most runs repeat it.
    last_topic: Option<usize>,
    /// Each publisher id met so far.
    publishers: HashSet<Arc<str>, Fast>,
    /// The publisher of the message before: a publisher's messages mostly come in runs (a
    /// node relays each connection's burst together), so this usually answers without hashing.
    last_publisher: Option<Arc<str>>,
    /// Connections to wake for what was delivered since the last wake-up (see [`Wakes`]).
    wakes: Wakes,
    /// Messages delivered since the last wake-up.
    unwoken: usize,
}

impl<'b, B: LocalBroker> ReadBatch<'b, B> {
    /// Starts a read's deliveries (call after its reply arrived).
    pub(super) fn new(broker: &'b B) -> Self {
        Self {
            broker,
            topics: Vec::new(),
            topic_index: HashMap::default(),
            last_topic: None,
            publishers: HashSet::default(),
            last_publisher: None,
            wakes: Wakes::default(),
            unwoken: 0,
        }
    }

    /// Delivers one relayed publish, appended to the inbox at `appended_ms` (Redis's clock), to
    /// this node's subscribers only, serving just the share groups the record names. An
    /// unreadable record is logged (with `stream`) and skipped.
    pub(super) async fn deliver(&mut self, stream: &str, record: Record<'_>, appended_ms: u64) {
        let arrival = Arrival::Relayed { appended_ms };
        let view = match codec::MessageView::decode(record.message) {
            Ok(view) => view,
            Err(e) => {
                tracing::warn!(stream, error = %e, "unreadable relayed message skipped");
                return;
            }
        };
        let publisher = view.publisher().map(|id| match &self.last_publisher {
            Some(last) if **last == *id => last.clone(),
            _ => {
                let name = shared_name(&mut self.publishers, id);
                self.last_publisher = Some(name.clone());
                name
            }
        });
        let kept = match self.last_topic {
            Some(index) if *self.topics[index].0 == *view.topic() => Some(index),
            _ => self.topic_index.get(view.topic()).copied(),
        };
        let topic = match kept {
            Some(index) => self.topics[index].0.clone(),
            None => Arc::from(view.topic()),
        };
        let message = match view.into_message(topic, publisher) {
            Ok(message) => Arc::new(message),
            Err(e) => {
                tracing::warn!(stream, error = %e, "unreadable relayed message skipped");
                return;
            }
        };
        if !record.groups.is_empty() {
            let groups = decode_groups(&String::from_utf8_lossy(record.groups));
            // It may wait for a connection that got messages of this batch: woken first.
            self.wake_all();
            self.broker.route_relayed(&message, &groups, arrival).await;
            return;
        }
        let index = match kept {
            Some(index) => index,
            None => {
                let matches = self.broker.direct_matches(&message.topic);
                if self.topics.len() >= MAX_KEPT {
                    // Not kept: woken at once, as it is not counted for the next wake-up.
                    self.wake_all();
                    self.broker
                        .route_matched_waking(&message, &matches, None, arrival)
                        .await;
                    return;
                }
                self.topics.push((message.topic.clone(), matches));
                self.topic_index
                    .insert(message.topic.clone(), self.topics.len() - 1);
                self.topics.len() - 1
            }
        };
        self.last_topic = Some(index);
        self.broker
            .route_matched_waking(
                &message,
                &self.topics[index].1,
                Some(&mut self.wakes),
                arrival,
            )
            .await;
        self.unwoken += 1;
        if self.unwoken >= WAKE_EVERY {
            self.wake_all();
        }
    }

    /// Wakes the connections that got messages since the last wake-up (done at the latest when
    /// the batch is dropped).
    pub(super) fn wake_all(&mut self) {
        self.wakes.wake_all();
        self.unwoken = 0;
    }
}

/// The shared string for `text`: the one made before, or a new one (kept while there is room).
fn shared_name(names: &mut HashSet<Arc<str>, Fast>, text: &str) -> Arc<str> {
    if let Some(name) = names.get(text) {
        return name.clone();
    }
    let name: Arc<str> = Arc::from(text);
    if names.len() < MAX_KEPT {
        names.insert(name.clone());
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_made_once_and_shared() {
        let mut names = HashSet::default();
        let a = shared_name(&mut names, "sensors/1/temp");
        let b = shared_name(&mut names, "sensors/1/temp");
        assert!(Arc::ptr_eq(&a, &b));
        let c = shared_name(&mut names, "sensors/2/temp");
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(&*c, "sensors/2/temp");
    }

    #[test]
    fn names_beyond_the_bound_are_made_but_not_kept() {
        let mut names = HashSet::default();
        for i in 0..MAX_KEPT {
            shared_name(&mut names, &format!("t/{i}"));
        }
        let extra_a = shared_name(&mut names, "t/extra");
        let extra_b = shared_name(&mut names, "t/extra");
        assert_eq!(names.len(), MAX_KEPT);
        assert_eq!(extra_a, extra_b);
        assert!(!Arc::ptr_eq(&extra_a, &extra_b));
    }
}

//! Routing state: which clients subscribe to what, and who gets a given message.
//!
//! The [`SubscriptionTree`] holds every subscription of every session on this node, online or
//! not, so a message for an offline persistent session is still found and queued.

pub mod memo;
pub mod remote;
mod scope;
mod trie;

pub use scope::GroupScope;
pub use trie::{Change, Match, SubscriptionTree};

/// A share group, identified by its name and filter.
pub type GroupKey = (String, String);

use crate::message::ClientId;
use crate::protocol::{QoS, RetainForwardRule};

/// How a subscription asked to receive messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionOptions {
    /// Maximum QoS granted.
    pub qos: QoS,
    /// Do not deliver messages this client published itself (MQTT 5).
    pub no_local: bool,
    /// Keep the publisher's retain flag when forwarding (MQTT 5).
    pub retain_as_published: bool,
    /// When retained messages are sent on subscribe (MQTT 5).
    pub retain_handling: RetainForwardRule,
    /// Subscription identifier to echo in deliveries (MQTT 5).
    pub identifier: Option<usize>,
}

/// One client that should receive a message, with the options that apply to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    /// The receiving session (borrowed from the matches: routing a message clones no client id
    /// unless the message has to wait).
    pub client_id: &'a ClientId,
    /// Highest QoS among the matching subscriptions.
    pub qos: QoS,
    /// Whether any matching subscription keeps the retain flag.
    pub retain_as_published: bool,
    /// Identifiers of all matching subscriptions.
    pub subscription_ids: Vec<usize>,
}

/// Reduces raw matches to one target per client: no-local subscriptions of the publisher are
/// skipped, the highest QoS wins and subscription identifiers are collected.
pub fn targets<'a>(
    matches: &'a [(ClientId, SubscriptionOptions)],
    publisher: Option<&str>,
) -> Vec<Target<'a>> {
    let mut out: Vec<Target> = Vec::with_capacity(matches.len());
    for (client_id, options) in matches {
        if options.no_local && publisher == Some(client_id.as_ref()) {
            continue;
        }
        if let Some(existing) = out.iter_mut().find(|t| t.client_id == client_id) {
            existing.qos = crate::protocol::qos_max(existing.qos, options.qos);
            existing.retain_as_published |= options.retain_as_published;
            existing.subscription_ids.extend(options.identifier);
        } else {
            out.push(Target {
                client_id,
                qos: options.qos,
                retain_as_published: options.retain_as_published,
                subscription_ids: options.identifier.into_iter().collect(),
            });
        }
    }
    out
}

/// Plain QoS 1 options for tests of routing.
#[cfg(test)]
pub(crate) fn test_options() -> SubscriptionOptions {
    SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        no_local: false,
        retain_as_published: false,
        retain_handling: RetainForwardRule::OnEverySubscribe,
        identifier: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(qos: QoS, no_local: bool, id: Option<usize>) -> SubscriptionOptions {
        SubscriptionOptions {
            qos,
            no_local,
            retain_as_published: false,
            retain_handling: RetainForwardRule::OnEverySubscribe,
            identifier: id,
        }
    }

    #[test]
    fn overlapping_subscriptions_merge_into_one_target() {
        let a: ClientId = "a".into();
        let matches = [
            (a.clone(), opts(QoS::AtMostOnce, false, Some(1))),
            (a.clone(), opts(QoS::ExactlyOnce, false, Some(2))),
        ];
        let t = targets(&matches, None);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].qos, QoS::ExactlyOnce);
        assert_eq!(t[0].subscription_ids, vec![1, 2]);
    }

    #[test]
    fn no_local_skips_only_the_publisher() {
        let matches = [
            ("a".into(), opts(QoS::AtMostOnce, true, None)),
            ("b".into(), opts(QoS::AtMostOnce, true, None)),
        ];
        let t = targets(&matches, Some("a"));
        assert_eq!(t.len(), 1);
        assert_eq!(&**t[0].client_id, "b");
    }
}

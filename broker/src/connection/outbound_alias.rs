//! Outbound topic aliases (MQTT 5.0 §3.3.2.3.4): which alias this connection's client knows for
//! which topic, so that a repeated topic goes out as a two-byte alias instead of its name.
//!
//! The mapping belongs to one network connection: a new connection starts with none, even when
//! it resumes a session. When every alias is taken, the least recently used one is reassigned
//! (its next use sends the new topic with it, which the client's mapping then follows).
//!
//! Choosing an alias and recording it are two steps ([`OutboundAliases::choose`], then
//! [`OutboundAliases::commit`] once the PUBLISH is in the write buffer), so that a PUBLISH that
//! is not sent (too large for the client, say) never leaves the table believing the client
//! knows a mapping it was never told.

use std::collections::HashMap;
use std::sync::Arc;

/// Topics this short are never aliased: the alias property (three bytes) would save nothing.
const SHORTEST_ALIASED_TOPIC: usize = 4;

/// "No slot" in the recency list (slot indices go up to 65534: alias 65535 is slot 65534).
const NIL: u16 = u16::MAX;

/// How one PUBLISH's topic is to be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AliasUse {
    /// The client knows this alias for the topic: send an empty topic name and the alias.
    Known(u16),
    /// Send the topic name and this alias, which the client then maps to the topic (replacing
    /// whatever the alias meant before).
    Assign(u16),
}

impl AliasUse {
    /// The alias to put in the PUBLISH's properties.
    pub(super) fn alias(self) -> u16 {
        match self {
            AliasUse::Known(alias) | AliasUse::Assign(alias) => alias,
        }
    }
}

/// The outbound aliases of one connection: a table allocated on first use.
///
/// The highest alias the connection may use (the lower of the client's Topic Alias Maximum and
/// `limits.max_outbound_topic_alias`, 0 when off) is kept by the connection and passed in: as a
/// field of its own it fits in the connection's padding, where here it would take 8 bytes more
/// of every connection's task.
#[derive(Debug, Default)]
pub(super) struct OutboundAliases {
    table: Option<Box<Table>>,
}

/// The mapping the client has been told, in order of last use.
#[derive(Debug)]
struct Table {
    /// Topic to slot index (alias − 1).
    by_topic: HashMap<Arc<str>, u16, foldhash::fast::RandomState>,
    /// Slot `i` holds the topic of alias `i + 1`; slots are filled in order.
    slots: Vec<Slot>,
    /// Most recently used slot, or [`NIL`].
    newest: u16,
    /// Least recently used slot (the next to be reassigned when all are taken), or [`NIL`].
    oldest: u16,
}

#[derive(Debug)]
struct Slot {
    topic: Arc<str>,
    /// The slot used just after this one (towards `newest`).
    newer: u16,
    /// The slot used just before this one (towards `oldest`).
    older: u16,
}

impl OutboundAliases {
    /// How to send `topic` with aliases up to `max`; `None` when it goes out without an alias
    /// (`max` 0, or a topic too short to gain from one). Changes nothing: see [`Self::commit`].
    /// `max` must be the same on every call.
    pub(super) fn choose(&self, max: u16, topic: &str) -> Option<AliasUse> {
        if max == 0 || topic.len() < SHORTEST_ALIASED_TOPIC {
            return None;
        }
        let Some(table) = &self.table else {
            return Some(AliasUse::Assign(1));
        };
        if let Some(&slot) = table.by_topic.get(topic) {
            return Some(AliasUse::Known(slot + 1));
        }
        let slot = match u16::try_from(table.slots.len()) {
            Ok(filled) if filled < max => filled,
            _ if table.oldest != NIL => table.oldest,
            _ => return None,
        };
        Some(AliasUse::Assign(slot + 1))
    }

    /// Records that a PUBLISH of `topic` chosen as `used` (by [`Self::choose`], with nothing
    /// committed in between) is on its way to the client.
    pub(super) fn commit(&mut self, used: AliasUse, topic: &Arc<str>) {
        let slot = used.alias().wrapping_sub(1);
        let table = self.table.get_or_insert_with(|| {
            Box::new(Table {
                by_topic: HashMap::default(),
                slots: Vec::new(),
                newest: NIL,
                oldest: NIL,
            })
        });
        match used {
            AliasUse::Known(_) => table.touch(slot),
            AliasUse::Assign(_) => table.assign(slot, topic),
        }
    }
}

impl Table {
    /// Maps `slot` to `topic`: a new slot at the end, or a reassigned one.
    fn assign(&mut self, slot: u16, topic: &Arc<str>) {
        let index = usize::from(slot);
        if index < self.slots.len() {
            self.unlink(slot);
            let old = std::mem::replace(&mut self.slots[index].topic, topic.clone());
            self.by_topic.remove(&old);
        } else if index == self.slots.len() {
            self.slots.push(Slot {
                topic: topic.clone(),
                newer: NIL,
                older: NIL,
            });
        } else {
            // Not what `choose` returns; ignoring it keeps the table consistent.
            tracing::debug!(slot, "outbound topic alias out of order, not recorded");
            return;
        }
        self.by_topic.insert(topic.clone(), slot);
        self.link_newest(slot);
    }

    /// Marks `slot` as the most recently used.
    fn touch(&mut self, slot: u16) {
        if self.newest != slot && usize::from(slot) < self.slots.len() {
            self.unlink(slot);
            self.link_newest(slot);
        }
    }

    fn unlink(&mut self, slot: u16) {
        let (newer, older) = {
            let s = &self.slots[usize::from(slot)];
            (s.newer, s.older)
        };
        match newer {
            NIL => self.newest = older,
            n => self.slots[usize::from(n)].older = older,
        }
        match older {
            NIL => self.oldest = newer,
            o => self.slots[usize::from(o)].newer = newer,
        }
    }

    fn link_newest(&mut self, slot: u16) {
        let previous = self.newest;
        {
            let s = &mut self.slots[usize::from(slot)];
            s.newer = NIL;
            s.older = previous;
        }
        match previous {
            NIL => self.oldest = slot,
            p => self.slots[usize::from(p)].newer = slot,
        }
        self.newest = slot;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chooses and commits, as a sent PUBLISH does.
    fn send(aliases: &mut (u16, OutboundAliases), topic: &str) -> Option<AliasUse> {
        let topic: Arc<str> = topic.into();
        let (max, aliases) = aliases;
        let used = aliases.choose(*max, &topic);
        if let Some(used) = used {
            aliases.commit(used, &topic);
        }
        used
    }

    fn aliases_up_to(max: u16) -> (u16, OutboundAliases) {
        (max, OutboundAliases::default())
    }

    #[test]
    fn off_means_no_alias_and_no_table() {
        let mut aliases = aliases_up_to(0);
        assert_eq!(send(&mut aliases, "a/long/topic"), None);
        assert!(aliases.1.table.is_none());
    }

    #[test]
    fn first_use_assigns_later_uses_are_known() {
        let mut aliases = aliases_up_to(4);
        assert!(aliases.1.table.is_none(), "allocated on first use only");
        assert_eq!(send(&mut aliases, "t/one"), Some(AliasUse::Assign(1)));
        assert_eq!(send(&mut aliases, "t/two"), Some(AliasUse::Assign(2)));
        assert_eq!(send(&mut aliases, "t/one"), Some(AliasUse::Known(1)));
        assert_eq!(send(&mut aliases, "t/two"), Some(AliasUse::Known(2)));
    }

    #[test]
    fn short_topics_are_not_aliased() {
        let mut aliases = aliases_up_to(4);
        assert_eq!(send(&mut aliases, "abc"), None);
        assert_eq!(send(&mut aliases, "abcd"), Some(AliasUse::Assign(1)));
    }

    #[test]
    fn an_uncommitted_choice_leaves_nothing_behind() {
        let mut aliases = aliases_up_to(1);
        send(&mut aliases, "t/one");
        // Chosen for a PUBLISH that was then not sent: the client still maps 1 to t/one.
        assert_eq!(aliases.1.choose(1, "t/two"), Some(AliasUse::Assign(1)));
        assert_eq!(send(&mut aliases, "t/one"), Some(AliasUse::Known(1)));
    }

    #[test]
    fn the_least_recently_used_alias_is_reassigned() {
        let mut aliases = aliases_up_to(3);
        assert_eq!(send(&mut aliases, "t/a"), None, "too short to alias");
        send(&mut aliases, "t/aa");
        send(&mut aliases, "t/bb");
        send(&mut aliases, "t/cc");
        // Oldest first: t/aa (1), t/bb (2), t/cc (3); using t/aa makes t/bb the oldest.
        assert_eq!(send(&mut aliases, "t/aa"), Some(AliasUse::Known(1)));
        assert_eq!(send(&mut aliases, "t/dd"), Some(AliasUse::Assign(2)));
        assert_eq!(send(&mut aliases, "t/bb"), Some(AliasUse::Assign(3)));
        assert_eq!(send(&mut aliases, "t/cc"), Some(AliasUse::Assign(1)));
        assert_eq!(send(&mut aliases, "t/dd"), Some(AliasUse::Known(2)));
        assert_eq!(send(&mut aliases, "t/aa"), Some(AliasUse::Assign(3)));
    }

    /// Follows the client's side of the protocol over many topics and checks that every
    /// PUBLISH resolves to the topic it was for, and no alias exceeds the maximum.
    #[test]
    fn a_client_following_the_spec_always_recovers_the_topic() {
        for max in [1u16, 2, 3, 7] {
            let mut aliases = aliases_up_to(max);
            let mut client: HashMap<u16, String> = HashMap::new();
            let mut seed = 12345u32;
            for _ in 0..2000 {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let topic = format!("topic/{}", (seed >> 16) % 11);
                let resolved = match send(&mut aliases, &topic) {
                    None => topic.clone(),
                    Some(AliasUse::Assign(a)) => {
                        assert!((1..=max).contains(&a), "alias {a} beyond {max}");
                        client.insert(a, topic.clone());
                        topic.clone()
                    }
                    Some(AliasUse::Known(a)) => {
                        assert!((1..=max).contains(&a), "alias {a} beyond {max}");
                        client.get(&a).cloned().expect("alias the client knows")
                    }
                };
                assert_eq!(resolved, topic);
            }
        }
    }
}

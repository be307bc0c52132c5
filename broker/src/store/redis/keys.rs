//! The names of the Redis store's keys: one session's five, the indexes, the per-node sets and
//! the retained messages (schema in `docs/redis-schema.md`).

use super::RedisStore;

/// The five keys of one session, in the order the scripts expect them.
pub(super) struct SessionKeys(pub(super) [String; 5]);

impl RedisStore {
    pub(super) fn session_keys(&self, client_id: &str) -> SessionKeys {
        let b = &self.base;
        SessionKeys([
            format!("{b}session:{client_id}"),
            format!("{b}subs:{client_id}"),
            format!("{b}inflight:{client_id}"),
            format!("{b}queue:{client_id}"),
            format!("{b}qos2:{client_id}"),
        ])
    }

    pub(super) fn key_prefixes(&self) -> [String; 5] {
        ["session:", "subs:", "inflight:", "queue:", "qos2:"].map(|kind| {
            let mut prefix = self.base.clone();
            prefix.push_str(kind);
            prefix
        })
    }

    /// Prefix of the per-node session sets: `<prefix>v1:node:`.
    pub(super) fn node_prefix(&self) -> String {
        format!("{}node:", self.base)
    }

    /// The set of sessions a node holds or has parked.
    pub(super) fn node_sessions_key(&self, node: &str) -> String {
        format!("{}node:{node}:sessions", self.base)
    }

    /// This node's stash of its adoption of `departed` (adopt.lua), until it has the answer.
    pub(super) fn adoption_stash_key(&self, departed: &str) -> String {
        format!("{}node:{}:adopting:{departed}", self.base, self.node_id)
    }

    /// The run a node registered when it last started (written by the cluster link, see
    /// `cluster::relay`): adoption of an earlier run stops at it.
    pub(super) fn node_run_key(&self, node: &str) -> String {
        format!("{}node:{node}:run", self.base)
    }

    /// Where a node the cluster declared dead while it ran came back (written by the cluster
    /// link, see `cluster::recovery`): an adoption removes it.
    pub(super) fn node_returned_key(&self, node: &str) -> String {
        format!("{}node:{node}:returned", self.base)
    }

    /// The sessions claimed away from a node in the last minute (zset scored by time, ms).
    pub(super) fn node_moved_key(&self, node: &str) -> String {
        format!("{}node:{node}:moved", self.base)
    }

    pub(super) fn sessions_key(&self) -> String {
        format!("{}sessions", self.base)
    }

    pub(super) fn expiry_key(&self) -> String {
        format!("{}expiry", self.base)
    }

    pub(super) fn retained_key(&self, topic: &str) -> String {
        format!("{}retained:{topic}", self.base)
    }

    /// Prefix of the retained messages' keys: `<prefix>v1:retained:`.
    pub(super) fn retained_prefix(&self) -> String {
        format!("{}retained:", self.base)
    }

    /// The four retained indexes, in the order the retained scripts expect them: the topics,
    /// those whose message expires (scored by when, ms since the epoch), their payload sizes,
    /// and the sum of those.
    pub(super) fn retained_index_keys(&self) -> [String; 4] {
        let b = &self.base;
        [
            format!("{b}retained-topics"),
            format!("{b}retained-expiring"),
            format!("{b}retained-sizes"),
            format!("{b}retained-bytes"),
        ]
    }

    pub(super) fn retained_topics_key(&self) -> String {
        format!("{}retained-topics", self.base)
    }
}

//! The names of the relay's Redis keys under one prefix (see `docs/redis-schema.md`).

/// Key names under one prefix.
#[derive(Clone)]
pub(super) struct Keys {
    pub(super) prefix: String,
}

impl Keys {
    pub(super) fn entries(&self, node: &str) -> String {
        format!("{}v1:node:{node}:entries", self.prefix)
    }
    pub(super) fn nodes(&self) -> String {
        format!("{}v1:nodes", self.prefix)
    }
    pub(super) fn channel(&self) -> String {
        format!("{}v1:entries", self.prefix)
    }
    pub(super) fn inbox(&self, node: &str) -> String {
        format!("{}v1:inbox:{node}", self.prefix)
    }
    pub(super) fn journal(&self, node: &str) -> String {
        format!("{}v1:journal:{node}", self.prefix)
    }
    /// The counter a node's writer increments before each replication wait (see
    /// [`crate::cluster::replication`]).
    pub(super) fn replicated(&self, node: &str) -> String {
        format!("{}v1:node:{node}:replicated", self.prefix)
    }
    pub(super) fn inbox_read(&self, node: &str) -> String {
        format!("{}v1:inbox:{node}:read", self.prefix)
    }
    /// A node's listing marker (see [`crate::cluster::listed`]).
    pub(super) fn listed(&self, node: &str) -> String {
        format!("{}v1:node:{node}:listed", self.prefix)
    }
    /// The run a node registered as it last started (see [`super::ClusterLink::run`]).
    pub(super) fn run(&self, node: &str) -> String {
        format!("{}v1:node:{node}:run", self.prefix)
    }
    /// Where a node the cluster declared dead, though it was running, came back: `<run>/<ms>`
    /// (see [`crate::cluster::recovery`]).
    pub(super) fn returned(&self, node: &str) -> String {
        format!("{}v1:node:{node}:returned", self.prefix)
    }
    /// Each node's connection count, for rebalancing (see [`crate::cluster::rebalance`]).
    pub(super) fn load(&self) -> String {
        format!("{}v1:load", self.prefix)
    }
    pub(super) fn epoch(&self) -> String {
        format!("{}v1:epoch", self.prefix)
    }
}

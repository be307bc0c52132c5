//! Which share groups one delivery serves on this node: the cluster picks one node per group
//! and message, and a node's local routing serves the rest or only what it was picked for.

use super::GroupKey;

/// Which share groups a node's local routing serves for one message.
#[derive(Debug, Clone, Copy)]
pub enum GroupScope<'a> {
    /// All of them (standalone, or no other node has members).
    All,
    /// All but these, which another node serves.
    Except(&'a [GroupKey]),
    /// Only these (a relayed message: the origin node chose this node for them).
    Only(&'a [GroupKey]),
}

impl GroupScope<'_> {
    /// Whether a share group (`group` on `filter`) is served here.
    pub(crate) fn serves(&self, group: &str, filter: &str) -> bool {
        let listed = |keys: &[GroupKey]| keys.iter().any(|(g, f)| g == group && f == filter);
        match self {
            GroupScope::All => true,
            GroupScope::Except(keys) => !listed(keys),
            GroupScope::Only(keys) => listed(keys),
        }
    }
}

//! Running as one node of a cluster: membership by gossip (issue 4).

pub mod membership;
pub mod packed;
pub mod relay;
pub mod window;

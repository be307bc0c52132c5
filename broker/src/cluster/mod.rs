//! Running as one node of a cluster: membership by gossip, the relay of messages and control
//! entries through Redis, the replica of the other nodes' subscriptions, and recovery of what a
//! departed node held (see `docs/cluster.md`).

pub mod adopted;
pub mod handoff;
pub mod health;
pub mod journal;
pub mod listed;
pub mod load;
pub mod local;
pub mod membership;
pub mod packed;
pub mod pending;
pub mod rebalance;
pub mod recovery;
pub mod redis_clock;
pub mod refusals;
pub mod relay;
mod replica;
pub mod replication;
pub mod round;
pub mod sweep;
pub mod takeover;
pub mod unread;
mod work_queue;

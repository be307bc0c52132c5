//! The adoption sweep: a node that left the cluster while nobody adopted its sessions (the
//! adoption failed on a Redis blip, the adopter died meanwhile, or its departure was never
//! reported) is adopted later, so its sessions and wills are never orphaned.
//!
//! Every [`INTERVAL`], the live node with the lowest id compares the nodes registered in Redis
//! (`v1:nodes`) with the gossip members. A registered node that gossip has not listed for
//! [`ABSENT_SWEEPS`] sweeps in a row (long past any start-up or failure detection) is adopted
//! like a node gossip reported gone; its registration is removed only once its adoption worked,
//! so a failed one is tried again at the next sweep.

use super::membership::Membership;
use super::recovery::Leftovers;
use crate::broker::{AdoptionOutcome, Broker};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// How often the lowest node sweeps.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Sweeps a registered node must be missing from gossip before it is adopted.
pub const ABSENT_SWEEPS: u32 = 3;

/// Counts, sweep after sweep, how long registered nodes have been missing from gossip.
#[derive(Default)]
pub struct Absences(HashMap<String, Absence>);

/// How long one registered run of a node has been missing.
struct Absence {
    run: Option<u64>,
    sweeps: u32,
}

impl Absences {
    /// Records one sweep of the `registered` nodes (each with its registered run); returns
    /// the nodes whose run has been missing for [`ABSENT_SWEEPS`] sweeps (and forgets them:
    /// they are adopted now, and counted afresh should that fail). A node registering a new
    /// run (it restarted) is counted afresh.
    pub fn sweep(
        &mut self,
        me: &str,
        registered: &HashMap<String, Option<u64>>,
        members: &HashSet<String>,
    ) -> Vec<(String, Option<u64>)> {
        self.0.retain(|node, absence| {
            registered.get(node) == Some(&absence.run) && !members.contains(node)
        });
        let mut due = Vec::new();
        for (node, run) in registered {
            if node == me || members.contains(node) {
                continue;
            }
            let absence = self.0.entry(node.clone()).or_insert(Absence {
                run: *run,
                sweeps: 0,
            });
            absence.sweeps += 1;
            if absence.sweeps >= ABSENT_SWEEPS {
                due.push((node.clone(), *run));
            }
        }
        for (node, _) in &due {
            self.0.remove(node);
        }
        due.sort();
        due
    }

    /// Forgets every count (this node is not the one that sweeps).
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// Sweeps until shutdown.
pub async fn run(broker: Arc<Broker>, membership: Arc<dyn Membership>) {
    let Some(link) = broker.cluster().cloned() else {
        return;
    };
    let mut state = broker.run_state();
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut absences = Absences::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = state.changed() => return,
        }
        let members: HashSet<String> = membership
            .members()
            .await
            .into_iter()
            .map(|m| m.id)
            .collect();
        let me = membership.local_id();
        if members
            .iter()
            .min()
            .is_some_and(|lowest| lowest.as_str() < me)
        {
            absences.clear();
            continue;
        }
        let registered = match link.registered_nodes().await {
            Ok(registered) => registered,
            Err(e) => {
                tracing::debug!(error = %e, "adoption sweep: registered nodes unreadable");
                continue;
            }
        };
        for (node, run) in absences.sweep(me, &registered, &members) {
            tracing::warn!(
                node = %node,
                ?run,
                "a node registered in redis has been out of the cluster for {:?}: adopting its sessions",
                INTERVAL * ABSENT_SWEEPS
            );
            match broker
                .adopt_sessions_of(&node, run, Leftovers::Departed)
                .await
            {
                AdoptionOutcome::Adopted => {
                    link.remove_node_entries(&node, run);
                    broker.metrics.adoption_sweeps.inc();
                }
                AdoptionOutcome::NodeReturned | AdoptionOutcome::Failed => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[&str]) -> HashSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    /// Registered nodes, each with run 1.
    fn runs(ids: &[&str]) -> HashMap<String, Option<u64>> {
        ids.iter().map(|s| (s.to_string(), Some(1))).collect()
    }

    fn due(nodes: &[&str]) -> Vec<(String, Option<u64>)> {
        nodes.iter().map(|s| (s.to_string(), Some(1))).collect()
    }

    #[test]
    fn a_node_missing_from_gossip_for_three_sweeps_is_due() {
        let mut absences = Absences::default();
        let registered = runs(&["a", "b", "c"]);
        let members = set(&["a", "b"]);
        assert!(absences.sweep("a", &registered, &members).is_empty());
        assert!(absences.sweep("a", &registered, &members).is_empty());
        assert_eq!(absences.sweep("a", &registered, &members), due(&["c"]));
        // Counted afresh (its adoption may have failed).
        assert!(absences.sweep("a", &registered, &members).is_empty());
    }

    #[test]
    fn a_node_that_shows_up_in_gossip_starts_over() {
        let mut absences = Absences::default();
        let registered = runs(&["a", "c"]);
        assert!(absences.sweep("a", &registered, &set(&["a"])).is_empty());
        assert!(absences.sweep("a", &registered, &set(&["a"])).is_empty());
        assert!(absences
            .sweep("a", &registered, &set(&["a", "c"]))
            .is_empty());
        assert!(absences.sweep("a", &registered, &set(&["a"])).is_empty());
        assert!(absences.sweep("a", &registered, &set(&["a"])).is_empty());
        assert_eq!(absences.sweep("a", &registered, &set(&["a"])), due(&["c"]));
    }

    #[test]
    fn a_node_that_registers_a_new_run_starts_over_and_is_due_under_it() {
        let mut absences = Absences::default();
        let members = set(&["a"]);
        let mut registered = runs(&["a", "c"]);
        assert!(absences.sweep("a", &registered, &members).is_empty());
        assert!(absences.sweep("a", &registered, &members).is_empty());
        registered.insert("c".into(), Some(2));
        assert!(absences.sweep("a", &registered, &members).is_empty());
        assert!(absences.sweep("a", &registered, &members).is_empty());
        assert_eq!(
            absences.sweep("a", &registered, &members),
            vec![("c".to_string(), Some(2))]
        );
    }

    #[test]
    fn this_node_is_never_due() {
        let mut absences = Absences::default();
        for _ in 0..5 {
            assert!(absences.sweep("a", &runs(&["a"]), &set(&[])).is_empty());
        }
    }
}

//! One round of giving connections away (see [`super::rebalance`]): which nodes the clients a
//! node asks to move should reach, how many it asked, and the verdict: still going, arrived, or
//! arriving nowhere (the nodes that should take them are out of the balancer's reach), in which
//! case the node pauses instead of emptying the reachable nodes round after round.

use super::load::{tolerance, NodeLoad};
use starling_config::RebalanceConfig;
use std::time::{Duration, Instant};

/// How long after it was asked a client has reconnected elsewhere (it pauses briefly, and may
/// be refused once or twice by nodes that give too): the verdict on a round waits this long.
pub const ARRIVAL_WAIT: Duration = Duration::from_secs(3);

/// A round of giving, from this node's first ask until the verdict.
#[derive(Debug)]
pub struct Round {
    /// The accepting nodes below the mean when the round began, with their clients then: the
    /// clients asked to move should reach them.
    targets: Vec<(String, usize)>,
    /// The accepting nodes that take clients while this one gives (the others, less those far
    /// enough above the mean to give too): the balancer spreads the clients asked to move over
    /// them, so the targets' expected share is `targets / receivers`.
    receivers: usize,
    /// The cluster's clients (connected and on their way) when the round began.
    clients_from: usize,
    first_ask: Instant,
    last_ask: Instant,
    /// Clients this node asked to move in this round.
    asked: usize,
}

/// What a round's progress says.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Still giving, or waiting for the last clients asked to arrive.
    Going,
    /// The clients asked to move arrived at the nodes that should take them.
    Arrived,
    /// They are arriving nowhere: the cluster's clients fell, or the targets gained almost
    /// none of them.
    Vanished,
}

impl Round {
    /// Begins a round from the cluster's `loads` (this node's among them) and its `clients`.
    pub fn begin(
        own: &str,
        loads: &[NodeLoad],
        clients: usize,
        now: Instant,
        config: &RebalanceConfig,
    ) -> Self {
        let accepting: Vec<&NodeLoad> = loads.iter().filter(|l| l.accepting).collect();
        let mean = accepting.iter().map(|l| l.connections).sum::<usize>() / accepting.len().max(1);
        let tolerance = tolerance(mean, config);
        let others = accepting.iter().filter(|l| l.node != own);
        let targets: Vec<(String, usize)> = others
            .clone()
            .filter(|l| l.connections < mean)
            .map(|l| (l.node.clone(), l.connections))
            .collect();
        let receivers = others.filter(|l| l.connections <= mean + tolerance).count();
        Round {
            targets,
            receivers,
            clients_from: clients,
            first_ask: now,
            last_ask: now,
            asked: 0,
        }
    }

    /// `count` more clients were asked to move.
    pub fn note_asked(&mut self, count: usize, now: Instant) {
        if count > 0 {
            self.asked += count;
            self.last_ask = now;
        }
    }

    /// Clients this node asked to move in this round.
    pub fn asked(&self) -> usize {
        self.asked
    }

    /// The verdict, given the cluster's `loads` and `clients` now and whether this node is
    /// still `giving`.
    pub fn verdict(
        &self,
        loads: &[NodeLoad],
        clients: usize,
        giving: bool,
        now: Instant,
        config: &RebalanceConfig,
    ) -> Verdict {
        // What the targets still there gained (a target that left or restarted is not judged).
        let (present, gained) = self.gained(loads);
        // Fewer than a tenth of their expected share of the clients asked.
        let too_few = gained * 10 * self.receivers.max(1) < self.asked * present;
        // The cluster's clients fell (some are always between two connections): vanishing at
        // once, unless the targets got their share (then devices left on their own).
        let margin = tolerance(self.clients_from, config);
        if clients + margin < self.clients_from && (present == 0 || too_few) {
            return Verdict::Vanished;
        }
        let waited = now.saturating_duration_since(self.first_ask) >= ARRIVAL_WAIT;
        let enough_asked = self.asked >= config.min_excess as usize;
        if waited && enough_asked && present > 0 && too_few {
            return Verdict::Vanished;
        }
        if !giving && now.saturating_duration_since(self.last_ask) >= ARRIVAL_WAIT {
            Verdict::Arrived
        } else {
            Verdict::Going
        }
    }
}

impl Round {
    /// How many targets are still there, and how many clients they gained since the round
    /// began.
    fn gained(&self, loads: &[NodeLoad]) -> (usize, usize) {
        let mut present = 0;
        let mut gained = 0;
        for (node, from) in &self.targets {
            if let Some(load) = loads.iter().find(|l| &l.node == node) {
                present += 1;
                gained += load.connections.saturating_sub(*from);
            }
        }
        (present, gained)
    }
}

#[cfg(test)]
mod tests {
    use super::super::load::test_load as load;
    use super::*;

    fn cluster(counts: [usize; 4]) -> Vec<NodeLoad> {
        ["a", "b", "c", "d"]
            .iter()
            .zip(counts)
            .map(|(node, n)| load(node, n))
            .collect()
    }

    #[test]
    fn clients_reaching_the_new_node_end_the_round_once_the_last_had_time_to_arrive() {
        let config = RebalanceConfig::default();
        let start = Instant::now();
        let mut round = Round::begin("a", &cluster([1000, 1000, 1000, 0]), 3000, start, &config);
        round.note_asked(50, start);
        round.note_asked(50, start + Duration::from_secs(1));
        let later = start + Duration::from_secs(3);
        // d gained 60 of the 100: still giving, going on.
        let now = cluster([900, 980, 980, 60]);
        assert_eq!(
            round.verdict(&now, 2980, true, later, &config),
            Verdict::Going
        );
        // Done giving, the last ask 2 s ago: wait for it.
        assert_eq!(
            round.verdict(&now, 2980, false, later, &config),
            Verdict::Going
        );
        let end = start + Duration::from_secs(4);
        assert_eq!(
            round.verdict(&now, 2980, false, end, &config),
            Verdict::Arrived
        );
    }

    #[test]
    fn clients_that_reach_no_target_stop_the_round_even_when_they_come_back() {
        let config = RebalanceConfig::default();
        let start = Instant::now();
        let mut round = Round::begin("a", &cluster([1000, 1000, 1000, 0]), 3000, start, &config);
        for s in 0..3 {
            round.note_asked(50, start + Duration::from_secs(s));
        }
        // They reconnected, but only to a, b and c: the cluster's count held.
        let now = cluster([1000, 1000, 1000, 0]);
        assert_eq!(
            round.verdict(&now, 3000, true, start + Duration::from_secs(2), &config),
            Verdict::Going,
            "too early to judge"
        );
        assert_eq!(
            round.verdict(&now, 3000, true, start + Duration::from_secs(3), &config),
            Verdict::Vanished
        );
        // The same whether this node still gives or not.
        assert_eq!(
            round.verdict(&now, 3000, false, start + Duration::from_secs(3), &config),
            Verdict::Vanished
        );
    }

    #[test]
    fn clients_that_reconnect_nowhere_stop_the_round_at_once() {
        let config = RebalanceConfig::default();
        let start = Instant::now();
        let mut round = Round::begin("a", &cluster([1000, 1000, 1000, 0]), 3000, start, &config);
        round.note_asked(50, start);
        // 10% of 3,000 may be between connections; 301 missing is too many.
        let now = cluster([950, 950, 799, 0]);
        assert_eq!(
            round.verdict(&now, 2699, true, start, &config),
            Verdict::Vanished
        );
        assert_eq!(
            round.verdict(&now, 2700, true, start, &config),
            Verdict::Going
        );
    }

    #[test]
    fn a_target_among_many_receivers_is_judged_by_its_share() {
        let config = RebalanceConfig::default();
        let start = Instant::now();
        // a gives; ten nodes near the mean take clients too; k is the only target.
        let mut loads = vec![load("a", 1300)];
        for n in 0..10 {
            loads.push(load(&format!("n{n}"), 1000));
        }
        loads.push(load("k", 700));
        let mut round = Round::begin("a", &loads, 12_000, start, &config);
        round.note_asked(220, start);
        // k got 1 of the 220 (its share is 1 in 11: 20): under a tenth of it.
        loads[11].connections = 701;
        let later = start + ARRIVAL_WAIT;
        assert_eq!(
            round.verdict(&loads, 12_000, true, later, &config),
            Verdict::Vanished
        );
        // 5 is a quarter of its share: going on.
        loads[11].connections = 705;
        assert_eq!(
            round.verdict(&loads, 12_000, true, later, &config),
            Verdict::Going
        );
    }

    #[test]
    fn devices_leaving_after_the_targets_got_their_share_are_not_vanishing() {
        let config = RebalanceConfig::default();
        let start = Instant::now();
        let mut round = Round::begin("a", &cluster([1000, 1000, 1000, 0]), 3000, start, &config);
        round.note_asked(250, start);
        // d got 240 of them; then half the fleet went away.
        let now = cluster([400, 400, 400, 240]);
        assert_eq!(
            round.verdict(&now, 1440, false, start + Duration::from_secs(1), &config),
            Verdict::Going
        );
        assert_eq!(
            round.verdict(&now, 1440, false, start + ARRIVAL_WAIT, &config),
            Verdict::Arrived
        );
    }

    #[test]
    fn a_target_that_left_is_not_judged() {
        let config = RebalanceConfig::default();
        let start = Instant::now();
        let mut round = Round::begin("a", &cluster([1000, 1000, 1000, 0]), 3000, start, &config);
        round.note_asked(150, start);
        let without_d: Vec<NodeLoad> = cluster([1000, 1000, 1000, 0]).into_iter().take(3).collect();
        assert_eq!(
            round.verdict(&without_d, 3000, true, start + ARRIVAL_WAIT, &config),
            Verdict::Going
        );
    }

    #[test]
    fn a_few_clients_asked_are_not_judged() {
        let config = RebalanceConfig::default();
        let start = Instant::now();
        let mut round = Round::begin("a", &cluster([800, 760, 760, 680]), 3000, start, &config);
        round.note_asked(40, start);
        let now = cluster([760, 780, 780, 680]);
        // 40 asked (under min_excess, 50) and none seen at d: too few to tell.
        assert_eq!(
            round.verdict(&now, 3000, false, start + Duration::from_secs(3), &config),
            Verdict::Arrived
        );
    }
}

//! The cluster's load as rebalancing sees it: each node's connection count as it shares it
//! through Redis (`v1:load`), this node's part (whether it gives connections away), and how many
//! it should give (see [`super::rebalance`]).

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use starling_config::RebalanceConfig;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// One node's load, as it last shared it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLoad {
    /// The node.
    pub node: String,
    /// Its connected clients, less those it already asked to move.
    pub connections: usize,
    /// Whether it takes new clients (not while evacuating).
    pub accepting: bool,
    /// Clients it asked to move in the last few seconds: most are on their way to another node
    /// (reconnecting), counted nowhere yet.
    #[serde(default)]
    pub moving: usize,
    /// Clients that connected to it in the last few seconds: some of them are the clients
    /// others asked to move, arrived (counted here already).
    #[serde(default)]
    pub arrived: usize,
    /// When it shared this (ms, Redis's clock).
    pub at_ms: u64,
    /// Where other nodes reach its admin API (`host:port`), when it serves one: cluster-wide
    /// admin queries ask each node there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
}

impl NodeLoad {
    /// The stored form: `<connections>/<at_ms>/<1 accepting | 0>/<moving>/<arrived>/<admin>`
    /// (`<admin>` empty when it serves no admin API; an address holds no `/`).
    pub(super) fn encode(&self) -> String {
        format!(
            "{}/{}/{}/{}/{}/{}",
            self.connections,
            self.at_ms,
            u8::from(self.accepting),
            self.moving,
            self.arrived,
            self.admin.as_deref().unwrap_or_default()
        )
    }

    /// Reads the stored form (`<moving>` and `<arrived>` may be missing: 0; `<admin>` too).
    pub(super) fn parse(node: String, text: &str) -> Option<Self> {
        let mut parts = text.split('/');
        let connections = parts.next()?.parse().ok()?;
        let at_ms = parts.next()?.parse().ok()?;
        let accepting = parts.next()? == "1";
        let mut optional = || match parts.next() {
            Some(n) => n.parse().ok(),
            None => Some(0),
        };
        let moving = optional()?;
        let arrived = optional()?;
        // Only a socket address: what another node sends its admin token to.
        let admin = parts
            .next()
            .and_then(|address| address.parse::<std::net::SocketAddr>().ok())
            .map(|address| address.to_string());
        Some(NodeLoad {
            node,
            connections,
            accepting,
            moving,
            arrived,
            at_ms,
            admin,
        })
    }
}

/// This node's part in rebalancing: whether it is giving connections away (and refusing new
/// clients), whether it serves at all, and the cluster's load as it last read it.
#[derive(Default)]
pub struct Rebalancing {
    giving: AtomicBool,
    refusing: AtomicBool,
    serving: AtomicBool,
    loads: Mutex<Vec<NodeLoad>>,
    /// When clients were asked to move (by rebalancing or an evacuation), and how many.
    asked: Mutex<VecDeque<(Instant, usize)>>,
    /// When clients connected here.
    arrivals: Mutex<VecDeque<Instant>>,
}

/// How long clients asked to move count as on their way: a client reconnects within a second
/// or two, refused once or twice by nodes that give too.
pub const MOVING_FOR: Duration = Duration::from_secs(2);

impl Rebalancing {
    /// Whether this node gives connections away now, refusing new clients.
    pub fn is_giving(&self) -> bool {
        self.giving.load(Ordering::Relaxed)
    }

    /// The nodes' loads as this node last read them (fresh ones of registered nodes), sorted
    /// by node; empty standalone or before the first reading.
    pub fn loads(&self) -> Vec<NodeLoad> {
        self.loads.lock().clone()
    }

    /// Whether this node refuses new clients while it gives connections away.
    pub fn is_refusing(&self) -> bool {
        self.refusing.load(Ordering::Relaxed)
    }

    /// Starts or stops refusing new clients.
    pub(super) fn set_refusing(&self, refusing: bool) {
        self.refusing.store(refusing, Ordering::Relaxed);
    }

    /// The node serves clients now (its listeners accept): only then does it count as a node
    /// clients can be sent to.
    pub fn mark_serving(&self) {
        self.serving.store(true, Ordering::Relaxed);
    }

    /// Whether the node serves clients (see [`Self::mark_serving`]).
    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    /// Starts or stops giving; returns whether it was giving before.
    pub(super) fn set_giving(&self, giving: bool) -> bool {
        self.giving.swap(giving, Ordering::Relaxed)
    }

    /// Keeps the loads just read.
    pub(super) fn set_loads(&self, loads: Vec<NodeLoad>) {
        *self.loads.lock() = loads;
    }

    /// `count` clients were just asked to move.
    pub fn note_asked(&self, count: usize) {
        if count > 0 {
            self.asked.lock().push_back((Instant::now(), count));
        }
    }

    /// A client just connected here.
    pub fn note_arrived(&self) {
        let mut arrivals = self.arrivals.lock();
        forget_before(&mut arrivals, |at| *at);
        arrivals.push_back(Instant::now());
    }

    /// Clients that connected here within [`MOVING_FOR`].
    pub fn arrived(&self) -> usize {
        let mut arrivals = self.arrivals.lock();
        forget_before(&mut arrivals, |at| *at);
        arrivals.len()
    }

    /// Clients asked to move within [`MOVING_FOR`].
    pub fn moving(&self) -> usize {
        let mut asked = self.asked.lock();
        forget_before(&mut asked, |(at, _)| *at);
        asked.iter().map(|(_, count)| count).sum()
    }
}

/// How long the most clients the cluster held counts in its mean: a client asked to move may
/// be refused several times before it reaches a node that takes it, longer than
/// [`MOVING_FOR`] on a busy host, and while it is on its way nobody counts it.
pub const PEAK_FOR: Duration = Duration::from_secs(10);

/// The most clients the cluster held (connected, or known to be on their way) within
/// [`PEAK_FOR`], as one node read it each round.
#[derive(Default)]
pub struct RecentPeak {
    seen: VecDeque<(Instant, usize)>,
}

impl RecentPeak {
    /// Notes the clients read now; returns the most read within [`PEAK_FOR`] (these included).
    pub fn note(&mut self, clients: usize, now: Instant) -> usize {
        while self
            .seen
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > PEAK_FOR)
        {
            self.seen.pop_front();
        }
        self.seen.push_back((now, clients));
        self.seen.iter().map(|(_, n)| *n).max().unwrap_or(clients)
    }
}

/// The cluster's clients as the mean counts them: the accepting nodes' connections and the
/// clients on their way (asked to move lately, less those that connected somewhere lately).
pub fn cluster_clients(own: &NodeLoad, loads: &[NodeLoad]) -> usize {
    let others: Vec<&NodeLoad> = loads.iter().filter(|l| l.node != own.node).collect();
    let connected: usize = others
        .iter()
        .filter(|l| l.accepting)
        .map(|l| l.connections)
        .sum::<usize>()
        + if own.accepting { own.connections } else { 0 };
    let asked: usize = others.iter().map(|l| l.moving).sum::<usize>() + own.moving;
    let arrived: usize = others.iter().map(|l| l.arrived).sum::<usize>() + own.arrived;
    connected + asked.saturating_sub(arrived)
}

/// Drops the entries of `times` older than [`MOVING_FOR`] (oldest first).
fn forget_before<T>(times: &mut VecDeque<T>, at: impl Fn(&T) -> Instant) {
    while times.front().is_some_and(|t| at(t).elapsed() > MOVING_FOR) {
        times.pop_front();
    }
}

/// How many connections a node holding `own` should give away now, given the cluster's
/// `loads` (its own among them), the most clients it held lately (`recent_clients`, from
/// [`RecentPeak`] over [`cluster_clients`]) and whether this node is `giving` already: those
/// above the mean of the accepting nodes, once it or another node is off the mean by more than
/// the tolerance; 0 otherwise.
///
/// The clients on their way from one node to another count in the mean: left out, they would
/// lower it while they reconnect, and the nodes giving would give too many, overfilling the
/// others. Each node shares how many it asked to move lately, but a client refused a few times
/// on its way can take longer than that count lasts: the recent peak keeps it counted.
pub fn excess(
    own: &NodeLoad,
    loads: &[NodeLoad],
    recent_clients: usize,
    giving: bool,
    config: &RebalanceConfig,
) -> usize {
    if !config.enabled || !own.accepting {
        return 0;
    }
    let accepting: Vec<usize> = loads
        .iter()
        .filter(|l| l.node != own.node && l.accepting)
        .map(|l| l.connections)
        .chain([own.connections])
        .collect();
    if accepting.len() < 2 {
        return 0;
    }
    let total = cluster_clients(own, loads).max(recent_clients);
    let mean = total.div_ceil(accepting.len());
    let over = own.connections.saturating_sub(mean);
    let tolerance = tolerance(mean, config);
    // A node far below the mean (a new one) is filled by every node above it, each giving what
    // it holds above the mean, however little.
    let lowest = accepting.iter().copied().min().unwrap_or(mean);
    let starved = mean.saturating_sub(lowest) > tolerance;
    if giving || over > tolerance || (starved && over > 0) {
        over
    } else {
        0
    }
}

/// How far off `count` (a node's share, or the cluster's clients) may be before it counts:
/// `tolerance_percent` of it, at least `min_excess`.
pub(super) fn tolerance(count: usize, config: &RebalanceConfig) -> usize {
    (count * config.tolerance_percent as usize / 100).max(config.min_excess as usize)
}

/// An accepting node's load, for tests.
#[cfg(test)]
pub(super) fn test_load(node: &str, connections: usize) -> NodeLoad {
    NodeLoad {
        node: node.into(),
        connections,
        accepting: true,
        moving: 0,
        arrived: 0,
        at_ms: 1,
        admin: None,
    }
}

#[cfg(test)]
mod tests {
    use super::test_load as load;
    use super::*;

    #[test]
    fn a_node_far_below_the_mean_is_filled_by_all_above_it() {
        let config = RebalanceConfig::default();
        // Mean 750, tolerance 75: d is 117 below; a, b and c are within the tolerance above.
        let loads = [
            load("a", 773),
            load("b", 772),
            load("c", 822),
            load("d", 633),
        ];
        assert_eq!(excess(&loads[0], &loads, 0, false, &config), 23);
        assert_eq!(excess(&loads[2], &loads, 0, false, &config), 72);
        assert_eq!(excess(&loads[3], &loads, 0, false, &config), 0);
        // Nobody far off: nothing moves.
        let near = [
            load("a", 773),
            load("b", 772),
            load("c", 780),
            load("d", 675),
        ];
        assert_eq!(excess(&near[0], &near, 0, false, &config), 0);
    }

    #[test]
    fn clients_on_their_way_count_in_the_mean() {
        let config = RebalanceConfig::default();
        // 3,000 clients, 300 of them reconnecting: the mean is still 750, not 675.
        let mut a = load("a", 800);
        a.moving = 100;
        let mut b = load("b", 800);
        b.moving = 100;
        let mut c = load("c", 800);
        c.moving = 100;
        let loads = [a.clone(), b, c, load("d", 300)];
        assert_eq!(excess(&a, &loads, 0, true, &config), 50);
        // 120 of them connected to d already (counted there): 180 still on their way.
        let mut d = load("d", 420);
        d.arrived = 120;
        let loads = [loads[0].clone(), loads[1].clone(), loads[2].clone(), d];
        assert_eq!(excess(&a, &loads, 0, true, &config), 50);
        // More arrivals than clients asked to move: none counts as on its way (the mean of the
        // 2,700 connected is 675).
        let mut d = load("d", 300);
        d.arrived = 500;
        let loads = [loads[0].clone(), loads[1].clone(), loads[2].clone(), d];
        assert_eq!(excess(&a, &loads, 0, true, &config), 125);
    }

    #[test]
    fn clients_still_on_their_way_after_the_count_lapsed_stay_in_the_mean() {
        let config = RebalanceConfig::default();
        // 3,000 clients a few seconds ago; 300 of them refused on their way for longer than
        // the nodes count them as moving: 2,700 connected, none counted as moving.
        let loads = [
            load("a", 800),
            load("b", 800),
            load("c", 800),
            load("d", 300),
        ];
        assert_eq!(cluster_clients(&loads[0], &loads), 2_700);
        assert_eq!(
            excess(&loads[0], &loads, 0, true, &config),
            125,
            "without the peak the mean falls to 675"
        );
        assert_eq!(excess(&loads[0], &loads, 3_000, true, &config), 50);
        // A peak below the clients counted now changes nothing.
        assert_eq!(excess(&loads[0], &loads, 1_000, true, &config), 125);
    }

    #[test]
    fn the_recent_peak_forgets_what_is_older_than_its_window() {
        let mut peak = RecentPeak::default();
        let start = Instant::now();
        assert_eq!(peak.note(3_000, start), 3_000);
        assert_eq!(peak.note(2_700, start + Duration::from_secs(4)), 3_000);
        assert_eq!(peak.note(2_800, start + PEAK_FOR), 3_000, "at the edge");
        assert_eq!(
            peak.note(2_750, start + PEAK_FOR + Duration::from_millis(1)),
            2_800
        );
        assert_eq!(peak.note(3_100, start + PEAK_FOR * 3), 3_100);
    }

    #[test]
    fn after_a_scale_up_each_old_node_gives_down_to_the_mean() {
        let config = RebalanceConfig::default();
        let loads = [
            load("a", 1000),
            load("b", 1000),
            load("c", 1000),
            load("d", 0),
        ];
        assert_eq!(excess(&loads[0], &loads, 0, false, &config), 250);
        assert_eq!(excess(&loads[3], &loads, 0, false, &config), 0);
    }

    #[test]
    fn within_the_tolerance_nothing_moves_until_giving_started() {
        let config = RebalanceConfig::default();
        // Mean 750, tolerance 75: 820 stays, 830 gives.
        let near = [
            load("a", 820),
            load("b", 680),
            load("c", 750),
            load("d", 750),
        ];
        assert_eq!(excess(&near[0], &near, 0, false, &config), 0);
        // Once giving, a node goes on down to the mean.
        assert_eq!(excess(&near[0], &near, 0, true, &config), 70);
        let far = [
            load("a", 830),
            load("b", 670),
            load("c", 750),
            load("d", 750),
        ];
        assert_eq!(excess(&far[0], &far, 0, false, &config), 80);
    }

    #[test]
    fn small_clusters_and_lone_nodes_are_left_be() {
        let config = RebalanceConfig::default();
        // Mean 50, 50 above it: not more than min_excess (50).
        let small = [load("a", 100), load("b", 0)];
        assert_eq!(
            excess(&small[0], &small, 0, false, &config),
            0,
            "min_excess"
        );
        let just_over = [load("a", 102), load("b", 0)];
        assert_eq!(excess(&just_over[0], &just_over, 0, false, &config), 51);
        let alone = [load("a", 1000)];
        assert_eq!(excess(&alone[0], &alone, 0, false, &config), 0);
        let off = RebalanceConfig {
            enabled: false,
            ..RebalanceConfig::default()
        };
        let loads = [load("a", 1000), load("b", 0)];
        assert_eq!(excess(&loads[0], &loads, 0, false, &off), 0);
    }

    #[test]
    fn an_evacuating_node_is_left_out_of_the_mean_and_gives_nothing_by_rebalancing() {
        let config = RebalanceConfig::default();
        let mut draining = load("c", 0);
        draining.accepting = false;
        // Without c, the mean of a and b is 500: a is on it.
        let loads = [load("a", 500), load("b", 500), draining.clone()];
        assert_eq!(excess(&loads[0], &loads, 0, false, &config), 0);
        let mut busy_draining = load("c", 900);
        busy_draining.accepting = false;
        let loads = [load("a", 0), busy_draining.clone()];
        assert_eq!(excess(&busy_draining, &loads, 0, false, &config), 0);
    }

    #[test]
    fn the_stored_form_reads_back() {
        let mut l = load("a", 42);
        l.accepting = false;
        l.moving = 7;
        l.arrived = 3;
        assert_eq!(NodeLoad::parse("a".into(), &l.encode()), Some(l.clone()));
        l.admin = Some("[fd00::7]:9090".into());
        assert_eq!(NodeLoad::parse("a".into(), &l.encode()), Some(l));
        assert_eq!(
            NodeLoad::parse("a".into(), "5/9/1/0/0/").map(|l| l.admin),
            Some(None),
            "an empty address is none"
        );
        assert_eq!(
            NodeLoad::parse("a".into(), "5/9/1/0/0/evil.example:80@x").map(|l| l.admin),
            Some(None),
            "only a socket address is taken"
        );
        assert_eq!(
            NodeLoad::parse("a".into(), "5/9/1").map(|l| l.moving),
            Some(0)
        );
        assert_eq!(NodeLoad::parse("a".into(), "x/1/1"), None);
        assert_eq!(NodeLoad::parse("a".into(), "1/2"), None);
    }
}

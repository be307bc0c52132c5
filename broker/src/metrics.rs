//! Broker counters and gauges, exposed in Prometheus text format on the admin port and as `$SYS/`
//! topics.
//!
//! Hot-path counters are plain atomics handed out once at start-up, so counting a message costs
//! one relaxed atomic add.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Bucket bounds (seconds) of the latency histograms: 0.5 ms to 30 s.
const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Every metric the broker keeps.
pub struct Metrics {
    registry: Registry,
    /// Open client connections (after CONNACK).
    pub connections: Gauge,
    /// Connections accepted since start.
    pub connections_total: Counter,
    /// 1 while this node is being evacuated (refusing new clients, asking connected ones to
    /// reconnect elsewhere), else 0.
    pub evacuating: Gauge,
    /// Clients an evacuation asked to reconnect elsewhere since start.
    pub evacuation_asked: Counter,
    /// Subscriptions held (online and offline sessions).
    pub subscriptions: Gauge,
    /// Sessions held, online and offline.
    pub sessions: Gauge,
    /// Retained messages stored.
    pub retained: Gauge,
    /// Retained publishes delivered but not retained: the store held `limits.max_retained_messages`.
    pub retained_refused_count: Counter,
    /// Retained publishes delivered but not retained: the payload exceeded
    /// `limits.max_retained_payload_size`.
    pub retained_refused_payload: Counter,
    /// Retained publishes delivered but not retained: the retained payloads would have exceeded
    /// `limits.max_retained_bytes`.
    pub retained_refused_bytes: Counter,
    /// PUBLISH packets received from clients, by QoS.
    pub messages_received: [Counter; 3],
    /// PUBLISH packets sent to clients, by QoS.
    pub messages_sent: [Counter; 3],
    /// Bytes read from clients.
    pub bytes_received: Counter,
    /// Bytes written to clients.
    pub bytes_sent: Counter,
    /// Messages dropped because a queue was full.
    pub dropped_queue_full: Counter,
    /// Messages dropped because they expired before delivery.
    pub dropped_expired: Counter,
    /// Messages dropped because they exceed the receiver's maximum packet size.
    pub dropped_too_large: Counter,
    /// Publishes refused by the ACL.
    pub publish_denied: Counter,
    /// Connections closed for a protocol violation or malformed packet.
    pub protocol_errors: Counter,
    /// Cluster members this node sees, itself included.
    pub cluster_members: Gauge,
    /// Entries (filters) other cluster nodes advertise, as this node's replica knows them.
    pub remote_entries: Gauge,
    /// Other nodes' entry sets a rebuild of the replica only merged: the node had not written
    /// all its entries again yet (see `cluster::listed`).
    pub replica_unlisted: Counter,
    /// Messages not relayed to another node: the relay queue was full, or the session moved
    /// again while the message was on its way to it.
    pub relay_dropped: Counter,
    /// Relayed messages whose publisher waited for room in the full relay queue (the relay
    /// sets the pace of publishers).
    pub relay_waits: Counter,
    /// 1 while the cluster's Redis answers, 0 while it does not (always 1 standalone).
    pub redis_up: Gauge,
    /// Sessions that moved to another node whose routes this node still keeps, sending what
    /// they match on to the new node (see `cluster::handoff`).
    pub cluster_handoffs: Gauge,
    /// Hand-offs of a session's routes to another node begun since start.
    pub cluster_handoffs_total: Counter,
    /// Times this node found itself declared dead by the cluster (its sessions adopted
    /// elsewhere) and closed its connections.
    pub declared_dead: Counter,
    /// Recoveries of what a departed node (or this node's earlier run) held only in memory
    /// running now, a departed node's inbox tail included (see `cluster::recovery`).
    pub cluster_recoveries: Gauge,
    /// Copies such recoveries delivered again, marked DUP.
    pub cluster_recovered_copies: Counter,
    /// 1 while this node gives connections away to even out the cluster (refusing new clients),
    /// else 0 (see `cluster::rebalance`).
    pub rebalance_giving: Gauge,
    /// Clients rebalancing asked to reconnect elsewhere since start.
    pub rebalance_asked: Counter,
    /// Departed nodes adopted by the adoption sweep (their departure was missed or its
    /// adoption failed).
    pub adoption_sweeps: Counter,
    /// Relay writes Redis refused (OOM, READONLY, ...); the refused ones are sent again.
    pub redis_write_refusals: Counter,
    /// Times this node found that Redis had lost its data (its epoch changed) and announced
    /// its entries again.
    pub redis_resets: Counter,
    /// QoS 1/2 publishes acknowledged before Redis confirmed what they wrote (Redis unreachable
    /// or too slow): a node killed right after loses them.
    pub acks_unconfirmed: Counter,
    /// Waits for Redis replicas before acknowledgements (`WAIT`), and those that ended with
    /// fewer replicas confirming than asked for.
    pub replication_waits: Counter,
    pub replication_waits_short: Counter,
    /// Messages handed to the relay for other nodes (a message for two nodes counts twice).
    pub relay_sent: Counter,
    /// Messages read from this node's inbox, relayed by other nodes.
    pub relay_received: Counter,
    /// How long relayed entries waited between their append to this node's inbox (Redis's
    /// clock) and being read here: the relay hop's lag, per entry (one origin's batch).
    pub relay_lag: Histogram,
    /// Round trips of the health check's pipeline to Redis (once a second).
    pub redis_round_trip: Histogram,
    /// Time from a client's PUBLISH being read on this node to a copy being written to a
    /// subscriber's connection on this node (a sample of publishes; first sends only).
    pub delivery_latency: Histogram,
    /// Reloads of changed TLS, password and ACL files, by what and outcome (see `reload`).
    reloads: Family<ReloadLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ReloadLabel {
    what: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct BuildLabel {
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct QosLabel {
    qos: u8,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("starling");
        let connections = Gauge::default();
        registry.register(
            "connections",
            "Open client connections",
            connections.clone(),
        );
        let connections_total = Counter::default();
        registry.register(
            "connections_accepted",
            "Client connections accepted since start",
            connections_total.clone(),
        );
        let evacuating = Gauge::default();
        registry.register(
            "evacuating",
            "1 while this node is evacuated: new clients refused, connected ones asked to leave",
            evacuating.clone(),
        );
        let evacuation_asked = Counter::default();
        registry.register(
            "evacuation_asked",
            "Clients an evacuation asked to reconnect to another node",
            evacuation_asked.clone(),
        );
        let subscriptions = Gauge::default();
        registry.register("subscriptions", "Subscriptions held", subscriptions.clone());
        let sessions = Gauge::default();
        registry.register(
            "sessions",
            "Sessions held, online and offline",
            sessions.clone(),
        );
        let retained = Gauge::default();
        registry.register(
            "retained_messages",
            "Retained messages stored",
            retained.clone(),
        );
        let retained_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "retained_refused",
            "Retained publishes delivered but not retained, by the limit that refused them (count, payload, bytes)",
            retained_refused.clone(),
        );
        let refused_for = |reason| {
            retained_refused
                .get_or_create(&ReasonLabel { reason })
                .clone()
        };

        let received = Family::<QosLabel, Counter>::default();
        registry.register(
            "messages_received",
            "PUBLISH packets received from clients",
            received.clone(),
        );
        let sent = Family::<QosLabel, Counter>::default();
        registry.register(
            "messages_sent",
            "PUBLISH packets sent to clients",
            sent.clone(),
        );
        let by_qos = |f: &Family<QosLabel, Counter>| {
            [0u8, 1, 2].map(|qos| f.get_or_create(&QosLabel { qos }).clone())
        };
        let bytes_received = Counter::default();
        registry.register_with_unit(
            "received",
            "Bytes read from clients",
            Unit::Bytes,
            bytes_received.clone(),
        );
        let bytes_sent = Counter::default();
        registry.register_with_unit(
            "sent",
            "Bytes written to clients",
            Unit::Bytes,
            bytes_sent.clone(),
        );
        // The names before Prometheus' convention (unit last), kept for one release.
        registry.register(
            "bytes_received",
            "Deprecated, removed in the next release: use starling_received_bytes_total",
            bytes_received.clone(),
        );
        registry.register(
            "bytes_sent",
            "Deprecated, removed in the next release: use starling_sent_bytes_total",
            bytes_sent.clone(),
        );
        let dropped = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "messages_dropped",
            "Messages dropped, by reason",
            dropped.clone(),
        );
        let drop_reason = |reason| dropped.get_or_create(&ReasonLabel { reason }).clone();
        let publish_denied = Counter::default();
        registry.register(
            "publish_denied",
            "Publishes refused by the access control list",
            publish_denied.clone(),
        );
        let protocol_errors = Counter::default();
        registry.register(
            "protocol_errors",
            "Connections closed for malformed packets or protocol violations",
            protocol_errors.clone(),
        );
        let cluster_members = Gauge::default();
        registry.register(
            "cluster_members",
            "Cluster members this node sees, itself included",
            cluster_members.clone(),
        );
        let remote_entries = Gauge::default();
        registry.register(
            "cluster_remote_entries",
            "Filters other cluster nodes advertise, as this node knows them",
            remote_entries.clone(),
        );
        let relay_dropped = Counter::default();
        registry.register(
            "relay_dropped",
            "Messages not relayed to another node (relay queue full, or the session moved again on the way)",
            relay_dropped.clone(),
        );
        let relay_waits = Counter::default();
        registry.register(
            "relay_waits",
            "Relayed messages whose publisher waited for room in the full relay queue",
            relay_waits.clone(),
        );
        let acks_unconfirmed = Counter::default();
        registry.register(
            "acks_unconfirmed",
            "QoS 1/2 publishes acknowledged before Redis confirmed what they wrote",
            acks_unconfirmed.clone(),
        );
        let replication_waits = Counter::default();
        registry.register(
            "cluster_replication_waits",
            "Waits for Redis replicas to hold what acknowledgements depend on (cluster.redis_replication)",
            replication_waits.clone(),
        );
        let replication_waits_short = Counter::default();
        registry.register(
            "cluster_replication_waits_short",
            "Waits for Redis replicas that timed out with fewer replicas confirming than asked for (the acknowledgements went out anyway)",
            replication_waits_short.clone(),
        );
        let cluster_handoffs = Gauge::default();
        registry.register(
            "cluster_handoffs_pending",
            "Sessions that moved to another node whose routes this node still keeps and forwards",
            cluster_handoffs.clone(),
        );
        let declared_dead = Counter::default();
        registry.register(
            "cluster_declared_dead",
            "Times this node found itself declared dead (its sessions adopted elsewhere) and closed its connections",
            declared_dead.clone(),
        );
        let cluster_recoveries = Gauge::default();
        registry.register(
            "cluster_recoveries",
            "Recoveries of a departed node's (or an earlier run's) journal and inbox running now, inbox tails included",
            cluster_recoveries.clone(),
        );
        let cluster_recovered_copies = Counter::default();
        registry.register(
            "cluster_recovered_copies",
            "Copies recovered from a departed node's (or an earlier run's) journal and inbox and delivered again marked DUP",
            cluster_recovered_copies.clone(),
        );
        let rebalance_giving = Gauge::default();
        registry.register(
            "rebalance_giving",
            "1 while this node gives connections away to even out the cluster (refusing new clients)",
            rebalance_giving.clone(),
        );
        let rebalance_asked = Counter::default();
        registry.register(
            "rebalance_asked",
            "Clients rebalancing asked to reconnect elsewhere",
            rebalance_asked.clone(),
        );
        let adoption_sweeps = Counter::default();
        registry.register(
            "cluster_adoption_sweeps",
            "Departed nodes adopted by the adoption sweep (departure missed, or its adoption failed)",
            adoption_sweeps.clone(),
        );
        let redis_write_refusals = Counter::default();
        registry.register(
            "cluster_redis_write_refusals",
            "Relay writes Redis refused (OOM, READONLY, ...); refused writes are sent again, alone",
            redis_write_refusals.clone(),
        );
        let replica_unlisted = Counter::default();
        registry.register(
            "cluster_replica_unlisted",
            "Other nodes' entry sets a rebuild of the replica only merged, not replaced: the node had not listed all its entries again yet (after Redis lost its data or the announcement channel came back)",
            replica_unlisted.clone(),
        );
        let redis_resets = Counter::default();
        registry.register(
            "cluster_redis_resets",
            "Times Redis was found to have lost its data (its epoch changed); entries were announced again",
            redis_resets.clone(),
        );
        let cluster_handoffs_total = Counter::default();
        registry.register(
            "cluster_handoffs",
            "Hand-offs of a session's routes to another node begun since start",
            cluster_handoffs_total.clone(),
        );
        let reloads = Family::<ReloadLabel, Counter>::default();
        registry.register(
            "reloads",
            "Reloads of changed files (what: tls, auth), by outcome (ok; failed: the previous material stays in force)",
            reloads.clone(),
        );
        // Constant 1, labelled with the version: joins any series with the build that produced it.
        let build_info = Family::<BuildLabel, Gauge>::default();
        build_info
            .get_or_create(&BuildLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "build_info",
            "The broker's build: always 1, its version in the label",
            build_info,
        );
        let relay_sent = Counter::default();
        registry.register(
            "relay_sent_messages",
            "Messages this node handed to the relay for other nodes (a message for two nodes counts twice)",
            relay_sent.clone(),
        );
        let relay_received = Counter::default();
        registry.register(
            "relay_received_messages",
            "Messages this node read from its inbox, relayed by other nodes",
            relay_received.clone(),
        );
        let relay_lag = Histogram::new(LATENCY_BUCKETS);
        registry.register_with_unit(
            "relay_lag",
            "Time relayed entries waited in this node's inbox stream, from their append (Redis's clock, ms resolution) to being read here",
            Unit::Seconds,
            relay_lag.clone(),
        );
        let redis_round_trip = Histogram::new(LATENCY_BUCKETS);
        registry.register_with_unit(
            "redis_round_trip",
            "Round trips of the health check's pipeline to Redis, once a second",
            Unit::Seconds,
            redis_round_trip.clone(),
        );
        let delivery_latency = Histogram::new(LATENCY_BUCKETS);
        registry.register_with_unit(
            "delivery_latency",
            "Time from a client's PUBLISH read on this node to a copy written to a subscriber's connection on this node (one publish in 64 sampled; first sends, not resends)",
            Unit::Seconds,
            delivery_latency.clone(),
        );
        let redis_up = Gauge::default();
        redis_up.set(1);
        registry.register(
            "cluster_redis_up",
            "1 while the cluster's Redis answers, 0 while it does not",
            redis_up.clone(),
        );
        Metrics {
            declared_dead,
            cluster_recoveries,
            cluster_recovered_copies,
            rebalance_giving,
            rebalance_asked,
            adoption_sweeps,
            redis_write_refusals,
            redis_resets,
            cluster_handoffs,
            cluster_handoffs_total,
            redis_up,
            acks_unconfirmed,
            replication_waits,
            replication_waits_short,
            remote_entries,
            replica_unlisted,
            relay_dropped,
            relay_waits,
            cluster_members,
            connections,
            evacuating,
            evacuation_asked,
            connections_total,
            subscriptions,
            sessions,
            retained,
            retained_refused_count: refused_for("count"),
            retained_refused_payload: refused_for("payload"),
            retained_refused_bytes: refused_for("bytes"),
            messages_received: by_qos(&received),
            messages_sent: by_qos(&sent),
            bytes_received,
            bytes_sent,
            dropped_queue_full: drop_reason("queue_full"),
            dropped_expired: drop_reason("expired"),
            dropped_too_large: drop_reason("too_large"),
            publish_denied,
            protocol_errors,
            relay_sent,
            relay_received,
            relay_lag,
            redis_round_trip,
            delivery_latency,
            reloads,
            registry,
        }
    }

    /// All metrics in Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Counts a reload of `what` (`tls`, `auth`) that succeeded (`ok`) or kept the old material.
    pub fn reloaded(&self, what: &'static str, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.reloads
            .get_or_create(&ReloadLabel { what, outcome })
            .inc();
    }

    /// Sum of messages received over all QoS levels.
    pub fn received_total(&self) -> u64 {
        self.messages_received.iter().map(Counter::get).sum()
    }

    /// Sum of messages sent over all QoS levels.
    pub fn sent_total(&self) -> u64 {
        self.messages_sent.iter().map(Counter::get).sum()
    }

    /// Sum of messages dropped for any reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_queue_full.get() + self.dropped_expired.get() + self.dropped_too_large.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_is_named_by_a_constant_gauge() {
        let text = Metrics::new().render();
        let line = format!(
            "starling_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&line), "{text}");
    }

    #[test]
    fn latencies_render_as_histograms_in_seconds() {
        let m = Metrics::new();
        m.relay_lag.observe(0.003);
        m.redis_round_trip.observe(0.0002);
        let text = m.render();
        assert!(
            text.contains("starling_relay_lag_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("starling_relay_lag_seconds_bucket{le=\"0.0025\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("starling_redis_round_trip_seconds_count 1"),
            "{text}"
        );
    }

    #[test]
    fn byte_counters_carry_their_unit_last_and_the_old_names_for_one_release() {
        let m = Metrics::new();
        m.bytes_received.inc_by(5);
        m.bytes_sent.inc_by(7);
        let text = m.render();
        for line in [
            "starling_received_bytes_total 5",
            "starling_sent_bytes_total 7",
            "starling_bytes_received_total 5",
            "starling_bytes_sent_total 7",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }

    #[test]
    fn renders_counters_with_labels() {
        let m = Metrics::new();
        m.messages_received[1].inc();
        m.dropped_expired.inc();
        let text = m.render();
        assert!(
            text.contains("starling_messages_received_total{qos=\"1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("starling_messages_dropped_total{reason=\"expired\"} 1"),
            "{text}"
        );
        assert_eq!(m.received_total(), 1);
    }
}

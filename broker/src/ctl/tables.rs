//! How `ctl` shows the admin API's answers to people: one table or a few lines per answer, and
//! a line for every node that did not answer a cluster-wide question.

use crate::admin::api::{
    ClientList, ClusterView, NodeView, RetainedList, SessionView, SubscriptionList,
};
use crate::admin::peers::Unanswered;
use crate::clients::EvacuationStatus;
use std::fmt::Write as _;

pub(super) fn node_table(node: &NodeView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "node          {}", node.node_id);
    let _ = writeln!(out, "version       {}", node.version);
    let _ = writeln!(out, "uptime        {} s", node.uptime_secs);
    let _ = writeln!(out, "connections   {}", node.connections);
    let _ = writeln!(out, "members       {}", node.cluster_members);
    let _ = writeln!(out, "shutting down {}", node.shutting_down);
    out.push_str(&evacuation_line(&node.evacuation));
    out
}

pub(super) fn cluster_table(cluster: &ClusterView) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:>11} {:>9}",
        "NODE", "CONNECTIONS", "ACCEPTING"
    );
    for node in &cluster.nodes {
        let _ = writeln!(
            out,
            "{:<24} {:>11} {:>9}",
            node.node,
            node.connections,
            if node.accepting { "yes" } else { "no" }
        );
    }
    let giving = match (cluster.giving, cluster.refusing) {
        (true, true) => "yes: asking clients to reconnect elsewhere, refusing new ones",
        (true, false) => "yes: asking clients to reconnect elsewhere",
        _ => "no",
    };
    let _ = writeln!(out, "this node gives connections away: {giving}");
    out
}

pub(super) fn evacuation_line(status: &EvacuationStatus) -> String {
    if status.evacuating {
        format!(
            "evacuating    asked {}, {} still connected, {} per second\n",
            status.asked, status.remaining, status.rate_per_sec
        )
    } else {
        "evacuating    no\n".to_string()
    }
}

pub(super) fn clients_table(list: &ClientList) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<32} {:<16} {:<16} {:<6} {:<21} {:>9} {:>7} {:>4} {:>8} {:>8}",
        "CLIENT",
        "NODE",
        "USER",
        "MQTT",
        "PEER",
        "KEEPALIVE",
        "EXPIRY",
        "SUBS",
        "INFLIGHT",
        "QUEUED"
    );
    for c in &list.clients {
        let _ = writeln!(
            out,
            "{:<32} {:<16} {:<16} {:<6} {:<21} {:>9} {:>7} {:>4} {:>8} {:>8}",
            c.client_id,
            c.node,
            c.info.username.as_deref().unwrap_or("-"),
            c.info.protocol,
            c.info.peer.to_string(),
            c.info.keep_alive_secs,
            c.info.session_expiry_secs,
            c.subscriptions,
            c.inflight,
            c.queued + c.waiting
        );
    }
    shown(&mut out, list.clients.len(), list.matched);
    unanswered_lines(&mut out, &list.unanswered);
    out
}

pub(super) fn session_table(view: &SessionView) -> String {
    let mut out = String::new();
    let session = &view.session;
    let _ = writeln!(out, "session       {}", view.client_id);
    let _ = writeln!(
        out,
        "state         {} on {}",
        if session.online { "online" } else { "offline" },
        session.node.as_deref().unwrap_or("-")
    );
    if let Some(expiry) = session.expiry_secs {
        let _ = writeln!(out, "expiry        {expiry} s after it went offline");
    }
    if let Some(at) = session.disconnected_at_ms {
        let _ = writeln!(out, "offline since {at} (ms since the Unix epoch)");
    }
    let _ = writeln!(
        out,
        "stored        {} queued, {} in flight",
        session.queued, session.inflight
    );
    if let Some(c) = &view.connection {
        let _ = writeln!(
            out,
            "connection    MQTT {} from {}, keep-alive {} s, {} waiting",
            c.info.protocol, c.info.peer, c.info.keep_alive_secs, c.waiting
        );
    }
    for s in &view.subscriptions {
        let _ = writeln!(out, "subscribed    {} (QoS {})", s.filter, s.qos);
    }
    unanswered_lines(&mut out, &view.unanswered);
    out
}

pub(super) fn subscriptions_table(list: &SubscriptionList) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<32} {:<16} {:>3} {:<40}",
        "CLIENT", "NODE", "QOS", "FILTER"
    );
    for s in &list.subscriptions {
        let _ = writeln!(
            out,
            "{:<32} {:<16} {:>3} {:<40}",
            s.client_id, s.node, s.qos, s.filter
        );
    }
    shown(&mut out, list.subscriptions.len(), list.matched);
    unanswered_lines(&mut out, &list.unanswered);
    out
}

pub(super) fn retained_table(list: &RetainedList) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<48} {:>3} {:>10}", "TOPIC", "QOS", "BYTES");
    for r in &list.retained {
        let _ = writeln!(out, "{:<48} {:>3} {:>10}", r.topic, r.qos, r.payload_bytes);
    }
    shown(&mut out, list.retained.len(), list.matched);
    out
}

/// Says so when the limit cut a list.
fn shown(out: &mut String, listed: usize, matched: usize) {
    if matched > listed {
        let _ = writeln!(out, "({listed} of {matched} shown)");
    }
}

/// A line for each node whose part of the answer is missing.
fn unanswered_lines(out: &mut String, unanswered: &[Unanswered]) {
    for missing in unanswered {
        let _ = writeln!(out, "not answered: {}: {}", missing.node, missing.error);
    }
}

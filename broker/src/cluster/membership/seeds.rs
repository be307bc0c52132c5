//! Finding the other nodes through the seeds: checking and resolving seed addresses, and the
//! background task that contacts them while this node is alone (and merges groups formed apart).

use super::{Gossip, MembershipError};
use memberlist::proto::MaybeResolvedAddress;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::watch;

/// Longest a seed's name resolution may take before the attempt counts as failed.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// First pause between seed attempts; it doubles up to [`super::GossipTuning::seed_retry_max`].
const SEED_RETRY_MIN: Duration = Duration::from_millis(200);

/// How the search for other nodes through the seeds is going.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeedStatus {
    /// Seed rounds tried so far (a round tries every address of every seed).
    pub attempts: u64,
    /// Some seed answered and took this node in, at least once.
    pub contacted: bool,
    /// Why the latest round failed, if it did.
    pub last_error: Option<String>,
}
/// Checks that `seed` is `host:port` with a non-zero port (IPv6 hosts in brackets).
pub(super) fn check_seed(seed: &str) -> Result<(), MembershipError> {
    let invalid = |reason: &str| MembershipError::InvalidSeed {
        seed: seed.to_string(),
        reason: reason.to_string(),
    };
    let (host, port) = seed.rsplit_once(':').ok_or_else(|| invalid("no `:port`"))?;
    match port.parse::<u16>() {
        Ok(p) if p != 0 => {}
        _ => return Err(invalid("the port is not a number in 1..=65535")),
    }
    let bracketed = host.starts_with('[') && host.ends_with(']');
    if host.is_empty() || (host.contains(':') && !bracketed) || host.contains(char::is_whitespace) {
        return Err(invalid(
            "the host is empty, has spaces or is an unbracketed IPv6",
        ));
    }
    Ok(())
}

/// Resolves every seed with the system resolver, keeping the addresses this node can reach
/// (same IP family as its own address) that are not its own.
pub(super) async fn resolve_seeds(
    seeds: &[String],
    own: &[SocketAddr],
) -> (Vec<SocketAddr>, Vec<String>) {
    let ipv4 = own[0].is_ipv4();
    let mut found = Vec::new();
    let mut problems = Vec::new();
    for seed in seeds {
        match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(seed.as_str())).await {
            Ok(Ok(addrs)) => {
                let before = found.len();
                for addr in addrs {
                    if (ipv4 && !addr.is_ipv4()) || own.contains(&addr) || found.contains(&addr) {
                        continue;
                    }
                    found.push(addr);
                }
                if found.len() == before {
                    tracing::debug!(%seed, "seed has no address but this node's own");
                }
            }
            Ok(Err(e)) => problems.push(format!("{seed}: {e}")),
            Err(_) => problems.push(format!("{seed}: name resolution timed out")),
        }
    }
    (found, problems)
}

/// Joins the seed addresses that are not members this node sees, quietly (failures are logged at
/// debug level: a pod that is starting or stopping is often among them).
///
/// A seed name that resolves to every node (a Kubernetes headless Service) can split a cluster
/// that starts all at once: two nodes that each saw only the other in DNS form a pair, the next
/// two another, and neither pair, having company, would ever look again. Checking the seeds
/// while in company merges such groups.
async fn join_unknown_seeds(gossip: &Gossip, seeds: &[String], own: &[SocketAddr]) {
    let (addrs, _) = resolve_seeds(seeds, own).await;
    if addrs.is_empty() {
        return;
    }
    let known: Vec<SocketAddr> = gossip
        .online_members()
        .await
        .iter()
        .map(|n| *n.address())
        .collect();
    for addr in addrs.into_iter().filter(|a| !known.contains(a)) {
        match gossip.join(MaybeResolvedAddress::Resolved(addr)).await {
            Ok(_) => tracing::info!(%addr, "joined a seed address that was not a member"),
            Err(e) => tracing::debug!(%addr, error = %e, "seed address not joined"),
        }
    }
}

/// Contacts the seeds whenever this node sees no other member, with a doubling pause between
/// rounds; while it has company, joins (at the longest pause) seed addresses that are not members.
pub(super) async fn seed_loop(
    gossip: Gossip,
    seeds: Vec<String>,
    own: [SocketAddr; 2],
    retry_max: Duration,
    status: watch::Sender<SeedStatus>,
) {
    let mut pause = SEED_RETRY_MIN.min(retry_max);
    loop {
        if gossip.num_online_members().await > 1 {
            pause = SEED_RETRY_MIN.min(retry_max);
            join_unknown_seeds(&gossip, &seeds, &own).await;
            tokio::time::sleep(retry_max).await;
            continue;
        }
        let (addrs, mut problems) = resolve_seeds(&seeds, &own).await;
        let mut joined = false;
        if !addrs.is_empty() {
            tracing::debug!(?addrs, "contacting gossip seeds");
            // One by one: memberlist's `join_many` future is not `Send`, so it cannot run in a
            // spawned task. Every address is tried, not just the first that answers, so that
            // seeds in separate groups are all merged.
            for addr in &addrs {
                match gossip.join(MaybeResolvedAddress::Resolved(*addr)).await {
                    Ok(_) => joined = true,
                    Err(e) => problems.push(format!("{addr}: {e}")),
                }
            }
        }
        // A one-node cluster whose seed list names only itself is fine; say so quietly.
        let only_self = addrs.is_empty() && problems.is_empty();
        if only_self {
            problems.push("every seed is this node itself".to_string());
        }
        let error = (!joined).then(|| problems.join("; "));
        let attempt = status.borrow().attempts + 1;
        match &error {
            None => tracing::info!(attempt, "joined the cluster through the seeds"),
            // Loud at first and then now and again: a lone node may wait long for its peers.
            Some(e) if !only_self && (attempt == 1 || attempt.is_multiple_of(10)) => {
                tracing::warn!(error = %e, attempt, "no gossip seed answered; retrying")
            }
            Some(e) => tracing::debug!(error = %e, attempt, "no gossip seed answered; retrying"),
        }
        status.send_modify(|s| {
            s.attempts += 1;
            s.contacted |= joined;
            s.last_error = error;
        });
        if joined {
            pause = SEED_RETRY_MIN.min(retry_max);
            tokio::time::sleep(retry_max).await;
        } else {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(retry_max);
        }
    }
}

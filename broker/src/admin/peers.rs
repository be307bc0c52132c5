//! Cluster-wide admin queries: a node asks the other nodes' admin APIs, each at the address it
//! shares with its load (see [`crate::cluster::load::NodeLoad::admin`]), all at once, with the
//! caller's bearer token, each within [`PEER_TIMEOUT`]. Every node of a cluster serves the same
//! token (the operator gives them one Secret); a node that does not answer is reported, never
//! silently left out.

use crate::broker::Broker;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use starling_config::ClusterConfig;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

/// How long one node may take to answer.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(3);

/// The response header naming the node that answered an admin API request.
pub const NODE_HEADER: &str = "x-starling-node";

/// Largest answer read from another node.
const MAX_ANSWER_BYTES: u64 = 64 * 1024 * 1024;

/// A node that did not answer a cluster-wide query, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unanswered {
    /// The node.
    pub node: String,
    /// Why its answer is missing.
    pub error: String,
}

/// Another node of the cluster, as a query reaches it.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its node id.
    pub node: String,
    /// Where its admin API is (`host:port`), if it shares one.
    pub address: Option<String>,
}

/// Where other nodes reach this node's admin API: the address it is bound to, or, bound to every
/// interface, the host of its gossip address (the pod IP on Kubernetes) with the admin port;
/// `None` when neither names a host, or when it is bound to loopback while its gossip is not
/// (the other nodes are elsewhere: they would reach themselves there).
pub fn advertised(bound: Option<SocketAddr>, cluster: &ClusterConfig) -> Option<SocketAddr> {
    let bound = bound?;
    let gossip_host = cluster
        .gossip_advertise
        .or(cluster.gossip_bind)
        .map(|gossip| gossip.ip())
        .filter(|ip| !ip.is_unspecified());
    if bound.ip().is_loopback() {
        return gossip_host
            .is_some_and(|host| host.is_loopback())
            .then_some(bound);
    }
    if !bound.ip().is_unspecified() {
        return Some(bound);
    }
    Some(SocketAddr::new(gossip_host?, bound.port()))
}

/// The other nodes this node sees sharing their load (none standalone).
pub fn peers(broker: &Broker) -> Vec<Peer> {
    broker
        .cluster_load()
        .into_iter()
        .filter(|load| load.node != broker.config.node_id)
        .map(|load| Peer {
            node: load.node,
            address: load.admin,
        })
        .collect()
}

/// Cluster members gossip knows of that share no fresh load (just started, or unable to write
/// to Redis): nobody can ask them, which an answer says rather than leave them out silently.
pub fn members_without_load(broker: &Broker) -> Option<Unanswered> {
    let members = usize::try_from(broker.metrics.cluster_members.get()).unwrap_or(0);
    let loads = broker.cluster_load().len().max(1);
    (members > loads).then(|| Unanswered {
        node: format!("({} more)", members - loads),
        error: format!(
            "gossip sees {members} members but only {loads} share their load in Redis: the \
             others just started or cannot reach Redis, and cannot be asked"
        ),
    })
}

/// Asks every other node for `path_and_query` (a `scope=node` question) with `authorization`;
/// the answers read as `T`, and who did not answer (gossip members sharing no load included).
pub async fn ask_others<T: DeserializeOwned>(
    broker: &Broker,
    path_and_query: &str,
    authorization: &str,
) -> (Vec<T>, Vec<Unanswered>) {
    let (answers, mut unanswered) = ask(peers(broker), "GET", path_and_query, authorization).await;
    unanswered.extend(members_without_load(broker));
    let mut read = Vec::new();
    for answer in answers {
        match answer.parse::<T>() {
            Ok(value) => read.push(value),
            Err(missing) => unanswered.push(missing),
        }
    }
    (read, unanswered)
}

/// One node's answer: its HTTP status and body.
#[derive(Debug)]
pub struct Answer {
    /// The node.
    pub node: String,
    /// The HTTP status.
    pub status: u16,
    /// The body (JSON).
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as `T` when the node answered 2xx; otherwise why not (its `error`, for an error).
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, Unanswered> {
        let unanswered = |error: String| Unanswered {
            node: self.node.clone(),
            error,
        };
        if !(200..300).contains(&self.status) {
            #[derive(Deserialize)]
            struct Failure {
                error: String,
            }
            let why = serde_json::from_slice::<Failure>(&self.body)
                .map(|f| f.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&self.body).into_owned());
            return Err(unanswered(format!("HTTP {}: {why}", self.status)));
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| unanswered(format!("an answer this node cannot read: {e}")))
    }
}

/// Asks every one of `peers` for `method path_and_query` (e.g. `GET`,
/// `/api/v1/clients?scope=node`) with `authorization` (the caller's header), all at once; the
/// answers of those that answered (any HTTP status), and why the others did not.
pub async fn ask(
    peers: Vec<Peer>,
    method: &'static str,
    path_and_query: &str,
    authorization: &str,
) -> (Vec<Answer>, Vec<Unanswered>) {
    let asks = peers.into_iter().map(|peer| {
        let path_and_query = path_and_query.to_string();
        let authorization = authorization.to_string();
        async move {
            let Some(address) = peer.address.clone() else {
                return Err(Unanswered {
                    node: peer.node,
                    error: "it shares no admin address other nodes can reach: its admin port is \
                            off, bound to loopback, or on every interface with no gossip address \
                            naming a host"
                        .into(),
                });
            };
            let url = format!("http://{address}{path_and_query}");
            let node = peer.node.clone();
            let asked =
                tokio::task::spawn_blocking(move || call(method, &url, &authorization)).await;
            match asked {
                Ok(Ok((answered_as, _, _))) if answered_as.as_deref() != Some(node.as_str()) => {
                    Err(Unanswered {
                        error: format!(
                            "its admin address {address} answered as node {}",
                            answered_as.as_deref().unwrap_or("(unnamed)")
                        ),
                        node,
                    })
                }
                Ok(Ok((_, status, body))) => Ok(Answer { node, status, body }),
                Ok(Err(error)) => Err(Unanswered { node, error }),
                Err(e) => Err(Unanswered {
                    node,
                    error: format!("the request failed: {e}"),
                }),
            }
        }
    });
    let mut answers = Vec::new();
    let mut unanswered = Vec::new();
    for result in futures_util::future::join_all(asks).await {
        match result {
            Ok(answer) => answers.push(answer),
            Err(missing) => unanswered.push(missing),
        }
    }
    (answers, unanswered)
}

/// What one node answered: the node it says it is, the HTTP status and the body.
type Called = (Option<String>, u16, Vec<u8>);

/// One blocking HTTP request: what answered, or why nothing did. Redirects are not followed.
fn call(method: &str, url: &str, authorization: &str) -> Result<Called, String> {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    let agent = AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(PEER_TIMEOUT))
            .max_redirects(0)
            .build()
            .into()
    });
    let answer = match method {
        "DELETE" => agent
            .delete(url)
            .header("Authorization", authorization)
            .call(),
        _ => agent.get(url).header("Authorization", authorization).call(),
    };
    let mut response = answer.map_err(|e| format!("{url}: {e}"))?;
    let status = response.status().as_u16();
    let answered_as = response
        .headers()
        .get(NODE_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER_BYTES)
        .read_to_vec()
        .map_err(|e| format!("{url}: the answer could not be read: {e}"))?;
    Ok((answered_as, status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(gossip: &str) -> ClusterConfig {
        ClusterConfig {
            gossip_bind: Some(gossip.parse().expect("address")),
            ..ClusterConfig::default()
        }
    }

    #[test]
    fn the_admin_address_shared_is_one_other_nodes_can_reach() {
        let at = |a: &str| Some(a.parse::<SocketAddr>().expect("address"));
        // Bound to one address: that one.
        assert_eq!(
            advertised(at("10.0.0.5:9090"), &cluster("10.0.0.5:7946")),
            at("10.0.0.5:9090")
        );
        // Bound to every interface: the gossip host with the admin port (the pod IP).
        let mut pod = cluster("0.0.0.0:7946");
        pod.gossip_advertise = at("10.244.0.7:7946");
        assert_eq!(advertised(at("0.0.0.0:9090"), &pod), at("10.244.0.7:9090"));
        assert_eq!(
            advertised(at("0.0.0.0:9090"), &cluster("0.0.0.0:7946")),
            None
        );
        // Loopback only when the other nodes are on this host too.
        assert_eq!(
            advertised(at("127.0.0.1:9090"), &cluster("10.0.0.5:7946")),
            None
        );
        assert_eq!(
            advertised(at("127.0.0.1:9090"), &cluster("127.0.0.1:7946")),
            at("127.0.0.1:9090")
        );
        assert_eq!(advertised(None, &cluster("10.0.0.5:7946")), None);
    }
}

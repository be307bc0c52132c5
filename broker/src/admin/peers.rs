//! Cluster-wide admin queries: a node asks the other nodes' admin APIs, each at the address it
//! shares with its load (see [`crate::cluster::load::NodeLoad::admin`]), all at once, with the
//! caller's bearer token, each within [`PEER_TIMEOUT`]. Every node of a cluster serves the same
//! token (the operator gives them one Secret); a node that does not answer is reported, never
//! silently left out.

use crate::broker::Broker;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;
use std::time::Duration;

/// How long one node may take to answer.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(3);

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
                    error: "it shares no admin address: its admin.bind is on every interface and \
                            it has no gossip address naming a host"
                        .into(),
                });
            };
            let url = format!("http://{address}{path_and_query}");
            let node = peer.node.clone();
            let asked =
                tokio::task::spawn_blocking(move || call(method, &url, &authorization)).await;
            match asked {
                Ok(Ok((status, body))) => Ok(Answer { node, status, body }),
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

/// One blocking HTTP request: the status and body, or why there is none.
fn call(method: &str, url: &str, authorization: &str) -> Result<(u16, Vec<u8>), String> {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    let agent = AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(PEER_TIMEOUT))
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
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER_BYTES)
        .read_to_vec()
        .map_err(|e| format!("{url}: the answer could not be read: {e}"))?;
    Ok((status, body))
}

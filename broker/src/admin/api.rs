//! The admin API, `/api/v1/...` on the admin port: JSON in and out, every request carrying
//! `Authorization: Bearer <token>` (the token in `admin.token_file`; without one the API is
//! off). Questions about clients, sessions and subscriptions answer for the whole cluster from
//! any node, which asks the others ([`super::peers`]); `scope=node` keeps an answer to the node
//! asked. Retained messages are in the store every node shares.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /api/v1/node` | this node: id, version, uptime, connections, cluster members, evacuation |
//! | `GET /api/v1/cluster` | every node's connections as this node last read them, and whether this node gives connections away (rebalancing) |
//! | `GET /api/v1/clients?prefix=&limit=&scope=` | the clients connected to the cluster, by client id |
//! | `GET /api/v1/clients/{id}` | one of them, on whichever node it is |
//! | `DELETE /api/v1/clients/{id}?discard_session=` | disconnect it (v5: 0x98), keeping its session unless asked |
//! | `GET /api/v1/sessions/{id}` | one session, online or offline: what the store holds, its connection and subscriptions |
//! | `GET /api/v1/subscriptions?client=&filter=&limit=&scope=` | subscriptions of online and offline sessions |
//! | `GET /api/v1/retained?filter=&limit=` | retained messages a filter matches (topic, QoS, size, expiry) |
//! | `DELETE /api/v1/retained?topic=` | delete a topic's retained message |
//! | `POST /api/v1/evacuate?rate=` | refuse new clients, ask connected ones to reconnect elsewhere, `rate` per second (v5: 0x9C) |
//! | `GET /api/v1/evacuate` | where this node's evacuation stands |
//!
//! Errors are JSON too: `{"error": "..."}` with the HTTP status that fits. A cluster-wide answer
//! names the nodes that did not answer (`unanswered`) rather than leaving them out silently.

mod clients;
mod retained;
mod sessions;

pub use clients::{ClientList, Disconnected};
pub use retained::{RetainedDeleted, RetainedList, RetainedView};
pub use sessions::{SessionView, SubscriptionList, SubscriptionView};

use super::AdminState;
use crate::broker::Broker;
use crate::clients::EvacuationStatus;
use crate::cluster::load::NodeLoad;
use axum::extract::{Query, Request, State};
use axum::http::HeaderMap;
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Items a list answers with when the request names no limit.
const DEFAULT_LIMIT: usize = 1000;

/// Evacuation rate when the request names none (clients per second).
pub const DEFAULT_EVACUATION_RATE: u32 = 100;

/// The API's routes, behind the token check.
pub fn routes(state: Arc<AdminState>) -> Router<Arc<AdminState>> {
    Router::new()
        .route("/api/v1/node", get(node))
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/clients", get(clients::clients))
        .route(
            "/api/v1/clients/{id}",
            get(clients::client).delete(clients::disconnect),
        )
        .route("/api/v1/sessions/{id}", get(sessions::session))
        .route("/api/v1/subscriptions", get(sessions::subscriptions))
        .route(
            "/api/v1/retained",
            get(retained::list).delete(retained::delete),
        )
        .route("/api/v1/evacuate", get(evacuation).post(evacuate))
        .fallback(|| async { failure(StatusCode::NOT_FOUND, "no such admin API path") })
        .route_layer(middleware::from_fn_with_state(state, authorize))
}

/// Whether an answer covers the cluster (the default) or only the node asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Scope {
    /// Only what the node asked holds (how nodes ask each other).
    Node,
    /// Every node's.
    Cluster,
}

/// The caller's `Authorization` header, passed on when asking the other nodes.
fn authorization(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
}

/// What a path segment or query value may hold unencoded: RFC 3986's unreserved characters.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes a path segment or query value.
pub fn encode(text: &str) -> String {
    utf8_percent_encode(text, UNRESERVED).to_string()
}

/// An error as the API answers it.
fn failure(status: StatusCode, why: impl Into<String>) -> Response {
    #[derive(Serialize)]
    struct Failure {
        error: String,
    }
    (status, Json(Failure { error: why.into() })).into_response()
}

/// Lets a request through only with the right bearer token.
async fn authorize(State(state): State<Arc<AdminState>>, request: Request, next: Next) -> Response {
    let Some(token) = &state.token else {
        return failure(
            StatusCode::NOT_FOUND,
            "the admin API is off: set admin.token_file to a file holding a bearer token",
        );
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "));
    match presented {
        Some(presented) if token.accepts(presented) => {
            let mut response = next.run(request).await;
            // Says who answered: a node asking another checks it reached the node it meant.
            if let Some(node) = state
                .broker
                .get()
                .and_then(|b| header::HeaderValue::from_str(&b.config.node_id).ok())
            {
                response
                    .headers_mut()
                    .insert(super::peers::NODE_HEADER, node);
            }
            response
        }
        Some(_) => unauthorized("the bearer token is not the one in admin.token_file"),
        None => {
            unauthorized("send `Authorization: Bearer <token>` (the token in admin.token_file)")
        }
    }
}

fn unauthorized(why: &str) -> Response {
    let mut response = failure(StatusCode::UNAUTHORIZED, why);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

/// The broker, or the answer for a node that is still starting.
fn running(state: &AdminState) -> Result<&Arc<Broker>, Box<Response>> {
    state.broker.get().ok_or_else(|| {
        let doing = state.starting.lock().clone();
        Box::new(failure(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("starting: {doing}"),
        ))
    })
}

/// This node, as `GET /api/v1/node` shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct NodeView {
    /// Its node id.
    pub node_id: String,
    /// The broker's version.
    pub version: String,
    /// Seconds since it started.
    pub uptime_secs: u64,
    /// Clients connected to it.
    pub connections: usize,
    /// Cluster members it sees, itself included (1 when standalone).
    pub cluster_members: i64,
    /// Whether it is shutting down.
    pub shutting_down: bool,
    /// Where an evacuation stands.
    pub evacuation: EvacuationStatus,
    /// CPU time the broker process used since it started (user and system, every thread), in
    /// seconds: two readings give its CPU use (the operator's autoscaler reads it).
    #[serde(default)]
    pub cpu_seconds: f64,
}

async fn node(State(state): State<Arc<AdminState>>) -> Response {
    let broker = match running(&state) {
        Ok(broker) => broker,
        Err(response) => return *response,
    };
    Json(NodeView {
        node_id: broker.config.node_id.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_secs: broker.started_at.elapsed().as_secs(),
        connections: broker.online_count(),
        cluster_members: broker.metrics.cluster_members.get().max(1),
        shutting_down: broker.is_shutting_down(),
        evacuation: broker.evacuation_status(),
        cpu_seconds: process_cpu_seconds(),
    })
    .into_response()
}

/// CPU time this process used so far, in seconds.
fn process_cpu_seconds() -> f64 {
    let used = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    used.tv_sec as f64 + used.tv_nsec as f64 / 1e9
}

/// The cluster's load, as `GET /api/v1/cluster` shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClusterView {
    /// Each node's load as it last shared it (fresh ones of registered nodes), by node; only
    /// this node standalone.
    pub nodes: Vec<NodeLoad>,
    /// Whether this node gives connections away now (see [`crate::cluster::rebalance`]).
    pub giving: bool,
    /// Whether it refuses new clients meanwhile (it holds far more than the mean).
    #[serde(default)]
    pub refusing: bool,
}

async fn cluster(State(state): State<Arc<AdminState>>) -> Response {
    let broker = match running(&state) {
        Ok(broker) => broker,
        Err(response) => return *response,
    };
    let mut nodes = broker.cluster_load();
    if nodes.is_empty() {
        nodes.push(NodeLoad {
            node: broker.config.node_id.clone(),
            connections: broker.connections_staying(),
            accepting: !broker.evacuation.is_evacuating(),
            moving: broker.rebalancing.moving(),
            arrived: broker.rebalancing.arrived(),
            at_ms: 0,
            admin: None,
        });
    }
    Json(ClusterView {
        nodes,
        giving: broker.rebalancing.is_giving(),
        refusing: broker.rebalancing.is_refusing(),
    })
    .into_response()
}

/// `POST /api/v1/evacuate` parameters.
#[derive(Debug, Deserialize)]
struct EvacuateQuery {
    /// Clients asked to leave per second.
    rate: Option<u32>,
}

async fn evacuate(
    State(state): State<Arc<AdminState>>,
    Query(query): Query<EvacuateQuery>,
) -> Response {
    let broker = match running(&state) {
        Ok(broker) => broker,
        Err(response) => return *response,
    };
    let status = broker.evacuate(query.rate.unwrap_or(DEFAULT_EVACUATION_RATE));
    (StatusCode::ACCEPTED, Json(status)).into_response()
}

async fn evacuation(State(state): State<Arc<AdminState>>) -> Response {
    match running(&state) {
        Ok(broker) => Json(broker.evacuation_status()).into_response(),
        Err(response) => *response,
    }
}

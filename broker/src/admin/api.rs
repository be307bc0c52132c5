//! The admin API, `/api/v1/...` on the admin port: JSON in and out, every request carrying
//! `Authorization: Bearer <token>` (the token in `admin.token_file`; without one the API is
//! off). What it answers about is this node.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /api/v1/node` | this node: id, version, uptime, connections, cluster members, evacuation |
//! | `GET /api/v1/cluster` | every node's connections as this node last read them, and whether this node gives connections away (rebalancing) |
//! | `GET /api/v1/clients?prefix=&limit=` | the clients connected here, by client id |
//! | `GET /api/v1/clients/{id}` | one of them |
//! | `DELETE /api/v1/clients/{id}?discard_session=` | disconnect it (v5: 0x98), keeping its session unless asked |
//! | `POST /api/v1/evacuate?rate=` | refuse new clients, ask connected ones to reconnect elsewhere, `rate` per second (v5: 0x9C) |
//! | `GET /api/v1/evacuate` | where the evacuation stands |
//!
//! Errors are JSON too: `{"error": "..."}` with the HTTP status that fits.

use super::AdminState;
use crate::broker::Broker;
use crate::clients::{ClientView, EvacuationStatus};
use crate::cluster::load::NodeLoad;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Evacuation rate when the request names none (clients per second).
pub const DEFAULT_EVACUATION_RATE: u32 = 100;

/// The API's routes, behind the token check.
pub fn routes(state: Arc<AdminState>) -> Router<Arc<AdminState>> {
    Router::new()
        .route("/api/v1/node", get(node))
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/clients", get(clients))
        .route("/api/v1/clients/{id}", get(client).delete(disconnect))
        .route("/api/v1/evacuate", get(evacuation).post(evacuate))
        .fallback(|| async { failure(StatusCode::NOT_FOUND, "no such admin API path") })
        .route_layer(middleware::from_fn_with_state(state, authorize))
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
        Some(presented) if token.accepts(presented) => next.run(request).await,
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
        });
    }
    Json(ClusterView {
        nodes,
        giving: broker.rebalancing.is_giving(),
        refusing: broker.rebalancing.is_refusing(),
    })
    .into_response()
}

/// `GET /api/v1/clients` parameters.
#[derive(Debug, Deserialize)]
struct ClientsQuery {
    /// Only client ids that start with this.
    prefix: Option<String>,
    /// At most this many (default 1,000).
    limit: Option<usize>,
}

/// The answer to `GET /api/v1/clients`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClientList {
    /// The clients listed, by client id.
    pub clients: Vec<ClientView>,
    /// How many matched (more than listed when the limit cut the list).
    pub matched: usize,
}

async fn clients(
    State(state): State<Arc<AdminState>>,
    Query(query): Query<ClientsQuery>,
) -> Response {
    let broker = match running(&state) {
        Ok(broker) => broker,
        Err(response) => return *response,
    };
    let prefix = query.prefix.unwrap_or_default();
    let mut clients: Vec<ClientView> = broker
        .clients()
        .into_iter()
        .filter(|c| c.client_id.starts_with(&prefix))
        .collect();
    let matched = clients.len();
    clients.truncate(query.limit.unwrap_or(1000));
    Json(ClientList { clients, matched }).into_response()
}

async fn client(State(state): State<Arc<AdminState>>, Path(id): Path<String>) -> Response {
    let broker = match running(&state) {
        Ok(broker) => broker,
        Err(response) => return *response,
    };
    match broker.clients().into_iter().find(|c| c.client_id == id) {
        Some(view) => Json(view).into_response(),
        None => not_connected(&id),
    }
}

fn not_connected(id: &str) -> Response {
    failure(
        StatusCode::NOT_FOUND,
        format!("client `{id}` is not connected to this node"),
    )
}

/// `DELETE /api/v1/clients/{id}` parameters.
#[derive(Debug, Deserialize)]
struct DisconnectQuery {
    /// Remove the session too, rather than keep it for the client's return.
    discard_session: Option<bool>,
}

/// The answer to a disconnection.
#[derive(Debug, Serialize, Deserialize)]
pub struct Disconnected {
    /// The client disconnected.
    pub client_id: String,
    /// Whether its session is removed as well.
    pub discard_session: bool,
}

async fn disconnect(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
    Query(query): Query<DisconnectQuery>,
) -> Response {
    let broker = match running(&state) {
        Ok(broker) => broker,
        Err(response) => return *response,
    };
    let discard_session = query.discard_session.unwrap_or(false);
    if broker.kick(&id, discard_session) {
        Json(Disconnected {
            client_id: id,
            discard_session,
        })
        .into_response()
    } else {
        not_connected(&id)
    }
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

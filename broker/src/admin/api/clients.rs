//! The admin API's connected clients, cluster-wide: listing them, showing one and disconnecting
//! one, from any node. Without `scope=node` a node answers for the whole cluster, asking the
//! others (with `scope=node`) what it does not hold itself.

use super::{authorization, failure, running, Scope, DEFAULT_LIMIT};
use crate::admin::peers::{self, Unanswered};
use crate::admin::AdminState;
use crate::clients::ClientView;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// `GET /api/v1/clients` parameters.
#[derive(Debug, Deserialize)]
pub(super) struct ClientsQuery {
    /// Only client ids that start with this.
    prefix: Option<String>,
    /// At most this many (default [`DEFAULT_LIMIT`]).
    limit: Option<usize>,
    /// `node`: this node's only.
    scope: Option<Scope>,
}

/// The answer to `GET /api/v1/clients`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClientList {
    /// The clients listed, by client id.
    pub clients: Vec<ClientView>,
    /// How many matched (more than listed when the limit cut the list).
    pub matched: usize,
    /// Nodes whose clients are missing from the list, and why.
    #[serde(default)]
    pub unanswered: Vec<Unanswered>,
}

pub(super) async fn clients(
    State(state): State<Arc<AdminState>>,
    Query(query): Query<ClientsQuery>,
    headers: HeaderMap,
) -> Response {
    let broker = match running(&state) {
        Ok(broker) => broker,
        Err(response) => return *response,
    };
    let prefix = query.prefix.unwrap_or_default();
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    let mut clients: Vec<ClientView> = broker
        .clients()
        .into_iter()
        .filter(|c| c.client_id.starts_with(&prefix))
        .collect();
    let mut matched = clients.len();
    let mut unanswered = Vec::new();
    if query.scope != Some(Scope::Node) {
        let path = format!(
            "/api/v1/clients?scope=node&limit={limit}&prefix={}",
            super::encode(&prefix)
        );
        let (lists, missing) =
            peers::ask_others::<ClientList>(broker, &path, authorization(&headers)).await;
        unanswered = missing;
        for list in lists {
            matched += list.matched;
            clients.extend(list.clients);
            unanswered.extend(list.unanswered);
        }
        clients.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    }
    clients.truncate(limit);
    Json(ClientList {
        clients,
        matched,
        unanswered,
    })
    .into_response()
}

/// `GET /api/v1/clients/{id}` and `DELETE` parameters.
#[derive(Debug, Deserialize)]
pub(super) struct ClientQuery {
    /// `node`: only if it is connected to this node.
    scope: Option<Scope>,
    /// (`DELETE`) Remove the session too, rather than keep it for the client's return.
    discard_session: Option<bool>,
}

pub(super) async fn client(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
    Query(query): Query<ClientQuery>,
    headers: HeaderMap,
) -> Response {
    let broker = match running(&state) {
        Ok(broker) => broker,
        Err(response) => return *response,
    };
    if let Some(view) = broker.client(&id) {
        return Json(view).into_response();
    }
    if query.scope == Some(Scope::Node) {
        return not_connected_here(&id);
    }
    let path = format!("/api/v1/clients/{}?scope=node", super::encode(&id));
    from_the_node_holding(broker, &id, "GET", &path, &headers).await
}

/// The answer to a disconnection.
#[derive(Debug, Serialize, Deserialize)]
pub struct Disconnected {
    /// The client disconnected.
    pub client_id: String,
    /// Whether its session is removed as well.
    pub discard_session: bool,
    /// The node it was connected to.
    #[serde(default)]
    pub node: String,
}

pub(super) async fn disconnect(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
    Query(query): Query<ClientQuery>,
    headers: HeaderMap,
) -> Response {
    let broker = match running(&state) {
        Ok(broker) => broker,
        Err(response) => return *response,
    };
    let discard_session = query.discard_session.unwrap_or(false);
    if broker.kick(&id, discard_session) {
        return Json(Disconnected {
            client_id: id,
            discard_session,
            node: broker.config.node_id.clone(),
        })
        .into_response();
    }
    if query.scope == Some(Scope::Node) {
        return not_connected_here(&id);
    }
    let path = format!(
        "/api/v1/clients/{}?scope=node&discard_session={discard_session}",
        super::encode(&id)
    );
    from_the_node_holding(broker, &id, "DELETE", &path, &headers).await
}

/// Asks every other node for `method path` about client `id` (with `scope=node`); passes on the
/// answer of the node that has it, or says it is connected nowhere (naming the nodes that did
/// not answer).
async fn from_the_node_holding(
    broker: &crate::broker::Broker,
    id: &str,
    method: &'static str,
    path: &str,
    headers: &HeaderMap,
) -> Response {
    let (answers, mut unanswered) =
        peers::ask(peers::peers(broker), method, path, authorization(headers)).await;
    unanswered.extend(peers::members_without_load(broker));
    for answer in answers {
        match answer.status {
            200 => {
                let body = axum::body::Body::from(answer.body);
                return (
                    StatusCode::OK,
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    body,
                )
                    .into_response();
            }
            404 => {}
            _ => unanswered.extend(answer.parse::<serde_json::Value>().err()),
        }
    }
    if unanswered.is_empty() {
        return failure(
            StatusCode::NOT_FOUND,
            format!("client `{id}` is not connected to any node of the cluster"),
        );
    }
    let missing: Vec<String> = unanswered
        .iter()
        .map(|u| format!("{} ({})", u.node, u.error))
        .collect();
    failure(
        StatusCode::BAD_GATEWAY,
        format!(
            "client `{id}` is not connected to any node that answered; not answered: {}",
            missing.join(", ")
        ),
    )
}

fn not_connected_here(id: &str) -> Response {
    failure(
        StatusCode::NOT_FOUND,
        format!("client `{id}` is not connected to this node"),
    )
}

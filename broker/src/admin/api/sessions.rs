//! The admin API's sessions and subscriptions, cluster-wide: one session looked up (offline ones
//! too: the store holds them), and subscriptions listed by client or filter. A session's
//! subscriptions live in the routing tree of the node that holds or parks it, so a lookup asks
//! that node; a listing asks every node.

use super::{authorization, failure, running, Scope, DEFAULT_LIMIT};
use crate::admin::peers::{self, Unanswered};
use crate::admin::AdminState;
use crate::broker::Broker;
use crate::clients::ClientView;
use crate::router::SubscriptionOptions;
use crate::store::SessionSummary;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One subscription, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionView {
    /// The subscribing session's client id.
    pub client_id: String,
    /// The node whose routing tree holds it (where the session is, or is parked).
    pub node: String,
    /// The filter as subscribed (`$share/<group>/<filter>` for a shared subscription).
    pub filter: String,
    /// The maximum QoS granted.
    pub qos: u8,
    /// MQTT 5 no-local.
    pub no_local: bool,
    /// MQTT 5 retain-as-published.
    pub retain_as_published: bool,
    /// MQTT 5 subscription identifier.
    pub identifier: Option<usize>,
}

impl SubscriptionView {
    fn new(node: &str, client_id: &str, filter: String, options: &SubscriptionOptions) -> Self {
        SubscriptionView {
            client_id: client_id.to_string(),
            node: node.to_string(),
            filter,
            qos: options.qos as u8,
            no_local: options.no_local,
            retain_as_published: options.retain_as_published,
            identifier: options.identifier,
        }
    }
}

/// This node's subscriptions, those of `client` only when given.
fn held_here(broker: &Broker, client: Option<&str>) -> Vec<SubscriptionView> {
    let node = &broker.config.node_id;
    broker
        .subscriptions_held(client)
        .into_iter()
        .map(|(client_id, filter, options)| {
            SubscriptionView::new(node, &client_id, filter, &options)
        })
        .collect()
}

/// `GET /api/v1/subscriptions` parameters.
#[derive(Debug, Deserialize)]
pub(super) struct SubscriptionsQuery {
    /// Only this client's.
    client: Option<String>,
    /// Only this filter, exactly as subscribed (`$share/<group>/...` included).
    filter: Option<String>,
    /// At most this many (default [`DEFAULT_LIMIT`]).
    limit: Option<usize>,
    /// `node`: this node's only.
    scope: Option<Scope>,
}

/// The answer to `GET /api/v1/subscriptions`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SubscriptionList {
    /// The subscriptions listed, by client id and filter.
    pub subscriptions: Vec<SubscriptionView>,
    /// How many matched (more than listed when the limit cut the list).
    pub matched: usize,
    /// Nodes whose subscriptions are missing from the list, and why.
    #[serde(default)]
    pub unanswered: Vec<Unanswered>,
}

pub(super) async fn subscriptions(
    State(state): State<Arc<AdminState>>,
    Query(query): Query<SubscriptionsQuery>,
    headers: HeaderMap,
) -> Response {
    let broker = match running(&state) {
        Ok(broker) => broker,
        Err(response) => return *response,
    };
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    let mut subscriptions: Vec<SubscriptionView> = held_here(broker, query.client.as_deref())
        .into_iter()
        .filter(|s| query.filter.as_ref().is_none_or(|f| f == &s.filter))
        .collect();
    let mut matched = subscriptions.len();
    let mut unanswered = Vec::new();
    if query.scope != Some(Scope::Node) {
        let mut path = format!("/api/v1/subscriptions?scope=node&limit={limit}");
        for (name, value) in [("client", &query.client), ("filter", &query.filter)] {
            if let Some(value) = value {
                path.push_str(&format!("&{name}={}", super::encode(value)));
            }
        }
        let (lists, missing) =
            peers::ask_others::<SubscriptionList>(broker, &path, authorization(&headers)).await;
        unanswered = missing;
        for list in lists {
            matched += list.matched;
            subscriptions.extend(list.subscriptions);
            unanswered.extend(list.unanswered);
        }
        subscriptions.sort_by(|a, b| (&a.client_id, &a.filter).cmp(&(&b.client_id, &b.filter)));
    }
    subscriptions.truncate(limit);
    Json(SubscriptionList {
        subscriptions,
        matched,
        unanswered,
    })
    .into_response()
}

/// The answer to `GET /api/v1/sessions/{id}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SessionView {
    /// The session's client id.
    pub client_id: String,
    /// What the store holds of it (`node` filled in with this node's id when the store has no
    /// node ids: a standalone node's).
    pub session: SessionSummary,
    /// Its connection, when a client is connected to it.
    pub connection: Option<ClientView>,
    /// Its subscriptions, as the routing tree of the node holding it has them.
    pub subscriptions: Vec<SubscriptionView>,
    /// Nodes that should have said more of it and did not, and why.
    #[serde(default)]
    pub unanswered: Vec<Unanswered>,
}

/// `GET /api/v1/sessions/{id}` parameters.
#[derive(Debug, Deserialize)]
pub(super) struct SessionQuery {
    /// `node`: what this node holds of it only.
    scope: Option<Scope>,
}

pub(super) async fn session(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
    Query(query): Query<SessionQuery>,
    headers: HeaderMap,
) -> Response {
    let broker = match running(&state) {
        Ok(broker) => broker,
        Err(response) => return *response,
    };
    let mut summary = match broker.store.session_summary(&id).await {
        Ok(Some(summary)) => summary,
        Ok(None) => {
            return failure(
                StatusCode::NOT_FOUND,
                format!("no session `{id}`: it never connected, ended or expired"),
            )
        }
        Err(e) => {
            return failure(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the session store cannot be read: {e}"),
            )
        }
    };
    let here = &broker.config.node_id;
    let holder = summary.node.get_or_insert_with(|| here.clone()).clone();
    let answer_here = query.scope == Some(Scope::Node) || &holder == here;
    // This node's routing tree holds the session's subscriptions only if it holds the session.
    let local = SessionView {
        client_id: id.clone(),
        connection: broker.client(&id),
        subscriptions: if answer_here {
            held_here(broker, Some(&id))
        } else {
            Vec::new()
        },
        session: summary,
        unanswered: Vec::new(),
    };
    if answer_here {
        return Json(local).into_response();
    }
    let Some(peer) = peers::peers(broker)
        .into_iter()
        .find(|peer| peer.node == holder)
    else {
        return Json(SessionView {
            unanswered: vec![Unanswered {
                node: holder,
                error: "it shares no load: it is not running, or cannot reach Redis".into(),
            }],
            ..local
        })
        .into_response();
    };
    let path = format!("/api/v1/sessions/{}?scope=node", super::encode(&id));
    let (answers, missing) = peers::ask(vec![peer], "GET", &path, authorization(&headers)).await;
    let from_holder = answers
        .first()
        .map(|answer| answer.parse::<SessionView>())
        .unwrap_or_else(|| {
            Err(missing.into_iter().next().unwrap_or_else(|| Unanswered {
                node: holder.clone(),
                error: "no answer".into(),
            }))
        });
    match from_holder {
        // The store's view is the same from any node; the holder's adds its connection and
        // routing tree.
        Ok(view) => Json(view).into_response(),
        Err(missing) => Json(SessionView {
            unanswered: vec![missing],
            ..local
        })
        .into_response(),
    }
}

//! `starling-broker ctl`: the admin API (see [`crate::admin::api`]) from a terminal, with tables
//! for people and JSON (`--json`) for scripts.

mod tables;

use crate::admin::api::{
    encode, ClientList, ClusterView, Disconnected, NodeView, RetainedDeleted, RetainedList,
    SessionView, SubscriptionList,
};
use crate::clients::{ClientView, EvacuationStatus};
use serde::de::DeserializeOwned;
use std::path::Path;
use std::time::Duration;
use tables::{
    clients_table, cluster_table, evacuation_line, node_table, retained_table, session_table,
    subscriptions_table,
};

/// Why a `ctl` command failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The token file cannot be read.
    #[error("cannot read the admin token from {path}: {source}; pass --token-file (or set admin.token_file)")]
    Token {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The admin endpoint did not answer.
    #[error("{url}: {why}; is the broker running with its admin port there (--url)?")]
    Unreachable {
        /// What was asked.
        url: String,
        /// Why it failed.
        why: String,
    },
    /// The API answered with an error.
    #[error("{url}: HTTP {status}: {error}")]
    Refused {
        /// What was asked.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The API's reason.
        error: String,
    },
    /// The evacuation did not empty the node in time.
    #[error("{remaining} clients still connected after {waited:?}; the node can still be stopped (SIGTERM drains them)")]
    NotEmpty {
        /// Clients left.
        remaining: usize,
        /// How long `ctl` waited.
        waited: Duration,
    },
    /// The answer was not what this version of `ctl` understands.
    #[error("{url}: unexpected answer: {why}")]
    Unreadable {
        /// What was asked.
        url: String,
        /// What went wrong.
        why: String,
    },
}

/// What `ctl` is asked to do.
#[derive(Debug, Clone)]
pub enum Request {
    /// Show this node.
    Node,
    /// Show the cluster's nodes and their load.
    Cluster,
    /// List the clients connected to the cluster, optionally those whose id starts with a prefix.
    Clients { prefix: Option<String> },
    /// Show one connected client, on whichever node it is.
    Client { id: String },
    /// Show one session, online or offline.
    Session { id: String },
    /// List subscriptions, optionally one client's or one filter's.
    Subscriptions {
        client: Option<String>,
        filter: Option<String>,
    },
    /// List the retained messages a filter matches (default `#`).
    Retained { filter: Option<String> },
    /// Delete a topic's retained message.
    DeleteRetained { topic: String },
    /// Disconnect a client, optionally discarding its session.
    Disconnect { id: String, discard_session: bool },
    /// Evacuate the node at a rate (clients per second), and optionally wait until it is empty.
    Evacuate { rate: u32, wait_secs: Option<u64> },
    /// Show where the evacuation stands.
    Evacuation,
}

/// An admin API endpoint and its token.
pub struct Admin {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Admin {
    /// The API at `base` (e.g. `http://127.0.0.1:9090`), with the token in `token_file`.
    pub fn new(base: &str, token_file: &Path) -> Result<Admin, CtlError> {
        let token = std::fs::read_to_string(token_file).map_err(|source| CtlError::Token {
            path: token_file.display().to_string(),
            source,
        })?;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        Ok(Admin {
            base: base.trim_end_matches('/').to_string(),
            token: token.trim().to_string(),
            agent,
        })
    }

    /// Carries out `request`; returns the answer as JSON text (`json`) or as a table.
    pub fn run(&self, request: &Request, json: bool) -> Result<String, CtlError> {
        let (method, path) = match request {
            Request::Node => ("GET", "/api/v1/node".to_string()),
            Request::Cluster => ("GET", "/api/v1/cluster".to_string()),
            Request::Clients { prefix } => {
                ("GET", with_query("/api/v1/clients", &[("prefix", prefix)]))
            }
            Request::Client { id } => ("GET", format!("/api/v1/clients/{}", encode(id))),
            Request::Session { id } => ("GET", format!("/api/v1/sessions/{}", encode(id))),
            Request::Subscriptions { client, filter } => (
                "GET",
                with_query(
                    "/api/v1/subscriptions",
                    &[("client", client), ("filter", filter)],
                ),
            ),
            Request::Retained { filter } => {
                ("GET", with_query("/api/v1/retained", &[("filter", filter)]))
            }
            Request::DeleteRetained { topic } => (
                "DELETE",
                format!("/api/v1/retained?topic={}", encode(topic)),
            ),
            Request::Disconnect {
                id,
                discard_session,
            } => (
                "DELETE",
                format!(
                    "/api/v1/clients/{}?discard_session={discard_session}",
                    encode(id)
                ),
            ),
            Request::Evacuate { rate, .. } => ("POST", format!("/api/v1/evacuate?rate={rate}")),
            Request::Evacuation => ("GET", "/api/v1/evacuate".to_string()),
        };
        let mut body = self.call(method, &path)?;
        if let Request::Evacuate {
            wait_secs: Some(secs),
            ..
        } = request
        {
            body = self.wait_until_empty(Duration::from_secs(*secs))?;
        }
        if json {
            return Ok(body);
        }
        let url = format!("{}{path}", self.base);
        Ok(match request {
            Request::Node => node_table(&parse::<NodeView>(&url, &body)?),
            Request::Cluster => cluster_table(&parse::<ClusterView>(&url, &body)?),
            Request::Clients { .. } => clients_table(&parse::<ClientList>(&url, &body)?),
            Request::Client { .. } => {
                let client = parse::<ClientView>(&url, &body)?;
                clients_table(&ClientList {
                    clients: vec![client],
                    matched: 1,
                    unanswered: Vec::new(),
                })
            }
            Request::Session { .. } => session_table(&parse::<SessionView>(&url, &body)?),
            Request::Subscriptions { .. } => {
                subscriptions_table(&parse::<SubscriptionList>(&url, &body)?)
            }
            Request::Retained { .. } => retained_table(&parse::<RetainedList>(&url, &body)?),
            Request::DeleteRetained { .. } => {
                let done = parse::<RetainedDeleted>(&url, &body)?;
                format!("deleted the retained message of {}\n", done.topic)
            }
            Request::Disconnect { .. } => {
                let done = parse::<Disconnected>(&url, &body)?;
                let session = if done.discard_session {
                    "session discarded"
                } else {
                    "session kept"
                };
                format!(
                    "disconnected {} from {} ({session})\n",
                    done.client_id, done.node
                )
            }
            Request::Evacuate { .. } | Request::Evacuation => {
                evacuation_line(&parse::<EvacuationStatus>(&url, &body)?)
            }
        })
    }

    /// Polls the evacuation until no client is left; its last status, or an error once `limit`
    /// has passed with clients still connected.
    fn wait_until_empty(&self, limit: Duration) -> Result<String, CtlError> {
        let path = "/api/v1/evacuate";
        let url = format!("{}{path}", self.base);
        let deadline = std::time::Instant::now() + limit;
        loop {
            let body = self.call("GET", path)?;
            let status: EvacuationStatus = parse(&url, &body)?;
            if status.remaining == 0 {
                return Ok(body);
            }
            if std::time::Instant::now() >= deadline {
                return Err(CtlError::NotEmpty {
                    remaining: status.remaining,
                    waited: limit,
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn call(&self, method: &str, path: &str) -> Result<String, CtlError> {
        let url = format!("{}{path}", self.base);
        let authorization = format!("Bearer {}", self.token);
        let answer = match method {
            "POST" => self
                .agent
                .post(&url)
                .header("Authorization", &authorization)
                .send_empty(),
            "DELETE" => self
                .agent
                .delete(&url)
                .header("Authorization", &authorization)
                .call(),
            _ => self
                .agent
                .get(&url)
                .header("Authorization", &authorization)
                .call(),
        };
        let mut response = answer.map_err(|e| CtlError::Unreachable {
            url: url.clone(),
            why: e.to_string(),
        })?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .read_to_string()
            .map_err(|e| CtlError::Unreadable {
                url: url.clone(),
                why: e.to_string(),
            })?;
        if status >= 400 {
            let error = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or(body);
            return Err(CtlError::Refused { url, status, error });
        }
        Ok(body)
    }
}

fn parse<T: DeserializeOwned>(url: &str, body: &str) -> Result<T, CtlError> {
    serde_json::from_str(body).map_err(|e| CtlError::Unreadable {
        url: url.to_string(),
        why: e.to_string(),
    })
}

/// `path` with the query parameters that are set, encoded.
fn with_query(path: &str, parameters: &[(&str, &Option<String>)]) -> String {
    let mut out = path.to_string();
    for (name, value) in parameters {
        if let Some(value) = value {
            out.push(if out.contains('?') { '&' } else { '?' });
            out.push_str(name);
            out.push('=');
            out.push_str(&encode(value));
        }
    }
    out
}

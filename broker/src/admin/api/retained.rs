//! The admin API's retained messages: listing those a filter matches, and deleting one. They are
//! in the store, which every node of a cluster shares, so any node answers for all.

use super::{failure, running, DEFAULT_LIMIT};
use crate::admin::AdminState;
use crate::message::Message;
use crate::protocol::topic;
use crate::store::millis_since_epoch;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One retained message, as the admin API lists it (the payload's size, not the payload).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetainedView {
    /// Its topic.
    pub topic: String,
    /// Its QoS.
    pub qos: u8,
    /// Its payload's size in bytes.
    pub payload_bytes: usize,
    /// When it expires (ms since the Unix epoch), if it does.
    pub expires_at_ms: Option<u64>,
}

/// `GET /api/v1/retained` parameters.
#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    /// The topic filter to match (default `#`: every topic not starting with `$`).
    filter: Option<String>,
    /// At most this many (default [`DEFAULT_LIMIT`]).
    limit: Option<usize>,
}

/// The answer to `GET /api/v1/retained`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RetainedList {
    /// The retained messages listed, by topic.
    pub retained: Vec<RetainedView>,
    /// How many matched (more than listed when the limit cut the list).
    pub matched: usize,
}

pub(super) async fn list(
    State(state): State<Arc<AdminState>>,
    Query(query): Query<ListQuery>,
) -> Response {
    let broker = match running(&state) {
        Ok(broker) => broker,
        Err(response) => return *response,
    };
    let filter = query.filter.unwrap_or_else(|| "#".into());
    if let Err(e) = topic::validate_filter(&filter, usize::MAX) {
        return failure(
            StatusCode::BAD_REQUEST,
            format!("`{filter}` is not a topic filter: {e}"),
        );
    }
    let messages = match broker.store.retained_matching(&filter).await {
        Ok(messages) => messages,
        Err(e) => return unreadable(e),
    };
    let mut retained: Vec<RetainedView> = messages.iter().map(|m| view(m)).collect();
    retained.sort_by(|a, b| a.topic.cmp(&b.topic));
    let matched = retained.len();
    retained.truncate(query.limit.unwrap_or(DEFAULT_LIMIT));
    Json(RetainedList { retained, matched }).into_response()
}

fn view(message: &Message) -> RetainedView {
    RetainedView {
        topic: message.topic.to_string(),
        qos: message.qos as u8,
        payload_bytes: message.payload.len(),
        expires_at_ms: message.expires_at.map(millis_since_epoch),
    }
}

/// `DELETE /api/v1/retained` parameters.
#[derive(Debug, Deserialize)]
pub(super) struct DeleteQuery {
    /// The topic whose retained message goes (a topic name: no wildcards).
    topic: Option<String>,
}

/// The answer to a deletion.
#[derive(Debug, Serialize, Deserialize)]
pub struct RetainedDeleted {
    /// The topic whose retained message was deleted.
    pub topic: String,
}

pub(super) async fn delete(
    State(state): State<Arc<AdminState>>,
    Query(query): Query<DeleteQuery>,
) -> Response {
    let broker = match running(&state) {
        Ok(broker) => broker,
        Err(response) => return *response,
    };
    let Some(topic) = query.topic else {
        return failure(
            StatusCode::BAD_REQUEST,
            "name the topic: DELETE /api/v1/retained?topic=<topic name>",
        );
    };
    if let Err(e) = topic::validate_name(&topic, usize::MAX) {
        return failure(
            StatusCode::BAD_REQUEST,
            format!("`{topic}` is not a topic name (no wildcards): {e}"),
        );
    }
    match broker.store.retained_matching(&topic).await {
        Ok(found) if found.is_empty() => {
            return failure(
                StatusCode::NOT_FOUND,
                format!("no retained message on `{topic}`"),
            )
        }
        Ok(_) => {}
        Err(e) => return unreadable(e),
    }
    // An empty retained payload deletes the topic's retained message, as a client's would.
    let deletion = Arc::new(Message {
        topic: topic.as_str().into(),
        payload: bytes::Bytes::new(),
        qos: crate::protocol::QoS::AtMostOnce,
        retain: true,
        properties: Default::default(),
        expires_at: None,
        publisher: None,
        received_at: None,
    });
    match broker.store.set_retained(deletion).await {
        Ok(_) => {
            tracing::info!(%topic, "retained message deleted through the admin API");
            Json(RetainedDeleted { topic }).into_response()
        }
        Err(e) => unreadable(e),
    }
}

fn unreadable(e: crate::store::StoreError) -> Response {
    failure(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the retained store cannot be used: {e}"),
    )
}

//! The HTTP admin endpoint: `/healthz` (the process is alive), `/readyz` (accepting clients: 503
//! while draining, or while a cluster node cannot reach Redis) and `/metrics` (Prometheus text
//! format).

use crate::broker::Broker;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

/// The admin routes, for serving on the admin listener.
pub fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(broker)
}

async fn readyz(State(broker): State<Arc<Broker>>) -> (StatusCode, std::borrow::Cow<'static, str>) {
    if broker.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into())
    } else if let Some(problem) = broker.cluster().and_then(|link| link.health().problem()) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("degraded: {problem}\n").into(),
        )
    } else {
        (StatusCode::OK, "ready\n".into())
    }
}

async fn metrics(State(broker): State<Arc<Broker>>) -> impl IntoResponse {
    if let Ok(n) = broker.store.retained_count().await {
        broker.metrics.retained.set(n as i64);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        broker.metrics.render(),
    )
}

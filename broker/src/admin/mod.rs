//! The HTTP admin endpoint: `/healthz` (the process is alive), `/readyz` (accepting clients: 503
//! while the node starts, e.g. waiting for Redis, while draining or evacuating, or while a
//! cluster node cannot reach Redis), `/metrics` (Prometheus text format), and the admin API
//! ([`api`], `/api/v1/...`, behind a bearer token).
//!
//! It is served from the moment the admin port is bound, before the broker exists, so that a
//! node waiting for its store is alive (`/healthz` 200) but not ready; [`AdminState::serve`]
//! hands it the broker once the node runs.

pub mod api;
pub mod peers;
pub mod token;

use crate::broker::Broker;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use parking_lot::Mutex;
use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// What the admin endpoint answers about: the broker once it runs, and until then what the node
/// is doing.
pub struct AdminState {
    broker: OnceLock<Arc<Broker>>,
    starting: Mutex<String>,
    /// The admin API's token (`None`: the API is off).
    token: Option<Arc<token::AdminToken>>,
}

impl AdminState {
    /// A node that is starting (`/readyz` answers 503 with `status`), its admin API behind
    /// `token` (off without one).
    pub fn starting(status: impl Into<String>, token: Option<Arc<token::AdminToken>>) -> Arc<Self> {
        Arc::new(AdminState {
            broker: OnceLock::new(),
            starting: Mutex::new(status.into()),
            token,
        })
    }

    /// Says what the starting node is doing (shown by `/readyz`).
    pub fn set_starting(&self, status: impl Into<String>) {
        *self.starting.lock() = status.into();
    }

    /// The node runs: `/readyz` and `/metrics` answer about `broker` from now on.
    pub fn serve(&self, broker: Arc<Broker>) {
        // Only the first broker counts; a node has one.
        let _ = self.broker.set(broker);
    }
}

/// The admin routes, for serving on the admin listener.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(api::routes(state.clone()))
        .with_state(state)
}

/// The admin endpoint running on its own task; dropping it stops it at once.
pub struct AdminServer {
    state: Arc<AdminState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl AdminServer {
    /// Serves the admin routes on `listener` until [`Self::stop`].
    pub fn start(listener: TcpListener, state: Arc<AdminState>) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let router = router(state.clone());
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "admin endpoint stopped");
            }
        });
        AdminServer {
            state,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// What it answers about.
    pub fn state(&self) -> &Arc<AdminState> {
        &self.state
    }

    /// Stops serving, letting requests in progress finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn readyz(State(state): State<Arc<AdminState>>) -> (StatusCode, Cow<'static, str>) {
    let Some(broker) = state.broker.get() else {
        let doing = state.starting.lock().clone();
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("starting: {doing}\n").into(),
        );
    };
    if broker.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into())
    } else if broker.evacuation.is_evacuating() {
        (StatusCode::SERVICE_UNAVAILABLE, "evacuating\n".into())
    } else if let Some(problem) = broker.cluster().and_then(|link| link.health().problem()) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("degraded: {problem}\n").into(),
        )
    } else {
        (StatusCode::OK, "ready\n".into())
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    let Some(broker) = state.broker.get() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "starting\n".to_string(),
        );
    };
    if let Ok(n) = broker.store.retained_count().await {
        broker.metrics.retained.set(n as i64);
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        broker.metrics.render(),
    )
}

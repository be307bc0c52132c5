//! The operator's HTTP endpoint: `/healthz` (the process runs), `/readyz` (the controller runs,
//! or this replica stands by for leadership) and `/metrics` (Prometheus text format).

use crate::metrics::Metrics;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;

/// What the endpoint reports.
pub struct HttpState {
    /// The metrics `/metrics` renders.
    pub metrics: Arc<Metrics>,
    ready: AtomicBool,
}

impl HttpState {
    /// Not ready yet.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        HttpState {
            metrics,
            ready: AtomicBool::new(false),
        }
    }

    /// From now on `/readyz` answers 200.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// The routes.
pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves the routes on `listener` until the process ends.
pub async fn serve(listener: TcpListener, state: Arc<HttpState>) -> std::io::Result<()> {
    axum::serve(listener, router(state)).await
}

async fn readyz(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    if state.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

async fn metrics(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use std::net::SocketAddr;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// One HTTP/1.1 GET over a real socket; returns the status code and the body.
    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: operator\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        let (head, body) = response.split_once("\r\n\r\n").expect("a full response");
        let code = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status line");
        (code, body.to_string())
    }

    #[tokio::test]
    async fn serves_health_readiness_and_metrics_over_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let state = Arc::new(HttpState::new(Arc::new(Metrics::new())));
        let server = tokio::spawn(serve(listener, state.clone()));

        assert_eq!(get(addr, "/healthz").await, (200, "ok\n".to_string()));
        assert_eq!(get(addr, "/readyz").await.0, 503, "not ready before start");
        state.set_ready();
        assert_eq!(get(addr, "/readyz").await, (200, "ready\n".to_string()));

        state.metrics.leader.set(1);
        state.metrics.observe_reconcile::<()>(
            &Err(Error::MissingMetadata("uid")),
            Duration::from_millis(2),
        );
        let (code, body) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        for line in [
            "starling_operator_leader 1",
            "starling_operator_reconciles_total{result=\"error\"} 1",
            "starling_operator_reconcile_errors_total{error=\"missing_metadata\"} 1",
        ] {
            assert!(
                body.lines().any(|l| l == line),
                "{line:?} missing in\n{body}"
            );
        }
        assert_eq!(get(addr, "/nope").await.0, 404);
        server.abort();
    }
}

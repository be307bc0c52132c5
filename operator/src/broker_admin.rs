//! Asking a broker pod's admin API: `GET <path>` at the pod's IP and the cluster's admin port,
//! with the admin token the operator made, the answer read as JSON within a bound of time and
//! size. The autoscaler reads `/api/v1/node` this way, the evacuation progress
//! `/api/v1/evacuate`.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Pod;
use serde::de::DeserializeOwned;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// How long one broker may take to answer.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(3);
/// The largest answer read (the views asked for are a few hundred bytes).
const MAX_ANSWER: usize = 64 * 1024;

/// An HTTP client for the brokers' admin ports (plain HTTP inside the cluster).
pub type AdminClient = Client<HttpConnector, Empty<Bytes>>;

/// A client for [`get_json`]; one serves many requests.
pub fn client() -> AdminClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Why a broker pod gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum AdminCallError {
    /// The pod has no IP yet.
    #[error("no pod IP")]
    NoAddress,
    /// It did not answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The request could not be made or sent.
    #[error("{0}")]
    Request(String),
    /// It answered with an HTTP error.
    #[error("answered {0}")]
    Status(u16),
    /// Its answer could not be read.
    #[error("answer not understood: {0}")]
    Body(String),
}

/// `GET path` on `pod`'s admin port with `token`, its JSON answer as `T`.
pub async fn get_json<T: DeserializeOwned>(
    client: &AdminClient,
    pod: &Pod,
    admin_port: u16,
    token: &str,
    path: &str,
) -> Result<T, AdminCallError> {
    let ip: IpAddr = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse().ok())
        .ok_or(AdminCallError::NoAddress)?;
    let uri = format!("http://{}{path}", SocketAddr::new(ip, admin_port));
    let request = http::Request::get(uri)
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Empty::new())
        .map_err(|e| AdminCallError::Request(e.to_string()))?;
    let answer = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| AdminCallError::Request(e.to_string()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(AdminCallError::Status(status.as_u16()));
        }
        let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| AdminCallError::Body(e.to_string()))?
            .to_bytes();
        serde_json::from_slice::<T>(&body).map_err(|e| AdminCallError::Body(e.to_string()))
    };
    tokio::time::timeout(ANSWER_WITHIN, answer)
        .await
        .map_err(|_| AdminCallError::Timeout(ANSWER_WITHIN))?
}

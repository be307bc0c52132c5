//! The brokers' connection counts for the autoscaler: each broker pod the cluster should have
//! is asked through its admin API (`GET /api/v1/node`, with the admin token the operator
//! made; see [`crate::broker_admin`]), concurrently, each answer within a bound.

use super::Counts;
use crate::broker_admin::{self, AdminCallError, AdminClient};
use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;

/// The part of `GET /api/v1/node` the autoscaler reads.
#[derive(Deserialize)]
struct NodeView {
    connections: i64,
    /// Missing from brokers older than the CPU target.
    #[serde(default)]
    cpu_seconds: Option<f64>,
}

/// Why one broker gave no count.
#[derive(Debug, thiserror::Error)]
enum Unanswered {
    #[error("no such pod")]
    Absent,
    #[error("not ready")]
    NotReady,
    #[error(transparent)]
    Call(#[from] AdminCallError),
}

/// What the brokers said.
pub struct Reading {
    /// Their connections.
    pub counts: Counts,
    /// The CPU time each answering pod's broker used so far (pod uid, seconds).
    pub cpu_seconds: Vec<(String, f64)>,
}

/// Asks the `replicas` broker pods named `<stateful_set>-<i>` among `pods` for their
/// connections and CPU time.
pub async fn read(
    stateful_set: &str,
    replicas: i32,
    pods: &[Pod],
    admin_port: u16,
    token: &str,
) -> Reading {
    let client = broker_admin::client();
    let asks = (0..replicas.max(0)).map(|i| {
        let name = format!("{stateful_set}-{i}");
        let pod = pods
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(name.as_str()));
        let client = client.clone();
        async move {
            let answer = ask(&client, pod, admin_port, token).await;
            let uid = pod.and_then(|p| p.metadata.uid.clone());
            (name, uid, answer)
        }
    });
    let answers = futures::future::join_all(asks).await;
    let mut total = 0;
    let mut missing = Vec::new();
    let mut cpu_seconds = Vec::new();
    for (name, uid, answer) in answers {
        match answer {
            Ok(view) => {
                total += view.connections;
                if let (Some(uid), Some(seconds)) = (uid, view.cpu_seconds) {
                    cpu_seconds.push((uid, seconds));
                }
            }
            Err(why) => {
                tracing::debug!(pod = %name, %why, "autoscaling: no connection count");
                missing.push(format!("{name} ({why})"));
            }
        }
    }
    // Pods past the wanted ones are being evacuated (a scale-down under way): their clients
    // are on their way to the others and counted nowhere yet.
    for pod in pods {
        if crate::status::pods::ordinal(pod, stateful_set).is_some_and(|i| i >= replicas) {
            let name = pod.metadata.name.clone().unwrap_or_default();
            missing.push(format!("{name} (leaving)"));
        }
    }
    let counts = if missing.is_empty() {
        Counts::Complete(total)
    } else {
        Counts::Missing {
            known: total,
            pods: missing,
        }
    };
    Reading {
        counts,
        cpu_seconds,
    }
}

async fn ask(
    client: &AdminClient,
    pod: Option<&Pod>,
    admin_port: u16,
    token: &str,
) -> Result<NodeView, Unanswered> {
    let pod = pod.ok_or(Unanswered::Absent)?;
    if !crate::status::pods::is_ready(pod) {
        return Err(Unanswered::NotReady);
    }
    Ok(broker_admin::get_json(client, pod, admin_port, token, "/api/v1/node").await?)
}

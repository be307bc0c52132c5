//! Kubernetes Events about what the operator does to a cluster (`kubectl describe mqc NAME`).
//!
//! Publishing is best effort: a failed Event is logged, never a reason to fail a reconcile.

use crate::crd::MqttCluster;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};

/// `reportingController` of every Event.
pub const REPORTER: &str = "starling-operator";

/// Normal: a new generation of the spec was applied.
pub const RECONCILED: &str = "Reconciled";
/// Normal: a child the spec no longer asks for was deleted.
pub const DELETED_CHILD: &str = "DeletedChild";
/// Warning: a reconcile failed; the note carries the error.
pub const RECONCILE_FAILED: &str = "ReconcileFailed";
/// Warning: the spec cannot be turned into objects.
pub const INVALID_SPEC: &str = "InvalidSpec";

/// The action of a `Reconciled` Event: `ApplyGeneration<n>`. Each generation gets its own
/// Event (and note) instead of joining the series of the first one.
pub fn apply_generation_action(generation: i64) -> String {
    format!("ApplyGeneration{generation}")
}

/// A recorder reporting as `starling-operator`, from `instance` (the pod name) when known.
pub fn recorder(client: Client, instance: Option<String>) -> Recorder {
    Recorder::new(
        client,
        Reporter {
            controller: REPORTER.to_string(),
            instance,
        },
    )
}

/// Publishes one Event about `cluster`, naming `related` as the other object involved, if
/// any; logs instead of failing. The Recorder folds repeats of the same type, reason, action
/// and related object into one series that keeps the first note, so an Event about a
/// particular child names it as `related`.
pub async fn publish(
    recorder: &Recorder,
    cluster: &MqttCluster,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
    related: Option<ObjectReference>,
) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        // The API server rejects notes over 1 kB.
        note: Some(truncate(note, 1024)),
        action: action.to_string(),
        secondary: related,
    };
    if let Err(error) = recorder.publish(&event, &cluster.object_ref(&())).await {
        tracing::warn!(
            cluster = cluster.metadata.name.as_deref().unwrap_or("?"),
            reason,
            %error,
            "cannot publish event"
        );
    }
}

/// `text` cut to at most `max` bytes on a character boundary.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn notes_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("short".into(), 1024), "short");
        let long = "é".repeat(600); // 1200 bytes
        let cut = truncate(long, 1024);
        assert_eq!(cut.len(), 1024);
        assert_eq!(truncate("aé".into(), 2), "a");
    }
}

//! What a cluster's pods say about themselves, for the conditions: which broker pods are ready,
//! which are still Pending, and why a pod cannot run (it cannot be scheduled, a Secret it needs
//! is missing, its image cannot be pulled, it crash-loops), in the pod's own words.

use k8s_openapi::api::core::v1::Pod;

/// Waiting reasons of a container that is merely on its way.
const ON_THE_WAY: [&str; 2] = ["ContainerCreating", "PodInitializing"];

/// Longest message put into a condition about pods.
const MESSAGE_MAX: usize = 1024;

/// Why one pod cannot run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodProblem {
    /// The pod's name.
    pub pod: String,
    /// A CamelCase reason from the pod (`Unschedulable`, `CreateContainerConfigError`, ...).
    pub reason: String,
    /// The pod's explanation (e.g. `secret "redis-credentials" not found`).
    pub message: String,
}

fn name(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or("?")
}

fn condition_is(pod: &Pod, type_: &str, status: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == status))
}

/// Whether the pod is ready (its `Ready` condition is true) and not being deleted.
pub fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && condition_is(pod, "Ready", "True")
}

/// Whether the pod has not started running yet (phase `Pending`).
pub fn is_pending(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending")
}

/// The ordinal of a StatefulSet pod named `<set>-<ordinal>`.
pub fn ordinal(pod: &Pod, set: &str) -> Option<i32> {
    name(pod).strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

/// A reason usable in a condition (`[A-Za-z][A-Za-z0-9_,:]*`), or `None`.
fn usable_reason(reason: &str) -> Option<String> {
    let ok = reason
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && reason
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    ok.then(|| reason.to_string())
}

/// Why `pod` cannot run, if the pod says: not scheduled (`PodScheduled=False`), or a container
/// (init containers first) waiting for a reason other than being created.
pub fn problem(pod: &Pod) -> Option<PodProblem> {
    let status = pod.status.as_ref()?;
    let found = |reason: &str, message: Option<&str>| PodProblem {
        pod: name(pod).to_string(),
        reason: usable_reason(reason).unwrap_or_else(|| "PodNotRunning".to_string()),
        message: message.unwrap_or(reason).to_string(),
    };
    if let Some(c) = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
    {
        return Some(found(
            c.reason.as_deref().unwrap_or("Unschedulable"),
            c.message.as_deref(),
        ));
    }
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for c in containers {
        let Some(waiting) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let Some(reason) = waiting.reason.as_deref() else {
            continue;
        };
        if !ON_THE_WAY.contains(&reason) {
            return Some(found(reason, waiting.message.as_deref()));
        }
    }
    None
}

/// The problems of `pods`, sorted by pod name.
pub fn problems<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> Vec<PodProblem> {
    let mut found: Vec<PodProblem> = pods.into_iter().filter_map(problem).collect();
    found.sort_by(|a, b| a.pod.cmp(&b.pod));
    found
}

/// One reason and message for a condition: the reason of the first problem, and every problem
/// as `pods: reason: message`, pods with the same reason and message together.
pub fn summary(problems: &[PodProblem]) -> Option<(String, String)> {
    let first = problems.first()?;
    let mut groups: Vec<(Vec<&str>, &str, &str)> = Vec::new();
    for p in problems {
        match groups
            .iter_mut()
            .find(|(_, r, m)| *r == p.reason && *m == p.message)
        {
            Some(group) => group.0.push(&p.pod),
            None => groups.push((vec![&p.pod], &p.reason, &p.message)),
        }
    }
    let mut message = groups
        .iter()
        .map(|(pods, reason, msg)| format!("{}: {reason}: {msg}", pods.join(", ")))
        .collect::<Vec<_>>()
        .join("; ");
    if message.len() > MESSAGE_MAX {
        let mut end = MESSAGE_MAX;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    Some((first.reason.clone(), message))
}

#[cfg(test)]
pub(crate) mod test_pods {
    //! Pods as the API server reports them, for the status tests.

    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateWaiting, ContainerStatus, Pod, PodCondition, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(name: &str, phase: &str, conditions: Vec<PodCondition>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                phase: Some(phase.to_string()),
                conditions: Some(conditions),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    fn cond(type_: &str, status: &str) -> PodCondition {
        PodCondition {
            type_: type_.to_string(),
            status: status.to_string(),
            ..PodCondition::default()
        }
    }

    /// A running, ready pod.
    pub fn ready(name: &str) -> Pod {
        pod(name, "Running", vec![cond("Ready", "True")])
    }

    /// A pod the scheduler cannot place.
    pub fn unschedulable(name: &str, message: &str) -> Pod {
        let mut scheduled = cond("PodScheduled", "False");
        scheduled.reason = Some("Unschedulable".to_string());
        scheduled.message = Some(message.to_string());
        pod(name, "Pending", vec![scheduled, cond("Ready", "False")])
    }

    /// A scheduled pod whose container waits for `reason`.
    pub fn waiting(name: &str, reason: &str, message: &str) -> Pod {
        let mut p = pod(
            name,
            "Pending",
            vec![cond("PodScheduled", "True"), cond("Ready", "False")],
        );
        if let Some(status) = p.status.as_mut() {
            status.container_statuses = Some(vec![ContainerStatus {
                name: "broker".to_string(),
                state: Some(ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some(reason.to_string()),
                        message: (!message.is_empty()).then(|| message.to_string()),
                    }),
                    ..ContainerState::default()
                }),
                ..ContainerStatus::default()
            }]);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::test_pods::*;
    use super::*;

    #[test]
    fn problems_come_from_scheduling_and_waiting_containers() {
        let pods = [
            ready("demo-0"),
            waiting(
                "demo-2",
                "CreateContainerConfigError",
                "secret \"redis-credentials\" not found",
            ),
            waiting("demo-3", "ContainerCreating", ""),
            unschedulable("demo-1", "0/1 nodes are available: 1 Insufficient cpu."),
            waiting(
                "demo-4",
                "CreateContainerConfigError",
                "secret \"redis-credentials\" not found",
            ),
        ];
        let found = problems(&pods);
        assert_eq!(
            found.iter().map(|p| p.pod.as_str()).collect::<Vec<_>>(),
            ["demo-1", "demo-2", "demo-4"],
            "a ready pod and one being created have no problem"
        );
        assert_eq!(found[0].reason, "Unschedulable");
        let (reason, message) = summary(&found).expect("summary");
        assert_eq!(reason, "Unschedulable");
        assert_eq!(
            message,
            "demo-1: Unschedulable: 0/1 nodes are available: 1 Insufficient cpu.; \
             demo-2, demo-4: CreateContainerConfigError: secret \"redis-credentials\" not found"
        );
        assert_eq!(summary(&[]), None);
    }

    #[test]
    fn readiness_pending_and_ordinals() {
        assert!(is_ready(&ready("demo-0")));
        assert!(!is_ready(&unschedulable("demo-1", "no")));
        assert!(is_pending(&unschedulable("demo-1", "no")));
        assert!(!is_pending(&ready("demo-0")));
        assert_eq!(ordinal(&ready("demo-12"), "demo"), Some(12));
        assert_eq!(ordinal(&ready("demo-redis-5d8f-x"), "demo"), None);
        assert_eq!(ordinal(&ready("demox-1"), "demo"), None);
    }

    #[test]
    fn odd_reasons_are_replaced() {
        let p = waiting("demo-0", "not a reason!", "");
        let found = problem(&p).expect("problem");
        assert_eq!(found.reason, "PodNotRunning");
        assert_eq!(found.message, "not a reason!");
    }
}

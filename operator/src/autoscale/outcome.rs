//! What the autoscaler did in one reconcile, as the status records it (the `Autoscaling`
//! condition and `status.autoscaling`).

use crate::crd::AutoscalingStatus;

/// What the autoscaler did in this reconcile, for the status.
#[derive(Debug, Clone, PartialEq)]
pub struct Autoscaled {
    /// Whether it is in charge and has what it needs (the `Autoscaling` condition's status).
    pub active: bool,
    /// The condition's reason.
    pub reason: String,
    /// The condition's message.
    pub message: String,
    /// `status.autoscaling`.
    pub status: AutoscalingStatus,
}

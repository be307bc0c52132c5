//! Autoscaling on connections (`spec.autoscaling`): how many brokers a cluster wants, from the
//! connection counts its brokers report ([`counts`]) and the recommendations of the last
//! minutes. Pure: the reconciler reads the counts, keeps the recommendations and applies the
//! decision (`spec.replicas` through the scale subresource).

pub mod counts;
pub mod cpu;
pub mod outcome;

pub use cpu::Cpu;
pub use outcome::Autoscaled;

use crate::crd::AutoscalingSpec;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A scale-up at most doubles the brokers, or adds this many when that is more.
const MAX_STEP_UP: i32 = 4;

/// The connections the brokers hold, or which brokers did not say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Counts {
    /// Every broker pod the cluster should have answered: their connections together.
    Complete(i64),
    /// These broker pods are missing, not ready, leaving (a scale-down under way) or did not
    /// answer; the others hold `known` connections (a lower bound).
    Missing {
        /// The connections of the brokers that answered.
        known: i64,
        /// The pods without a count, each with why.
        pods: Vec<String>,
    },
}

/// One cluster's recommendations (what it wanted at each count), kept while the operator runs.
#[derive(Debug)]
pub struct Recommendations {
    /// When this operator began watching the cluster: a scale-down waits until it watched a
    /// whole window.
    since: Instant,
    entries: VecDeque<(Instant, i32)>,
    /// When the brokers were last counted.
    counted: Option<Instant>,
    /// Their CPU time at the last readings (for a CPU target).
    pub cpu: cpu::CpuReadings,
}

impl Recommendations {
    /// None yet, watching from `now`.
    pub fn new(now: Instant) -> Self {
        Recommendations {
            since: now,
            entries: VecDeque::new(),
            counted: None,
            cpu: cpu::CpuReadings::default(),
        }
    }

    /// When the brokers were last counted (see [`decide`]).
    pub fn last_counted(&self) -> Option<Instant> {
        self.counted
    }

    fn record(&mut self, now: Instant, replicas: i32, keep: Duration) {
        while self
            .entries
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > keep)
        {
            self.entries.pop_front();
        }
        self.entries.push_back((now, replicas));
    }

    /// The recommendations younger than `window`, and always the newest.
    fn within(&self, now: Instant, window: Duration) -> impl Iterator<Item = i32> + '_ {
        let newest = self.entries.len().saturating_sub(1);
        self.entries
            .iter()
            .enumerate()
            .filter(move |(i, (at, _))| *i == newest || now.saturating_duration_since(*at) < window)
            .map(|(_, (_, replicas))| *replicas)
    }

    /// Whether this operator has watched the cluster for `window` at least.
    fn watched(&self, now: Instant, window: Duration) -> bool {
        now.saturating_duration_since(self.since) >= window
    }
}

/// Why the autoscaler wants what it wants (the `Autoscaling` condition's reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The connections per broker are within the tolerance of the target (or at a bound).
    AtTarget,
    /// More brokers: the connections per broker are above the target.
    ScaleUp,
    /// Fewer brokers: they have been below the target for the whole window.
    ScaleDown,
    /// Above the target, but not for the whole scale-up window yet.
    StabilizingUp,
    /// Below the target, but not for the whole scale-down window yet.
    StabilizingDown,
    /// `spec.replicas` is below `minReplicas`.
    BelowMinimum,
    /// `spec.replicas` is above `maxReplicas`.
    AboveMaximum,
    /// Some broker did not report its count (starting, not ready, leaving, unreachable): no
    /// scale-down until every one does (a scale-up on the others' counts alone may happen).
    CountsUnavailable,
    /// More brokers are needed than `maxReplicas` allows.
    ScalingLimited,
}

impl Reason {
    /// The condition's reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::AtTarget => "AtTarget",
            Reason::ScaleUp => "ScaleUp",
            Reason::ScaleDown => "ScaleDown",
            Reason::StabilizingUp => "StabilizingUp",
            Reason::StabilizingDown => "StabilizingDown",
            Reason::BelowMinimum => "BelowMinimum",
            Reason::AboveMaximum => "AboveMaximum",
            Reason::CountsUnavailable => "CountsUnavailable",
            Reason::ScalingLimited => "ScalingLimited",
        }
    }
}

/// What the autoscaler wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The brokers wanted now.
    pub desired: i32,
    /// Why.
    pub reason: Reason,
    /// Why, in words (the condition's message).
    pub message: String,
}

/// Decides how many brokers the cluster wants, now `current` are asked for, recording this
/// count's recommendation.
pub fn decide(
    spec: &AutoscalingSpec,
    current: i32,
    counts: &Counts,
    cpu: &Cpu,
    history: &mut Recommendations,
    now: Instant,
) -> Decision {
    let (min, max) = (spec.min_replicas, spec.max_replicas.max(spec.min_replicas));
    if current < min {
        return Decision {
            desired: min,
            reason: Reason::BelowMinimum,
            message: format!("{current} brokers are fewer than minReplicas ({min})"),
        };
    }
    if current > max {
        return Decision {
            desired: max,
            reason: Reason::AboveMaximum,
            message: format!("{current} brokers are more than maxReplicas ({max})"),
        };
    }
    history.counted = Some(now);
    let (connections, mut missing) = match counts {
        Counts::Complete(connections) => (*connections, None),
        Counts::Missing { known, pods } => (*known, Some(pods.clone())),
    };
    let target = spec.target_connections_per_broker.max(1);
    // Within the tolerance: |connections - current × target| ≤ tolerance% of current × target.
    let aimed = i64::from(current) * target;
    let off = (connections - aimed).abs();
    let wanted = if off * 100 <= i64::from(spec.tolerance_percent) * aimed {
        current
    } else {
        let needed = (connections + target - 1) / target;
        i32::try_from(needed).unwrap_or(i32::MAX)
    };
    // With a CPU target, the stricter of the two; while the CPU use is unknown, it counts as
    // a missing reading (no scale-down).
    let mut cpu_note = String::new();
    let wanted = match (cpu, spec.target_cpu_utilization_percent) {
        (Cpu::Percent(percent), Some(cpu_target)) => {
            let cpu_target = i64::from(cpu_target.max(1));
            cpu_note = format!("; CPU {percent}% of requests (target {cpu_target}%)");
            let off = (percent - cpu_target).abs();
            let cpu_wanted = if off * 100 <= i64::from(spec.tolerance_percent) * cpu_target {
                current
            } else {
                let needed = (i64::from(current) * percent + cpu_target - 1) / cpu_target;
                i32::try_from(needed).unwrap_or(i32::MAX)
            };
            wanted.max(cpu_wanted)
        }
        (Cpu::Unknown(why), Some(_)) => {
            missing
                .get_or_insert_with(Vec::new)
                .push(format!("CPU use: {why}"));
            wanted
        }
        _ => wanted,
    };
    let recommended = wanted.clamp(min, max);
    let up_window = seconds(spec.scale_up_stabilization_seconds);
    let down_window = seconds(spec.scale_down_stabilization_seconds);
    if let Some(pods) = missing {
        // The others' connections are a lower bound: enough for a scale-up, never for a
        // scale-down.
        let lower_bound = (recommended > current).then(|| {
            history.record(now, recommended, up_window.max(down_window));
            let floor = history.within(now, up_window).min().unwrap_or(current);
            floor.min(step_up(current)).max(current)
        });
        let waited = history.watched(now, up_window);
        return match lower_bound {
            Some(desired) if waited && desired > current => Decision {
                desired,
                reason: Reason::ScaleUp,
                message: format!(
                    "the brokers that answered hold {connections} connections (target {} \
                     each), more than {current} brokers should; no count from {}: scaling to \
                     {desired}",
                    spec.target_connections_per_broker,
                    pods.join(", ")
                ),
            },
            _ => Decision {
                desired: current,
                reason: Reason::CountsUnavailable,
                message: format!(
                    "no reading of {}: no scale-down until every broker reports",
                    pods.join(", ")
                ),
            },
        };
    }
    history.record(now, recommended, up_window.max(down_window));
    let per_broker = connections / i64::from(current);
    let situation = format!(
        "{current} brokers hold {connections} connections ({per_broker} each; target {target} \
         ±{}%){cpu_note}",
        spec.tolerance_percent
    );
    let (desired, reason) = if recommended > current {
        // As far as every recommendation of the window went, and at most a step.
        let floor = history.within(now, up_window).min().unwrap_or(current);
        let desired = floor.min(step_up(current)).max(current);
        if history.watched(now, up_window) && desired > current {
            (desired, Reason::ScaleUp)
        } else {
            (current, Reason::StabilizingUp)
        }
    } else if recommended < current {
        // As far as every recommendation of the window allowed.
        let ceiling = history.within(now, down_window).max().unwrap_or(current);
        if history.watched(now, down_window) && ceiling < current {
            (ceiling, Reason::ScaleDown)
        } else {
            (current, Reason::StabilizingDown)
        }
    } else if wanted > max {
        (current, Reason::ScalingLimited)
    } else {
        (current, Reason::AtTarget)
    };
    let message = match reason {
        Reason::ScaleUp | Reason::ScaleDown => format!("{situation}: scaling to {desired}"),
        Reason::StabilizingUp => format!(
            "{situation}: {recommended} wanted, waiting for it to hold {}s",
            spec.scale_up_stabilization_seconds
        ),
        Reason::StabilizingDown => format!(
            "{situation}: {recommended} would do, waiting for it to hold {}s",
            spec.scale_down_stabilization_seconds
        ),
        Reason::ScalingLimited => format!("{situation}: {wanted} wanted, maxReplicas is {max}"),
        _ => situation,
    };
    Decision {
        desired,
        reason,
        message,
    }
}

/// The most brokers one scale-up step goes to.
fn step_up(current: i32) -> i32 {
    (current * 2).max(current + MAX_STEP_UP)
}

fn seconds(value: i32) -> Duration {
    Duration::from_secs(u64::try_from(value).unwrap_or(0))
}

#[cfg(test)]
mod tests;

//! The operator's Prometheus metrics, served on `/metrics` by [`crate::http`].

use crate::Error;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabel {
    error: &'static str,
}

/// Every metric the operator keeps.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabel, Counter>,
    reconcile_errors: Family<ErrorLabel, Counter>,
    reconcile_duration: Histogram,
    /// 1 while this replica runs the controller (holds the lease, or leader election is off).
    pub leader: Gauge,
}

impl Metrics {
    /// Registers every metric under the `starling_operator_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("starling_operator");
        let reconciles = Family::<ResultLabel, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles finished, by result (success or error)",
            reconciles.clone(),
        );
        let reconcile_errors = Family::<ErrorLabel, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed reconciles, by kind of error",
            reconcile_errors.clone(),
        );
        // 5 ms to about 41 s.
        let reconcile_duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            reconcile_duration.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica runs the controller, 0 while it stands by",
            leader.clone(),
        );
        Metrics {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            leader,
        }
    }

    /// Counts one finished reconcile and its duration.
    pub fn observe_reconcile<T>(&self, result: &Result<T, Error>, took: Duration) {
        self.reconcile_duration.observe(took.as_secs_f64());
        let label = match result {
            Ok(_) => "success",
            Err(error) => {
                self.reconcile_errors
                    .get_or_create(&ErrorLabel {
                        error: error.kind(),
                    })
                    .inc();
                "error"
            }
        };
        self.reconciles
            .get_or_create(&ResultLabel { result: label })
            .inc();
    }

    /// The metrics in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_are_counted_by_result_and_error_kind() {
        let m = Metrics::new();
        m.observe_reconcile(&Ok(()), Duration::from_millis(3));
        m.observe_reconcile(&Ok(()), Duration::from_millis(30));
        m.observe_reconcile::<()>(
            &Err(Error::InvalidSpec("no".into())),
            Duration::from_millis(1),
        );
        m.leader.set(1);
        let text = m.render();
        for line in [
            "starling_operator_reconciles_total{result=\"success\"} 2",
            "starling_operator_reconciles_total{result=\"error\"} 1",
            "starling_operator_reconcile_errors_total{error=\"invalid_spec\"} 1",
            "starling_operator_reconcile_duration_seconds_count 3",
            "starling_operator_reconcile_duration_seconds_bucket{le=\"0.005\"} 2",
            "starling_operator_leader 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in\n{text}"
            );
        }
    }
}

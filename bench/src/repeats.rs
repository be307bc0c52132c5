//! Repeated runs of one case: per-metric medians and ranges over the runs
//! that succeeded, so one noisy run does not decide a figure.

use crate::report::{Better, Metric, Outcome};

/// The median of the finite values (the mean of the middle two for an even
/// count); `None` if there are none.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[mid]),
        _ => Some((sorted[mid - 1] + sorted[mid]) / 2.0),
    }
}

/// The smallest and largest finite value; `None` if there are none.
pub fn min_max(values: &[f64]) -> Option<(f64, f64)> {
    values
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(None, |range, v| match range {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

/// The outcomes of one case's runs, in run order.
#[derive(Debug, Clone, Default)]
pub struct Runs {
    outcomes: Vec<Outcome>,
}

impl Runs {
    pub fn new(outcomes: Vec<Outcome>) -> Self {
        Runs { outcomes }
    }

    /// Records the next run.
    pub fn push(&mut self, outcome: Outcome) {
        self.outcomes.push(outcome);
    }

    /// How many runs were made, failed ones included.
    pub fn attempted(&self) -> usize {
        self.outcomes.len()
    }

    /// How many runs succeeded.
    pub fn succeeded(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Ok { .. }))
            .count()
    }

    /// A metric in each run: `None` where the run failed or did not measure it.
    pub fn per_run(&self, name: &str) -> Vec<Option<f64>> {
        self.outcomes
            .iter()
            .map(|o| o.value(name).filter(|v| v.is_finite()))
            .collect()
    }

    fn measured(&self, name: &str) -> Vec<f64> {
        self.per_run(name).into_iter().flatten().collect()
    }

    /// How many runs measured the metric.
    pub fn measured_count(&self, name: &str) -> usize {
        self.measured(name).len()
    }

    /// The metric's median over the runs that measured it.
    pub fn median(&self, name: &str) -> Option<f64> {
        median(&self.measured(name))
    }

    /// The metric's smallest and largest value over the runs that measured it.
    pub fn min_max(&self, name: &str) -> Option<(f64, f64)> {
        min_max(&self.measured(name))
    }

    /// The metrics' names and directions, in the order the runs first give them.
    pub fn names(&self) -> Vec<(&'static str, Better)> {
        let mut names: Vec<(&'static str, Better)> = Vec::new();
        for m in self.outcomes.iter().flat_map(Outcome::metrics) {
            if !names.iter().any(|(n, _)| *n == m.name) {
                names.push((m.name, m.better));
            }
        }
        names
    }

    /// Every metric's median, NaN where no run measured it.
    pub fn medians(&self) -> Vec<Metric> {
        self.names()
            .into_iter()
            .map(|(name, better)| Metric::new(name, better, self.median(name).unwrap_or(f64::NAN)))
            .collect()
    }

    /// The failed runs: their number (from 1) and error.
    pub fn failures(&self) -> impl Iterator<Item = (usize, &str)> {
        self.outcomes
            .iter()
            .enumerate()
            .filter_map(|(i, o)| match o {
                Outcome::Failed { error } => Some((i + 1, error.as_str())),
                _ => None,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: &str = "received msgs/s";

    fn ok(received: f64, p99: f64) -> Outcome {
        Outcome::Ok {
            metrics: vec![
                Metric::new(RATE, Better::Higher, received),
                Metric::new("p99", Better::Lower, p99),
            ],
        }
    }

    fn failed() -> Outcome {
        Outcome::Failed {
            error: "boom".into(),
        }
    }

    #[test]
    fn median_of_odd_and_even_counts_in_any_order() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[10.0, 1.0, 5.0, 2.0]), Some(3.5));
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[4.0, 2.0]), Some(3.0));
        // One outlier does not move it.
        assert_eq!(median(&[1.0e6, 1.1e6, 0.2e6]), Some(1.0e6));
    }

    #[test]
    fn median_and_range_ignore_values_that_were_not_measured() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, f64::INFINITY]), None);
        assert_eq!(median(&[f64::NAN, 4.0, 2.0]), Some(3.0));
        assert_eq!(min_max(&[]), None);
        assert_eq!(min_max(&[f64::NAN]), None);
        assert_eq!(min_max(&[5.0, f64::NAN, 2.0, 9.0]), Some((2.0, 9.0)));
        assert_eq!(min_max(&[5.0]), Some((5.0, 5.0)));
    }

    #[test]
    fn runs_take_each_metric_median_separately() {
        let runs = Runs::new(vec![ok(100.0, 9.0), ok(300.0, 1.0), ok(200.0, 5.0)]);
        assert_eq!(runs.median(RATE), Some(200.0));
        assert_eq!(runs.median("p99"), Some(5.0));
        assert_eq!(runs.min_max(RATE), Some((100.0, 300.0)));
        let medians = runs.medians();
        let names: Vec<&str> = medians.iter().map(|m| m.name).collect();
        assert_eq!(names, [RATE, "p99"]);
        assert_eq!(medians[0].value, 200.0);
        assert_eq!(medians[1].better, Better::Lower);
    }

    #[test]
    fn failed_runs_are_left_out_and_listed() {
        let mut runs = Runs::default();
        runs.push(ok(100.0, 9.0));
        runs.push(failed());
        runs.push(ok(300.0, 1.0));
        assert_eq!(runs.attempted(), 3);
        assert_eq!(runs.succeeded(), 2);
        assert_eq!(runs.measured_count(RATE), 2);
        assert_eq!(runs.median(RATE), Some(200.0));
        assert_eq!(runs.per_run(RATE), [Some(100.0), None, Some(300.0)]);
        let failures: Vec<(usize, &str)> = runs.failures().collect();
        assert_eq!(failures, [(2, "boom")]);
    }

    #[test]
    fn no_successful_run_gives_no_value() {
        let runs = Runs::new(vec![failed(), failed()]);
        assert_eq!(runs.succeeded(), 0);
        assert_eq!(runs.median(RATE), None);
        assert_eq!(runs.min_max(RATE), None);
        assert!(runs.names().is_empty());
        assert_eq!(runs.per_run(RATE), [None, None]);
    }
}

//! The cluster report: one table per load (cross-node, same-node and
//! standalone side by side, each the median of its runs), the
//! redis-benchmark ceiling, and a summary of ratios with the targets they are
//! measured against.

use serde::{Serialize, Serializer};

use crate::cluster_scenarios::{Load, Placement, P99, RECEIVED};
use crate::redis_benchmark::XaddFigures;
use crate::repeats::Runs;
use crate::report::{format_value, render_table, Better, Metric, Outcome};

/// One load on every placement, in [`Placement::ALL`] order, each run one or
/// more times.
#[derive(Debug, Clone)]
pub struct LoadResults {
    pub load: Load,
    pub title: String,
    pub placements: Vec<(Placement, Runs)>,
}

impl LoadResults {
    /// The load on every placement, with no runs yet.
    pub fn new(load: Load, rate: f64) -> Self {
        LoadResults {
            load,
            title: load.title(rate),
            placements: Placement::ALL
                .into_iter()
                .map(|p| (p, Runs::default()))
                .collect(),
        }
    }

    /// Records the next run of a placement.
    pub fn push(&mut self, placement: Placement, outcome: Outcome) {
        if let Some((_, runs)) = self.placements.iter_mut().find(|(p, _)| *p == placement) {
            runs.push(outcome);
        } else {
            self.placements.push((placement, Runs::new(vec![outcome])));
        }
    }

    fn runs(&self, placement: Placement) -> Option<&Runs> {
        self.placements
            .iter()
            .find(|(p, _)| *p == placement)
            .map(|(_, r)| r)
    }

    /// A metric of one placement: its median over the runs that measured it.
    pub fn value(&self, placement: Placement, name: &str) -> Option<f64> {
        self.runs(placement)?.median(name)
    }

    /// How many runs of one placement measured a metric.
    fn measured_count(&self, placement: Placement, name: &str) -> usize {
        self.runs(placement)
            .map_or(0, |runs| runs.measured_count(name))
    }

    /// The most runs any placement had.
    fn repeat(&self) -> usize {
        self.placements
            .iter()
            .map(|(_, r)| r.attempted())
            .max()
            .unwrap_or(0)
    }

    /// The load as a table: one column per placement (medians) and
    /// cross/same ratios; with repeats also the runs that succeeded and the
    /// range of the received rate.
    pub fn render(&self) -> String {
        let repeat = self.repeat();
        let mut header = vec!["metric".to_string()];
        header.extend(self.placements.iter().map(|(p, _)| p.label().to_string()));
        header.push("cross/same".to_string());
        let mut lines = vec![header];
        if repeat > 1 {
            let mut line = vec!["runs ok".to_string()];
            line.extend(
                self.placements
                    .iter()
                    .map(|(_, r)| format!("{}/{}", r.succeeded(), r.attempted())),
            );
            line.push("-".to_string());
            lines.push(line);
        }
        let mut names: Vec<(&'static str, Better)> = Vec::new();
        for (_, runs) in &self.placements {
            for (name, better) in runs.names() {
                if !names.iter().any(|(n, _)| *n == name) {
                    names.push((name, better));
                }
            }
        }
        for (name, better) in names {
            let mut line = vec![name.to_string()];
            line.extend(
                self.placements
                    .iter()
                    .map(|(p, _)| format_value(self.value(*p, name))),
            );
            let ratio = match better {
                Better::Neither => None,
                _ => ratio_of(
                    self.value(Placement::CrossNode, name),
                    self.value(Placement::SameNode, name),
                ),
            };
            line.push(ratio.map_or("-".to_string(), |r| format!("{r:.2}")));
            lines.push(line);
            if name == RECEIVED && repeat > 1 {
                let mut range = vec![format!("{RECEIVED} min-max")];
                range.extend(
                    self.placements
                        .iter()
                        .map(|(_, r)| format_range(r.min_max(name))),
                );
                range.push("-".to_string());
                lines.push(range);
            }
        }
        let mut out = format!("== {} ({})", self.title, self.load.id());
        if repeat > 1 {
            out.push_str(&format!(", medians of {repeat} runs"));
        }
        out.push('\n');
        out.push_str(&render_table(&lines));
        for (placement, runs) in &self.placements {
            for (run, error) in runs.failures() {
                let which = if repeat > 1 {
                    format!("{} run {run}/{repeat}", placement.label())
                } else {
                    placement.label().to_string()
                };
                out.push_str(&format!("  ! {which} failed: {error}\n"));
            }
        }
        out
    }
}

/// `min-max` of a metric's runs; `-` when none measured it.
fn format_range(range: Option<(f64, f64)>) -> String {
    match range {
        Some((lo, hi)) => format!("{}-{}", format_value(Some(lo)), format_value(Some(hi))),
        None => "-".to_string(),
    }
}

/// How the runs of one placement appear in the JSON report.
#[derive(Serialize)]
struct PlacementJson<'a> {
    placement: Placement,
    runs: usize,
    runs_ok: usize,
    /// Every metric's median over the runs that measured it (NaN: `null`).
    medians: Vec<Metric>,
    /// The received rate of each run, `null` for a failed one.
    received_per_run: Vec<Option<f64>>,
    received_min: Option<f64>,
    received_max: Option<f64>,
    failures: Vec<RunFailure<'a>>,
}

#[derive(Serialize)]
struct RunFailure<'a> {
    run: usize,
    error: &'a str,
}

impl<'a> PlacementJson<'a> {
    fn new(placement: Placement, runs: &'a Runs) -> Self {
        let range = runs.min_max(RECEIVED);
        PlacementJson {
            placement,
            runs: runs.attempted(),
            runs_ok: runs.succeeded(),
            medians: runs.medians(),
            received_per_run: runs.per_run(RECEIVED),
            received_min: range.map(|(lo, _)| lo),
            received_max: range.map(|(_, hi)| hi),
            failures: runs
                .failures()
                .map(|(run, error)| RunFailure { run, error })
                .collect(),
        }
    }
}

impl Serialize for LoadResults {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct LoadJson<'a> {
            load: Load,
            title: &'a str,
            placements: Vec<PlacementJson<'a>>,
        }
        LoadJson {
            load: self.load,
            title: &self.title,
            placements: self
                .placements
                .iter()
                .map(|(p, runs)| PlacementJson::new(*p, runs))
                .collect(),
        }
        .serialize(serializer)
    }
}

/// One redis-benchmark run and what it gave.
#[derive(Debug, Clone, Serialize)]
pub struct XaddResult {
    pub label: &'static str,
    pub command: String,
    #[serde(flatten)]
    pub figures: Result<XaddFigures, String>,
}

/// How a summary figure compares with its target.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "bound")]
pub enum Target {
    None,
    AtLeast(f64),
    Below(f64),
}

impl Target {
    /// The target and whether `value` meets it, e.g. `>= 0.60 (met)`.
    pub fn verdict(self, value: Option<f64>, unit: &str) -> String {
        let (text, met) = match self {
            Target::None => return "-".to_string(),
            Target::AtLeast(bound) => (format!(">= {bound:.2}{unit}"), value.map(|v| v >= bound)),
            Target::Below(bound) => (format!("< {bound}{unit}"), value.map(|v| v < bound)),
        };
        match met {
            Some(true) => format!("{text} (met)"),
            Some(false) => format!("{text} (NOT met)"),
            None => format!("{text} (not measured)"),
        }
    }
}

/// A line of the summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SummaryRow {
    pub what: String,
    pub value: Option<f64>,
    /// Appended to the value: "" for ratios, " ms" for latencies.
    pub unit: &'static str,
    pub target: Target,
    /// The runs the figure comes from, e.g. "medians of 3 runs".
    pub basis: String,
}

/// The runs a summary figure comes from, given how many runs measured each
/// of its inputs: "median of 3 runs", "medians of 2-3 runs".
pub fn basis(counts: &[usize]) -> String {
    let lo = counts.iter().copied().min().unwrap_or(0);
    let hi = counts.iter().copied().max().unwrap_or(0);
    let medians = if counts.len() > 1 {
        "medians"
    } else {
        "median"
    };
    let runs = if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}-{hi}")
    };
    let noun = if hi == 1 { "run" } else { "runs" };
    format!("{medians} of {runs} {noun}")
}

/// The whole cluster run.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    pub rate: f64,
    /// Runs per case asked for (`--repeat`).
    pub repeat: usize,
    pub loads: Vec<LoadResults>,
    pub xadd: Vec<XaddResult>,
}

/// Cross-node ÷ same-node message rate at which the relay counts as cheap.
pub const THROUGHPUT_RATIO_TARGET: f64 = 0.60;
/// Cross-node p99 (ms) at the fixed rate that the relay should stay under.
pub const P99_TARGET_MS: f64 = 5.0;

impl ClusterReport {
    fn load(&self, load: Load) -> Option<&LoadResults> {
        self.loads.iter().find(|l| l.load == load)
    }

    fn value(&self, load: Load, placement: Placement, name: &str) -> Option<f64> {
        self.load(load)?.value(placement, name)
    }

    fn measured_count(&self, load: Load, placement: Placement, name: &str) -> usize {
        self.load(load)
            .map_or(0, |l| l.measured_count(placement, name))
    }

    /// The ratios the cluster scenario is about, with their targets; every
    /// figure is computed from the medians of the runs.
    pub fn summary(&self) -> Vec<SummaryRow> {
        use Placement::{CrossNode, SameNode, Standalone};
        let mut rows = Vec::new();
        let of = |inputs: &[(Load, Placement, &str)]| -> (Vec<Option<f64>>, String) {
            let values = inputs
                .iter()
                .map(|(l, p, n)| self.value(*l, *p, n))
                .collect();
            let counts: Vec<usize> = inputs
                .iter()
                .map(|(l, p, n)| self.measured_count(*l, *p, n))
                .collect();
            (values, basis(&counts))
        };
        for (load, qos) in [(Load::ThroughputQos0, 0), (Load::ThroughputQos1, 1)] {
            for (other, target) in [
                (SameNode, Target::AtLeast(THROUGHPUT_RATIO_TARGET)),
                (Standalone, Target::None),
            ] {
                let (v, basis) = of(&[(load, CrossNode, RECEIVED), (load, other, RECEIVED)]);
                rows.push(SummaryRow {
                    what: format!("cross-node / {} msgs/s, QoS {qos}", other.label()),
                    value: ratio_of(v[0], v[1]),
                    unit: "",
                    target,
                    basis,
                });
            }
        }
        let (v, cross_basis) = of(&[(Load::Latency, CrossNode, P99)]);
        rows.push(SummaryRow {
            what: format!("cross-node p99 at {} msgs/s, QoS 1", self.rate),
            value: v[0],
            unit: " ms",
            target: Target::Below(P99_TARGET_MS),
            basis: cross_basis,
        });
        let (v, basis) = of(&[
            (Load::Latency, CrossNode, P99),
            (Load::Latency, SameNode, P99),
        ]);
        rows.push(SummaryRow {
            what: format!("cross-node / same-node p99 at {} msgs/s", self.rate),
            value: ratio_of(v[0], v[1]),
            unit: "",
            target: Target::None,
            basis,
        });
        for xadd in &self.xadd {
            let ceiling = xadd.figures.as_ref().ok().map(|f| f.requests_per_second);
            for (load, qos) in [(Load::ThroughputQos0, 0), (Load::ThroughputQos1, 1)] {
                let (v, basis) = of(&[(load, CrossNode, RECEIVED)]);
                rows.push(SummaryRow {
                    what: format!("cross-node QoS {qos} msgs/s / redis {}", xadd.label),
                    value: ratio_of(v[0], ceiling),
                    unit: "",
                    target: Target::None,
                    basis: format!("cross-node {basis}"),
                });
            }
        }
        rows
    }

    /// Every table, the redis-benchmark figures and the summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for load in &self.loads {
            out.push_str(&load.render());
            out.push('\n');
        }
        out.push_str(&render_xadd(&self.xadd));
        out.push('\n');
        out.push_str("== cluster summary");
        if self.repeat > 1 {
            out.push_str(&format!(
                ": ratios of medians, {} runs per case",
                self.repeat
            ));
        }
        out.push('\n');
        let mut lines = vec![vec![
            "figure".to_string(),
            "value".to_string(),
            "target".to_string(),
        ]];
        for row in self.summary() {
            let value = match row.value {
                Some(v) if row.unit.is_empty() => format!("{v:.2}"),
                other => format!("{}{}", format_value(other), row.unit),
            };
            lines.push(vec![
                format!("{} ({})", row.what, row.basis),
                value,
                row.target.verdict(row.value, row.unit),
            ]);
        }
        out.push_str(&render_table(&lines));
        out
    }
}

/// The redis-benchmark runs as a table, then their command lines.
fn render_xadd(xadd: &[XaddResult]) -> String {
    let mut lines = vec![vec![
        "redis-benchmark".to_string(),
        "requests/s".to_string(),
        "p50 ms".to_string(),
        "p99 ms".to_string(),
    ]];
    for run in xadd {
        let cells = match &run.figures {
            Ok(f) => [
                format_value(Some(f.requests_per_second)),
                format_value(Some(f.p50_ms)),
                format_value(Some(f.p99_ms)),
            ],
            Err(_) => ["-".to_string(), "-".to_string(), "-".to_string()],
        };
        let mut line = vec![run.label.to_string()];
        line.extend(cells);
        lines.push(line);
    }
    let mut out =
        "== redis-benchmark XADD against the cluster's redis-server (the relay's ceiling)\n"
            .to_string();
    out.push_str(&render_table(&lines));
    for run in xadd {
        out.push_str(&format!("  $ {}\n", run.command));
        if let Err(e) = &run.figures {
            out.push_str(&format!("  ! failed: {e}\n"));
        }
    }
    out
}

/// `a / b` when both exist and the quotient is finite.
pub fn ratio_of(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b).filter(|r| r.is_finite()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(received: f64, p99: f64) -> Outcome {
        Outcome::Ok {
            metrics: vec![
                Metric::new(RECEIVED, Better::Higher, received),
                Metric::new(P99, Better::Lower, p99),
                Metric::new("redis CPU s", Better::Lower, f64::NAN),
            ],
        }
    }

    fn failed(error: &str) -> Outcome {
        Outcome::Failed {
            error: error.into(),
        }
    }

    /// A load whose placements ran the given runs.
    fn load(
        load: Load,
        cross: Vec<Outcome>,
        same: Vec<Outcome>,
        standalone: Vec<Outcome>,
    ) -> LoadResults {
        let mut results = LoadResults::new(load, 10_000.0);
        for (placement, runs) in [
            (Placement::CrossNode, cross),
            (Placement::SameNode, same),
            (Placement::Standalone, standalone),
        ] {
            for outcome in runs {
                results.push(placement, outcome);
            }
        }
        results
    }

    fn xadd() -> Vec<XaddResult> {
        vec![
            XaddResult {
                label: "pipelined",
                command: "redis-benchmark -P 16".into(),
                figures: Ok(XaddFigures {
                    requests_per_second: 1_200_000.0,
                    p50_ms: 0.5,
                    p99_ms: 1.0,
                }),
            },
            XaddResult {
                label: "plain",
                command: "redis-benchmark".into(),
                figures: Err("not installed".into()),
            },
        ]
    }

    /// One run per case.
    fn report() -> ClusterReport {
        ClusterReport {
            rate: 10_000.0,
            repeat: 1,
            loads: vec![
                load(
                    Load::ThroughputQos0,
                    vec![ok(300_000.0, 9.0)],
                    vec![ok(500_000.0, 2.0)],
                    vec![ok(600_000.0, 1.0)],
                ),
                load(
                    Load::ThroughputQos1,
                    vec![failed("boom")],
                    vec![ok(400_000.0, 3.0)],
                    vec![ok(400_000.0, 3.0)],
                ),
                load(
                    Load::Latency,
                    vec![ok(10_000.0, 1.5)],
                    vec![ok(10_000.0, 0.5)],
                    vec![ok(10_000.0, 0.25)],
                ),
            ],
            xadd: xadd(),
        }
    }

    /// Three runs per case, with outliers and a failed run.
    fn repeated_report() -> ClusterReport {
        ClusterReport {
            rate: 10_000.0,
            repeat: 3,
            loads: vec![
                load(
                    Load::ThroughputQos0,
                    vec![ok(300_000.0, 9.0), ok(280_000.0, 8.0), ok(330_000.0, 10.0)],
                    // One fast outlier must not decide the ratio.
                    vec![ok(500_000.0, 2.0), ok(900_000.0, 1.0), ok(480_000.0, 3.0)],
                    vec![ok(600_000.0, 1.0), ok(610_000.0, 1.0), ok(590_000.0, 1.0)],
                ),
                load(
                    Load::ThroughputQos1,
                    vec![ok(350_000.0, 4.0), failed("boom"), ok(250_000.0, 6.0)],
                    vec![ok(400_000.0, 3.0), ok(390_000.0, 3.0), ok(410_000.0, 3.0)],
                    vec![failed("a"), failed("b"), failed("c")],
                ),
                load(
                    Load::Latency,
                    vec![ok(10_000.0, 1.5), ok(10_000.0, 1.4), ok(10_000.0, 9.0)],
                    vec![ok(10_000.0, 0.5), ok(10_000.0, 0.5), ok(10_000.0, 0.5)],
                    vec![ok(10_000.0, 0.25), ok(10_000.0, 0.25), ok(10_000.0, 0.25)],
                ),
            ],
            xadd: xadd(),
        }
    }

    fn row<'a>(rows: &'a [SummaryRow], what: &str) -> &'a SummaryRow {
        rows.iter()
            .find(|r| r.what == what)
            .unwrap_or_else(|| panic!("no summary row {what:?}"))
    }

    /// The cells of the table line starting with `name`.
    fn cells(text: &str, name: &str) -> Vec<String> {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no line {name:?} in\n{text}"));
        line.split('|').map(|c| c.trim().to_string()).collect()
    }

    #[test]
    fn summary_divides_cross_node_by_same_node_standalone_and_redis() {
        let rows = report().summary();
        let qos0 = row(&rows, "cross-node / same-node msgs/s, QoS 0");
        assert_eq!(qos0.value, Some(0.6));
        assert_eq!(qos0.target, Target::AtLeast(0.60));
        assert_eq!(
            row(&rows, "cross-node / standalone msgs/s, QoS 0").value,
            Some(0.5)
        );
        assert_eq!(
            row(&rows, "cross-node p99 at 10000 msgs/s, QoS 1").value,
            Some(1.5)
        );
        assert_eq!(
            row(&rows, "cross-node / same-node p99 at 10000 msgs/s").value,
            Some(3.0)
        );
        assert_eq!(
            row(&rows, "cross-node QoS 0 msgs/s / redis pipelined").value,
            Some(0.25)
        );
    }

    #[test]
    fn failed_cases_and_failed_redis_runs_give_no_ratio() {
        let rows = report().summary();
        assert_eq!(
            row(&rows, "cross-node / same-node msgs/s, QoS 1").value,
            None
        );
        assert_eq!(
            row(&rows, "cross-node QoS 0 msgs/s / redis plain").value,
            None
        );
        assert_eq!(
            row(&rows, "cross-node QoS 1 msgs/s / redis pipelined").value,
            None
        );
    }

    #[test]
    fn targets_say_whether_they_are_met() {
        let at_least = Target::AtLeast(0.60);
        assert_eq!(at_least.verdict(Some(0.6), ""), ">= 0.60 (met)");
        assert_eq!(at_least.verdict(Some(0.59), ""), ">= 0.60 (NOT met)");
        assert_eq!(at_least.verdict(None, ""), ">= 0.60 (not measured)");
        let below = Target::Below(5.0);
        assert_eq!(below.verdict(Some(4.99), " ms"), "< 5 ms (met)");
        assert_eq!(below.verdict(Some(5.0), " ms"), "< 5 ms (NOT met)");
        assert_eq!(Target::None.verdict(Some(1.0), ""), "-");
    }

    #[test]
    fn basis_names_the_runs_behind_a_figure() {
        assert_eq!(basis(&[3, 3]), "medians of 3 runs");
        assert_eq!(basis(&[3]), "median of 3 runs");
        assert_eq!(basis(&[2, 3]), "medians of 2-3 runs");
        assert_eq!(basis(&[1, 1]), "medians of 1 run");
        assert_eq!(basis(&[0, 3]), "medians of 0-3 runs");
    }

    #[test]
    fn load_table_has_a_column_per_placement_and_the_cross_same_ratio() {
        let text = report().loads[0].render();
        assert!(
            text.starts_with(
                "== cluster QoS 0: 10 publishers -> 1 subscriber, unthrottled (cluster-qos0)\n"
            ),
            "{text}"
        );
        let header: Vec<&str> = text
            .lines()
            .nth(1)
            .unwrap()
            .split('|')
            .map(str::trim)
            .collect();
        assert_eq!(
            header,
            [
                "metric",
                "cross-node",
                "same-node",
                "standalone",
                "cross/same"
            ]
        );
        assert_eq!(
            cells(&text, RECEIVED),
            [RECEIVED, "300000", "500000", "600000", "0.60"]
        );
        assert_eq!(cells(&text, P99), [P99, "9.000", "2.000", "1.000", "4.50"]);
        // Not measured (NaN) shows a dash and no ratio.
        assert_eq!(
            cells(&text, "redis CPU s"),
            ["redis CPU s", "-", "-", "-", "-"]
        );
        // A single run has no range and no run count.
        assert!(!text.contains("min-max"), "{text}");
        assert!(!text.contains("runs ok"), "{text}");
    }

    #[test]
    fn failures_are_reported_under_their_table_and_in_the_redis_section() {
        let text = report().render();
        assert!(text.contains("  ! cross-node failed: boom\n"), "{text}");
        assert!(text.contains("  $ redis-benchmark -P 16\n"), "{text}");
        assert!(text.contains("  ! failed: not installed\n"), "{text}");
        let summary = text.split("== cluster summary\n").nth(1).unwrap();
        assert_eq!(
            cells(summary, "cross-node / same-node msgs/s, QoS 0"),
            [
                "cross-node / same-node msgs/s, QoS 0 (medians of 1 run)",
                "0.60",
                ">= 0.60 (met)"
            ]
        );
        let p99 = summary
            .lines()
            .find(|l| l.starts_with("cross-node p99"))
            .unwrap();
        assert!(p99.contains("| 1.500 ms |"), "{p99}");
        assert!(p99.ends_with("< 5 ms (met)"), "{p99}");
    }

    #[test]
    fn repeated_summary_divides_medians_and_says_so() {
        let report = repeated_report();
        let rows = report.summary();
        let qos0 = row(&rows, "cross-node / same-node msgs/s, QoS 0");
        // 300k / 500k: the medians, not 300k / 900k or a mean.
        assert_eq!(qos0.value, Some(0.6));
        assert_eq!(qos0.basis, "medians of 3 runs");
        // The failed cross-node run is left out: median of 350k and 250k.
        let qos1 = row(&rows, "cross-node / same-node msgs/s, QoS 1");
        assert_eq!(qos1.value, Some(0.75));
        assert_eq!(qos1.basis, "medians of 2-3 runs");
        // No standalone run succeeded: no ratio.
        let standalone = row(&rows, "cross-node / standalone msgs/s, QoS 1");
        assert_eq!(standalone.value, None);
        assert_eq!(standalone.basis, "medians of 0-2 runs");
        let p99 = row(&rows, "cross-node p99 at 10000 msgs/s, QoS 1");
        assert_eq!(p99.value, Some(1.5));
        assert_eq!(p99.basis, "median of 3 runs");
        assert_eq!(
            row(&rows, "cross-node QoS 1 msgs/s / redis pipelined").basis,
            "cross-node median of 2 runs"
        );

        let text = report.render();
        let summary = text
            .split("== cluster summary: ratios of medians, 3 runs per case\n")
            .nth(1)
            .unwrap_or_else(|| panic!("no summary heading in\n{text}"));
        assert_eq!(
            cells(summary, "cross-node / same-node msgs/s, QoS 0"),
            [
                "cross-node / same-node msgs/s, QoS 0 (medians of 3 runs)",
                "0.60",
                ">= 0.60 (met)"
            ]
        );
    }

    #[test]
    fn repeated_load_table_shows_medians_runs_ok_and_the_received_range() {
        let report = repeated_report();
        let qos0 = report.loads[0].render();
        assert!(
            qos0.starts_with(
                "== cluster QoS 0: 10 publishers -> 1 subscriber, unthrottled (cluster-qos0), \
                 medians of 3 runs\n"
            ),
            "{qos0}"
        );
        assert_eq!(
            cells(&qos0, "runs ok"),
            ["runs ok", "3/3", "3/3", "3/3", "-"]
        );
        assert_eq!(
            cells(&qos0, RECEIVED),
            [RECEIVED, "300000", "500000", "600000", "0.60"]
        );
        assert_eq!(
            cells(&qos0, "received msgs/s min-max"),
            [
                "received msgs/s min-max",
                "280000-330000",
                "480000-900000",
                "590000-610000",
                "-"
            ]
        );
        assert_eq!(cells(&qos0, P99), [P99, "9.000", "2.000", "1.000", "4.50"]);
        // The range row follows the received rate.
        let lines: Vec<&str> = qos0.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.starts_with(&format!("{RECEIVED} ")))
            .unwrap();
        assert!(
            lines[at + 1].starts_with("received msgs/s min-max"),
            "{qos0}"
        );

        let qos1 = report.loads[1].render();
        assert_eq!(
            cells(&qos1, "runs ok"),
            ["runs ok", "2/3", "3/3", "0/3", "-"]
        );
        assert_eq!(
            cells(&qos1, RECEIVED),
            [RECEIVED, "300000", "400000", "-", "0.75"]
        );
        assert_eq!(
            cells(&qos1, "received msgs/s min-max"),
            [
                "received msgs/s min-max",
                "250000-350000",
                "390000-410000",
                "-",
                "-"
            ]
        );
        for failure in [
            "  ! cross-node run 2/3 failed: boom\n",
            "  ! standalone run 1/3 failed: a\n",
            "  ! standalone run 3/3 failed: c\n",
        ] {
            assert!(qos1.contains(failure), "{failure:?} missing in\n{qos1}");
        }
    }

    #[test]
    fn json_has_medians_and_the_received_rate_of_every_run() {
        let json = serde_json::to_value(repeated_report()).unwrap();
        assert_eq!(json["repeat"], 3);
        let qos1 = &json["loads"][1];
        assert_eq!(qos1["load"], "throughput-qos1");
        let cross = &qos1["placements"][0];
        assert_eq!(cross["placement"], "cross-node");
        assert_eq!(cross["runs"], 3);
        assert_eq!(cross["runs_ok"], 2);
        assert_eq!(
            cross["received_per_run"],
            serde_json::json!([350_000.0, null, 250_000.0])
        );
        assert_eq!(cross["received_min"], 250_000.0);
        assert_eq!(cross["received_max"], 350_000.0);
        assert_eq!(
            cross["failures"],
            serde_json::json!([{"run": 2, "error": "boom"}])
        );
        let medians = cross["medians"].as_array().unwrap();
        let median = |name: &str| {
            medians
                .iter()
                .find(|m| m["name"] == name)
                .unwrap_or_else(|| panic!("no median {name}"))["value"]
                .clone()
        };
        assert_eq!(median(RECEIVED), 300_000.0);
        assert_eq!(median(P99), 5.0);
        assert_eq!(median("redis CPU s"), serde_json::Value::Null);
        let standalone = &qos1["placements"][2];
        assert_eq!(standalone["runs_ok"], 0);
        assert_eq!(standalone["received_min"], serde_json::Value::Null);
        assert_eq!(standalone["medians"], serde_json::json!([]));
    }
}

//! The cluster report: one table per load (cross-node, same-node and
//! standalone side by side), the redis-benchmark ceiling, and a summary of
//! ratios with the targets they are measured against.

use serde::Serialize;

use crate::cluster_scenarios::{Load, Placement, P99, RECEIVED};
use crate::redis_benchmark::XaddFigures;
use crate::report::{format_value, render_table, Better, Outcome};

/// One load on every placement, in [`Placement::ALL`] order.
#[derive(Debug, Clone, Serialize)]
pub struct LoadResults {
    pub load: Load,
    pub title: String,
    pub outcomes: Vec<(Placement, Outcome)>,
}

impl LoadResults {
    fn outcome(&self, placement: Placement) -> Option<&Outcome> {
        self.outcomes
            .iter()
            .find(|(p, _)| *p == placement)
            .map(|(_, o)| o)
    }

    /// A metric of one placement, if measured and finite.
    pub fn value(&self, placement: Placement, name: &str) -> Option<f64> {
        self.outcome(placement)?
            .value(name)
            .filter(|v| v.is_finite())
    }

    /// The load as a table: one column per placement and cross/same ratios.
    pub fn render(&self) -> String {
        let mut header = vec!["metric".to_string()];
        header.extend(self.outcomes.iter().map(|(p, _)| p.label().to_string()));
        header.push("cross/same".to_string());
        let mut lines = vec![header];
        let mut names: Vec<(&'static str, Better)> = Vec::new();
        for (_, outcome) in &self.outcomes {
            for m in outcome.metrics() {
                if !names.iter().any(|(n, _)| *n == m.name) {
                    names.push((m.name, m.better));
                }
            }
        }
        for (name, better) in names {
            let mut line = vec![name.to_string()];
            line.extend(
                self.outcomes
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
        }
        let mut out = format!("== {} ({})\n", self.title, self.load.id());
        out.push_str(&render_table(&lines));
        for (placement, outcome) in &self.outcomes {
            if let Outcome::Failed { error } = outcome {
                out.push_str(&format!("  ! {} failed: {error}\n", placement.label()));
            }
        }
        out
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
}

/// The whole cluster run.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    pub rate: f64,
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

    /// The ratios the cluster scenario is about, with their targets.
    pub fn summary(&self) -> Vec<SummaryRow> {
        use Placement::{CrossNode, SameNode, Standalone};
        let mut rows = Vec::new();
        for (load, qos) in [(Load::ThroughputQos0, 0), (Load::ThroughputQos1, 1)] {
            let cross = self.value(load, CrossNode, RECEIVED);
            rows.push(SummaryRow {
                what: format!("cross-node / same-node msgs/s, QoS {qos}"),
                value: ratio_of(cross, self.value(load, SameNode, RECEIVED)),
                unit: "",
                target: Target::AtLeast(THROUGHPUT_RATIO_TARGET),
            });
            rows.push(SummaryRow {
                what: format!("cross-node / standalone msgs/s, QoS {qos}"),
                value: ratio_of(cross, self.value(load, Standalone, RECEIVED)),
                unit: "",
                target: Target::None,
            });
        }
        let cross_p99 = self.value(Load::Latency, CrossNode, P99);
        rows.push(SummaryRow {
            what: format!("cross-node p99 at {} msgs/s, QoS 1", self.rate),
            value: cross_p99,
            unit: " ms",
            target: Target::Below(P99_TARGET_MS),
        });
        rows.push(SummaryRow {
            what: format!("cross-node / same-node p99 at {} msgs/s", self.rate),
            value: ratio_of(cross_p99, self.value(Load::Latency, SameNode, P99)),
            unit: "",
            target: Target::None,
        });
        for xadd in &self.xadd {
            let ceiling = xadd.figures.as_ref().ok().map(|f| f.requests_per_second);
            for (load, qos) in [(Load::ThroughputQos0, 0), (Load::ThroughputQos1, 1)] {
                rows.push(SummaryRow {
                    what: format!("cross-node QoS {qos} msgs/s / redis {}", xadd.label),
                    value: ratio_of(self.value(load, CrossNode, RECEIVED), ceiling),
                    unit: "",
                    target: Target::None,
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
        out.push_str("== cluster summary\n");
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
                row.what,
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
    use crate::report::Metric;

    fn ok(received: f64, p99: f64) -> Outcome {
        Outcome::Ok {
            metrics: vec![
                Metric::new(RECEIVED, Better::Higher, received),
                Metric::new(P99, Better::Lower, p99),
                Metric::new("redis CPU s", Better::Lower, f64::NAN),
            ],
        }
    }

    fn load(load: Load, cross: Outcome, same: Outcome, standalone: Outcome) -> LoadResults {
        LoadResults {
            load,
            title: load.title(10_000.0),
            outcomes: vec![
                (Placement::CrossNode, cross),
                (Placement::SameNode, same),
                (Placement::Standalone, standalone),
            ],
        }
    }

    fn report() -> ClusterReport {
        ClusterReport {
            rate: 10_000.0,
            loads: vec![
                load(
                    Load::ThroughputQos0,
                    ok(300_000.0, 9.0),
                    ok(500_000.0, 2.0),
                    ok(600_000.0, 1.0),
                ),
                load(
                    Load::ThroughputQos1,
                    Outcome::Failed {
                        error: "boom".into(),
                    },
                    ok(400_000.0, 3.0),
                    ok(400_000.0, 3.0),
                ),
                load(
                    Load::Latency,
                    ok(10_000.0, 1.5),
                    ok(10_000.0, 0.5),
                    ok(10_000.0, 0.25),
                ),
            ],
            xadd: vec![
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
            ],
        }
    }

    fn row<'a>(rows: &'a [SummaryRow], what: &str) -> &'a SummaryRow {
        rows.iter()
            .find(|r| r.what == what)
            .unwrap_or_else(|| panic!("no summary row {what:?}"))
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
    fn load_table_has_a_column_per_placement_and_the_cross_same_ratio() {
        let text = report().loads[0].render();
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
        let cells = |name: &str| -> Vec<String> {
            let line = text.lines().find(|l| l.starts_with(name)).unwrap();
            line.split('|').map(|c| c.trim().to_string()).collect()
        };
        assert_eq!(
            cells(RECEIVED),
            [RECEIVED, "300000", "500000", "600000", "0.60"]
        );
        assert_eq!(cells(P99), [P99, "9.000", "2.000", "1.000", "4.50"]);
        // Not measured (NaN) shows a dash and no ratio.
        assert_eq!(cells("redis CPU s"), ["redis CPU s", "-", "-", "-", "-"]);
    }

    #[test]
    fn failures_are_reported_under_their_table_and_in_the_redis_section() {
        let text = report().render();
        assert!(text.contains("  ! cross-node failed: boom\n"), "{text}");
        assert!(text.contains("  $ redis-benchmark -P 16\n"), "{text}");
        assert!(text.contains("  ! failed: not installed\n"), "{text}");
        let summary = text.split("== cluster summary\n").nth(1).unwrap();
        let qos0 = summary
            .lines()
            .find(|l| l.starts_with("cross-node / same-node msgs/s, QoS 0"))
            .unwrap();
        let cells: Vec<&str> = qos0.split('|').map(str::trim).collect();
        assert_eq!(
            cells,
            [
                "cross-node / same-node msgs/s, QoS 0",
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
}

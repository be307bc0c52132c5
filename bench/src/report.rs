//! Result tables (starling vs mosquitto) and the JSON dump.

use serde::Serialize;

/// Which direction of a metric is the good one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
    /// Informational (e.g. a count); no ratio is printed.
    Neither,
}

/// One measured figure of one broker.
#[derive(Debug, Clone, Serialize)]
pub struct Metric {
    pub name: &'static str,
    pub better: Better,
    /// NaN when it could not be measured (serialised as `null`).
    pub value: f64,
}

impl Metric {
    pub fn new(name: &'static str, better: Better, value: f64) -> Self {
        Metric {
            name,
            better,
            value,
        }
    }
}

/// The outcome of one scenario on one broker.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase", tag = "status")]
pub enum Outcome {
    /// The broker was not selected (`--only`).
    Skipped,
    Ok {
        metrics: Vec<Metric>,
    },
    Failed {
        error: String,
    },
}

impl Outcome {
    /// The value of a metric, if the run succeeded and measured it.
    pub fn value(&self, name: &str) -> Option<f64> {
        match self {
            Outcome::Ok { metrics } => metrics.iter().find(|m| m.name == name).map(|m| m.value),
            _ => None,
        }
    }

    /// The measured figures; none unless the run succeeded.
    pub fn metrics(&self) -> &[Metric] {
        match self {
            Outcome::Ok { metrics } => metrics,
            _ => &[],
        }
    }
}

/// One scenario on both brokers.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub id: &'static str,
    pub title: String,
    pub notes: Vec<&'static str>,
    pub starling: Outcome,
    pub mosquitto: Outcome,
}

/// A JSON row: one metric with both values and the ratio.
#[derive(Serialize)]
struct Row {
    metric: &'static str,
    better: Better,
    starling: Option<f64>,
    mosquitto: Option<f64>,
    ratio: Option<f64>,
}

impl ScenarioReport {
    fn rows(&self) -> Vec<Row> {
        let mut names: Vec<(&'static str, Better)> = Vec::new();
        for m in self
            .starling
            .metrics()
            .iter()
            .chain(self.mosquitto.metrics())
        {
            if !names.iter().any(|(n, _)| *n == m.name) {
                names.push((m.name, m.better));
            }
        }
        names
            .into_iter()
            .map(|(name, better)| {
                let starling = self.starling.value(name).filter(|v| v.is_finite());
                let mosquitto = self.mosquitto.value(name).filter(|v| v.is_finite());
                Row {
                    metric: name,
                    better,
                    starling,
                    mosquitto,
                    ratio: ratio(better, starling, mosquitto),
                }
            })
            .collect()
    }

    /// The scenario as a text table with notes and errors.
    pub fn render(&self) -> String {
        let mut lines = vec![vec![
            "metric".to_string(),
            "starling".to_string(),
            "mosquitto".to_string(),
            "starling/mosquitto".to_string(),
        ]];
        for row in self.rows() {
            lines.push(vec![
                row.metric.to_string(),
                format_value(row.starling),
                format_value(row.mosquitto),
                format_ratio(row.better, row.ratio),
            ]);
        }
        let mut out = format!("== {} ({})\n", self.title, self.id);
        out.push_str(&render_table(&lines));
        for (broker, outcome) in [("starling", &self.starling), ("mosquitto", &self.mosquitto)] {
            if let Outcome::Failed { error } = outcome {
                out.push_str(&format!("  ! {broker} failed: {error}\n"));
            }
        }
        for note in &self.notes {
            out.push_str(&format!("  note: {note}\n"));
        }
        out
    }
}

/// `starling / mosquitto` when both exist and the metric has a direction.
pub fn ratio(better: Better, starling: Option<f64>, mosquitto: Option<f64>) -> Option<f64> {
    match (better, starling, mosquitto) {
        (Better::Neither, _, _) => None,
        (_, Some(s), Some(m)) if m != 0.0 => Some(s / m).filter(|r| r.is_finite()),
        _ => None,
    }
}

/// The ratio column: >1 favours Starling for throughput; for lower-is-better
/// metrics the plain ratio is shown and labelled so.
pub fn format_ratio(better: Better, ratio: Option<f64>) -> String {
    match (better, ratio) {
        (_, None) | (Better::Neither, _) => "-".to_string(),
        (Better::Higher, Some(r)) => format!("{r:.2}x"),
        (Better::Lower, Some(r)) => format!("{r:.2}x (lower is better)"),
    }
}

/// A measured value with precision suited to its size; `-` when absent.
pub fn format_value(value: Option<f64>) -> String {
    match value {
        None => "-".to_string(),
        Some(v) if v.abs() >= 1000.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.3}"),
    }
}

/// Left-aligned columns separated by ` | `, with a rule under the header.
pub fn render_table(lines: &[Vec<String>]) -> String {
    let cols = lines.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| lines.iter().map(|l| l[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join(" | ").trim_end());
        out.push('\n');
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&rule.join("-|-"));
            out.push('\n');
        }
    }
    out
}

/// The whole run as written by `--json`.
#[derive(Serialize)]
pub struct JsonReport<'a> {
    pub seconds_per_scenario: f64,
    pub broker_lifecycle: &'static str,
    pub cores: usize,
    pub scenarios: Vec<JsonScenario<'a>>,
}

/// One scenario in the JSON report.
#[derive(Serialize)]
pub struct JsonScenario<'a> {
    #[serde(flatten)]
    report: &'a ScenarioReport,
    rows: Vec<Row>,
}

impl<'a> From<&'a ScenarioReport> for JsonScenario<'a> {
    fn from(report: &'a ScenarioReport) -> Self {
        JsonScenario {
            rows: report.rows(),
            report,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_needs_both_values_and_a_direction() {
        assert_eq!(ratio(Better::Higher, Some(3.0), Some(2.0)), Some(1.5));
        assert_eq!(ratio(Better::Lower, Some(1.0), Some(4.0)), Some(0.25));
        assert_eq!(ratio(Better::Higher, None, Some(2.0)), None);
        assert_eq!(ratio(Better::Higher, Some(2.0), None), None);
        assert_eq!(ratio(Better::Higher, Some(2.0), Some(0.0)), None);
        assert_eq!(ratio(Better::Neither, Some(2.0), Some(1.0)), None);
    }

    #[test]
    fn ratio_and_values_format() {
        assert_eq!(format_ratio(Better::Higher, Some(1.5)), "1.50x");
        assert_eq!(
            format_ratio(Better::Lower, Some(0.5)),
            "0.50x (lower is better)"
        );
        assert_eq!(format_ratio(Better::Higher, None), "-");
        assert_eq!(format_value(None), "-");
        assert_eq!(format_value(Some(123_456.7)), "123457");
        assert_eq!(format_value(Some(12.34)), "12.3");
        assert_eq!(format_value(Some(0.1234)), "0.123");
    }

    #[test]
    fn skipped_broker_shows_dash_and_no_ratio() {
        let report = ScenarioReport {
            id: "x",
            title: "x".into(),
            notes: vec![],
            starling: Outcome::Skipped,
            mosquitto: Outcome::Ok {
                metrics: vec![Metric::new("received msgs/s", Better::Higher, 5000.0)],
            },
        };
        let text = report.render();
        let row = text.lines().find(|l| l.starts_with("received")).unwrap();
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(cells, ["received msgs/s", "-", "5000", "-"]);
    }
}

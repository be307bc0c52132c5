//! The alert rules and the Grafana dashboard the chart ships
//! (`charts/starling-operator/files/starling-alerts.yaml`, `starling-dashboard.json`) against
//! the metrics the broker and the operator really render: every PromQL expression names only
//! series one of them exports (renaming a metric fails here), every expression parses
//! (`promtool check rules`), every alert has its unit tests (`promtool test rules
//! monitoring/alerts-test.yaml`, with cases that fire and cases that stay silent), and the
//! dashboard is Grafana JSON with a `${datasource}` variable that every query uses.
//!
//! Needs `promtool` (Debian's `prometheus` package; `scripts/test.sh` installs it, `PROMTOOL`
//! points at another copy). Without it these tests fail; they never skip.

use regex::Regex;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

const RULES: &str = "charts/starling-operator/files/starling-alerts.yaml";
const RULE_TESTS: &str = "monitoring/alerts-test.yaml";
const DASHBOARD: &str = "charts/starling-operator/files/starling-dashboard.json";

/// Series Prometheus makes itself, not the broker or the operator.
const PROMETHEUS_SERIES: &[&str] = &["up"];

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every series name a rendered exposition can hold, from its `# TYPE` lines: a counter's
/// `_total`, a histogram's `_bucket`, `_sum` and `_count`, a gauge's own name.
fn series_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
        match kind {
            "counter" => {
                out.insert(format!("{name}_total"));
            }
            "gauge" | "unknown" => {
                out.insert(name.to_string());
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    out.insert(format!("{name}{suffix}"));
                }
            }
            other => panic!("a metric of kind {other} ({name}): teach series_names about it"),
        }
    }
    out
}

/// What the broker's `/metrics` can show (families with no child yet included).
fn broker_series() -> BTreeSet<String> {
    let names = series_names(&starling_broker::metrics::Metrics::new().render());
    assert!(
        names.contains("starling_messages_dropped_total"),
        "{names:?}"
    );
    names
}

/// The broker's metric families whose help says they are deprecated (old names kept for one
/// release beside the new ones).
fn deprecated_broker_families() -> BTreeSet<String> {
    starling_broker::metrics::Metrics::new()
        .render()
        .lines()
        .filter_map(|line| line.strip_prefix("# HELP "))
        .filter_map(|rest| rest.split_once(' '))
        .filter(|(_, help)| help.starts_with("Deprecated"))
        .map(|(family, _)| family.to_string())
        .collect()
}

/// What the operator's `/metrics` can show.
fn operator_series() -> BTreeSet<String> {
    let names = series_names(&starling_operator::metrics::Metrics::new().render());
    assert!(names.contains("starling_operator_leader"), "{names:?}");
    names
}

fn known_series() -> BTreeSet<String> {
    let mut all = broker_series();
    all.extend(operator_series());
    all.extend(PROMETHEUS_SERIES.iter().map(|s| s.to_string()));
    all
}

/// The series names a PromQL expression selects: what is left after removing strings, label
/// matchers, ranges, grouping clauses, function names, keywords and numbers.
fn selected_series(expr: &str) -> BTreeSet<String> {
    let strip = |re: &str, text: &str| {
        Regex::new(re)
            .expect("regex")
            .replace_all(text, " ")
            .into_owned()
    };
    let mut text = strip(r#""(?:[^"\\]|\\.)*""#, expr);
    text = strip(r"\{[^}]*\}", &text);
    text = strip(r"\[[^\]]*\]", &text);
    text = strip(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)",
        &text,
    );
    text = strip(r"\b(?:group_left|group_right)\b", &text);
    let keywords = ["and", "or", "unless", "bool", "offset"];
    let ident = Regex::new(r"[A-Za-z_:][A-Za-z0-9_:]*(\s*\()?").expect("regex");
    ident
        .captures_iter(&text)
        .filter(|c| c.get(1).is_none())
        .map(|c| c[0].trim().to_string())
        .filter(|name| !keywords.contains(&name.as_str()))
        .collect()
}

#[test]
fn selected_series_finds_names_and_nothing_else() {
    let expr = r#"(rate(starling_messages_dropped_total{reason="x", job=~"$job"}[$__rate_interval]) > 0)
        or label_replace(sum by (pod, le) (rate(a_b{x="y"}[5m])), "reason", "relay", "", "")
        and on (namespace, job) group_left () count by (namespace, job) (up) unless bool c"#;
    assert_eq!(
        selected_series(expr),
        ["a_b", "c", "starling_messages_dropped_total", "up"]
            .map(String::from)
            .into()
    );
}

/// `promtool`: `PROMTOOL`, else `promtool` on `PATH`; it must run.
fn promtool() -> PathBuf {
    let path = std::env::var_os("PROMTOOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("promtool"));
    match Command::new(&path).arg("--version").output() {
        Ok(out) if out.status.success() => path,
        Ok(out) => panic!(
            "{} --version failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!(
            "promtool is needed for the monitoring tests and `{}` does not run ({e}); \
             install Debian's prometheus package (scripts/test.sh does) or set PROMTOOL",
            path.display()
        ),
    }
}

fn run_promtool(args: &[&str]) -> String {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(repo())
        .output()
        .expect("promtool runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{said}");
    said
}

fn yaml(path: &str) -> Value {
    serde_yaml_ng::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every rule of the rules file: (group, rule).
fn rules() -> Vec<(String, Value)> {
    let file = yaml(RULES);
    let groups = file["groups"].as_array().expect("groups");
    assert!(!groups.is_empty());
    groups
        .iter()
        .flat_map(|g| {
            let name = g["name"].as_str().expect("group name").to_string();
            g["rules"]
                .as_array()
                .expect("rules")
                .iter()
                .map(move |r| (name.clone(), r.clone()))
        })
        .collect()
}

#[test]
fn alert_rules_pass_promtool_check() {
    let said = run_promtool(&["check", "rules", RULES]);
    assert!(said.contains("SUCCESS"), "{said}");
}

#[test]
fn alert_rules_pass_their_unit_tests() {
    let said = run_promtool(&["test", "rules", RULE_TESTS]);
    assert!(said.contains("SUCCESS"), "{said}");
}

#[test]
fn every_alert_names_exported_series_and_says_what_to_do() {
    let known = known_series();
    let mut names = BTreeSet::new();
    for (group, rule) in rules() {
        let alert = rule["alert"]
            .as_str()
            .unwrap_or_else(|| panic!("{group}: only alerting rules here, got {rule}"));
        assert!(alert.starts_with("Starling"), "{alert}");
        assert!(names.insert(alert.to_string()), "{alert} twice");
        let expr = rule["expr"].as_str().expect("expr");
        let selected = selected_series(expr);
        assert!(!selected.is_empty(), "{alert} selects no series: {expr}");
        for name in &selected {
            assert!(
                known.contains(name),
                "{alert} uses {name}, which neither the broker nor the operator exports \
                 (renamed? see broker/src/metrics.rs, operator/src/metrics.rs)"
            );
        }
        // An own series, not only Prometheus' `up`.
        assert!(
            selected.iter().any(|s| s.starts_with("starling_")),
            "{alert}: {expr}"
        );
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "{alert} severity {severity:?}"
        );
        for key in ["summary", "description", "runbook"] {
            let text = rule["annotations"][key].as_str().unwrap_or_default();
            assert!(text.len() > 20, "{alert} lacks a {key} annotation");
        }
        // A gauge's state is held for a while before paging; counters' increase() alerts fire
        // on the event itself.
        if rule["for"].is_null() {
            assert!(expr.contains("increase("), "{alert} has no `for:`");
        }
    }
    assert!(names.len() >= 10, "{names:?}");
}

#[test]
fn every_alert_has_unit_tests_that_fire_it_and_keep_it_silent() {
    let tests = yaml(RULE_TESTS);
    assert_eq!(
        tests["rule_files"],
        serde_json::json!([format!("../{RULES}")]),
        "the tests load the chart's rules file"
    );
    let mut fired: BTreeMap<String, usize> = BTreeMap::new();
    let mut silent: BTreeMap<String, usize> = BTreeMap::new();
    for test in tests["tests"].as_array().expect("tests") {
        for case in test["alert_rule_test"].as_array().expect("alert_rule_test") {
            let name = case["alertname"].as_str().expect("alertname").to_string();
            let expected = case["exp_alerts"].as_array().map_or(0, Vec::len);
            let counts = if expected > 0 {
                &mut fired
            } else {
                &mut silent
            };
            *counts.entry(name).or_default() += 1;
        }
    }
    for (_, rule) in rules() {
        let alert = rule["alert"].as_str().expect("alert");
        assert!(
            fired.contains_key(alert),
            "{RULE_TESTS} never makes {alert} fire"
        );
        assert!(
            silent.contains_key(alert),
            "{RULE_TESTS} never checks that {alert} stays silent"
        );
    }
    let alerts: BTreeSet<String> = rules()
        .iter()
        .map(|(_, r)| r["alert"].as_str().expect("alert").to_string())
        .collect();
    for name in fired.keys().chain(silent.keys()) {
        assert!(
            alerts.contains(name),
            "{RULE_TESTS} tests {name}, no such alert"
        );
    }
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON")
}

/// Every panel, those inside collapsed rows too.
fn panels(dashboard: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        out.push(panel.clone());
        if let Some(inner) = panel["panels"].as_array() {
            out.extend(inner.iter().cloned());
        }
    }
    out
}

/// (panel title, expr) of every query.
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    panels(dashboard)
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or_default().to_string();
            p["targets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |t| {
                    let expr = t["expr"].as_str().expect("every target has an expr");
                    (title.clone(), expr.to_string())
                })
        })
        .collect()
}

#[test]
fn dashboard_is_grafana_json_on_a_datasource_variable() {
    let d = dashboard();
    assert!(d["uid"]
        .as_str()
        .is_some_and(|u| !u.is_empty() && u.len() <= 40));
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 30));
    let variables = d["templating"]["list"].as_array().expect("templating.list");
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name} variable"))
            .clone()
    };
    let datasource = variable("datasource");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    for name in ["namespace", "job", "pod", "operator_namespace"] {
        let v = variable(name);
        assert_eq!(v["type"], "query", "${name}");
        assert_eq!(v["datasource"]["uid"], "${datasource}", "${name}");
    }
    assert_eq!(variable("pod")["multi"], true, "several pods at once");

    let known = known_series();
    for v in variables.iter().filter(|v| v["type"] == "query") {
        let query = v["query"]["query"].as_str().expect("query");
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.rsplit_once(','))
            .map(|(selector, _)| selector)
            .unwrap_or_else(|| panic!("${}: label_values(selector, label): {query}", v["name"]));
        for name in selected_series(inner) {
            assert!(known.contains(&name), "${} uses {name}", v["name"]);
        }
    }

    let mut ids = BTreeSet::new();
    for panel in panels(&d) {
        let title = panel["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(panel["id"].as_u64().expect("id")),
            "id of {title} twice"
        );
        let grid = &panel["gridPos"];
        let (x, w) = (
            grid["x"].as_u64().expect("x"),
            grid["w"].as_u64().expect("w"),
        );
        assert!(
            x + w <= 24 && grid["h"].as_u64().is_some(),
            "{title}: {grid}"
        );
        if matches!(panel["type"].as_str(), Some("row" | "text")) {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            assert!(t["refId"].as_str().is_some(), "{title}");
        }
    }
    // Every latency histogram the broker exports is shown by its 99th percentile.
    let queries = queries(&d);
    for histogram in [
        "starling_relay_lag_seconds",
        "starling_redis_round_trip_seconds",
        "starling_delivery_latency_seconds",
    ] {
        assert!(
            queries
                .iter()
                .any(|(_, expr)| expr.contains("histogram_quantile(0.99")
                    && expr.contains(&format!("{histogram}_bucket"))),
            "no 99th-percentile panel for {histogram}"
        );
    }
}

#[test]
fn dashboard_queries_name_exported_series_and_cover_every_broker_metric() {
    let d = dashboard();
    let known = known_series();
    let mut used = BTreeSet::new();
    let queries = queries(&d);
    assert!(queries.len() >= 20, "{}", queries.len());
    for (title, expr) in &queries {
        let selected = selected_series(expr);
        assert!(!selected.is_empty(), "{title}: {expr}");
        for name in selected {
            assert!(
                known.contains(&name),
                "panel {title:?} queries {name}, which neither the broker nor the operator \
                 exports (renamed? see broker/src/metrics.rs, operator/src/metrics.rs)"
            );
            used.insert(name);
        }
        // Per-node panels filter on the pod variable, operator panels on their namespace.
        assert!(
            expr.contains(r#"pod=~"$pod""#) || expr.contains("$operator_namespace"),
            "{title}: {expr} ignores the variables"
        );
    }
    // A new broker metric gets a panel (or an entry here saying why not). A name kept for one
    // release under its old spelling (its help says "Deprecated") needs none.
    let deprecated = deprecated_broker_families();
    assert!(
        deprecated.contains("starling_bytes_received"),
        "{deprecated:?}"
    );
    let missing: Vec<String> = broker_series()
        .into_iter()
        .filter(|name| !used.contains(name))
        .filter(|name| {
            !deprecated
                .iter()
                .any(|family| name.strip_prefix(family.as_str()) == Some("_total"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard shows nothing of {missing:?}: add panels to {DASHBOARD}"
    );
}

#[test]
fn dashboard_queries_parse_as_promql() {
    // Every query as a recording rule; Grafana's variables become what they stand for.
    let d = dashboard();
    let mut rules = String::from("groups:\n  - name: starling-dashboard\n    rules:\n");
    for (i, (_, expr)) in queries(&d).iter().enumerate() {
        let expr = expr.replace("$__rate_interval", "5m");
        let quoted = serde_json::to_string(&expr).expect("JSON string");
        rules.push_str(&format!(
            "      - record: starling_dashboard:query_{i}\n        expr: {quoted}\n"
        ));
    }
    let dir = std::env::temp_dir().join(format!("starling-dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("dashboard-queries.yaml");
    std::fs::write(&file, rules).expect("write");
    let said = run_promtool(&["check", "rules", &file.to_string_lossy()]);
    std::fs::remove_dir_all(&dir).expect("clean up");
    assert!(
        said.contains(&format!("SUCCESS: {} rules found", queries(&d).len())),
        "{said}"
    );
}

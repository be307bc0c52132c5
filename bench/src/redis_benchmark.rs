//! `redis-benchmark` (Debian, with redis-server/redis-tools) XADD figures
//! against the cluster's own `redis-server`: the ceiling for the relay, which
//! appends every relayed message to a stream with XADD.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

/// Requests per redis-benchmark run.
pub const REQUESTS: u32 = 200_000;
/// How long one redis-benchmark run may take.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// One redis-benchmark run to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XaddRun {
    /// Short label for the report.
    pub label: &'static str,
    /// Requests per pipeline (`-P`); 1 means no pipelining.
    pub pipeline: u32,
    /// The command after `XADD`.
    pub args: &'static [&'static str],
}

/// Roughly what the relay appends: origin node, an encoded message of about
/// 120 bytes and an empty share-group field, with approximate trimming.
const RELAY_SHAPED_ARGS: &[&str] = &[
    "bench",
    "MAXLEN",
    "~",
    "100000",
    "*",
    "o",
    "node-a",
    "m",
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "g",
    "",
];

/// The runs of the cluster report, the first being the ceiling ratios use.
pub const RUNS: [XaddRun; 3] = [
    XaddRun {
        label: "XADD bench * f v, pipeline 16",
        pipeline: 16,
        args: &["bench", "*", "f", "v"],
    },
    XaddRun {
        label: "XADD bench * f v, no pipelining",
        pipeline: 1,
        args: &["bench", "*", "f", "v"],
    },
    XaddRun {
        label: "XADD relay-shaped (MAXLEN ~, 120 B), pipeline 16",
        pipeline: 16,
        args: RELAY_SHAPED_ARGS,
    },
];

impl XaddRun {
    /// Command-line arguments of redis-benchmark for this run against `port`.
    pub fn command_args(&self, port: u16) -> Vec<String> {
        let mut args: Vec<String> = [
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-n",
            &REQUESTS.to_string(),
            "-P",
            &self.pipeline.to_string(),
            "--csv",
            "XADD",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.extend(self.args.iter().map(|a| a.to_string()));
        args
    }

    /// The command as a user would type it (for the report).
    pub fn command_line(&self, port: u16) -> String {
        let quoted: Vec<String> = self
            .command_args(port)
            .into_iter()
            .map(|a| match a.as_str() {
                "" => "''".to_string(),
                "*" => "'*'".to_string(),
                _ => a,
            })
            .collect();
        format!("redis-benchmark {}", quoted.join(" "))
    }
}

/// What one redis-benchmark run reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct XaddFigures {
    pub requests_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Runs `run` against the redis-server at `addr`.
pub async fn measure(run: &XaddRun, addr: SocketAddr) -> Result<XaddFigures> {
    let output = tokio::time::timeout(
        RUN_LIMIT,
        tokio::process::Command::new("redis-benchmark")
            .args(run.command_args(addr.port()))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .with_context(|| format!("redis-benchmark did not finish within {RUN_LIMIT:?}"))?
    .context("running redis-benchmark (Debian package redis-tools)")?;
    if !output.status.success() {
        bail!(
            "redis-benchmark failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    parse_csv(&String::from_utf8_lossy(&output.stdout))
}

/// Reads the figures of the one test in `redis-benchmark --csv` output: a
/// header row naming the columns, then one row per test.
pub fn parse_csv(text: &str) -> Result<XaddFigures> {
    let mut rows = text.lines().filter(|l| !l.trim().is_empty()).map(csv_row);
    let header = rows
        .next()
        .ok_or_else(|| anyhow!("redis-benchmark printed nothing"))?;
    let row = rows
        .next()
        .ok_or_else(|| anyhow!("redis-benchmark printed no result row"))?;
    if row.len() != header.len() {
        bail!(
            "result row has {} fields, header {}",
            row.len(),
            header.len()
        );
    }
    let column = |name: &str| -> Result<f64> {
        let at = header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| anyhow!("no {name:?} column in redis-benchmark output"))?;
        row[at]
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| anyhow!("{name} is not a number: {:?}", row[at]))
    };
    Ok(XaddFigures {
        requests_per_second: column("rps")?,
        p50_ms: column("p50_latency_ms")?,
        p99_ms: column("p99_latency_ms")?,
    })
}

/// Splits one CSV line into fields; quoted fields may hold commas and `""`.
fn csv_row(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.trim_end_matches('\r').chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut field)),
            _ => field.push(c),
        }
    }
    fields.push(field);
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Verbatim output of redis-benchmark 7.0 with `--csv`.
    const CSV: &str = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                       \"XADD bench * f v\",\"49019.61\",\"0.673\",\"0.168\",\"0.607\",\"0.983\",\"3.247\",\"5.887\"\n";

    #[test]
    fn csv_output_gives_rps_and_latencies() {
        let figures = parse_csv(CSV).unwrap();
        assert_eq!(
            figures,
            XaddFigures {
                requests_per_second: 49019.61,
                p50_ms: 0.607,
                p99_ms: 3.247,
            }
        );
    }

    #[test]
    fn columns_are_found_by_name_not_position() {
        let text = "\"p99_latency_ms\",\"test\",\"p50_latency_ms\",\"rps\"\r\n\
                    \"2.5\",\"XADD a, b\",\"1.25\",\"350877.19\"\r\n";
        let figures = parse_csv(text).unwrap();
        assert_eq!(figures.requests_per_second, 350877.19);
        assert_eq!(figures.p50_ms, 1.25);
        assert_eq!(figures.p99_ms, 2.5);
    }

    #[test]
    fn missing_or_broken_output_is_an_error() {
        assert!(parse_csv("").is_err());
        assert!(parse_csv("\"test\",\"rps\"\n").is_err());
        let no_p99 = "\"test\",\"rps\",\"p50_latency_ms\"\n\"XADD\",\"1000\",\"0.5\"\n";
        assert!(parse_csv(no_p99).is_err());
        let not_a_number = "\"test\",\"rps\",\"p50_latency_ms\",\"p99_latency_ms\"\n\
                            \"XADD\",\"-nan\",\"0.5\",\"1\"\n";
        assert!(parse_csv(not_a_number).is_err());
        let short_row = "\"test\",\"rps\",\"p50_latency_ms\",\"p99_latency_ms\"\n\"XADD\",\"1\"\n";
        assert!(parse_csv(short_row).is_err());
    }

    #[test]
    fn quoted_fields_keep_commas_and_quotes() {
        assert_eq!(
            csv_row(r#""a,b","say ""hi""",3"#),
            ["a,b", "say \"hi\"", "3"]
        );
        assert_eq!(csv_row(""), [""]);
    }

    #[test]
    fn command_line_has_port_requests_pipeline_and_command() {
        let line = RUNS[0].command_line(6390);
        assert_eq!(
            line,
            "redis-benchmark -h 127.0.0.1 -p 6390 -n 200000 -P 16 --csv XADD bench '*' f v"
        );
        let relay = RUNS[2].command_args(6390);
        assert_eq!(relay.last().map(String::as_str), Some(""));
    }
}

//! Waiting for the broker's file reloads in tests: the `starling_reloads_total` counter read
//! from its metrics, and files replaced the way a mounted Secret changes.

use super::TestBroker;
use std::path::Path;
use std::time::Duration;

/// `starling_reloads_total{what,outcome}` in a metrics text (0 when absent).
pub fn reload_count(metrics: &str, what: &str, outcome: &str) -> u64 {
    let wanted = format!("starling_reloads_total{{what=\"{what}\",outcome=\"{outcome}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(wanted.as_str()))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

/// `starling_reloads_total{what,outcome}` as the broker reports it.
pub fn reloads(broker: &TestBroker, what: &str, outcome: &str) -> u64 {
    reload_count(&broker.broker.metrics.render(), what, outcome)
}

/// Waits until the broker counted `n` reloads of `what` with `outcome`, failing the test after
/// `within`.
pub async fn reloaded(broker: &TestBroker, what: &str, outcome: &str, n: u64, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    let mut pause = Duration::from_millis(20);
    while reloads(broker, what, outcome) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {outcome} reload of {what} within {within:?}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// Replaces `path`'s contents the way a mounted Secret changes: a new file renamed over the old.
pub fn replace_file(path: &Path, contents: &str) {
    let fresh = path.with_extension("new");
    std::fs::write(&fresh, contents).expect("write the new file");
    std::fs::rename(&fresh, path).expect("rename it into place");
}

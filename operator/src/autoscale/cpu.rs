//! The brokers' CPU use against their CPU requests, for the autoscaler's optional CPU target:
//! each broker reports the CPU time its process used (`cpu_seconds` in `GET /api/v1/node`); two
//! readings of the same pod, some seconds apart, give its CPU use. No metrics server needed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Two readings closer than this say too little (a reconcile right after another).
const SHORTEST_SPAN: Duration = Duration::from_secs(5);

/// What the autoscaler knows of the brokers' CPU use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cpu {
    /// `spec.autoscaling` sets no CPU target.
    NotTargeted,
    /// Not known yet (a pod read for the first time, no CPU request to compare with, ...).
    Unknown(String),
    /// The brokers' CPU use, all together, in percent of their requests.
    Percent(i64),
}

/// The last CPU time read from each broker pod (by pod uid).
#[derive(Debug, Default)]
pub struct CpuReadings {
    last: HashMap<String, (Instant, f64)>,
}

impl CpuReadings {
    /// Records this count's CPU times (`(pod uid, seconds)`, one per broker, every broker
    /// answered) and returns their use in percent of `request_millicores` each, from the
    /// readings before; pods gone are forgotten.
    pub fn utilization(
        &mut self,
        readings: &[(String, f64)],
        request_millicores: i64,
        now: Instant,
    ) -> Cpu {
        let mut used_millicores = 0.0;
        let mut unknown = Vec::new();
        for (pod, seconds) in readings {
            match self.last.get(pod) {
                Some((at, before)) if now.saturating_duration_since(*at) >= SHORTEST_SPAN => {
                    let span = now.saturating_duration_since(*at).as_secs_f64();
                    used_millicores += (seconds - before).max(0.0) / span * 1000.0;
                }
                _ => unknown.push(pod.clone()),
            }
        }
        let pods: Vec<&String> = readings.iter().map(|(pod, _)| pod).collect();
        // Keep a pod's older reading until a span long enough has passed.
        self.last.retain(|pod, _| pods.contains(&pod));
        for (pod, seconds) in readings {
            let keep = self
                .last
                .get(pod)
                .is_some_and(|(at, _)| now.saturating_duration_since(*at) < SHORTEST_SPAN);
            if !keep {
                self.last.insert(pod.clone(), (now, *seconds));
            }
        }
        if !unknown.is_empty() || readings.is_empty() {
            return Cpu::Unknown(format!(
                "{} broker(s) read once so far (CPU use needs two readings {}s apart)",
                unknown.len().max(1),
                SHORTEST_SPAN.as_secs()
            ));
        }
        let requested = request_millicores as f64 * readings.len() as f64;
        Cpu::Percent((used_millicores / requested * 100.0).round() as i64)
    }
}

/// A CPU quantity (`500m`, `2`, `0.5`) in millicores; `None` for any other form.
pub fn millicores(quantity: &str) -> Option<i64> {
    let quantity = quantity.trim();
    let millis = match quantity.strip_suffix('m') {
        Some(millis) => millis.parse::<i64>().ok()?,
        None => {
            let cores: f64 = quantity.parse().ok()?;
            (cores * 1000.0).round() as i64
        }
    };
    (millis > 0).then_some(millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities_in_millicores() {
        assert_eq!(millicores("500m"), Some(500));
        assert_eq!(millicores("2"), Some(2000));
        assert_eq!(millicores("0.25"), Some(250));
        assert_eq!(millicores("0"), None);
        assert_eq!(millicores("1Ki"), None);
    }

    #[test]
    fn two_readings_apart_give_the_use_against_the_requests() {
        let start = Instant::now();
        let mut cpu = CpuReadings::default();
        let first = [("a".to_string(), 100.0), ("b".to_string(), 50.0)];
        assert!(matches!(
            cpu.utilization(&first, 500, start),
            Cpu::Unknown(_)
        ));
        // Too soon: still unknown, and the first reading is kept.
        let soon = [("a".to_string(), 101.0), ("b".to_string(), 50.5)];
        assert!(matches!(
            cpu.utilization(&soon, 500, start + Duration::from_secs(2)),
            Cpu::Unknown(_)
        ));
        // 10 s later: a used 4 s (400m), b 6 s (600m): 1000m of 2 × 500m requested.
        let later = [("a".to_string(), 104.0), ("b".to_string(), 56.0)];
        assert_eq!(
            cpu.utilization(&later, 500, start + Duration::from_secs(10)),
            Cpu::Percent(100)
        );
        // A new pod (replaced: a new uid) makes it unknown again.
        let replaced = [("a".to_string(), 110.0), ("c".to_string(), 1.0)];
        assert!(matches!(
            cpu.utilization(&replaced, 500, start + Duration::from_secs(20)),
            Cpu::Unknown(_)
        ));
    }
}

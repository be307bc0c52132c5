//! The autoscaler's decisions, step by step in time.

use super::*;

fn spec(up: i32, down: i32) -> AutoscalingSpec {
    AutoscalingSpec {
        min_replicas: 2,
        max_replicas: 10,
        target_connections_per_broker: 1000,
        target_cpu_utilization_percent: None,
        tolerance_percent: 10,
        scale_up_stabilization_seconds: up,
        scale_down_stabilization_seconds: down,
    }
}

fn at(start: Instant, secs: u64) -> Instant {
    start + Duration::from_secs(secs)
}

#[test]
fn above_the_target_scales_up_at_once_by_what_the_connections_need() {
    let start = Instant::now();
    let mut history = Recommendations::new(start);
    let d = decide(
        &spec(0, 300),
        3,
        &Counts::Complete(4500),
        &Cpu::NotTargeted,
        &mut history,
        start,
    );
    assert_eq!((d.desired, d.reason), (5, Reason::ScaleUp));
    assert!(
        d.message
            .contains("3 brokers hold 4500 connections (1500 each"),
        "{}",
        d.message
    );
}

#[test]
fn within_the_tolerance_nothing_changes() {
    let start = Instant::now();
    let mut history = Recommendations::new(start);
    for connections in [2700, 3000, 3300] {
        let d = decide(
            &spec(0, 0),
            3,
            &Counts::Complete(connections),
            &Cpu::NotTargeted,
            &mut history,
            start,
        );
        assert_eq!(
            (d.desired, d.reason),
            (3, Reason::AtTarget),
            "{connections}"
        );
    }
    // Just beyond it: 3,301 need 4 brokers.
    let d = decide(
        &spec(0, 0),
        3,
        &Counts::Complete(3301),
        &Cpu::NotTargeted,
        &mut history,
        start,
    );
    assert_eq!((d.desired, d.reason), (4, Reason::ScaleUp));
}

#[test]
fn a_scale_up_waits_for_its_window_and_goes_only_as_far_as_all_of_it_asked() {
    let start = Instant::now();
    let mut history = Recommendations::new(start);
    let s = spec(60, 300);
    let d = decide(
        &s,
        3,
        &Counts::Complete(6000),
        &Cpu::NotTargeted,
        &mut history,
        start,
    );
    assert_eq!((d.desired, d.reason), (3, Reason::StabilizingUp));
    let d = decide(
        &s,
        3,
        &Counts::Complete(4500),
        &Cpu::NotTargeted,
        &mut history,
        at(start, 30),
    );
    assert_eq!((d.desired, d.reason), (3, Reason::StabilizingUp));
    // 61 s in: the first (6 brokers) left the window; 5 and 6 remain: 5.
    let d = decide(
        &s,
        3,
        &Counts::Complete(6000),
        &Cpu::NotTargeted,
        &mut history,
        at(start, 61),
    );
    assert_eq!((d.desired, d.reason), (5, Reason::ScaleUp));
}

#[test]
fn a_scale_up_at_most_doubles_or_adds_four() {
    let start = Instant::now();
    let mut history = Recommendations::new(start);
    let d = decide(
        &spec(0, 0),
        2,
        &Counts::Complete(9000),
        &Cpu::NotTargeted,
        &mut history,
        start,
    );
    assert_eq!(d.desired, 6, "2 + 4");
    let mut history = Recommendations::new(start);
    let d = decide(
        &spec(0, 0),
        5,
        &Counts::Complete(50_000),
        &Cpu::NotTargeted,
        &mut history,
        start,
    );
    assert_eq!(d.desired, 10, "doubled, and maxReplicas");
}

#[test]
fn a_scale_down_waits_a_whole_window_after_the_operator_started_and_keeps_the_highest() {
    let start = Instant::now();
    let mut history = Recommendations::new(start);
    let s = spec(0, 300);
    // A freshly started operator has not watched long enough.
    let d = decide(
        &s,
        5,
        &Counts::Complete(2000),
        &Cpu::NotTargeted,
        &mut history,
        start,
    );
    assert_eq!((d.desired, d.reason), (5, Reason::StabilizingDown));
    let d = decide(
        &s,
        5,
        &Counts::Complete(3000),
        &Cpu::NotTargeted,
        &mut history,
        at(start, 200),
    );
    assert_eq!((d.desired, d.reason), (5, Reason::StabilizingDown));
    // 301 s: the first (2) left the window; the highest of the rest is 3.
    let d = decide(
        &s,
        5,
        &Counts::Complete(2000),
        &Cpu::NotTargeted,
        &mut history,
        at(start, 301),
    );
    assert_eq!((d.desired, d.reason), (3, Reason::ScaleDown));
    assert!(d.message.ends_with("scaling to 3"), "{}", d.message);
}

#[test]
fn a_dip_shorter_than_the_window_does_not_shrink_the_cluster() {
    let start = Instant::now();
    let mut history = Recommendations::new(start);
    let s = spec(0, 60);
    for t in (0..=120).step_by(15) {
        // 5,000 connections except one count of 1,000 at 90 s.
        let connections = if t == 90 { 1000 } else { 5000 };
        let d = decide(
            &s,
            5,
            &Counts::Complete(connections),
            &Cpu::NotTargeted,
            &mut history,
            at(start, t),
        );
        assert_eq!(d.desired, 5, "at {t}s: {d:?}");
    }
}

#[test]
fn never_below_the_minimum_nor_above_the_maximum() {
    let start = Instant::now();
    let mut history = Recommendations::new(start);
    let s = spec(0, 0);
    let d = decide(
        &s,
        4,
        &Counts::Complete(0),
        &Cpu::NotTargeted,
        &mut history,
        start,
    );
    assert_eq!((d.desired, d.reason), (2, Reason::ScaleDown));
    let d = decide(
        &s,
        1,
        &Counts::Complete(0),
        &Cpu::NotTargeted,
        &mut history,
        start,
    );
    assert_eq!((d.desired, d.reason), (2, Reason::BelowMinimum));
    let d = decide(
        &s,
        12,
        &Counts::Missing {
            known: 0,
            pods: vec!["x".into()],
        },
        &Cpu::NotTargeted,
        &mut history,
        start,
    );
    assert_eq!((d.desired, d.reason), (10, Reason::AboveMaximum));
    let d = decide(
        &s,
        10,
        &Counts::Complete(10_000),
        &Cpu::NotTargeted,
        &mut history,
        start,
    );
    assert_eq!((d.desired, d.reason), (10, Reason::AtTarget));
}

#[test]
fn a_broker_without_a_count_holds_the_size_and_is_named() {
    let start = Instant::now();
    let mut history = Recommendations::new(start);
    let missing = |known| Counts::Missing {
        known,
        pods: vec!["demo-2 (not ready)".into()],
    };
    // 1,000 connections on the two that answered would allow 2 brokers: no scale-down.
    let d = decide(
        &spec(0, 0),
        3,
        &missing(1000),
        &Cpu::NotTargeted,
        &mut history,
        start,
    );
    assert_eq!((d.desired, d.reason), (3, Reason::CountsUnavailable));
    assert!(d.message.contains("demo-2 (not ready)"), "{}", d.message);
    // 5,000 on the two alone need 5: a lower bound is enough to scale up.
    let d = decide(
        &spec(0, 0),
        3,
        &missing(5000),
        &Cpu::NotTargeted,
        &mut history,
        start,
    );
    assert_eq!((d.desired, d.reason), (5, Reason::ScaleUp));
    assert!(d.message.contains("demo-2 (not ready)"), "{}", d.message);
}

#[test]
fn more_than_the_maximum_wanted_is_said() {
    let start = Instant::now();
    let mut history = Recommendations::new(start);
    let d = decide(
        &spec(0, 0),
        10,
        &Counts::Complete(20_000),
        &Cpu::NotTargeted,
        &mut history,
        start,
    );
    assert_eq!((d.desired, d.reason), (10, Reason::ScalingLimited));
    assert!(
        d.message.ends_with("20 wanted, maxReplicas is 10"),
        "{}",
        d.message
    );
}

#[test]
fn a_cpu_target_asks_for_more_brokers_when_it_is_the_stricter() {
    let start = Instant::now();
    let mut s = spec(0, 0);
    s.target_cpu_utilization_percent = Some(70);
    // 3,000 connections are on target for 3 brokers, but CPU at 140% of requests (target 70)
    // needs 6.
    let mut history = Recommendations::new(start);
    let d = decide(
        &s,
        3,
        &Counts::Complete(3000),
        &Cpu::Percent(140),
        &mut history,
        start,
    );
    assert_eq!((d.desired, d.reason), (6, Reason::ScaleUp));
    assert!(
        d.message.contains("CPU 140% of requests (target 70%)"),
        "{}",
        d.message
    );
    // CPU within the tolerance of its target: the connections decide.
    let mut history = Recommendations::new(start);
    let d = decide(
        &s,
        3,
        &Counts::Complete(6000),
        &Cpu::Percent(75),
        &mut history,
        start,
    );
    assert_eq!(d.desired, 6);
}

#[test]
fn an_unknown_cpu_use_holds_a_scale_down_but_not_a_scale_up() {
    let start = Instant::now();
    let mut s = spec(0, 0);
    s.target_cpu_utilization_percent = Some(70);
    let unknown = Cpu::Unknown("read once so far".into());
    let mut history = Recommendations::new(start);
    let d = decide(
        &s,
        5,
        &Counts::Complete(1000),
        &unknown,
        &mut history,
        start,
    );
    assert_eq!((d.desired, d.reason), (5, Reason::CountsUnavailable));
    assert!(
        d.message.contains("CPU use: read once so far"),
        "{}",
        d.message
    );
    let d = decide(
        &s,
        3,
        &Counts::Complete(8000),
        &unknown,
        &mut history,
        start,
    );
    assert_eq!((d.desired, d.reason), (7, Reason::ScaleUp));
}

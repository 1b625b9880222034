//! One analysis of one metric: verdicts from readings, evidence carried from one
//! window to the next, threshold failures counted over the rollout, and no data never
//! read as a pass.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serin_analysis::{NoData, Reading, Window, analyse, overall};
use serin_api::{Analysis, ErrorCounts, Metric, Verdict};

fn analysis(yaml: &str) -> Analysis {
    serde_norway::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
}

fn errors_analysis() -> Analysis {
    analysis("metrics: [{name: errors, errorRate: {requests: r, errors: e}}]")
}

fn window(since: i64, at: i64) -> Window {
    let time =
        |s: i64| Time(Timestamp::UNIX_EPOCH + k8s_openapi::jiff::SignedDuration::from_secs(s));
    Window {
        since: time(since),
        at: time(at),
    }
}

fn counts(cr: f64, ce: f64, sr: f64, se: f64) -> Reading {
    Reading::Counts(Ok(ErrorCounts {
        canary_requests: cr,
        canary_errors: ce,
        stable_requests: sr,
        stable_errors: se,
    }))
}

fn metric(analysis: &Analysis) -> &Metric {
    &analysis.metrics[0]
}

#[test]
fn no_data_is_inconclusive_never_a_pass() {
    let spec = errors_analysis();
    let status = analyse(
        metric(&spec),
        &spec,
        None,
        &window(0, 15),
        Reading::Counts(Err(NoData(
            "Prometheus query failed: connection refused".into(),
        ))),
    );
    assert_eq!(status.verdict, Verdict::Inconclusive);
    assert!(status.message.unwrap().contains("connection refused"));
}

#[test]
fn no_canary_traffic_is_inconclusive() {
    let spec = errors_analysis();
    let status = analyse(
        metric(&spec),
        &spec,
        None,
        &window(0, 15),
        counts(0.0, 0.0, 500.0, 5.0),
    );
    assert_eq!(status.verdict, Verdict::Inconclusive);
    assert!(status.message.unwrap().contains("too little traffic"));
}

#[test]
fn equal_rates_pass_and_a_clear_regression_fails_with_the_evidence() {
    let spec = errors_analysis();
    let healthy = analyse(
        metric(&spec),
        &spec,
        None,
        &window(0, 15),
        counts(1000.0, 10.0, 9000.0, 90.0),
    );
    assert_eq!(healthy.verdict, Verdict::Pass);
    assert!(healthy.evidence.unwrap() < 1.0);
    let bad = analyse(
        metric(&spec),
        &spec,
        None,
        &window(0, 15),
        counts(1000.0, 60.0, 9000.0, 90.0),
    );
    assert_eq!(bad.verdict, Verdict::Fail);
    let message = bad.message.unwrap();
    assert!(
        message.contains("maxRatio") && message.contains("evidence"),
        "{message}"
    );
    assert!(bad.ratio.unwrap().lower > 1.0);
}

#[test]
fn evidence_of_an_ended_window_is_carried_into_the_next() {
    let spec = errors_analysis();
    // Step 1: suspicious but not yet enough.
    let step1 = analyse(
        metric(&spec),
        &spec,
        None,
        &window(0, 60),
        counts(200.0, 6.0, 1800.0, 18.0),
    );
    assert_eq!(step1.verdict, Verdict::Pass);
    assert!(step1.carried.iter().all(|c| *c == 0.0));
    // Same window, later: the carried evidence is unchanged.
    let again = analyse(
        metric(&spec),
        &spec,
        Some(&step1),
        &window(0, 75),
        counts(250.0, 7.0, 2250.0, 22.0),
    );
    assert_eq!(again.carried, step1.carried);
    // Step 2 starts a new window: step 1's last counts are carried.
    let step2 = analyse(
        metric(&spec),
        &spec,
        Some(&again),
        &window(80, 95),
        counts(100.0, 3.0, 100.0, 1.0),
    );
    assert!(
        step2.carried.iter().any(|c| *c > 0.0),
        "{:?}",
        step2.carried
    );
    let fresh = analyse(
        metric(&spec),
        &spec,
        None,
        &window(80, 95),
        counts(100.0, 3.0, 100.0, 1.0),
    );
    assert!(step2.evidence.unwrap() > fresh.evidence.unwrap());
}

#[test]
fn threshold_failures_hold_the_step_then_fail_at_the_limit() {
    let spec = analysis("metrics: [{name: p99, query: q, max: 0.5, failureLimit: 2}]");
    let values = |canary: f64| Reading::Values {
        canary: Ok(canary),
        stable: Ok(0.1),
    };
    let first = analyse(metric(&spec), &spec, None, &window(0, 15), values(0.9));
    assert_eq!(
        (first.verdict, first.failures),
        (Verdict::Inconclusive, Some(1))
    );
    let fine = analyse(
        metric(&spec),
        &spec,
        Some(&first),
        &window(0, 30),
        values(0.2),
    );
    assert_eq!((fine.verdict, fine.failures), (Verdict::Pass, Some(1)));
    let second = analyse(
        metric(&spec),
        &spec,
        Some(&fine),
        &window(40, 55),
        values(0.7),
    );
    assert_eq!((second.verdict, second.failures), (Verdict::Fail, Some(2)));
    assert!(second.message.unwrap().contains("above max 0.5"));
    let missing = analyse(
        metric(&spec),
        &spec,
        Some(&fine),
        &window(40, 55),
        Reading::Values {
            canary: Err(NoData("the query returned no series".into())),
            stable: Ok(0.1),
        },
    );
    assert_eq!(
        (missing.verdict, missing.failures),
        (Verdict::Inconclusive, Some(1))
    );
}

#[test]
fn overall_fails_on_any_failure_and_holds_on_any_inconclusive() {
    let spec = errors_analysis();
    let pass = analyse(
        metric(&spec),
        &spec,
        None,
        &window(0, 15),
        counts(1000.0, 10.0, 9000.0, 90.0),
    );
    let fail = analyse(
        metric(&spec),
        &spec,
        None,
        &window(0, 15),
        counts(1000.0, 80.0, 9000.0, 90.0),
    );
    let blind = analyse(
        metric(&spec),
        &spec,
        None,
        &window(0, 15),
        counts(0.0, 0.0, 9000.0, 90.0),
    );
    assert_eq!(overall(std::slice::from_ref(&pass)).verdict, Verdict::Pass);
    assert_eq!(
        overall(&[pass.clone(), blind.clone()]).verdict,
        Verdict::Inconclusive
    );
    let failed = overall(&[pass, blind, fail]);
    assert_eq!(failed.verdict, Verdict::Fail);
    assert!(failed.reason.starts_with("errors:"), "{}", failed.reason);
}

#[test]
fn the_error_budget_is_split_between_error_rate_metrics() {
    let two = analysis(
        "confidence: 0.9\nmetrics: [{name: a, errorRate: {requests: r, errors: e}}, {name: b, errorRate: {requests: r, errors: e}}, {name: c, query: q, max: 1}]",
    );
    assert!((serin_analysis::alpha_for(&two, &two.metrics[0]) - 0.05).abs() < 1e-12);
}

#[test]
fn latency_metrics_share_the_budget_with_error_rate_metrics() {
    let both = analysis(
        "confidence: 0.9\nmetrics: [{name: a, errorRate: {requests: r, errors: e}}, {name: b, latency: {buckets: b, threshold: 0.25}}, {name: c, query: q, max: 1}]",
    );
    assert!((serin_analysis::alpha_for(&both, &both.metrics[1]) - 0.05).abs() < 1e-12);
}

#[test]
fn a_latency_metric_is_judged_on_slow_requests_within_its_tolerance() {
    let spec = analysis("metrics: [{name: latency, latency: {buckets: b, threshold: 0.25}}]");
    // Stable: 2% slower than 250 ms; canary 2.8%, within the default 1.5x.
    let within = analyse(
        metric(&spec),
        &spec,
        None,
        &window(0, 15),
        counts(5000.0, 140.0, 45000.0, 900.0),
    );
    assert_eq!(within.verdict, Verdict::Pass, "{:?}", within.message);
    let message = within.message.clone().unwrap_or_default();
    assert!(message.contains("share slower than 0.25"), "{message}");
    // Canary 8%: four times stable's share, well past 1.5x.
    let slower = analyse(
        metric(&spec),
        &spec,
        None,
        &window(0, 15),
        counts(5000.0, 400.0, 45000.0, 900.0),
    );
    assert_eq!(slower.verdict, Verdict::Fail, "{:?}", slower.message);
    let message = slower.message.unwrap_or_default();
    assert!(
        message.contains("share slower than 0.25 8.00% vs stable 2.00% exceeds maxRatio 1.5"),
        "{message}"
    );
    // The same counts as errors, judged at maxRatio 1, fail earlier: the tolerance
    // is the latency metric's, not the error-rate default.
    let strict =
        analysis("metrics: [{name: latency, latency: {buckets: b, threshold: 0.25, maxRatio: 1}}]");
    let at_one = analyse(
        metric(&strict),
        &strict,
        None,
        &window(0, 15),
        counts(5000.0, 140.0, 45000.0, 900.0),
    );
    assert!(at_one.evidence > within.evidence, "{at_one:?} {within:?}");
}

#[test]
fn a_latency_guard_rail_fails_a_canary_slow_as_stable_but_past_max_slow_share() {
    let spec = analysis(
        "metrics: [{name: latency, latency: {buckets: b, threshold: 0.25, maxSlowShare: 0.05}}]",
    );
    let status = analyse(
        metric(&spec),
        &spec,
        None,
        &window(0, 15),
        counts(2000.0, 400.0, 18000.0, 3600.0),
    );
    assert_eq!(status.verdict, Verdict::Fail);
    let message = status.message.unwrap_or_default();
    assert!(message.contains("is above maxSlowShare 5.00%"), "{message}");
}

#[test]
fn a_latency_metric_is_the_error_rate_judge_on_slow_requests_whatever_the_counts() {
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};
    let latency = analysis(
        "confidence: 0.9\nmetrics: [{name: m, latency: {buckets: b, threshold: 0.25, maxRatio: 1.5, maxSlowShare: 0.2}}]",
    );
    let errors = analysis(
        "confidence: 0.9\nmetrics: [{name: m, errorRate: {requests: r, errors: e, maxRatio: 1.5, maxRate: 0.2}}]",
    );
    let mut rng = StdRng::seed_from_u64(11);
    let (mut as_latency, mut as_errors) = (None, None);
    let mut seen = std::collections::BTreeSet::new();
    for window_start in 0..300 {
        // One reading in ten before the canary's first request.
        let canary_requests = if rng.random_bool(0.1) {
            0.0
        } else {
            rng.random_range(0.0..2000.0)
        };
        let requests = [canary_requests, rng.random_range(0.0..20000.0)];
        let reading = counts(
            requests[0],
            (requests[0] * rng.random_range(0.0..0.4)).round(),
            requests[1],
            (requests[1] * rng.random_range(0.0..0.2)).round(),
        );
        // A new window every fifth reading, so evidence is carried too.
        let window = window(window_start / 5 * 60, window_start / 5 * 60 + 15);
        let next_latency = analyse(
            metric(&latency),
            &latency,
            as_latency.as_ref(),
            &window,
            reading.clone(),
        );
        let next_errors = analyse(
            metric(&errors),
            &errors,
            as_errors.as_ref(),
            &window,
            reading,
        );
        assert_eq!(next_latency.verdict, next_errors.verdict);
        assert_eq!(next_latency.evidence, next_errors.evidence);
        assert_eq!(next_latency.carried, next_errors.carried);
        assert_eq!(next_latency.ratio, next_errors.ratio);
        seen.insert(format!("{:?}", next_latency.verdict));
        // Start over after a failure, as a new rollout would.
        let failed = next_latency.verdict == Verdict::Fail;
        as_latency = (!failed).then_some(next_latency);
        as_errors = (!failed).then_some(next_errors);
    }
    assert_eq!(seen.len(), 3, "the readings reached only {seen:?}");
}

#[test]
fn compared_metrics_look_quickly_while_evidence_leans_against_the_canary_and_news_arrives() {
    use serin_analysis::look_after;
    use std::time::Duration;
    let spec = analysis(
        "metrics: [{name: errors, errorRate: {requests: r, errors: e}}, {name: p99, query: q, max: 1}]",
    );
    let (interval, scrape) = (Duration::from_secs(15), Duration::from_secs(2));
    let judged = |counts: Reading| analyse(&spec.metrics[0], &spec, None, &window(0, 15), counts);
    let errors = &spec.metrics[0];
    // Nothing seen yet: look at the scrape cadence from the step's start.
    assert_eq!(look_after(errors, None, interval, scrape), scrape);
    // The canary looks worse than stable: evidence above 1, keep looking quickly.
    let leaning = judged(counts(1000.0, 20.0, 9000.0, 90.0));
    assert!(leaning.evidence > Some(1.0), "{leaning:?}");
    assert_eq!(look_after(errors, Some(&leaning), interval, scrape), scrape);
    // As good as stable: evidence below 1, back to every interval.
    let healthy = judged(counts(1000.0, 8.0, 9000.0, 90.0));
    assert!(healthy.evidence < Some(1.0), "{healthy:?}");
    assert_eq!(
        look_after(errors, Some(&healthy), interval, scrape),
        interval
    );
    // Little traffic: one canary error in 15 s, evidence still near 1. The next
    // look comes when half of one more is expected (in 15 / (2 × 2) s), not at
    // every scrape.
    let quiet = judged(counts(20.0, 1.0, 180.0, 1.0));
    assert!(quiet.evidence >= Some(0.1), "{quiet:?}");
    assert_eq!(
        look_after(errors, Some(&quiet), interval, scrape),
        Duration::from_secs_f64(3.75)
    );
    // Three canary errors in a minute and none of stable's: close to the bar, so
    // every scrape, not when half of one more is expected (60 / (2 × 4) s).
    let close = analyse(
        &spec.metrics[0],
        &spec,
        None,
        &window(0, 60),
        counts(80.0, 3.0, 720.0, 0.0),
    );
    assert!(
        close.evidence >= Some(serin_analysis::CLOSE_TO_THE_BAR),
        "{close:?}"
    );
    assert_eq!(look_after(errors, Some(&close), interval, scrape), scrape);
    // A threshold metric counts intervals: always every interval.
    assert_eq!(
        look_after(&spec.metrics[1], None, interval, scrape),
        interval
    );
    // A scrape slower than the interval changes nothing.
    assert_eq!(
        look_after(errors, None, interval, Duration::from_secs(60)),
        interval
    );
}

#[test]
fn a_metric_in_dry_run_is_judged_and_marked_but_never_decides_the_step() {
    let spec = analysis(
        "metrics: [{name: errors, errorRate: {requests: r, errors: e}}, {name: trial, dryRun: true, errorRate: {requests: r, errors: e}}]",
    );
    let judged = |metric: &Metric, reading| analyse(metric, &spec, None, &window(0, 15), reading);
    let pass = judged(&spec.metrics[0], counts(1000.0, 10.0, 9000.0, 90.0));
    let trial_fails = judged(&spec.metrics[1], counts(1000.0, 80.0, 9000.0, 90.0));
    let trial_blind = judged(&spec.metrics[1], counts(0.0, 0.0, 9000.0, 90.0));
    assert_eq!(trial_fails.verdict, Verdict::Fail, "judged as if enforced");
    assert!(trial_fails.dry_run && !pass.dry_run);
    let with_failing_trial = overall(&[pass.clone(), trial_fails]);
    assert_eq!(with_failing_trial.verdict, Verdict::Pass);
    assert!(
        !with_failing_trial.reason.contains("trial"),
        "{}",
        with_failing_trial.reason
    );
    assert_eq!(
        overall(&[pass, trial_blind]).verdict,
        Verdict::Pass,
        "nor holds it"
    );
}

#[test]
fn a_metric_in_dry_run_takes_no_budget_and_is_judged_at_the_share_it_would_have() {
    let enforced = analysis(
        "confidence: 0.9\nmetrics: [{name: a, errorRate: {requests: r, errors: e}}, {name: b, latency: {buckets: b, threshold: 0.25}}]",
    );
    let with_trial = analysis(
        "confidence: 0.9\nmetrics: [{name: a, errorRate: {requests: r, errors: e}}, {name: b, latency: {buckets: b, threshold: 0.25}}, {name: c, dryRun: true, errorRate: {requests: r, errors: e}}]",
    );
    let alpha = serin_analysis::alpha_for;
    assert_eq!(
        alpha(&enforced, &enforced.metrics[0]),
        alpha(&with_trial, &with_trial.metrics[0])
    );
    assert!((alpha(&with_trial, &with_trial.metrics[0]) - 0.05).abs() < 1e-12);
    assert!((alpha(&with_trial, &with_trial.metrics[2]) - 0.1 / 3.0).abs() < 1e-12);
}

#[test]
fn whatever_the_verdicts_metrics_in_dry_run_never_change_the_overall_one() {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let verdicts = [Verdict::Pass, Verdict::Fail, Verdict::Inconclusive];
    let spec = errors_analysis();
    let base = analyse(
        metric(&spec),
        &spec,
        None,
        &window(0, 15),
        counts(1000.0, 10.0, 9000.0, 90.0),
    );
    for _ in 0..500 {
        let metrics: Vec<_> = (0..rng.random_range(1..6))
            .map(|index| {
                let mut status = base.clone();
                status.name = format!("m{index}");
                status.verdict = verdicts[rng.random_range(0..3)];
                status.dry_run = rng.random_bool(0.5);
                status
            })
            .collect();
        let enforced: Vec<_> = metrics.iter().filter(|m| !m.dry_run).cloned().collect();
        assert_eq!(overall(&metrics), overall(&enforced), "{metrics:#?}");
    }
}

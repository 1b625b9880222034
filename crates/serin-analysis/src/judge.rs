//! One analysis of one metric, and the verdict over all metrics.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serin_api::{Analysis, ErrorCounts, Metric, MetricStatus, Verdict};

use crate::error_rate::{self, Tolerance};

/// What was measured for one metric in one analysis.
#[derive(Clone, Debug, PartialEq)]
pub enum Reading {
    /// An error-rate metric's counts, or why there are none.
    Counts(Result<ErrorCounts, NoData>),
    /// A threshold metric's value for each arm, or why there is none.
    Values {
        /// The canary's value.
        canary: Result<f64, NoData>,
        /// Stable's value, shown beside the canary's.
        stable: Result<f64, NoData>,
    },
}

/// Why a query gave nothing to judge: an empty result, NaN, or a failed query. Never
/// read as zero.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoData(pub String);

/// The window an analysis covers.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    /// When the step's weight took effect.
    pub since: Time,
    /// When the values were measured.
    pub at: Time,
}

/// What a metric compared with stable counts against the canary.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bad {
    /// A failed request (`errorRate`).
    Error,
    /// A request slower than this bucket bound (`latency`), in the histogram's unit.
    SlowerThan(f64),
}

impl Bad {
    /// The share of bad requests, as a message names it.
    fn share(self) -> String {
        match self {
            Self::Error => "error rate".into(),
            Self::SlowerThan(threshold) => format!("share slower than {threshold}"),
        }
    }

    /// The guard rail's field, as a message names it.
    fn guard_rail(self) -> &'static str {
        match self {
            Self::Error => "maxRate",
            Self::SlowerThan(_) => "maxSlowShare",
        }
    }
}

/// How `metric` is compared with stable, if it is: its tolerances and what it
/// counts as bad.
pub fn comparison(metric: &Metric) -> Option<(Tolerance, Bad)> {
    match (&metric.error_rate, &metric.latency) {
        (Some(spec), _) => Some((Tolerance::from(spec), Bad::Error)),
        (None, Some(spec)) => Some((Tolerance::from(spec), Bad::SlowerThan(spec.threshold))),
        (None, None) => None,
    }
}

/// The evidence from which a metric compared with stable is looked at quickly.
pub const QUICK_LOOKS_FROM: f64 = 0.1;

/// The evidence from which a metric is looked at every scrape: close to the bar
/// (a 5% budget's is 20), a crossing is likely at the next bad request, and
/// waiting half a gap for it cost the wide grid 1.5–1.7× Wald's bound on 5×
/// regressions; from 6 on, 7 more of its cells met the goal for 0.2 more looks a
/// minute at most on a healthy canary (docs/benchmarks.md).
pub const CLOSE_TO_THE_BAR: f64 = 6.0;

/// Seconds between two looks at a metric compared with stable, from its latest
/// evidence and what its window has seen (the canary's `bad` requests, errors or
/// slow ones, in `elapsed` seconds; None before its first look). While the
/// evidence is at least [`QUICK_LOOKS_FROM`] (it leans against the canary, or has
/// not left it yet) the next look comes when half of one more of the canary's bad
/// requests is expected (so a crossing waits half a gap, not a whole one), since
/// they are what moves the evidence up (one of
/// stable's moves it little), but no sooner than `quick` (a scrape: nothing newer
/// exists) and no later than `interval`; once the evidence leans the canary's way,
/// every `interval`; from [`CLOSE_TO_THE_BAR`], every `quick`. At high traffic a
/// clear regression is acted on within a scrape or two; at low traffic or a small
/// share, where a scrape brings no news, quick looks would only cost queries.
pub fn cadence(evidence: f64, seen: Option<(f64, f64)>, quick: f64, interval: f64) -> f64 {
    let quick = quick.min(interval);
    if evidence < QUICK_LOOKS_FROM {
        return interval;
    }
    if evidence >= CLOSE_TO_THE_BAR {
        return quick;
    }
    match seen {
        None => quick,
        Some((bad, elapsed)) => {
            (elapsed.max(0.0) / (2.0 * (bad.max(0.0) + 1.0))).clamp(quick, interval)
        }
    }
}

/// How long after its last look in a window (or the window's start) `metric` is
/// looked at again: [`cadence`] for a metric compared with stable, the interval
/// for a threshold metric (its `failureLimit` counts intervals). The e-process is
/// valid at any looks, so looking more often costs no false rollbacks.
pub fn look_after(
    metric: &Metric,
    latest: Option<&MetricStatus>,
    interval: Duration,
    scrape: Duration,
) -> Duration {
    if comparison(metric).is_none() {
        return interval;
    }
    let seen = latest.and_then(|m| {
        let elapsed = m.at.as_ref()?.0.duration_since(m.since.as_ref()?.0);
        let bad = m.counts.map_or(0.0, |c| c.canary_errors);
        Some((bad, elapsed.as_secs_f64()))
    });
    let evidence = latest.and_then(|m| m.evidence).unwrap_or(1.0);
    Duration::from_secs_f64(cadence(
        evidence,
        seen,
        scrape.as_secs_f64(),
        interval.as_secs_f64(),
    ))
}

/// Share of `1 - confidence` that `metric`, compared with stable, may spend: the
/// enforced metrics split it, so the false-rollback rate the user set holds for
/// all of them together. A dry-run metric is judged at the share it would have
/// once enforced, and adding one changes nothing for the others.
pub fn alpha_for(analysis: &Analysis, metric: &Metric) -> f64 {
    let enforced = analysis
        .metrics
        .iter()
        .filter(|m| !m.dry_run && comparison(m).is_some())
        .count();
    let judged = (enforced + usize::from(metric.dry_run)).max(1);
    (1.0 - analysis.confidence) / judged as f64
}

/// Judges one metric from its reading and its previous status in this rollout.
pub fn analyse(
    metric: &Metric,
    analysis: &Analysis,
    previous: Option<&MetricStatus>,
    window: &Window,
    reading: Reading,
) -> MetricStatus {
    let mut status = MetricStatus {
        name: metric.name.clone(),
        canary: None,
        stable: None,
        counts: None,
        evidence: None,
        carried: Vec::new(),
        earlier: Vec::new(),
        ratio: None,
        failures: None,
        verdict: Verdict::Inconclusive,
        since: Some(window.since.clone()),
        at: Some(window.at.clone()),
        message: None,
        dry_run: metric.dry_run,
    };
    match (comparison(metric), reading) {
        (Some((tolerance, bad)), Reading::Counts(counts)) => {
            status.carried = carried(&tolerance, previous, &window.since);
            status.earlier = earlier(previous, &window.since);
            let alpha = alpha_for(analysis, metric);
            judge_counts(&mut status, &tolerance, bad, alpha, counts);
        }
        (None, Reading::Values { canary, stable }) => {
            status.failures = Some(previous.and_then(|p| p.failures).unwrap_or(0));
            judge_threshold(&mut status, metric, canary, stable);
        }
        _ => {
            status.message = Some("the reading does not match the kind of metric".into());
        }
    }
    status
}

/// Evidence of the earlier windows of this rollout: the previous status's carried
/// ratios, plus its own window's when that window has ended.
fn carried(tolerance: &Tolerance, previous: Option<&MetricStatus>, since: &Time) -> Vec<f64> {
    let components = tolerance.components();
    let mut carried = previous
        .map(|p| p.carried.clone())
        .filter(|c| c.len() == components)
        .unwrap_or_else(|| vec![0.0; components]);
    if let Some(previous) = previous
        && previous.since.as_ref() != Some(since)
        && let Some(counts) = &previous.counts
    {
        for (sum, ratio) in carried
            .iter_mut()
            .zip(tolerance.log_likelihood_ratios(counts))
        {
            *sum += ratio;
        }
    }
    carried
}

/// Counts of the earlier windows of this rollout: the previous status's, plus its
/// own window's when that window has ended.
fn earlier(previous: Option<&MetricStatus>, since: &Time) -> Vec<ErrorCounts> {
    let Some(previous) = previous else {
        return Vec::new();
    };
    let mut earlier = previous.earlier.clone();
    if previous.since.as_ref() != Some(since)
        && let Some(counts) = previous.counts
    {
        earlier.push(counts);
    }
    earlier
}

fn judge_counts(
    status: &mut MetricStatus,
    tolerance: &Tolerance,
    bad: Bad,
    alpha: f64,
    counts: Result<ErrorCounts, NoData>,
) {
    let bar = (1.0 / alpha).ln();
    let window = counts.as_ref().map(error_rate::sanitize).ok();
    let mut log_ratios = status.carried.clone();
    if let Some(counts) = &window {
        for (sum, ratio) in log_ratios
            .iter_mut()
            .zip(tolerance.log_likelihood_ratios(counts))
        {
            *sum += ratio;
        }
    }
    let log_evidence = tolerance.log_evidence(&log_ratios);
    status.evidence = Some(log_evidence.exp().min(1e300));
    if let Some(counts) = &window {
        status.counts = Some(*counts);
        status.canary = rate(counts.canary_errors, counts.canary_requests);
        status.stable = rate(counts.stable_errors, counts.stable_requests);
        let mut windows = status.earlier.clone();
        windows.push(*counts);
        status.ratio = error_rate::ratio_sequence(&windows, alpha);
    }
    let evidence_text = format!(
        "evidence {:.3} against \"no worse\" (fails at {:.0})",
        status.evidence.unwrap_or(1.0),
        1.0 / alpha
    );
    let (verdict, message) = if log_evidence >= bar {
        let against = if tolerance.guard_rail_dominates(&log_ratios) {
            format!(
                "canary {} {} is above {} {}",
                bad.share(),
                percent(status.canary),
                bad.guard_rail(),
                percent(tolerance.max_rate)
            )
        } else {
            format!(
                "canary {} {} vs stable {} exceeds maxRatio {}{}",
                bad.share(),
                percent(status.canary),
                percent(status.stable),
                tolerance.max_ratio,
                status
                    .ratio
                    .map(|r| format!(
                        " (ratio {:.2}–{})",
                        r.lower,
                        r.upper.map_or("∞".into(), |u| format!("{u:.2}"))
                    ))
                    .unwrap_or_default()
            )
        };
        (Verdict::Fail, format!("{against}; {evidence_text}"))
    } else {
        match &window {
            None => (
                Verdict::Inconclusive,
                match counts {
                    Err(NoData(why)) => format!("no data: {why}"),
                    Ok(_) => "no data".into(),
                },
            ),
            Some(counts) if counts.canary_requests <= 0.0 => (
                Verdict::Inconclusive,
                "too little traffic: no canary requests in the window yet".into(),
            ),
            Some(counts) if counts.stable_requests <= 0.0 => (
                Verdict::Inconclusive,
                "too little traffic: no stable requests to compare with".into(),
            ),
            Some(_) => (
                Verdict::Pass,
                format!(
                    "canary {} {} vs stable {}; {evidence_text}",
                    bad.share(),
                    percent(status.canary),
                    percent(status.stable)
                ),
            ),
        }
    };
    status.verdict = verdict;
    status.message = Some(message);
}

fn judge_threshold(
    status: &mut MetricStatus,
    metric: &Metric,
    canary: Result<f64, NoData>,
    stable: Result<f64, NoData>,
) {
    status.stable = stable.ok();
    let failures = status.failures.unwrap_or(0);
    let limit = metric.failure_limit();
    let value = match canary {
        Ok(value) => value,
        Err(NoData(why)) => {
            status.verdict = Verdict::Inconclusive;
            status.message = Some(format!("no data for the canary: {why}"));
            return;
        }
    };
    status.canary = Some(value);
    let out_of_bounds = match (metric.min, metric.max) {
        (Some(min), _) if value < min => Some(format!("{value:.4} is below min {min}")),
        (_, Some(max)) if value > max => Some(format!("{value:.4} is above max {max}")),
        _ => None,
    };
    let Some(problem) = out_of_bounds else {
        status.verdict = Verdict::Pass;
        status.message = Some(format!("canary {value:.4} within bounds"));
        return;
    };
    let failures = failures + 1;
    status.failures = Some(failures);
    if failures >= limit {
        status.verdict = Verdict::Fail;
        status.message = Some(format!(
            "canary {problem}; {failures} of failureLimit {limit} intervals out of bounds"
        ));
    } else {
        status.verdict = Verdict::Inconclusive;
        status.message = Some(format!(
            "canary {problem}; {failures} of failureLimit {limit} intervals out of bounds, step held"
        ));
    }
}

/// The verdict over all metrics, with the reason a person reads.
#[derive(Clone, Debug, PartialEq)]
pub struct Overall {
    /// Fail if any metric fails, else Inconclusive if any is, else Pass.
    pub verdict: Verdict,
    /// The failing or inconclusive metrics and why.
    pub reason: String,
}

/// Combines the enforced metrics' verdicts: a failing metric fails the step, an
/// inconclusive one holds it; a metric in dry run does neither.
pub fn overall(metrics: &[MetricStatus]) -> Overall {
    let metrics: Vec<&MetricStatus> = metrics.iter().filter(|m| !m.dry_run).collect();
    let explain = |verdict: Verdict| {
        metrics
            .iter()
            .filter(|m| m.verdict == verdict)
            .map(|m| format!("{}: {}", m.name, m.message.as_deref().unwrap_or("")))
            .collect::<Vec<_>>()
            .join("; ")
    };
    for verdict in [Verdict::Fail, Verdict::Inconclusive] {
        if metrics.iter().any(|m| m.verdict == verdict) {
            return Overall {
                verdict,
                reason: explain(verdict),
            };
        }
    }
    Overall {
        verdict: Verdict::Pass,
        reason: explain(Verdict::Pass),
    }
}

fn rate(errors: f64, requests: f64) -> Option<f64> {
    (requests > 0.0).then(|| errors / requests)
}

fn percent(value: Option<f64>) -> String {
    value.map_or("n/a".into(), |v| format!("{:.2}%", v * 100.0))
}

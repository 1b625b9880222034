//! The error-rate judge's guarantee measured through the real pipeline: many
//! Canaries rolling out at once on the local control plane, the traffic simulator
//! serving each one's counters, a real Prometheus scraping them, and Serin's own
//! queries and judgement. Healthy rollouts (canary as good as stable) give the
//! false-rollback rate with its exact interval; regressed ones the time to rollback.
//! `make bench-e2e-judge` runs it at length, and a shorter run is a test.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serin_analysis::Tolerance;
use serin_analysis::detection::{Method, Requests, Scenario};
use serin_analysis::error_rate::clopper_pearson;
use serin_api::{Canary, ErrorCounts, Phase};
use statrs::distribution::{Binomial, DiscreteCDF};

use crate::controller::Controller;
use crate::harness::Cluster;
use crate::manifest::CanaryManifest;
use crate::prometheus::{Prometheus, ScrapeJob};
use crate::rollout::{phase, reason};
use crate::traffic::Traffic;

/// One run: how many Canaries at once, how many rollouts to finish, and the
/// traffic and analysis they all share.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Canaries rolling out at once, each with its own traffic.
    pub canaries: usize,
    /// Rollouts to finish before the run ends.
    pub rollouts: usize,
    /// Requests per second to each Canary, both arms.
    pub rps: f64,
    /// Stable's error rate, a fraction.
    pub stable_error_rate: f64,
    /// The canary's error rate over stable's: 1 for healthy rollouts.
    pub ratio: f64,
    /// Prometheus' scrape interval.
    pub scrape: Duration,
    /// The Canaries' `analysis.interval`, seconds.
    pub interval_seconds: u64,
    /// The Canaries' steps, percent.
    pub steps: Vec<u32>,
    /// The Canaries' `stepDuration`, seconds.
    pub step_seconds: u64,
    /// The Canaries' `analysis.confidence`.
    pub confidence: f64,
    /// The longest the run may take; it reports what finished by then.
    pub limit: Duration,
}

/// How the run's rollouts ended.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// Rollouts promoted.
    pub promoted: usize,
    /// Rollouts the analysis rolled back (`AnalysisFailed`).
    pub rolled_back: usize,
    /// Rollouts that ended any other way, with the reason.
    pub other: Vec<String>,
    /// For each rollback, seconds from the first weight on the canary (as polled
    /// once a second) to the phase Aborted.
    pub rollback_seconds: Vec<f64>,
    /// Wall-clock seconds the rollouts took, from the first apply.
    pub seconds: f64,
    /// Events beyond one per transition: `RolloutStarted` beyond the revisions
    /// applied, `AnalysisFailed` beyond the rollbacks.
    pub duplicate_events: usize,
    /// Analyses whose counts fell below the previous analysis' of the same window
    /// (a count can only grow while its window does).
    pub shrunk_counts: usize,
    /// Analyses seen, one per window and analysis time.
    pub analyses: usize,
}

impl Outcome {
    /// Rollouts that ended.
    pub fn rollouts(&self) -> usize {
        self.promoted + self.rolled_back + self.other.len()
    }

    /// Rolled back by the analysis, as a fraction of the rollouts that ended.
    pub fn rollback_rate(&self) -> f64 {
        self.rolled_back as f64 / self.rollouts().max(1) as f64
    }

    /// The exact (Clopper–Pearson) two-sided 95% interval of the rollback rate;
    /// (0, 1) before any rollout ended.
    pub fn rollback_interval(&self) -> (f64, f64) {
        clopper_pearson(self.rolled_back as f64, self.rollouts() as f64, 0.95).unwrap_or((0.0, 1.0))
    }

    /// The median time to rollback, seconds.
    pub fn median_rollback_seconds(&self) -> Option<f64> {
        let mut times = self.rollback_seconds.clone();
        times.sort_by(f64::total_cmp);
        times.get(times.len() / 2).copied()
    }
}

impl Plan {
    /// The simulator's scenario for the same traffic and manifest: what
    /// `kubectl serin simulate` predicts for this run.
    pub fn scenario(&self) -> Scenario {
        Scenario {
            total_rps: self.rps,
            swing: 0.0,
            requests: Requests::Errors {
                stable_error_rate: self.stable_error_rate,
            },
            shares: self.steps.iter().map(|s| f64::from(*s) / 100.0).collect(),
            step_seconds: self.step_seconds,
            interval_seconds: self.interval_seconds,
            scrape_seconds: self.scrape.as_secs().max(1),
            tolerance: Tolerance {
                max_ratio: 1.0,
                max_rate: None,
            },
            alpha: 1.0 - self.confidence,
        }
    }

    /// The simulator's rollback rate and median time to rollback for this plan's
    /// ratio, over `runs` simulated rollouts.
    pub fn predicted(&self, runs: usize) -> (f64, Option<f64>) {
        let report = self.scenario().evaluate(&[self.ratio], runs, 7);
        report
            .cells
            .iter()
            .find(|cell| cell.method == Method::Serin && cell.ratio == self.ratio)
            .map_or((f64::NAN, None), |cell| (cell.rollback_rate, cell.median))
    }

    fn manifest(&self, name: &str, revision: usize, error_rate: f64) -> CanaryManifest {
        let steps = self
            .steps
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        CanaryManifest::new(name)
            .image(&format!("web:{revision}"))
            .env("SIM_ERROR_RATE", &format!("'{error_rate}'"))
            .spec(&format!(
                "  steps: [{steps}]
  stepDuration: {step}s
  progressDeadline: {deadline}s
  scaleDownDelay: 1s
  analysis:
    interval: {interval}s
    scrapeInterval: {scrape}ms
    confidence: {confidence}
    prometheus: {{address: 'ADDRESS'}}
    metrics:
    - name: errors
      errorRate:
        counters:
          requests: http_requests_total{{namespace=\"{{{{namespace}}}}\",pod=~\"{{{{pods}}}}\"}}
          errors: http_requests_total{{namespace=\"{{{{namespace}}}}\",pod=~\"{{{{pods}}}}\",code=\"500\"}}
",
                step = self.step_seconds,
                deadline = self.step_seconds * 10,
                interval = self.interval_seconds,
                scrape = self.scrape.as_millis(),
                confidence = self.confidence,
            ))
    }
}

/// Where one Canary's rollout stands, as the run sees it.
#[derive(Clone, Debug)]
enum Rollout {
    /// Nothing under way: the next revision may be applied.
    Idle,
    /// Revision applied at generation `generation` (None until a poll saw it);
    /// `weighted` is when a poll first saw weight on the canary.
    Running {
        generation: Option<i64>,
        weighted: Option<Instant>,
    },
    /// A bad canary was promoted: this Canary takes part no more.
    Done,
}

/// Runs `plan` on `cluster`: a namespace with its own controller, one traffic
/// simulator per Canary, one Prometheus scraping them all. Every process stops
/// when the run returns.
pub fn run(cluster: &Cluster, plan: &Plan) -> Result<Outcome> {
    let namespace = cluster.namespace("judge")?;
    let kubectl = &cluster.kubectl;
    let _controller = Controller::start(cluster, &namespace)?;
    let names: Vec<String> = (0..plan.canaries).map(|i| format!("web-{i}")).collect();
    let traffic = names
        .iter()
        .map(|name| Traffic::start(kubectl.kubeconfig(), &namespace, name, plan.rps))
        .collect::<Result<Vec<_>>>()?;
    let jobs = [ScrapeJob {
        name: "traffic".into(),
        targets: traffic.iter().map(Traffic::target).collect(),
    }];
    let prometheus = Prometheus::start(&jobs, plan.scrape)?;
    let apply = |name: &str, revision: usize, error_rate: f64| -> Result<()> {
        let yaml = plan
            .manifest(name, revision, error_rate)
            .yaml()
            .replace("ADDRESS", &prometheus.url());
        kubectl.run_with_input(&["apply", "-n", &namespace, "-f", "-"], Some(&yaml))?;
        Ok(())
    };
    for name in &names {
        apply(name, 0, plan.stable_error_rate)?;
    }
    let deadline = Instant::now() + plan.limit;
    loop {
        let canaries = canaries(kubectl, &namespace)?;
        if names
            .iter()
            .all(|name| canaries.get(name).and_then(phase) == Some(Phase::Healthy))
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("the Canaries were not Healthy before the run's limit");
        }
        std::thread::sleep(Duration::from_secs(1));
    }

    let started = Instant::now();
    let canary_error_rate = plan.stable_error_rate * plan.ratio;
    let mut outcome = Outcome::default();
    let mut rollouts: BTreeMap<&str, Rollout> =
        names.iter().map(|n| (n.as_str(), Rollout::Idle)).collect();
    let mut applied = 0;
    let mut last_counts: BTreeMap<String, (String, String, ErrorCounts)> = BTreeMap::new();
    while outcome.rollouts() < plan.rollouts
        && Instant::now() < deadline
        && !rollouts.values().all(|r| matches!(r, Rollout::Done))
    {
        for (name, rollout) in &mut rollouts {
            if matches!(rollout, Rollout::Idle) && applied < plan.rollouts {
                applied += 1;
                apply(name, applied, canary_error_rate)?;
                *rollout = Rollout::Running {
                    generation: None,
                    weighted: None,
                };
            }
        }
        std::thread::sleep(Duration::from_secs(1));
        let seen = canaries(kubectl, &namespace)?;
        for (name, canary) in &seen {
            track_counts(name, canary, &mut last_counts, &mut outcome);
        }
        for (name, rollout) in &mut rollouts {
            let Some(canary) = seen.get(*name) else {
                continue;
            };
            if let Some(next) = advance(rollout, canary, plan, &mut outcome) {
                *rollout = next;
            }
        }
    }
    outcome.seconds = started.elapsed().as_secs_f64();
    let events = kubectl.get_json(&["events", "-n", &namespace])?;
    let recorded = |reason: &str| {
        events["items"].as_array().map_or(0, |items| {
            items.iter().filter(|e| e["reason"] == reason).count()
        })
    };
    outcome.duplicate_events = recorded("RolloutStarted").saturating_sub(applied)
        + recorded("AnalysisFailed").saturating_sub(outcome.rolled_back);
    drop(prometheus);
    drop(traffic);
    let _ = kubectl.run(&["delete", "namespace", &namespace, "--wait=false"]);
    Ok(outcome)
}

/// What `canary`, as polled, says about `rollout`; the next state when it moved.
fn advance(
    rollout: &Rollout,
    canary: &Canary,
    plan: &Plan,
    outcome: &mut Outcome,
) -> Option<Rollout> {
    let Rollout::Running {
        generation,
        weighted,
    } = rollout
    else {
        return None;
    };
    let generation = generation.or(canary.metadata.generation)?;
    let status = canary.status.as_ref()?;
    if status.observed_generation.unwrap_or_default() < generation {
        return Some(Rollout::Running {
            generation: Some(generation),
            weighted: *weighted,
        });
    }
    let weighted = weighted.or_else(|| (!status.weight.is_zero()).then(Instant::now));
    match status.phase {
        Some(Phase::Healthy) => {
            outcome.promoted += 1;
            // A bad canary promoted is stable now: later rollouts would compare
            // bad with bad.
            Some(if plan.ratio > 1.0 {
                Rollout::Done
            } else {
                Rollout::Idle
            })
        }
        Some(Phase::Aborted) => {
            let reason = reason(canary, "Progressing");
            if reason == "AnalysisFailed" {
                outcome.rolled_back += 1;
                if let Some(weighted) = weighted {
                    outcome
                        .rollback_seconds
                        .push(weighted.elapsed().as_secs_f64());
                }
            } else {
                outcome.other.push(reason);
            }
            Some(Rollout::Idle)
        }
        _ => Some(Rollout::Running {
            generation: Some(generation),
            weighted,
        }),
    }
}

/// Counts an analysis of `canary`'s error-rate metric not seen before, and whether
/// its counts fell below the last analysis' of the same window.
fn track_counts(
    name: &str,
    canary: &Canary,
    last: &mut BTreeMap<String, (String, String, ErrorCounts)>,
    outcome: &mut Outcome,
) {
    let Some(metric) = canary
        .status
        .as_ref()
        .and_then(|status| status.analysis.first())
    else {
        return;
    };
    let (Some(since), Some(at), Some(counts)) = (&metric.since, &metric.at, &metric.counts) else {
        return;
    };
    let (since, at) = (since.0.to_string(), at.0.to_string());
    if let Some((last_since, last_at, before)) = last.get(name) {
        if *last_since == since && *last_at == at {
            return;
        }
        let fell = counts.canary_requests < before.canary_requests
            || counts.canary_errors < before.canary_errors
            || counts.stable_requests < before.stable_requests
            || counts.stable_errors < before.stable_errors;
        if *last_since == since && fell {
            outcome.shrunk_counts += 1;
        }
    }
    outcome.analyses += 1;
    last.insert(name.to_owned(), (since, at, *counts));
}

/// The namespace's Canaries by name, in one request.
fn canaries(
    kubectl: &crate::kubectl::Kubectl,
    namespace: &str,
) -> Result<BTreeMap<String, Canary>> {
    let list = kubectl.get_json(&["canaries", "-n", namespace])?;
    list["items"]
        .as_array()
        .context("no items in the Canary list")?
        .iter()
        .map(|item| {
            let canary: Canary = serde_json::from_value(item.clone())?;
            Ok((canary.metadata.name.clone().unwrap_or_default(), canary))
        })
        .collect()
}

/// The chance of `successes` or more in `trials` when each happens with
/// probability `rate`: a one-sided binomial test's p-value.
pub fn at_least(successes: usize, trials: usize, rate: f64) -> f64 {
    if successes == 0 {
        return 1.0;
    }
    Binomial::new(rate, trials as u64)
        .map_or(f64::NAN, |binomial| binomial.sf(successes as u64 - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exact_interval_and_the_binomial_tail_match_known_values() {
        // 11 of 655: 0.8%–3.0% (the external measurement).
        let eleven = Outcome {
            promoted: 644,
            rolled_back: 11,
            ..Outcome::default()
        };
        let (lower, upper) = eleven.rollback_interval();
        assert!((0.0083..0.0085).contains(&lower), "{lower}");
        assert!((0.0297..0.0300).contains(&upper), "{upper}");
        let none = Outcome {
            promoted: 10,
            ..Outcome::default()
        };
        assert_eq!(none.rollback_interval().0, 0.0);
        assert_eq!(Outcome::default().rollback_interval(), (0.0, 1.0));
        // P(X >= 1) for n = 10, p = 0.5 is 1 - 1/1024.
        assert!((at_least(1, 10, 0.5) - (1.0 - 1.0 / 1024.0)).abs() < 1e-12);
        assert_eq!(at_least(0, 10, 0.05), 1.0);
        assert!(
            at_least(10, 40, 0.05) < 0.001,
            "10 of 40 is clearly above 5%"
        );
        assert!(at_least(3, 40, 0.05) > 0.1, "3 of 40 is not");
    }
}

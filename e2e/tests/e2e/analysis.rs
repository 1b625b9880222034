//! The analysis closes the loop: Serin shifts weight, the traffic simulator shifts
//! requests, the real Prometheus scrapes them, and Serin judges the canary against
//! stable and promotes or rolls back by itself.

use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serin_api::{Canary, MetricStatus, Phase, Verdict, Weight};
use serin_e2e::manifest::CanaryManifest;
use serin_e2e::prometheus::Prometheus;
use serin_e2e::slow_proxy::SlowProxy;
use serin_e2e::traffic::Traffic;

use crate::cluster;
use crate::rollout::{
    Rollout, condition, message, metric, phase, reason, revisions, status, weight,
};

/// Seconds between two analyses in these tests.
pub(crate) const INTERVAL: u64 = 5;

/// The error-rate metric from counters, as the docs recommend.
pub(crate) const ERRORS_METRIC: &str = r#"    - name: errors
      errorRate:
        counters:
          requests: http_requests_total{namespace="{{namespace}}",pod=~"{{pods}}"}
          errors: http_requests_total{namespace="{{namespace}}",pod=~"{{pods}}",code="500"}
"#;

/// Latency against stable: the share of requests slower than 250 ms, from the
/// histogram's buckets.
pub(crate) const LATENCY_METRIC: &str = r#"    - name: latency
      latency:
        buckets: http_request_duration_seconds_bucket{namespace="{{namespace}}",pod=~"{{pods}}"}
        threshold: 0.25
"#;

/// The same metric from two queries over `increase()`, the other form.
const ERRORS_QUERIES: &str = r#"    - name: errors
      errorRate:
        requests: sum(increase(http_requests_total{namespace="{{namespace}}",pod=~"{{pods}}"}[{{elapsed}}]))
        errors: sum(increase(http_requests_total{namespace="{{namespace}}",pod=~"{{pods}}",code="500"}[{{elapsed}}]))
"#;

/// A namespace with its controller, the simulator's traffic, a Prometheus scraping it,
/// and a healthy Canary.
pub(crate) struct Judged {
    pub(crate) rollout: Rollout,
    traffic: Traffic,
    prometheus: Prometheus,
    /// Between the controller and Prometheus, when the test slows answers down.
    proxy: Option<SlowProxy>,
    name: String,
    analysis: String,
}

/// What the pods of a revision do with their requests.
pub(crate) struct Behaviour {
    pub(crate) error_rate: f64,
    pub(crate) latency_ms: u64,
}

impl Judged {
    pub(crate) fn start(
        test: &str,
        rps: f64,
        steps: &str,
        analysis: &str,
        stable: Behaviour,
    ) -> Result<Self> {
        Self::start_with(test, rps, steps, analysis, stable, INTERVAL, false)
    }

    /// As [`Self::start`], analysing every `interval` seconds, with the controller
    /// reaching Prometheus through a [`SlowProxy`] (at first without delay) when
    /// `through_proxy`.
    fn start_with(
        test: &str,
        rps: f64,
        steps: &str,
        analysis: &str,
        stable: Behaviour,
        interval: u64,
        through_proxy: bool,
    ) -> Result<Self> {
        let name = "web".to_owned();
        let rollout = Rollout::prepare(cluster(), test, &name)?;
        let traffic = Traffic::start(rollout.kubectl.kubeconfig(), &rollout.namespace, &name, rps)?;
        let prometheus = traffic.scraped()?;
        let proxy = through_proxy
            .then(|| SlowProxy::start(prometheus.port()))
            .transpose()?;
        let address = proxy
            .as_ref()
            .map_or_else(|| prometheus.url(), SlowProxy::url);
        let judged = Self {
            analysis: format!(
                "{steps}
  analysis:
    interval: {interval}s
    prometheus: {{address: '{address}'}}
{analysis}"
            ),
            rollout,
            traffic,
            prometheus,
            proxy,
            name,
        };
        judged.apply("v1", &stable)?;
        judged.rollout.wait_promoted(Duration::from_secs(60))?;
        Ok(judged)
    }

    pub(crate) fn apply(&self, image: &str, pods: &Behaviour) -> Result<()> {
        self.rollout.apply_manifest(
            &CanaryManifest::new(&self.name)
                .image(image)
                .env("SIM_ERROR_RATE", &format!("'{}'", pods.error_rate))
                .env("SIM_LATENCY_MS", &format!("'{}'", pods.latency_ms))
                .spec(&self.analysis),
        )
    }

    /// Rolls out `image` with `pods` and waits for the rollout to end one way or the
    /// other; returns the Canary then.
    fn roll_out_and_wait(&self, image: &str, pods: &Behaviour, limit: Duration) -> Result<Canary> {
        let (stable, _) = revisions(&self.rollout.canary()?);
        self.apply(image, pods)?;
        let canary = self.rollout.wait("the rollout ends", limit, |c| {
            let (now_stable, canary) = revisions(c);
            phase(c) == Some(Phase::Aborted) || (now_stable != stable && canary.is_empty())
        });
        canary.map_err(|e| anyhow::anyhow!("{e}\ntraffic log:\n{}", self.traffic.log()))
    }
}

/// The analysis of metric `name`, or an error showing the status.
fn analysed(canary: &Canary, name: &str) -> Result<MetricStatus> {
    metric(canary, name)
        .ok_or_else(|| anyhow::anyhow!("no analysis of {name}: {:#?}", status(canary)))
}

#[test]
fn a_canary_as_good_as_stable_is_promoted_by_the_analysis() -> Result<()> {
    // Both arms: 2% errors, and 8% of requests slower than 250 ms (exponential
    // latencies with a mean of 100 ms).
    let good = || Behaviour {
        error_rate: 0.02,
        latency_ms: 100,
    };
    // confidence 0.999: a healthy canary is rolled back at most 1 time in 1000, so
    // this test does not flake on the 5% the default allows.
    let judged = Judged::start(
        "analysis-good",
        200.0,
        "  steps: [25, 50]\n  stepDuration: 20s",
        &format!("    confidence: 0.999\n    metrics:\n{ERRORS_METRIC}{LATENCY_METRIC}"),
        good(),
    )?;
    let (stable, _) = revisions(&judged.rollout.canary()?);
    judged.apply("v2", &good())?;
    // Mid-rollout, both metrics are judged and pass; the latency metric on slow
    // requests of both arms.
    judged.rollout.wait(
        "both metrics pass on slow requests and errors",
        Duration::from_secs(60),
        |c| {
            let passes = |name: &str| {
                metric(c, name).is_some_and(|m| {
                    m.verdict == Verdict::Pass
                        && m.counts
                            .is_some_and(|n| n.canary_errors > 0.0 && n.stable_errors > 0.0)
                })
            };
            passes("errors") && passes("latency")
        },
    )?;
    let canary = judged.roll_out_and_wait("v2", &good(), Duration::from_secs(150))?;
    ensure!(
        phase(&canary) == Some(Phase::Healthy),
        "{:#?}",
        status(&canary)
    );
    let (promoted, _) = revisions(&canary);
    ensure!(promoted != stable, "the new revision is stable");
    let events = judged.rollout.events()?;
    ensure!(
        events.iter().filter(|e| *e == "StepAdvanced").count() >= 2,
        "{events:?}"
    );
    Ok(())
}

#[test]
fn a_canary_slower_than_stable_is_rolled_back_by_the_latency_metric() -> Result<()> {
    // Stable: 8% of requests slower than 250 ms; the canary 29% (a mean of 200 ms
    // instead of 100), past the default tolerance of 1.5 times stable's share.
    let judged = Judged::start(
        "analysis-slower",
        200.0,
        "  steps: [25, 50]\n  stepDuration: 60s",
        &format!("    metrics:\n{LATENCY_METRIC}"),
        Behaviour {
            error_rate: 0.0,
            latency_ms: 100,
        },
    )?;
    let (stable, _) = revisions(&judged.rollout.canary()?);
    let slower = Behaviour {
        error_rate: 0.0,
        latency_ms: 200,
    };
    let canary = judged.roll_out_and_wait("v2", &slower, Duration::from_secs(90))?;
    ensure!(
        phase(&canary) == Some(Phase::Aborted)
            && reason(&canary, "Progressing") == "AnalysisFailed",
        "{:#?}",
        status(&canary)
    );
    let message = message(&canary, "Progressing");
    ensure!(
        message.contains("latency: canary share slower than 0.25")
            && message.contains("exceeds maxRatio 1.5"),
        "{message}"
    );
    ensure!(revisions(&canary).0 == stable, "stable is unchanged");
    let latency = analysed(&canary, "latency")?;
    ensure!(latency.verdict == Verdict::Fail, "{latency:#?}");
    let (canary_share, stable_share) = (
        latency.canary.context("no canary share")?,
        latency.stable.context("no stable share")?,
    );
    ensure!(
        (0.03..0.15).contains(&stable_share) && canary_share > 2.0 * stable_share,
        "shares slower than 250 ms: canary {canary_share}, stable {stable_share}"
    );
    let counts = latency.counts.as_ref().context("no counts")?;
    ensure!(
        [
            counts.canary_requests,
            counts.canary_errors,
            counts.stable_requests,
            counts.stable_errors
        ]
        .iter()
        .all(|n| n.fract() == 0.0),
        "bucket counts are read from raw samples: {counts:?}"
    );
    Ok(())
}

#[test]
fn twice_the_stable_error_rate_is_rolled_back_by_the_analysis() -> Result<()> {
    let judged = Judged::start(
        "analysis-doubled",
        300.0,
        "  steps: [25, 50]\n  stepDuration: 60s",
        &format!("    metrics:\n{ERRORS_METRIC}"),
        Behaviour {
            error_rate: 0.02,
            latency_ms: 20,
        },
    )?;
    let (stable, _) = revisions(&judged.rollout.canary()?);
    let bad = Behaviour {
        error_rate: 0.04,
        latency_ms: 20,
    };
    let canary = judged.roll_out_and_wait("v2", &bad, Duration::from_secs(120))?;
    ensure!(
        phase(&canary) == Some(Phase::Aborted),
        "{:#?}",
        status(&canary)
    );
    ensure!(
        reason(&canary, "Progressing") == "AnalysisFailed",
        "{:#?}",
        status(&canary)
    );
    let message = message(&canary, "Progressing");
    ensure!(
        message.contains("errors") && message.contains("evidence") && message.contains("maxRatio"),
        "{message}"
    );
    ensure!(revisions(&canary).0 == stable, "stable is unchanged");
    ensure!(
        weight(&canary) == Weight::from_percent(0),
        "all traffic back on stable"
    );
    let errors = analysed(&canary, "errors")?;
    ensure!(errors.verdict == Verdict::Fail, "{errors:#?}");
    ensure!(
        errors
            .counts
            .as_ref()
            .is_some_and(|c| c.canary_requests > 0.0)
            && errors.ratio.as_ref().map(|r| r.lower) > Some(1.0),
        "{errors:#?}"
    );
    // Counters are read from raw samples: whole numbers, nothing extrapolated.
    let counts = errors.counts.as_ref().context("no counts")?;
    let whole = [
        counts.canary_requests,
        counts.canary_errors,
        counts.stable_requests,
        counts.stable_errors,
    ];
    ensure!(whole.iter().all(|n| n.fract() == 0.0), "{counts:?}");
    ensure!(
        judged
            .rollout
            .events()?
            .contains(&"AnalysisFailed".to_owned())
    );
    Ok(())
}

#[test]
fn twenty_percent_errors_are_rolled_back_by_the_guard_rail_within_two_intervals() -> Result<()> {
    // Stable is already bad (15%): the ratio alone (maxRatio 2) would let 20% pass.
    let judged = Judged::start(
        "analysis-guard-rail",
        200.0,
        "  steps: [25, 50]\n  stepDuration: 60s",
        &format!("    metrics:\n{ERRORS_QUERIES}        maxRatio: 2\n        maxRate: 0.05\n"),
        Behaviour {
            error_rate: 0.15,
            latency_ms: 20,
        },
    )?;
    let bad = Behaviour {
        error_rate: 0.2,
        latency_ms: 20,
    };
    let canary = judged.roll_out_and_wait("v2", &bad, Duration::from_secs(90))?;
    ensure!(
        phase(&canary) == Some(Phase::Aborted),
        "{:#?}",
        status(&canary)
    );
    let progressing = condition(&canary, "Progressing").context("no Progressing condition")?;
    ensure!(
        progressing.reason == "AnalysisFailed" && progressing.message.contains("maxRate"),
        "{progressing:#?}"
    );
    let errors = analysed(&canary, "errors")?;
    let since = errors.since.as_ref().context("no window start")?.0;
    let aborted = progressing.last_transition_time.0;
    let took = aborted.duration_since(since).as_secs_f64();
    // Timestamps have whole seconds; one more for the reconcile itself.
    ensure!(
        took <= (2 * INTERVAL + 2) as f64,
        "aborted {took}s after the weight took effect: {errors:#?}"
    );
    Ok(())
}

#[test]
fn a_clear_regression_is_looked_at_every_scrape_and_rolled_back_before_the_first_interval()
-> Result<()> {
    // Analyses every 15 s, Prometheus scraping every second: a canary failing 20%
    // of its requests against stable's 2% is judged at the scrape cadence from the
    // step's start, and rolled back before the first 15-second analysis was due.
    let interval = 15;
    let judged = Judged::start_with(
        "analysis-quick-looks",
        200.0,
        "  steps: [25, 50]\n  stepDuration: 60s",
        &format!("    scrapeInterval: 1s\n    metrics:\n{ERRORS_METRIC}"),
        Behaviour {
            error_rate: 0.02,
            latency_ms: 20,
        },
        interval,
        false,
    )?;
    let broken = Behaviour {
        error_rate: 0.2,
        latency_ms: 20,
    };
    let canary = judged.roll_out_and_wait("v2", &broken, Duration::from_secs(90))?;
    ensure!(
        phase(&canary) == Some(Phase::Aborted)
            && reason(&canary, "Progressing") == "AnalysisFailed",
        "{:#?}",
        status(&canary)
    );
    let errors = analysed(&canary, "errors")?;
    let since = errors.since.as_ref().context("no window start")?.0;
    let at = errors.at.as_ref().context("no analysis time")?.0;
    let looked = at.duration_since(since).as_secs_f64();
    ensure!(
        errors.verdict == Verdict::Fail && looked < interval as f64,
        "the failing analysis ran {looked}s into the step, not before its first interval: {errors:#?}"
    );
    Ok(())
}

#[test]
fn a_latency_regression_is_rolled_back_by_a_threshold_metric() -> Result<()> {
    let judged = Judged::start(
        "analysis-latency",
        200.0,
        "  steps: [25, 50]\n  stepDuration: 60s",
        r#"    metrics:
    - name: p99-latency
      query: histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{namespace="{{namespace}}",pod=~"{{pods}}"}[{{interval}}])))
      max: 0.25
      failureLimit: 2
"#,
        Behaviour {
            error_rate: 0.0,
            latency_ms: 20,
        },
    )?;
    let slow = Behaviour {
        error_rate: 0.0,
        latency_ms: 400,
    };
    let canary = judged.roll_out_and_wait("v2", &slow, Duration::from_secs(90))?;
    ensure!(
        phase(&canary) == Some(Phase::Aborted),
        "{:#?}",
        status(&canary)
    );
    let latency = analysed(&canary, "p99-latency")?;
    ensure!(
        latency.verdict == Verdict::Fail && latency.failures == Some(2),
        "{latency:#?}"
    );
    ensure!(
        latency.stable < Some(0.25) && latency.canary > Some(0.25),
        "{latency:#?}"
    );
    let message = message(&canary, "Progressing");
    ensure!(
        message.contains("p99-latency") && message.contains("above max"),
        "{message}"
    );
    Ok(())
}

#[test]
fn a_metric_in_dry_run_is_judged_and_shown_but_never_rolls_back() -> Result<()> {
    // The same threshold as the test above, in dry run, beside an enforced error
    // rate: the slow canary fails the dry-run metric and is promoted all the same.
    let judged = Judged::start(
        "analysis-dry-run",
        200.0,
        "  steps: [25, 50]\n  stepDuration: 20s",
        &format!(
            r#"    confidence: 0.999
    metrics:
{ERRORS_METRIC}    - name: p99-latency
      dryRun: true
      query: histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{{namespace="{{{{namespace}}}}",pod=~"{{{{pods}}}}"}}[{{{{interval}}}}])))
      max: 0.25
"#
        ),
        Behaviour {
            error_rate: 0.0,
            latency_ms: 20,
        },
    )?;
    let slow = Behaviour {
        error_rate: 0.0,
        latency_ms: 400,
    };
    let (stable, _) = revisions(&judged.rollout.canary()?);
    judged.apply("v2", &slow)?;
    let failing = judged.rollout.wait(
        "the dry-run metric fails and the step goes on",
        Duration::from_secs(60),
        |c| metric(c, "p99-latency").is_some_and(|m| m.verdict == Verdict::Fail && m.dry_run),
    )?;
    let shown = crate::plugin::serin(&judged.rollout, &["get", &judged.name])?;
    let shown = String::from_utf8_lossy(&shown.stdout);
    ensure!(
        shown
            .lines()
            .any(|line| line.contains("p99-latency") && line.contains("dry run")),
        "kubectl serin get shows the metric in dry run: {shown}"
    );
    ensure!(
        phase(&failing) == Some(Phase::Progressing),
        "{:#?}",
        status(&failing)
    );
    let canary = judged.roll_out_and_wait("v2", &slow, Duration::from_secs(150))?;
    ensure!(
        phase(&canary) == Some(Phase::Healthy),
        "{:#?}",
        status(&canary)
    );
    ensure!(revisions(&canary).0 != stable, "the new revision is stable");
    Ok(())
}

#[test]
fn prometheus_down_holds_the_step_and_nothing_is_promoted_until_it_is_back() -> Result<()> {
    let good = || Behaviour {
        error_rate: 0.02,
        latency_ms: 20,
    };
    let mut judged = Judged::start(
        "analysis-prometheus-down",
        200.0,
        "  steps: [25, 50]\n  stepDuration: 20s\n  progressDeadline: 5m",
        &format!("    confidence: 0.999\n    metrics:\n{ERRORS_METRIC}"),
        good(),
    )?;
    let (stable, _) = revisions(&judged.rollout.canary()?);
    judged.apply("v2", &good())?;
    judged
        .rollout
        .wait("a first passing analysis", Duration::from_secs(60), |c| {
            status(c).step == 1 && metric(c, "errors").is_some_and(|m| m.verdict == Verdict::Pass)
        })?;
    judged.prometheus.stop();

    // Three times the step's time: the step holds, Inconclusive, and nothing is promoted.
    let until = Instant::now() + Duration::from_secs(60);
    let mut held = false;
    while Instant::now() < until {
        let canary = judged.rollout.canary()?;
        let (now_stable, _) = revisions(&canary);
        if now_stable != stable || phase(&canary) == Some(Phase::Promoting) {
            bail!("promoted while Prometheus was down: {:#?}", status(&canary));
        }
        held |= reason(&canary, "Progressing") == "Inconclusive"
            && message(&canary, "Progressing").contains("Prometheus query failed");
        thread::sleep(Duration::from_millis(500));
    }
    let canary = judged.rollout.canary()?;
    ensure!(
        held,
        "the step was never held as Inconclusive: {:#?}",
        status(&canary)
    );
    ensure!(
        phase(&canary) == Some(Phase::Progressing),
        "{:#?}",
        status(&canary)
    );
    ensure!(status(&canary).step == 1, "{:#?}", status(&canary));

    judged.prometheus.restart()?;
    judged.rollout.wait_promoted(Duration::from_secs(120))?;
    let (promoted, _) = revisions(&judged.rollout.canary()?);
    ensure!(
        promoted != stable,
        "the rollout finished once Prometheus was back"
    );
    Ok(())
}

#[test]
fn a_slow_prometheus_holds_the_step_without_piling_up_queries() -> Result<()> {
    let good = || Behaviour {
        error_rate: 0.02,
        latency_ms: 20,
    };
    let judged = Judged::start_with(
        "analysis-slow-prometheus",
        200.0,
        "  steps: [50]\n  stepDuration: 10s\n  progressDeadline: 5m",
        &format!("    confidence: 0.999\n    metrics:\n{ERRORS_METRIC}"),
        good(),
        INTERVAL,
        true,
    )?;
    let proxy = judged.proxy.as_ref().context("no proxy")?;
    let (stable, _) = revisions(&judged.rollout.canary()?);
    // Answers take longer than a query may wait (the interval, 5 s): every query
    // times out, the step holds, and queries must not pile up meanwhile.
    proxy.set_delay(Duration::from_secs(3 * INTERVAL));
    let asked_before = proxy.requests();
    judged.apply("v2", &good())?;
    let until = Instant::now() + Duration::from_secs(40);
    let mut held = false;
    while Instant::now() < until {
        let canary = judged.rollout.canary()?;
        ensure!(
            revisions(&canary).0 == stable && phase(&canary) != Some(Phase::Promoting),
            "promoted while Prometheus could not answer: {:#?}",
            status(&canary)
        );
        held |= reason(&canary, "Progressing") == "Inconclusive";
        thread::sleep(Duration::from_millis(500));
    }
    let asked = proxy.requests() - asked_before;
    eprintln!(
        "slow Prometheus: {asked} queries in 40 s, at most {} in flight",
        proxy.most_in_flight()
    );
    ensure!(held, "the step was never held as Inconclusive");
    ensure!(asked >= 4, "the analysis kept asking: {asked} queries");
    // One error-rate metric is four queries (two counts for each arm), and a
    // Canary's analyses never overlap.
    ensure!(
        proxy.most_in_flight() <= 4,
        "{} queries in flight at once",
        proxy.most_in_flight()
    );

    proxy.set_delay(Duration::ZERO);
    judged.rollout.wait_promoted(Duration::from_secs(120))?;
    ensure!(revisions(&judged.rollout.canary()?).0 != stable);
    Ok(())
}

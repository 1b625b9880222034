//! Real requests during real rollouts: how the pod-count router shifts them, that a
//! healthy rollout loses none, and how soon an abort takes the canary out.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serin_api::{Phase, Weight};
use serin_e2e::load::{Answer, Load};
use serin_e2e::manifest::CanaryManifest;
use serin_e2e::node::image;
use serin_e2e::rollout::{Rollout, phase, revisions, weight};

use crate::cluster;

/// Requests a second: enough for a tight share per step, little for two cores.
pub(crate) const RATE: f64 = 80.0;
/// Time after a weight change before its share is counted: pods become Ready, the
/// old ones are withdrawn and kube-proxy rewrites its rules (slower on a loaded
/// machine), so only the second half of a step, and at least this, is counted.
const SETTLE: Duration = Duration::from_secs(5);

/// The workload at `version`, four real pods behind the Service `web`, ready when
/// their server answers.
pub(crate) fn workload(version: &str, steps: &str) -> CanaryManifest {
    CanaryManifest::new("web")
        .on_real_node()
        .image(&image("workload"))
        .replicas(4)
        .env("VERSION", version)
        .env("ERROR_RATE", "'0'")
        .scraped_at(8080)
        .first_container(
            "readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}",
        )
        .spec(steps)
}

/// A release: the template's VERSION changes, as a new build would.
pub(crate) fn release(rollout: &Rollout, version: &str) -> Result<()> {
    release_with_errors(rollout, version, "0")
}

/// A release whose pods answer `error_rate` of their requests with a 500.
pub(crate) fn release_with_errors(
    rollout: &Rollout,
    version: &str,
    error_rate: &str,
) -> Result<()> {
    rollout.patch(
        "json",
        &format!(
            r#"[{{"op":"replace","path":"/spec/template/spec/containers/0/env/0/value","value":"{version}"}},
                {{"op":"replace","path":"/spec/template/spec/containers/0/env/1/value","value":"{error_rate}"}}]"#
        ),
    )
}

/// The Service `web`'s ClusterIP and port, once a request through it is answered.
pub(crate) fn service_address(rollout: &Rollout) -> Result<SocketAddr> {
    let service = rollout
        .kubectl
        .get_json(&["service", "web", "-n", &rollout.namespace])?;
    let ip = service["spec"]["clusterIP"]
        .as_str()
        .context("the Service web has no ClusterIP")?;
    let address: SocketAddr = format!("{ip}:80").parse()?;
    Load::wait_answering(address, Duration::from_secs(30))?;
    Ok(address)
}

/// The Canary's weight and phase over time, sampled while `until` is false.
pub(crate) struct Timeline(pub(crate) Vec<(Instant, Weight, Option<Phase>)>);

impl Timeline {
    pub(crate) fn record(
        rollout: &Rollout,
        limit: Duration,
        mut until: impl FnMut(&serin_api::Canary) -> bool,
    ) -> Result<Self> {
        let deadline = Instant::now() + limit;
        let mut samples = Vec::new();
        loop {
            let canary = rollout.canary()?;
            samples.push((Instant::now(), weight(&canary), phase(&canary)));
            if until(&canary) {
                return Ok(Self(samples));
            }
            if Instant::now() > deadline {
                bail!("not done within {limit:?}; last seen {:?}", samples.last());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Checks, for each step long enough to settle, that `version`'s share of the
    /// answers sent in the second half of the step (pods Ready, old ones withdrawn,
    /// proxies updated) is within a binomial tolerance of the weight; returns the
    /// weights checked.
    pub(crate) fn check_shares(
        &self,
        answers: &[Answer],
        version: &str,
        path: &str,
    ) -> Vec<Weight> {
        let mut measured = Vec::new();
        for (step_weight, from, to) in self.stretches() {
            if step_weight.is_zero()
                || step_weight == Weight::FULL
                || to < from + SETTLE + Duration::from_secs(5)
            {
                continue;
            }
            let settled = from + SETTLE.max((to - from) / 2);
            let (observed, count) = share(answers, version, settled, to);
            let expected = step_weight.share();
            // Each request picks a pod at random (kube-proxy's iptables rules): binomial.
            let tolerance = 4.0 * (expected * (1.0 - expected) / count as f64).sqrt() + 0.01;
            eprintln!(
                "{path}, weight {step_weight}%: {:.1}% of {count} requests on the canary (tolerance ±{:.1}%)",
                observed * 100.0,
                tolerance * 100.0
            );
            assert!(
                (observed - expected).abs() <= tolerance,
                "through the {path}, at weight {step_weight}% the canary served {:.1}% of {count} requests",
                observed * 100.0
            );
            measured.push(step_weight);
        }
        measured
    }

    /// Each stretch of one weight: (weight, first seen, last seen).
    fn stretches(&self) -> Vec<(Weight, Instant, Instant)> {
        let mut stretches: Vec<(Weight, Instant, Instant)> = Vec::new();
        for &(at, weight, _) in &self.0 {
            match stretches.last_mut() {
                Some(last) if last.0 == weight => last.2 = at,
                _ => stretches.push((weight, at, at)),
            }
        }
        stretches
    }
}

/// Seconds from `earlier` to `later`, negative when `later` came first.
pub(crate) fn seconds_after(later: Instant, earlier: Instant) -> f64 {
    if later >= earlier {
        later.duration_since(earlier).as_secs_f64()
    } else {
        -earlier.duration_since(later).as_secs_f64()
    }
}

/// Share of the answers sent in `[from, to]` served by `version`, and their number.
fn share(answers: &[Answer], version: &str, from: Instant, to: Instant) -> (f64, usize) {
    let window: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.sent >= from && a.sent <= to && a.succeeded())
        .collect();
    let served = window
        .iter()
        .filter(|a| a.version.as_deref() == Some(version))
        .count();
    (served as f64 / window.len().max(1) as f64, window.len())
}

#[test]
fn a_healthy_rollout_shifts_real_requests_by_pod_count_and_loses_none() -> Result<()> {
    let rollout = Rollout::prepare_in_cluster(cluster(), "real-shift", "web")?;
    let steps = "  steps: [25, 50, 75]\n  stepDuration: 20s\n  scaleDownDelay: 5s\n";
    rollout.apply_manifest(&workload("v1", steps))?;
    rollout.wait_promoted(Duration::from_secs(90))?;
    let address = service_address(&rollout)?;

    let load = Load::start(address, RATE, Duration::from_secs(180))?;
    std::thread::sleep(Duration::from_secs(2));
    let (stable, _) = revisions(&rollout.canary()?);
    release(&rollout, "v2")?;
    let timeline = Timeline::record(&rollout, Duration::from_secs(150), |c| {
        let (now_stable, _) = revisions(c);
        now_stable != stable && phase(c) == Some(Phase::Healthy)
    })?;
    // Past promotion, while the old pods drain and go.
    std::thread::sleep(Duration::from_secs(8));
    let answers = load.stop();

    let failed: Vec<&Answer> = answers.iter().filter(|a| !a.succeeded()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during a healthy rollout: {:?}",
        failed.len(),
        answers.len(),
        failed.iter().take(5).collect::<Vec<_>>()
    );
    let measured = timeline.check_shares(&answers, "v2", "Service");
    assert_eq!(
        measured,
        [25, 50, 75].map(Weight::from_percent),
        "every step measured"
    );
    eprintln!(
        "{} requests, none failed; {} served by v2",
        answers.len(),
        answers
            .iter()
            .filter(|a| a.version.as_deref() == Some("v2"))
            .count()
    );
    Ok(())
}

#[test]
fn after_an_abort_no_request_reaches_the_canary() -> Result<()> {
    let rollout = Rollout::prepare_in_cluster(cluster(), "real-abort", "web")?;
    let steps = "  steps: [50]\n  stepDuration: 10m\n  progressDeadline: 20m\n";
    rollout.apply_manifest(&workload("v1", steps))?;
    rollout.wait_promoted(Duration::from_secs(90))?;
    let address = service_address(&rollout)?;
    release(&rollout, "v2")?;
    rollout.wait("v2 at 50%", Duration::from_secs(60), |c| {
        weight(c) == Weight::from_percent(50)
    })?;

    let load = Load::start(address, RATE, Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_secs(5));
    rollout.annotate("abort/real-abort")?;
    let aborted = Timeline::record(&rollout, Duration::from_secs(30), |c| {
        phase(c) == Some(Phase::Aborted) && weight(c) == Weight::from_percent(0)
    })?;
    let written = aborted
        .0
        .last()
        .map(|sample| sample.0)
        .context("no sample")?;
    std::thread::sleep(Duration::from_secs(10));
    let answers = load.stop();

    let before = answers.iter().filter(|a| a.sent < written).count();
    let last_on_canary = answers
        .iter()
        .filter(|a| a.version.as_deref() == Some("v2"))
        .map(|a| a.sent)
        .max()
        .context("the canary served nothing before the abort")?;
    let offset = seconds_after(last_on_canary, written);
    eprintln!(
        "abort: the last request on the canary was sent {offset:+.2}s from when weight 0 was seen written ({before} requests before)"
    );
    assert!(
        offset < 5.0,
        "the canary still served requests {offset:.2}s after the abort was written"
    );
    let failed = answers.iter().filter(|a| !a.succeeded()).count();
    assert_eq!(failed, 0, "requests failed while the canary was taken out");
    Ok(())
}

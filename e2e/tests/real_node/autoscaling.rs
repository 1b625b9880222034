//! A real HorizontalPodAutoscaler (kube-controller-manager's) targets a Canary
//! through its scale subresource and sets the total from an external metric the
//! test controls; with `stableScale: Weighted` Serin splits that total by the
//! route's weight, so stable is never kept above its share and the canary grows
//! with its own, while real requests flow through the Gateway.

use std::time::Duration;

use anyhow::Result;
use serin_api::{Phase, Weight};
use serin_e2e::load::Load;
use serin_e2e::metrics::ExternalMetrics;
use serin_e2e::rollout::{Rollout, phase, revisions, weight};

use crate::cluster;
use crate::gateway::{gateway, promoted_behind_the_gateway};
use crate::traffic::release;

/// The metric the HPA reads: the load, 10 a pod.
const LOAD: &str = "serin-e2e-load";

const HPA: &str = "apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: web}
spec:
  scaleTargetRef: {apiVersion: serin.dev/v1alpha1, kind: Canary, name: web}
  minReplicas: 1
  maxReplicas: 10
  metrics:
  - type: External
    external:
      metric: {name: serin-e2e-load}
      target: {type: AverageValue, averageValue: '10'}
  behavior:
    scaleUp: {stabilizationWindowSeconds: 0, policies: [{type: Pods, value: 10, periodSeconds: 1}]}
    scaleDown: {stabilizationWindowSeconds: 0, policies: [{type: Pods, value: 10, periodSeconds: 1}]}
";

/// Requests a second through the Gateway: light, the point is the pod counts.
const RATE: f64 = 20.0;

/// The Canary's replicas as the HPA last set them.
fn replicas(rollout: &Rollout) -> Result<i64> {
    Ok(rollout.object()?["spec"]["replicas"].as_i64().unwrap_or(0))
}

/// Waits until the ReplicaSets of stable and canary have `expected` replicas, all
/// available.
fn wait_pods(rollout: &Rollout, what: &str, expected: (i64, i64)) -> Result<()> {
    let (stable, canary) = revisions(&rollout.canary()?);
    serin_e2e::process::eventually(what, Duration::from_secs(90), || {
        let stable = rollout.replica_set(&stable)?;
        let canary = rollout.replica_set(&canary)?;
        Ok(
            (stable == (expected.0, expected.0) && canary == (expected.1, expected.1))
                .then_some(()),
        )
    })?;
    eprintln!("{what}: stable {} pods, canary {}", expected.0, expected.1);
    Ok(())
}

#[test]
fn an_hpa_sets_the_total_and_serin_splits_it_by_the_weight() -> Result<()> {
    let metrics = ExternalMetrics::start(&cluster().kubectl)?;
    let rollout = Rollout::prepare_in_cluster(cluster(), "real-hpa", "web")?;
    let _turn = gateway(&rollout)?;
    // Steps move on when the test says (promote), so each is looked at as long as
    // the HPA needs.
    let steps = "  steps: [25, 50]\n  stepDuration: 10m\n  progressDeadline: 15m\n  scaleDownDelay: 5s\n  stableScale: Weighted\n  traffic: {gatewayAPI: {httpRoutes: [web]}}\n";
    metrics.set(LOAD, 40)?;
    let address = promoted_behind_the_gateway(&rollout, steps)?;
    let (stable, _) = revisions(&rollout.canary()?);
    rollout.apply_yaml(HPA)?;
    serin_e2e::process::eventually("the HPA sets 4 replicas", Duration::from_secs(60), || {
        Ok((replicas(&rollout)? == 4).then_some(()))
    })?;
    serin_e2e::process::eventually("v1 at 4 pods", Duration::from_secs(90), || {
        Ok((rollout.replica_set(&stable)? == (4, 4)).then_some(()))
    })?;

    let load = Load::start(address, RATE, Duration::from_secs(400))?;
    release(&rollout, "v2")?;
    rollout.wait("step 1 at 25%", Duration::from_secs(90), |c| {
        weight(c) == Weight::from_percent(25)
    })?;
    // The total of 4 split by 25%: stable shrinks to its share once the weight moved.
    wait_pods(&rollout, "25% of 4", (3, 1))?;
    // The load doubles: the HPA asks for 8, and both sides grow with their share.
    metrics.set(LOAD, 80)?;
    wait_pods(&rollout, "25% of 8", (6, 2))?;
    rollout.annotate("promote/hpa-1")?;
    rollout.wait("step 2 at 50%", Duration::from_secs(90), |c| {
        weight(c) == Weight::from_percent(50)
    })?;
    wait_pods(&rollout, "50% of 8", (4, 4))?;
    // The load falls: the HPA asks for 6, split 3 and 3.
    metrics.set(LOAD, 60)?;
    wait_pods(&rollout, "50% of 6", (3, 3))?;
    rollout.annotate("promote/hpa-2")?;
    rollout.wait("v2 promoted", Duration::from_secs(120), |c| {
        phase(c) == Some(Phase::Healthy) && revisions(c).0 != stable
    })?;
    let (promoted, _) = revisions(&rollout.canary()?);
    serin_e2e::process::eventually("v2 at the HPA's 6 pods", Duration::from_secs(90), || {
        Ok((rollout.replica_set(&promoted)? == (6, 6)).then_some(()))
    })?;
    // The HPA sees the 6 pods of the total, not the retiring revision's on top.
    serin_e2e::process::eventually("the HPA at 6 of 6", Duration::from_secs(30), || {
        let hpa = rollout
            .kubectl
            .get_json(&["hpa", "web", "-n", &rollout.namespace])?;
        let counts = (
            hpa["status"]["desiredReplicas"].as_i64(),
            hpa["status"]["currentReplicas"].as_i64(),
        );
        Ok((counts == (Some(6), Some(6))).then_some(()))
    })?;

    let answers = load.stop();
    let failed: Vec<_> = answers.iter().filter(|a| !a.succeeded()).collect();
    eprintln!(
        "through the Gateway: {} requests, {} failed",
        answers.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "requests failed while the HPA and the steps resized both sides: {:?}",
        &failed[..failed.len().min(5)]
    );
    drop(metrics);
    Ok(())
}

//! Rollouts on the local control plane, driven through kubectl as a person would,
//! with the controller running under its ServiceAccount's permissions.

use std::thread;
use std::time::Duration;

use anyhow::Result;
use serin_api::{Phase, REVISION_LABEL, stable_service};
use serin_e2e::controller::Controller;
use serin_e2e::process::eventually;
pub(crate) use serin_e2e::rollout::{
    Rollout, condition, condition_status, is_true, message, metric, phase, reason, revisions,
    status, status_condition, weight,
};

use crate::cluster;
use crate::gateway::{ROUTE, install_gateway_api, route, weights};

const FAST_STEPS: &str = "  steps: [25, 50]\n  stepDuration: 3s\n  scaleDownDelay: 3s\n";
const LONG_STEPS: &str =
    "  steps: [25, 50]\n  stepDuration: 1h\n  progressDeadline: 2h\n  scaleDownDelay: 5s\n";

#[test]
fn first_apply_becomes_healthy_and_promoted() -> Result<()> {
    let rollout = Rollout::start(cluster(), "first", "web", "web:1", FAST_STEPS)?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    let canary = rollout.canary()?;
    assert_eq!(phase(&canary), Some(Phase::Healthy));
    let (stable, canary_revision) = revisions(&canary);
    assert!(canary_revision.is_empty());
    assert_eq!(rollout.replica_set(&stable)?, (4, 4));
    assert_eq!(rollout.replica_set_count()?, 1);
    assert_eq!(
        rollout.service_selector("web")?[REVISION_LABEL],
        stable.as_str()
    );
    assert_eq!(
        rollout.service_selector(&stable_service("web"))?[REVISION_LABEL],
        stable.as_str()
    );
    assert!(rollout.events()?.contains(&"Healthy".to_owned()));
    Ok(())
}

#[test]
fn a_new_image_walks_every_step_and_is_promoted_then_the_old_revision_scales_down() -> Result<()> {
    let rollout = Rollout::start(cluster(), "steps", "web", "web:1", FAST_STEPS)?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    let (old, _) = revisions(&rollout.canary()?);
    rollout.set_image("web:2")?;

    let mut seen = Vec::new();
    let promoted = rollout.wait(
        "the new revision promoted",
        Duration::from_secs(90),
        |canary| {
            let (stable, canary_revision) = revisions(canary);
            let step = i64::from(status(canary).step);
            let weight = i64::from(weight(canary).whole_percent().unwrap_or(u32::MAX));
            if !canary_revision.is_empty() && weight > 0 {
                let counts = (
                    rollout.replica_set(&stable),
                    rollout.replica_set(&canary_revision),
                );
                if let (Ok(stable_rs), Ok(canary_rs)) = counts {
                    seen.push((step, weight, stable_rs.0, canary_rs.0, canary_rs.1));
                }
            }
            phase(canary) == Some(Phase::Healthy) && stable != old
        },
    )?;
    assert!(
        seen.iter().any(
            |&(step, weight, stable, canary, _)| (step, weight, stable, canary) == (1, 25, 3, 1)
        ),
        "step 1 runs 3 stable and 1 canary pod at 25%: {seen:?}"
    );
    assert!(
        seen.iter().any(
            |&(step, weight, stable, canary, _)| (step, weight, stable, canary) == (2, 50, 2, 2)
        ),
        "step 2 runs 2 and 2 at 50%: {seen:?}"
    );
    assert!(
        seen.iter().all(|&(_, _, _, _, available)| available > 0),
        "weight only with available canary pods: {seen:?}"
    );
    rollout.wait_promoted(Duration::from_secs(10))?;
    let (new, _) = revisions(&promoted);
    assert_eq!(rollout.replica_set(&new)?.0, 4);

    rollout.wait_scaled_down("the old revision", &old)?;
    let events = rollout.events()?;
    for reason in ["RolloutStarted", "StepAdvanced", "Promoted"] {
        assert!(
            events.iter().any(|e| e == reason),
            "no {reason} event in {events:?}"
        );
    }
    Ok(())
}

#[test]
fn abort_puts_all_traffic_on_stable_before_the_canary_scales_down() -> Result<()> {
    let rollout = Rollout::start(cluster(), "abort", "web", "web:1", LONG_STEPS)?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    let canary = rollout.roll_out("web:2")?;
    let (stable, canary_revision) = revisions(&canary);
    assert_eq!(
        rollout.service_selector("web")?.get(REVISION_LABEL),
        None,
        "both revisions serve"
    );

    rollout.annotate("abort/e2e-1")?;
    let aborted = rollout.wait("aborted", Duration::from_secs(30), |c| {
        phase(c) == Some(Phase::Aborted)
    })?;
    assert_eq!(
        rollout.service_selector("web")?[REVISION_LABEL],
        stable.as_str()
    );
    assert!(
        rollout.replica_set(&canary_revision)?.0 > 0,
        "the canary scales down only after the traffic moved"
    );
    assert_eq!(
        status(&aborted).last_command.map(|c| c.nonce).as_deref(),
        Some("e2e-1")
    );
    assert_eq!(reason(&aborted, "Progressing"), "AbortedByUser");

    rollout.wait_scaled_down("the aborted canary", &canary_revision)?;
    assert_eq!(rollout.replica_set(&stable)?.0, 4);
    assert!(rollout.events()?.contains(&"AbortedByUser".to_owned()));
    Ok(())
}

#[test]
fn pause_holds_the_step_and_resume_continues() -> Result<()> {
    let rollout = Rollout::start(
        cluster(),
        "pause",
        "web",
        "web:1",
        "  steps: [25, 50]\n  stepDuration: 4s\n",
    )?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    rollout.patch("merge", r#"{"spec":{"paused":true}}"#)?;
    rollout.set_image("web:2")?;
    rollout.wait("paused", Duration::from_secs(30), |c| {
        phase(c) == Some(Phase::Paused)
    })?;
    thread::sleep(Duration::from_secs(6));
    let held = rollout.canary()?;
    assert_eq!(phase(&held), Some(Phase::Paused));
    assert_eq!(status(&held).step, 1, "a paused rollout does not advance");

    rollout.patch("merge", r#"{"spec":{"paused":false}}"#)?;
    rollout.wait("promoted after resume", Duration::from_secs(60), |c| {
        phase(c) == Some(Phase::Healthy) && revisions(c).1.is_empty()
    })?;
    assert!(rollout.events()?.contains(&"Resumed".to_owned()));
    Ok(())
}

#[test]
fn a_new_revision_mid_rollout_starts_over() -> Result<()> {
    let rollout = Rollout::start(cluster(), "restart", "web", "web:1", LONG_STEPS)?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    let second = rollout.roll_out("web:2")?;
    let (_, dropped) = revisions(&second);
    let third = rollout.roll_out("web:3")?;
    assert_eq!(status(&third).step, 1);
    rollout.wait_scaled_down("the dropped canary", &dropped)?;
    assert_eq!(rollout.replica_set_count()?, 3);
    Ok(())
}

#[test]
fn restoring_the_stable_template_returns_to_healthy_at_once() -> Result<()> {
    let rollout = Rollout::start(cluster(), "restore", "web", "web:1", LONG_STEPS)?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    let (stable, _) = revisions(&rollout.canary()?);
    rollout.roll_out("web:2")?;
    rollout.set_image("web:1")?;
    let healthy = rollout.wait("healthy again", Duration::from_secs(15), |c| {
        phase(c) == Some(Phase::Healthy)
    })?;
    assert_eq!(revisions(&healthy), (stable.clone(), String::new()));
    rollout.wait_promoted(Duration::from_secs(15))?;
    assert_eq!(
        rollout.service_selector("web")?[REVISION_LABEL],
        stable.as_str()
    );
    assert_eq!(status(&healthy).step, 0);
    Ok(())
}

#[test]
fn a_killed_controller_restarted_finishes_the_same_rollout() -> Result<()> {
    install_gateway_api();
    let mut rollout = Rollout::prepare(cluster(), "killed", "web")?;
    rollout.apply_yaml(ROUTE)?;
    let routed =
        "  steps: [25, 50]\n  stepDuration: 4s\n  traffic: {gatewayAPI: {httpRoutes: [web]}}\n";
    rollout.apply("web:1", routed)?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    let started = rollout.roll_out("web:2")?;
    let (_, canary_revision) = revisions(&started);

    if let Some(controller) = rollout.controller.take() {
        controller.kill();
    }
    thread::sleep(Duration::from_secs(2));
    rollout.controller = Some(Controller::start(cluster(), &rollout.namespace)?);
    let mut violations = Vec::new();
    let done = rollout.wait(
        "promoted by the new controller",
        Duration::from_secs(60),
        |c| {
            let (stable, canary) = revisions(c);
            if let (Ok(route), false) = (route(&rollout), canary.is_empty()) {
                let weight = weights(&route).1.unwrap_or(0);
                let available = rollout.replica_set(&canary).map(|rs| rs.1).unwrap_or(0);
                if weight > 0 && available == 0 {
                    violations.push((weight, canary.clone()));
                }
            }
            phase(c) == Some(Phase::Healthy) && canary.is_empty() && !stable.is_empty()
        },
    )?;
    assert!(
        violations.is_empty(),
        "weight on a canary with no available pod: {violations:?}"
    );
    assert_eq!(
        revisions(&done).0,
        canary_revision,
        "the same revision was promoted"
    );
    assert_eq!(rollout.replica_set_count()?, 2, "no second canary");
    assert_eq!(weights(&route(&rollout)?), (Some(100), Some(0)));
    Ok(())
}

#[test]
fn two_controllers_one_leader_and_the_standby_takes_over() -> Result<()> {
    let mut rollout = Rollout::start(
        cluster(),
        "leader",
        "web",
        "web:1",
        "  steps: [25, 50]\n  stepDuration: 3s\n",
    )?;
    let standby = Controller::start(cluster(), &rollout.namespace)?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    let leading = |controller: &Controller| {
        controller
            .metrics()
            .is_ok_and(|metrics| metrics.lines().any(|line| line == "serin_leader 1"))
    };
    let first = rollout.controller.take().unwrap_or_else(|| unreachable!());
    assert!(
        leading(&first) != leading(&standby),
        "exactly one of two replicas leads:\n{}\n---\n{}",
        first.metrics().unwrap_or_default(),
        standby.metrics().unwrap_or_default()
    );
    let (leader, standby) = if leading(&first) {
        (first, standby)
    } else {
        (standby, first)
    };

    leader.kill();
    rollout.set_image("web:2")?;
    let promoted = rollout.wait(
        "promoted by the former standby",
        Duration::from_secs(90),
        |c| {
            phase(c) == Some(Phase::Healthy)
                && revisions(c).1.is_empty()
                && status(c).observed_generation == c.metadata.generation
        },
    )?;
    assert!(leading(&standby), "the standby holds the Lease");
    assert_eq!(status(&promoted).step, 0);
    rollout.controller = Some(standby);
    Ok(())
}

#[test]
fn deleting_a_canary_deletes_what_it_owns() -> Result<()> {
    let rollout = Rollout::start(cluster(), "delete", "web", "web:1", FAST_STEPS)?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    rollout.kubectl.run(&[
        "delete",
        "-n",
        &rollout.namespace,
        "canary",
        "web",
        "--wait=true",
    ])?;
    eventually(
        "the Canary's ReplicaSets and Services gone",
        Duration::from_secs(60),
        || Ok((rollout.replica_set_count()? == 0 && rollout.service_count()? == 0).then_some(())),
    )
}

#[test]
fn the_controller_reports_its_metrics_and_holds_the_lease() -> Result<()> {
    let rollout = Rollout::start(cluster(), "metrics", "web", "web:1", FAST_STEPS)?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    let metrics = rollout
        .controller
        .as_ref()
        .map(Controller::metrics)
        .transpose()?
        .unwrap_or_default();
    let reconciles = metrics
        .lines()
        .find_map(|line| line.strip_prefix("serin_reconciles_total "))
        .and_then(|value| value.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(reconciles > 0.0, "{metrics}");
    assert!(
        metrics.lines().any(|line| line == "serin_leader 1"),
        "{metrics}"
    );
    let healthy = format!(
        r#"serin_canary_phase{{namespace="{}",canary="web",phase="Healthy"}} 1"#,
        rollout.namespace
    );
    assert!(metrics.contains(&healthy), "{metrics}");
    let lease =
        rollout
            .kubectl
            .get_json(&["lease", "serin-controller", "-n", &rollout.namespace])?;
    assert!(lease["spec"]["holderIdentity"].is_string(), "{lease:#}");
    Ok(())
}

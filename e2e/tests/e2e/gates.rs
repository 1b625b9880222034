//! Gates against a webhook receiver on loopback: checks that hold a step until
//! they answer 2xx, a promotion a person approves with `kubectl serin approve`,
//! hooks called once (a load generator, after promotion, on rollback), a refusal
//! that rolls back, and restarts of the controller at a check and mid-hook.

use std::time::Duration;

use anyhow::{Result, ensure};
use serin_api::{Canary, GateState, Phase, Weight};
use serin_e2e::process::eventually;
use serin_e2e::receiver::Receiver;

use crate::cluster;
use crate::plugin::serin;
use crate::rollout::{Rollout, message, phase, status, weight};

const STEPS: &str = "  steps: [25, 50]\n  stepDuration: 3s\n  scaleDownDelay: 3s\n";

fn gate_state(canary: &Canary, name: &str) -> Option<GateState> {
    status(canary)
        .gates
        .iter()
        .rev()
        .find(|record| record.name == name)
        .map(|record| record.state)
}

#[test]
fn checks_hold_steps_a_person_approves_and_hooks_are_called_once() -> Result<()> {
    let receiver = Receiver::start()?;
    receiver.answer("/pre", 503, Duration::ZERO);
    let mut rollout = Rollout::prepare(cluster(), "gates", "web")?;
    let gates = format!(
        "  gates:
  - {{name: pre, type: PreRollout, url: '{}', timeout: 2s, retries: 0}}
  - {{name: load, type: LoadTest, url: '{}', steps: [1]}}
  - {{name: approval, type: ConfirmPromotion}}
  - {{name: deployed, type: PostRollout, url: '{}'}}
",
        receiver.url("/pre"),
        receiver.url("/load"),
        receiver.url("/deployed")
    );
    rollout.apply("web:1", &format!("{STEPS}{gates}"))?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    rollout.set_image("web:2")?;

    // The PreRollout check refuses: the canary's pods run, no traffic moves.
    let held = rollout.wait(
        "held at the PreRollout check",
        Duration::from_secs(30),
        |c| {
            message(c, "Progressing")
                == "step 1: gate pre waiting: answered 503 Service Unavailable"
        },
    )?;
    ensure!(
        weight(&held) == Weight::ZERO,
        "traffic before the check passed"
    );
    ensure!(rollout.events()?.contains(&"GateWaiting".to_owned()));
    // Asked again every 10 s, not at every reconcile.
    std::thread::sleep(Duration::from_secs(12));
    let asked = receiver.at("/pre");
    ensure!(
        (2..=3).contains(&asked.len()),
        "asked {} times in 12 s",
        asked.len()
    );
    let body = &asked[0].body;
    ensure!(body["gate"] == "pre" && body["type"] == "PreRollout" && body["step"] == 1);
    ensure!(body["namespace"] == rollout.namespace.as_str() && body["name"] == "web");
    ensure!(
        asked
            .iter()
            .all(|r| r.key.as_deref() == body["key"].as_str()),
        "one Idempotency-Key for every ask of one check"
    );

    receiver.answer("/pre", 200, Duration::ZERO);
    rollout.wait(
        "step 1 at 25% once the check passed",
        Duration::from_secs(30),
        |c| weight(c) == Weight::from_percent(25),
    )?;
    // After the last step, a person confirms; a restarted controller asks no
    // check again that passed, and still waits.
    rollout.wait("waiting for approval", Duration::from_secs(60), |c| {
        message(c, "Progressing") == "step 2: gate approval waiting for kubectl serin approve"
    })?;
    let pre_asked = receiver.at("/pre").len();
    rollout.restart_controller()?;
    std::thread::sleep(Duration::from_secs(5));
    let canary = rollout.canary()?;
    ensure!(
        phase(&canary) == Some(Phase::Progressing) && weight(&canary) == Weight::from_percent(50)
    );
    ensure!(
        receiver.at("/pre").len() == pre_asked,
        "a passed check asked again after a restart"
    );

    let shown = serin(&rollout, &["get", "web"])?;
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    ensure!(
        shown.lines().any(|line| line.contains("approval")
            && line.contains("Waiting")
            && line.contains("waiting for kubectl serin approve")),
        "{shown}"
    );
    let approved = serin(&rollout, &["approve", "web"])?;
    ensure!(approved.status.success(), "{approved:?}");
    let said = String::from_utf8_lossy(&approved.stdout).into_owned();
    ensure!(said.contains("approve: gate approval approved"), "{said}");
    rollout.wait_promoted(Duration::from_secs(60))?;

    // Hooks: the load generator once at step 1, the PostRollout hook once.
    let deployed = eventually(
        "the PostRollout hook called",
        Duration::from_secs(20),
        || {
            let canary = rollout.canary()?;
            Ok((gate_state(&canary, "deployed") == Some(GateState::Called)).then_some(()))
        },
    );
    deployed?;
    let load = receiver.at("/load");
    let posted = receiver.at("/deployed");
    ensure!(
        load.len() == 1 && posted.len() == 1,
        "load {} deployed {}",
        load.len(),
        posted.len()
    );
    ensure!(load[0].body["type"] == "LoadTest" && posted[0].body["type"] == "PostRollout");
    ensure!(posted[0].body["phase"] == "Healthy", "{}", posted[0].body);
    eprintln!("a check asked: {}", asked[0].body);
    eprintln!(
        "the PostRollout hook: {} (Idempotency-Key {:?})",
        posted[0].body, posted[0].key
    );
    Ok(())
}

#[test]
fn a_refusal_rolls_back_and_a_hook_cut_by_a_restart_is_not_called_again() -> Result<()> {
    let receiver = Receiver::start()?;
    receiver.answer("/smoke", 500, Duration::ZERO);
    // The rollback hook answers slowly: the controller is killed while it waits.
    receiver.answer("/rollback", 200, Duration::from_secs(8));
    let mut rollout = Rollout::prepare(cluster(), "gates-abort", "web")?;
    let gates = format!(
        "  gates:
  - {{name: smoke, type: BeforeStep, url: '{}', steps: [2], onFailure: Abort, retries: 0}}
  - {{name: rolled-back, type: OnRollback, url: '{}', timeout: 20s}}
",
        receiver.url("/smoke"),
        receiver.url("/rollback")
    );
    rollout.apply("web:1", &format!("{STEPS}{gates}"))?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    rollout.set_image("web:2")?;
    let aborted = rollout.wait(
        "rolled back by the smoke check",
        Duration::from_secs(60),
        |c| phase(c) == Some(Phase::Aborted),
    )?;
    let why = message(&aborted, "Progressing");
    ensure!(
        why.contains("aborted at step 1: gate smoke (BeforeStep, step 2) refused: answered 500"),
        "{why}"
    );
    ensure!(weight(&aborted) == Weight::ZERO);
    ensure!(rollout.events()?.contains(&"GateFailed".to_owned()));
    eventually("the rollback hook called", Duration::from_secs(10), || {
        Ok((!receiver.at("/rollback").is_empty()).then_some(()))
    })?;
    rollout.restart_controller()?;
    let cut = rollout.wait("the cut hook reported", Duration::from_secs(30), |c| {
        gate_state(c, "rolled-back") == Some(GateState::Unconfirmed)
    })?;
    std::thread::sleep(Duration::from_secs(10));
    ensure!(
        receiver.at("/rollback").len() == 1,
        "the hook was called again"
    );
    ensure!(rollout.events()?.contains(&"HookFailed".to_owned()));
    let record = status(&cut)
        .gates
        .into_iter()
        .find(|r| r.name == "rolled-back")
        .and_then(|r| r.message)
        .unwrap_or_default();
    eprintln!("a hook cut by a restart: {record}");
    Ok(())
}

//! Disruptions that need a control plane of their own, because they disturb every
//! client of it: the API server restarted in the middle of a rollout.

use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serin_api::Phase;
use serin_controller::run::SHUTDOWN_GRACE;
use serin_e2e::controller::Controller;
use serin_e2e::harness::Cluster;
use serin_e2e::process::eventually;
use serin_e2e::rollout::{Rollout, phase, revisions};

fn cluster() -> &'static Cluster {
    Cluster::shared(env!("CARGO_BIN_EXE_serin-cluster"))
}

#[test]
fn an_api_server_restart_mid_rollout_loses_nothing() -> Result<()> {
    let cluster = cluster();
    let rollout = Rollout::start(
        cluster,
        "apiserver",
        "web",
        "web:1",
        "  steps: [25, 50]\n  stepDuration: 10s\n  scaleDownDelay: 3s\n",
    )?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    let standby = Controller::start(cluster, &rollout.namespace)?;
    let started = rollout.roll_out("web:2")?;
    let (stable, canary) = revisions(&started);

    let restart = thread::spawn(move || cluster.restart_apiserver());
    let kubectl = &rollout.kubectl;
    eventually("the API server down", Duration::from_secs(30), || {
        Ok((!kubectl.succeeds(&["get", "--raw", "/readyz"])).then_some(()))
    })?;
    // The leader's watches broke: it says so.
    let leader = rollout.controller.as_ref().context("no controller")?;
    eventually(
        "the leader's readyz failing",
        Duration::from_secs(20),
        || Ok((leader.readyz().map(|(code, _)| code) == Some(503)).then_some(())),
    )?;
    // SIGTERM in the worst state: the Lease cannot be released, nothing answers.
    let took = standby.terminate(SHUTDOWN_GRACE * 3);
    eprintln!("SIGTERM to exit with the API server down: {took:?}");
    ensure!(
        took.is_some_and(|took| took <= SHUTDOWN_GRACE + Duration::from_secs(2)),
        "SIGTERM with the API server down: exited after {took:?}, bound {SHUTDOWN_GRACE:?}"
    );
    restart
        .join()
        .map_err(|_| anyhow::anyhow!("the restart thread panicked"))??;

    let done = rollout.wait("the same rollout promoted", Duration::from_secs(120), |c| {
        let (now_stable, now_canary) = revisions(c);
        phase(c) == Some(Phase::Healthy) && now_canary.is_empty() && now_stable != stable
    })?;
    ensure!(
        revisions(&done).0 == canary,
        "the revision in progress was promoted"
    );
    ensure!(rollout.replica_set_count()? == 2, "no second canary");
    rollout.wait_scaled_down("the old stable", &stable)?;
    eventually(
        "the leader's readyz recovered",
        Duration::from_secs(60),
        || Ok((leader.readyz().map(|(code, _)| code) == Some(200)).then_some(())),
    )?;
    Ok(())
}

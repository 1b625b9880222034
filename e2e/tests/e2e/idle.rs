//! An idle Canary costs the API server nothing: reconciles that find nothing to
//! change read from the watches' caches and write nothing, as counted by the
//! controller's own `serin_api_requests_total`.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serin_e2e::process::eventually;
use serin_e2e::rollout::Rollout;

use crate::cluster;

#[test]
fn reconciles_of_an_idle_canary_send_nothing_to_the_api_server() -> Result<()> {
    let rollout = Rollout::start(
        cluster(),
        "idle",
        "web",
        "web:1",
        "  steps: [50]\n  stepDuration: 1s\n",
    )?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    let controller = rollout.controller.as_ref().context("no controller")?;
    // Settled: the last writes have come back through the watches.
    std::thread::sleep(Duration::from_secs(2));
    let before = controller.work()?;
    ensure!(
        before.requests.keys().any(|(verb, _)| verb == "watch"),
        "the controller counts no watch: {before:?}"
    );

    // Each edit that changes nothing Serin acts on wakes a reconcile.
    const NUDGES: u32 = 5;
    let mut after = before.clone();
    for nudge in 1..=NUDGES {
        rollout.kubectl.run(&[
            "annotate",
            "canary",
            "web",
            "-n",
            &rollout.namespace,
            "--overwrite",
            &format!("team.example/nudge={nudge}"),
        ])?;
        after = eventually("a reconcile of the nudge", Duration::from_secs(30), || {
            let now = controller.work()?;
            Ok((now.reconciles > after.reconciles).then_some(now))
        })?;
    }
    let sent: Vec<String> = after
        .requests
        .iter()
        .filter(|((verb, resource), _)| verb != "watch" && resource != "leases")
        .filter_map(|(key, count)| {
            let grown = count - before.requests.get(key).copied().unwrap_or_default();
            (grown > 0.0).then(|| format!("{} {}: {grown}", key.0, key.1))
        })
        .collect();
    println!(
        "{} reconciles of an idle Canary sent: {sent:?} (watches and the leader Lease aside)",
        after.reconciles - before.reconciles
    );
    ensure!(sent.is_empty(), "an idle Canary cost requests: {sent:?}");
    Ok(())
}

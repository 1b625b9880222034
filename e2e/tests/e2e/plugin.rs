//! The `kubectl serin` plugin, found by kubectl on PATH as a user installs it.

use std::process::Output;
use std::time::Duration;

use anyhow::Result;
use serin_e2e::controller::path_with_plugin;

use crate::cluster;
use crate::rollout::{Rollout, phase, status, weight};
use serin_api::{Phase, Weight};

/// Runs `kubectl serin <args>` in the rollout's namespace, with the built plugin on PATH.
pub(crate) fn serin(rollout: &Rollout, args: &[&str]) -> Result<Output> {
    let path = path_with_plugin()?;
    let mut all = vec!["serin", "-n", rollout.namespace.as_str()];
    all.extend_from_slice(args);
    let output = rollout.kubectl.plugin(&all).env("PATH", path).output()?;
    Ok(output)
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_plugin_shows_and_steers_a_rollout() -> Result<()> {
    let rollout = Rollout::start(
        cluster(),
        "plugin",
        "web",
        "web:1",
        "  steps: [25, 50, 75]\n  stepDuration: 1h\n  progressDeadline: 2h\n  scaleDownDelay: 2s\n",
    )?;
    let waited = serin(&rollout, &["wait", "web", "--timeout", "60"])?;
    assert!(
        waited.status.success(),
        "wait on the first revision: {waited:?}"
    );
    rollout.set_image("web:2")?;
    rollout.wait("step 1", Duration::from_secs(30), |c| {
        status(c).step == 1 && weight(c) == Weight::from_percent(25)
    })?;

    let shown = serin(&rollout, &["get", "web"])?;
    let text = stdout(&shown);
    assert!(shown.status.success(), "{shown:?}");
    for expected in [
        "Progressing",
        "Step   1/3",
        " 25% canary",
        "stable",
        "canary",
        "RolloutStarted",
    ] {
        assert!(text.contains(expected), "no {expected:?} in:\n{text}");
    }
    let listed = stdout(&serin(&rollout, &["get"])?);
    assert!(listed.contains("web") && listed.contains("1/3"), "{listed}");

    let promoted = serin(&rollout, &["promote", "web"])?;
    assert!(
        stdout(&promoted).contains("step 1 finished early"),
        "{promoted:?}"
    );
    assert_eq!(status(&rollout.canary()?).step, 2);

    assert!(serin(&rollout, &["pause", "web"])?.status.success());
    rollout.wait("paused", Duration::from_secs(30), |c| {
        phase(c) == Some(Phase::Paused)
    })?;
    assert!(serin(&rollout, &["resume", "web"])?.status.success());
    rollout.wait("resumed", Duration::from_secs(30), |c| {
        phase(c) == Some(Phase::Progressing)
    })?;

    let aborted = serin(&rollout, &["abort", "web"])?;
    assert!(stdout(&aborted).contains("rollout aborted"), "{aborted:?}");
    let waited = serin(&rollout, &["wait", "web", "--timeout", "30"])?;
    assert_eq!(
        waited.status.code(),
        Some(1),
        "wait exits 1 on an aborted rollout: {waited:?}"
    );
    assert!(
        String::from_utf8_lossy(&waited.stderr).contains("AbortedByUser"),
        "{waited:?}"
    );

    let retried = serin(&rollout, &["retry", "web"])?;
    assert!(stdout(&retried).contains("starts again"), "{retried:?}");
    let full = serin(&rollout, &["promote", "web", "--full"])?;
    assert!(full.status.success(), "{full:?}");
    let waited = serin(&rollout, &["wait", "web", "--timeout", "60"])?;
    assert!(
        waited.status.success(),
        "wait after promote --full: {waited:?}"
    );
    Ok(())
}

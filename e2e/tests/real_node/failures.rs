//! Canaries that cannot run, as users meet them with real pods: an image that is not
//! there, a container that crash-loops, a pod that never becomes Ready. The Canary
//! says why in the pods' own words, no request reaches the canary, and the progress
//! deadline rolls it back.

use std::time::Duration;

use anyhow::Result;
use serin_api::Phase;
use serin_e2e::load::Load;
use serin_e2e::rollout::{Rollout, message, phase, reason};

use crate::cluster;
use crate::traffic::{RATE, service_address, workload};

/// Applies a healthy v1, then `breaking` (a JSON patch of the template), under load,
/// and checks what the Canary says and what requests see until the rollback.
fn a_broken_canary(test: &str, breaking: &str, words: &[&str]) -> Result<()> {
    let rollout = Rollout::prepare_in_cluster(cluster(), test, "web")?;
    let steps = "  steps: [50]\n  stepDuration: 5s\n  progressDeadline: 60s\n";
    rollout.apply_manifest(&workload("v1", steps))?;
    rollout.wait_promoted(Duration::from_secs(90))?;
    let address = service_address(&rollout)?;
    let load = Load::start(address, RATE / 4.0, Duration::from_secs(150))?;
    rollout.patch("json", breaking)?;
    let says = |text: &str| words.iter().any(|word| text.contains(word));
    let failing = rollout.wait(
        "CanaryPodsFailing in the pods' words",
        Duration::from_secs(90),
        |c| reason(c, "Progressing") == "CanaryPodsFailing" && says(&message(c, "Progressing")),
    )?;
    eprintln!("{test}: {}", message(&failing, "Progressing"));
    let aborted = rollout.wait(
        "rolled back at the progress deadline",
        Duration::from_secs(90),
        |c| phase(c) == Some(Phase::Aborted),
    )?;
    let why = message(&aborted, "Progressing");
    assert_eq!(reason(&aborted, "Progressing"), "ProgressDeadlineExceeded");
    assert!(says(&why), "the rollback says why: {why}");
    assert!(
        rollout.events()?.iter().any(|e| e == "CanaryPodsFailing"),
        "a Warning Event says it too"
    );
    let answers = load.stop();
    let on_canary = answers
        .iter()
        .filter(|a| a.version.as_deref().is_some_and(|v| v != "v1"))
        .count();
    assert_eq!(on_canary, 0, "no request reached the broken canary");
    assert!(
        answers.iter().all(|a| a.succeeded()),
        "stable served every request"
    );
    Ok(())
}

#[test]
fn a_canary_whose_image_is_missing_says_so_and_is_rolled_back() -> Result<()> {
    a_broken_canary(
        "real-no-image",
        r#"[{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"localhost/serin/missing:0.1.0"},
            {"op":"replace","path":"/spec/template/spec/containers/0/env/0/value","value":"v2"}]"#,
        &["ErrImagePull", "ImagePullBackOff"],
    )
}

#[test]
fn a_crash_looping_canary_says_so_and_is_rolled_back() -> Result<()> {
    // ERROR_RATE=2 is refused by the workload at start: it exits 1, again and again.
    a_broken_canary(
        "real-crash",
        r#"[{"op":"replace","path":"/spec/template/spec/containers/0/env/0/value","value":"v2"},
            {"op":"replace","path":"/spec/template/spec/containers/0/env/1/value","value":"2"}]"#,
        &["CrashLoopBackOff", "Error (exit code 1)"],
    )
}

#[test]
fn a_canary_that_never_becomes_ready_says_so_and_is_rolled_back() -> Result<()> {
    a_broken_canary(
        "real-unready",
        r#"[{"op":"replace","path":"/spec/template/spec/containers/0/env/0/value","value":"v2"},
            {"op":"replace","path":"/spec/template/spec/containers/0/readinessProbe/httpGet/path","value":"/missing"}]"#,
        &["not Ready"],
    )
}

//! An idle Canary costs the API server nothing: reconciles that find nothing to
//! change read from the watches' caches and write nothing, as counted by the
//! controller's own `serin_api_requests_total`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serin_e2e::controller::Controller;
use serin_e2e::process::eventually;
use serin_e2e::rollout::Rollout;

use crate::cluster;

/// Requests sent, by `(verb, resource)`.
type Sent = BTreeMap<(String, String), f64>;

/// `serin_api_requests_total` by `(verb, resource)`, and `serin_reconciles_total`.
fn requests(controller: &Controller) -> Result<(Sent, f64)> {
    let text = controller.metrics()?;
    let mut counts = BTreeMap::new();
    let mut reconciles = 0.0;
    for line in text.lines() {
        let value = || {
            line.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_default()
        };
        if line.starts_with("serin_reconciles_total ") {
            reconciles = value();
        }
        let Some(labels) = line
            .strip_prefix("serin_api_requests_total{")
            .and_then(|rest| rest.split_once('}'))
            .map(|(labels, _)| labels)
        else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|pair| pair.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        counts.insert((label("verb"), label("resource")), value());
    }
    Ok((counts, reconciles))
}

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
    let (before, reconciled_before) = requests(controller)?;
    ensure!(
        before.keys().any(|(verb, _)| verb == "watch"),
        "the controller counts no watch: {before:?}"
    );

    // Each edit that changes nothing Serin acts on wakes a reconcile.
    const NUDGES: u32 = 5;
    let mut reconciled = reconciled_before;
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
        (after, reconciled) =
            eventually("a reconcile of the nudge", Duration::from_secs(30), || {
                let (counts, now) = requests(controller)?;
                Ok((now > reconciled).then_some((counts, now)))
            })?;
    }
    let sent: Vec<String> = after
        .iter()
        .filter(|((verb, resource), count)| {
            verb != "watch"
                && resource != "leases"
                && before
                    .get(&(verb.clone(), resource.clone()))
                    .copied()
                    .unwrap_or_default()
                    < **count
        })
        .map(|((verb, resource), count)| {
            let was = before
                .get(&(verb.clone(), resource.clone()))
                .copied()
                .unwrap_or_default();
            format!("{verb} {resource}: {}", count - was)
        })
        .collect();
    println!(
        "{} reconciles of an idle Canary sent: {sent:?} (watches and the leader Lease aside)",
        reconciled - reconciled_before
    );
    ensure!(sent.is_empty(), "an idle Canary cost requests: {sent:?}");
    Ok(())
}

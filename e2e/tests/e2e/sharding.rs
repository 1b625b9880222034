//! Two controllers, each given a shard selector, split one namespace's Canaries:
//! each acts only on its own Canaries, one that neither selects is left alone, each
//! shard has its own Lease and leader, and a label edit moves a Canary between
//! shards. A selector the API server refuses stops the controller at start.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use serin_api::{Phase, canary_service};
use serin_controller::run::lease_name;
use serin_e2e::cluster::{default_bin_dir, repository_root};
use serin_e2e::controller::{Controller, install};
use serin_e2e::manifest::CanaryManifest;
use serin_e2e::process::eventually;
use serin_e2e::rollout::{Rollout, phase, revisions};

use crate::cluster;

const SHARD: &str = "serin.dev/shard";
const STEPS: &str = "  steps: [50]\n  stepDuration: 1s\n  scaleDownDelay: 1s\n";

fn selector(shard: &str) -> String {
    format!("{SHARD}={shard}")
}

/// The `--shard-selector` flag the chart gives the controller for
/// `--set shardSelector=<selector>`, so the shards below run as a release would.
fn chart_flag(shard: &str) -> Result<Vec<String>> {
    let helm = cluster()
        .kubectl
        .with_program(&default_bin_dir().join("helm"));
    let rendered = helm.run(&[
        "template",
        &format!("serin-{shard}"),
        &repository_root().join("charts/serin").to_string_lossy(),
        "--set",
        &format!("shardSelector={}", selector(shard)),
    ])?;
    let mut flags = Vec::new();
    for document in rendered.split("\n---") {
        let object: Value = serde_norway::from_str(document)?;
        if object["kind"] == "Deployment" {
            flags.extend(
                object["spec"]["template"]["spec"]["containers"][0]["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .filter(|arg| arg.starts_with("--shard-selector"))
                    .map(str::to_owned),
            );
        }
    }
    ensure!(
        flags == [format!("--shard-selector={}", selector(shard))],
        "the chart renders {flags:?}"
    );
    Ok(flags)
}

/// The `reportingInstance` of every Event on the Canary: which controller acted.
fn reporters(rollout: &Rollout) -> Result<BTreeSet<String>> {
    Ok(rollout
        .event_objects()?
        .iter()
        .filter_map(|event| event["reportingInstance"].as_str().map(str::to_owned))
        .collect())
}

fn instance(controller: &Controller) -> String {
    format!("serin-{}", controller.pid())
}

fn manifest(name: &str, image: &str, shard: Option<&str>) -> CanaryManifest {
    let manifest = CanaryManifest::new(name).image(image).spec(STEPS);
    match shard {
        Some(shard) => manifest.label(SHARD, shard),
        None => manifest,
    }
}

#[test]
fn two_shards_never_touch_each_others_canaries() -> Result<()> {
    let cluster = cluster();
    let shard_a = Rollout::prepare_with(cluster, "shards", "web-a", &chart_flag("a")?)?;
    let namespace = shard_a.namespace.clone();
    let controller_b = Controller::start_with(cluster, &namespace, &chart_flag("b")?)?;
    let controller_a = shard_a.controller.as_ref().map(instance);
    let controller_b_instance = instance(&controller_b);
    let shard_b = shard_a.sibling("web-b");
    let loose = shard_a.sibling("loose");
    shard_a.apply_manifest(&manifest("web-a", "web:1", Some("a")))?;
    shard_b.apply_manifest(&manifest("web-b", "web:1", Some("b")))?;
    loose.apply_manifest(&manifest("loose", "web:1", None))?;
    shard_a.wait_promoted(Duration::from_secs(60))?;
    shard_b.wait_promoted(Duration::from_secs(60))?;
    for (rollout, image) in [(&shard_a, "web:2"), (&shard_b, "web:2")] {
        let (old, _) = revisions(&rollout.canary()?);
        rollout.set_image(image)?;
        rollout.wait("promoted again", Duration::from_secs(60), |c| {
            let (stable, _) = revisions(c);
            phase(c) == Some(Phase::Healthy) && stable != old
        })?;
    }

    ensure!(
        reporters(&shard_a)? == controller_a.iter().cloned().collect(),
        "web-a's Events come from {:?}, not only shard a's {controller_a:?}",
        reporters(&shard_a)?
    );
    ensure!(
        reporters(&shard_b)? == BTreeSet::from([controller_b_instance.clone()]),
        "web-b's Events come from {:?}, not only shard b's {controller_b_instance}",
        reporters(&shard_b)?
    );
    let untouched = loose.object()?;
    ensure!(
        untouched.get("status").is_none()
            && loose.replica_set_count()? == 0
            && !loose.kubectl.succeeds(&[
                "get",
                "service",
                &canary_service("loose"),
                "-n",
                &namespace
            ])
            && loose.events()?.is_empty(),
        "a Canary no shard selects was touched: {untouched}"
    );

    let leases = shard_a.kubectl.get_json(&["leases", "-n", &namespace])?;
    let holders: BTreeSet<(String, String)> = leases["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|lease| {
            (
                lease["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                lease["spec"]["holderIdentity"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    ensure!(
        holders
            == BTreeSet::from([
                (
                    lease_name(Some(&selector("a"))),
                    controller_a.clone().unwrap_or_default()
                ),
                (
                    lease_name(Some(&selector("b"))),
                    controller_b_instance.clone()
                ),
            ]),
        "each shard should hold a Lease of its own: {holders:?}"
    );

    // A label edit moves a Canary: shard b takes `loose` on, and web-a over;
    // shard a's /metrics lets go of web-a.
    let series_of_web_a = |controller: &Controller| -> Result<bool> {
        Ok(controller.metrics()?.contains("canary=\"web-a\""))
    };
    let controller_a_process = shard_a
        .controller
        .as_ref()
        .context("shard a runs a controller")?;
    ensure!(
        series_of_web_a(controller_a_process)?,
        "shard a shows no series of web-a"
    );
    loose.kubectl.run(&[
        "label",
        "canary",
        "loose",
        "-n",
        &namespace,
        &format!("{SHARD}=b"),
    ])?;
    loose.wait_promoted(Duration::from_secs(60))?;
    ensure!(reporters(&loose)? == BTreeSet::from([controller_b_instance.clone()]));
    shard_a.kubectl.run(&[
        "label",
        "canary",
        "web-a",
        "-n",
        &namespace,
        "--overwrite",
        &format!("{SHARD}=b"),
    ])?;
    let (old, _) = revisions(&shard_a.canary()?);
    eventually(
        "shard a's series of web-a gone",
        Duration::from_secs(10),
        || Ok((!series_of_web_a(controller_a_process)?).then_some(())),
    )?;
    shard_a.set_image("web:3")?;
    shard_a.wait("promoted by shard b", Duration::from_secs(60), |c| {
        let (stable, _) = revisions(c);
        phase(c) == Some(Phase::Healthy) && stable != old
    })?;
    let after_move = reporters(&shard_a)?;
    ensure!(
        after_move.contains(&controller_b_instance) && after_move.len() == 2,
        "after the move web-a's Events come from {after_move:?}"
    );
    Ok(())
}

#[test]
fn a_shard_selector_the_api_server_refuses_stops_the_controller_at_start() -> Result<()> {
    let cluster = cluster();
    let namespace = cluster.namespace("bad-shard")?;
    let kubeconfig = install(cluster)?;
    let controller = Controller::spawn(
        &namespace,
        kubeconfig,
        &[format!("--shard-selector={SHARD} in a")],
    )?;
    let (status, log) = controller.wait_exit(Duration::from_secs(30))?;
    ensure!(!status.success(), "exited with {status}: {log}");
    let said = log
        .lines()
        .find(|line| line.contains("--shard-selector"))
        .unwrap_or_default();
    println!("the controller said: {said}");
    ensure!(
        log.contains("--shard-selector") && log.contains("refused by the API server"),
        "{log}"
    );
    Ok(())
}

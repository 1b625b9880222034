//! Adopting a Deployment (`spec.workloadRef`) on kwok's nodes: its pods go as the
//! Canary's stable pods take over, an edit of its template is rolled out by the
//! Canary, and deleting the Canary gives it back at full size before the Canary's
//! pods go; a Deployment that is missing or adopted already is refused, naming the
//! field, with nothing made; moving the template into the Canary ends the adoption. (Under real load: `e2e/tests/real_node/adoption.rs`.)

use std::time::Duration;

use anyhow::{Result, ensure};
use serin_api::{ADOPTION_FINALIZER, CANARY_LABEL, Phase};
use serin_e2e::cluster::KWOK_PLACEMENT;
use serin_e2e::manifest::CanaryManifest;
use serin_e2e::process::eventually;

use crate::cluster;
use crate::plugin::serin;
use crate::rollout::{Rollout, is_true, message, phase, revisions};

/// A Deployment `name` of `replicas` kwok pods running `image`.
fn deployment(name: &str, replicas: u32, image: &str, labels: &str) -> String {
    let placement: String = KWOK_PLACEMENT
        .lines()
        .map(|line| format!("      {line}\n"))
        .collect();
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, labels: {{{labels}}}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
{placement}      containers: [{{name: {name}, image: '{image}'}}]
"
    )
}

/// A Canary adopting the Deployment `deployment`.
fn adopting(name: &str, deployment: &str, selector: &str) -> String {
    format!(
        "apiVersion: serin.dev/v1alpha1
kind: Canary
metadata: {{name: {name}}}
spec:
  replicas: 4
  selector: {{matchLabels: {{app: {selector}}}}}
  workloadRef: {{kind: Deployment, name: {deployment}}}
  steps: [25, 50]
  stepDuration: 3s
  scaleDownDelay: 3s
"
    )
}

/// The Deployment's asked and available pods, and its labels.
fn deployment_state(rollout: &Rollout, name: &str) -> Result<(i64, i64, serde_json::Value)> {
    let deployment = rollout
        .kubectl
        .get_json(&["deployment", name, "-n", &rollout.namespace])?;
    Ok((
        deployment["spec"]["replicas"].as_i64().unwrap_or(-1),
        deployment["status"]["availableReplicas"]
            .as_i64()
            .unwrap_or(0),
        deployment["metadata"]["labels"].clone(),
    ))
}

#[test]
fn a_deployment_is_taken_over_rolled_out_through_and_given_back() -> Result<()> {
    let rollout = Rollout::prepare(cluster(), "adopt", "web")?;
    rollout.apply_yaml(&deployment("web", 4, "web:1", "team: shop"))?;
    eventually("the Deployment at 4 pods", Duration::from_secs(60), || {
        Ok((deployment_state(&rollout, "web")?.1 == 4).then_some(()))
    })?;
    rollout.apply_yaml(&adopting("web", "web", "web"))?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    let canary = rollout.canary()?;
    let (v1, _) = revisions(&canary);
    ensure!(canary.metadata.finalizers.unwrap_or_default() == [ADOPTION_FINALIZER]);
    eventually(
        "the Deployment's pods gone",
        Duration::from_secs(30),
        || {
            let (asked, available, labels) = deployment_state(&rollout, "web")?;
            Ok((asked == 0 && available == 0 && labels[CANARY_LABEL] == "web").then_some(()))
        },
    )?;
    ensure!(rollout.replica_set(&v1)? == (4, 4));
    // The user's own labels stay as they were.
    ensure!(deployment_state(&rollout, "web")?.2["team"] == "shop");
    let shown = serin(&rollout, &["get", "web"])?;
    let shown = String::from_utf8_lossy(&shown.stdout);
    ensure!(
        shown.contains("Adopts Deployment web (scaleDown Progressively;"),
        "{shown}"
    );

    // A release is an edit of the Deployment, as before adoption.
    rollout.kubectl.run(&[
        "set",
        "image",
        "deployment/web",
        "web=web:2",
        "-n",
        &rollout.namespace,
    ])?;
    let promoted = rollout.wait(
        "web:2 rolled out by the Canary",
        Duration::from_secs(90),
        |c| revisions(c).0 != v1 && phase(c) == Some(Phase::Healthy) && is_true(c, "Promoted"),
    )?;
    let (v2, _) = revisions(&promoted);
    ensure!(rollout.events()?.contains(&"RolloutStarted".to_owned()));
    ensure!(
        deployment_state(&rollout, "web")?.0 == 0,
        "the Deployment stays at zero"
    );

    // Deleting the Canary gives the Deployment back at full size, then the
    // Canary's own pods go.
    rollout.delete(Duration::from_secs(60))?;
    let (asked, available, labels) = deployment_state(&rollout, "web")?;
    ensure!(
        (asked, available) == (4, 4),
        "the Canary went before the Deployment was back: {asked} asked, {available} available"
    );
    ensure!(labels.get(CANARY_LABEL).is_none(), "{labels}");
    // The garbage collector deletes them once their owner is gone.
    eventually(
        "the Canary's ReplicaSets gone",
        Duration::from_secs(60),
        || Ok((rollout.replica_set_count()? == 0).then_some(())),
    )?;
    let image = rollout.kubectl.run(&[
        "get",
        "deployment",
        "web",
        "-n",
        &rollout.namespace,
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ])?;
    ensure!(
        image == "web:2",
        "the Deployment runs {image}, the last release ({v2})"
    );
    Ok(())
}

/// Waits for `rollout`'s Canary to be an `InvalidSpec` whose message starts with `why`.
fn refused(rollout: &Rollout, why: &str) -> Result<()> {
    let refused = rollout.wait("the adoption refused", Duration::from_secs(30), |c| {
        is_true(c, "InvalidSpec")
    })?;
    let said = message(&refused, "InvalidSpec");
    ensure!(said.starts_with(why), "{said}");
    Ok(())
}

#[test]
fn a_missing_deployment_or_one_adopted_already_is_refused_and_nothing_is_made() -> Result<()> {
    let rollout = Rollout::prepare(cluster(), "adopt-refused", "web")?;
    rollout.apply_yaml(&adopting("web", "nothere", "web"))?;
    refused(
        &rollout,
        "spec.workloadRef.name: Deployment nothere is not found in namespace",
    )?;
    // Created later, it is adopted: the refusal was only for as long as it was missing.
    rollout.apply_yaml(&deployment("nothere", 2, "web:1", "team: shop"))?;
    rollout.apply_yaml(&adopting("web", "nothere", "nothere"))?;
    rollout.wait_promoted(Duration::from_secs(60))?;

    // Another Canary naming the same Deployment is refused, and changes nothing.
    let other = rollout.sibling("other");
    other.apply_yaml(&adopting("other", "nothere", "nothere"))?;
    refused(
        &other,
        "spec.workloadRef.name: Deployment nothere is adopted by Canary web;",
    )?;
    ensure!(
        other.replica_set_count()? == 0,
        "the refused Canary made a ReplicaSet"
    );
    ensure!(deployment_state(&rollout, "nothere")?.2[CANARY_LABEL] == "web");
    let finalizers = other.canary()?.metadata.finalizers.unwrap_or_default();
    ensure!(
        finalizers.is_empty(),
        "the refused Canary holds {finalizers:?}"
    );
    Ok(())
}

#[test]
fn moving_the_template_into_the_canary_ends_the_adoption() -> Result<()> {
    let rollout = Rollout::prepare(cluster(), "adopt-end", "web")?;
    rollout.apply_yaml(&deployment("web", 2, "web:1", "team: shop"))?;
    rollout.apply_yaml(&adopting("web", "web", "web"))?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    eventually(
        "the Deployment's pods gone",
        Duration::from_secs(30),
        || Ok((deployment_state(&rollout, "web")?.0 == 0).then_some(())),
    )?;
    // The same Canary, now with its own template (as kubectl apply replaces it).
    rollout.apply_manifest(
        &CanaryManifest::new("web")
            .image("web:1")
            .replicas(4)
            .service(None)
            .spec("  steps: [25, 50]\n  stepDuration: 3s\n  scaleDownDelay: 3s\n"),
    )?;
    eventually("the adoption ended", Duration::from_secs(30), || {
        let finalizers = rollout.canary()?.metadata.finalizers.unwrap_or_default();
        let (asked, _, labels) = deployment_state(&rollout, "web")?;
        Ok(
            (finalizers.is_empty() && labels.get(CANARY_LABEL).is_none() && asked == 0)
                .then_some(()),
        )
    })?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    // Nothing holds the Canary any more, and the Deployment stays at zero.
    rollout.delete(Duration::from_secs(30))?;
    ensure!(deployment_state(&rollout, "web")?.0 == 0);
    Ok(())
}

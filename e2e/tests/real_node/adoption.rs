//! Adopting a running Deployment under load: real requests through the user's own
//! Service while the Canary takes its pods over, rolls out a release made as an
//! edit of the Deployment, and, deleted, gives the Deployment back; no request
//! may fail at any moment of it.

use std::time::Duration;

use anyhow::Result;
use serin_api::Phase;
use serin_e2e::load::{Answer, Load};
use serin_e2e::node::image;
use serin_e2e::process::eventually;
use serin_e2e::rollout::{Rollout, is_true, phase, revisions};

use crate::cluster;
use crate::traffic::{RATE, service_address};

/// The user's Deployment and Service, as they ran before Serin: four real pods.
fn deployment_and_service() -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 4
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: web
        image: '{}'
        env: [{{name: VERSION, value: v1}}, {{name: ERROR_RATE, value: '0'}}]
        readinessProbe: {{httpGet: {{path: /healthz, port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
",
        image("workload")
    )
}

/// The Canary adopting it: no Services of its own, so the user's Service carries
/// the requests and the pods carry the weight.
const CANARY: &str = "apiVersion: serin.dev/v1alpha1
kind: Canary
metadata: {name: web}
spec:
  replicas: 4
  selector: {matchLabels: {app: web}}
  workloadRef: {kind: Deployment, name: web}
  steps: [50]
  stepDuration: 10s
  scaleDownDelay: 5s
";

/// The Deployment's asked and available pods.
fn deployment(rollout: &Rollout) -> Result<(i64, i64)> {
    let deployment = rollout
        .kubectl
        .get_json(&["deployment", "web", "-n", &rollout.namespace])?;
    Ok((
        deployment["spec"]["replicas"].as_i64().unwrap_or(-1),
        deployment["status"]["availableReplicas"]
            .as_i64()
            .unwrap_or(0),
    ))
}

#[test]
fn a_running_deployment_is_adopted_rolled_out_and_given_back_under_load_losing_no_request()
-> Result<()> {
    let rollout = Rollout::prepare_in_cluster(cluster(), "real-adopt", "web")?;
    rollout.apply_yaml(&deployment_and_service())?;
    eventually("the Deployment at 4 pods", Duration::from_secs(90), || {
        Ok((deployment(&rollout)? == (4, 4)).then_some(()))
    })?;
    let address = service_address(&rollout)?;
    let load = Load::start(address, RATE, Duration::from_secs(300))?;
    std::thread::sleep(Duration::from_secs(3));

    // Adopted: the Deployment's pods go as the Canary's become available.
    rollout.apply_yaml(CANARY)?;
    rollout.wait_promoted(Duration::from_secs(90))?;
    eventually(
        "the Deployment's pods gone",
        Duration::from_secs(60),
        || Ok((deployment(&rollout)? == (0, 0)).then_some(())),
    )?;
    let (v1, _) = revisions(&rollout.canary()?);
    eprintln!("adopted: revision {v1} on the Canary's 4 pods, the Deployment at 0");

    // A release, made as before: an edit of the Deployment.
    rollout.kubectl.run(&[
        "set",
        "env",
        "deployment/web",
        "VERSION=v2",
        "-n",
        &rollout.namespace,
    ])?;
    rollout.wait(
        "v2 rolled out by the Canary",
        Duration::from_secs(120),
        |c| revisions(c).0 != v1 && phase(c) == Some(Phase::Healthy) && is_true(c, "Promoted"),
    )?;
    // The old revision's pods drain and go.
    std::thread::sleep(Duration::from_secs(8));

    // Deleted, the Canary gives the Deployment back at full size first.
    rollout.delete(Duration::from_secs(120))?;
    let given_back = deployment(&rollout)?;
    assert_eq!(
        given_back,
        (4, 4),
        "the Canary went before the Deployment was back"
    );
    eventually("the Canary's pods gone", Duration::from_secs(90), || {
        let pods = rollout.kubectl.get_json(&[
            "pods",
            "-n",
            &rollout.namespace,
            "-l",
            "serin.dev/revision",
        ])?;
        Ok(pods["items"]
            .as_array()
            .is_some_and(Vec::is_empty)
            .then_some(()))
    })?;
    std::thread::sleep(Duration::from_secs(3));
    let answers = load.stop();

    let failed: Vec<&Answer> = answers.iter().filter(|a| !a.succeeded()).collect();
    let last: Vec<&Answer> = answers.iter().rev().take(20).collect();
    eprintln!(
        "adoption under load: {} requests sent, {} failed; the last 20 served by {:?}",
        answers.len(),
        failed.len(),
        last.iter()
            .filter_map(|a| a.version.as_deref())
            .collect::<std::collections::BTreeSet<_>>()
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        answers.len(),
        failed.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        last.iter().all(|a| a.version.as_deref() == Some("v2")),
        "the Deployment given back serves the last release"
    );
    Ok(())
}

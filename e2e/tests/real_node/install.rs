//! Serin installed as the README says — `helm install serin charts/serin` — runs
//! from its own image on the real node, two replicas with one leader, reconciles a
//! Canary of real pods, and Prometheus scrapes its `/metrics`.

use std::time::Duration;

use anyhow::{Context, Result};
use serin_api::Phase;
use serin_e2e::cluster::default_bin_dir;
use serin_e2e::node::{NODE_NAME, image};
use serin_e2e::process::eventually;
use serin_e2e::prometheus::Prometheus;
use serin_e2e::rollout::{Rollout, phase, revisions};

use crate::cluster;
use crate::traffic::{release, workload};

#[test]
fn serin_installed_with_helm_runs_from_its_image_with_one_leader() -> Result<()> {
    let mut prometheus = Prometheus::start_discovering(&cluster().kubectl, Duration::from_secs(1))?;
    let rollout = Rollout::prepare_in_cluster(cluster(), "installed", "web")?;
    let kubectl = &cluster().kubectl;
    let pods = kubectl.get_json(&[
        "pods",
        "-n",
        "serin-system",
        "-l",
        "app.kubernetes.io/name=serin",
    ])?;
    let pods = pods["items"].as_array().context("no pod list")?.clone();
    assert_eq!(pods.len(), 2, "two replicas");
    let mut names = Vec::new();
    for pod in &pods {
        assert_eq!(pod["spec"]["nodeName"], NODE_NAME, "on the real node");
        assert_eq!(pod["spec"]["containers"][0]["image"], image("serin"));
        assert_eq!(pod["status"]["phase"], "Running");
        names.push(
            pod["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    let helm = kubectl.with_program(&default_bin_dir().join("helm"));
    let releases: serde_json::Value =
        serde_json::from_str(&helm.run(&["list", "-n", "serin-system", "-o", "json"])?)?;
    assert_eq!(releases[0]["name"], "serin", "{releases}");
    assert_eq!(releases[0]["status"], "deployed", "{releases}");
    let lease = kubectl.get_json(&["lease", "serin-controller", "-n", "serin-system"])?;
    let holder = lease["spec"]["holderIdentity"].as_str().unwrap_or_default();
    assert!(
        names.iter().any(|name| name == holder),
        "the Lease is held by one of {names:?}, not {holder:?}"
    );

    let steps = "  steps: [50]\n  stepDuration: 5s\n  scaleDownDelay: 2s\n";
    rollout.apply_manifest(&workload("v1", steps))?;
    rollout.wait_promoted(Duration::from_secs(90))?;
    let (stable, _) = revisions(&rollout.canary()?);
    release(&rollout, "v2")?;
    rollout.wait("v2 promoted", Duration::from_secs(90), |c| {
        revisions(c).0 != stable && phase(c) == Some(Phase::Healthy)
    })?;

    let scraped = eventually(
        "Prometheus scraping both controllers' /metrics",
        Duration::from_secs(60),
        || {
            let reconciles = prometheus.query(
                "count(serin_reconciles_total{namespace=\"serin-system\",pod=~\"serin-controller-.+\"})",
            )?;
            let count = reconciles[0]["value"][1]
                .as_str()
                .unwrap_or("0")
                .parse::<f64>()?;
            Ok((count >= 2.0).then_some(count))
        },
    )?;
    eprintln!(
        "the in-cluster controller ({holder} leading) promoted v1 and v2; Prometheus scrapes {scraped} controller pods"
    );
    Ok(())
}

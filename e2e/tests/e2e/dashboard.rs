//! The Grafana dashboard (`deploy/grafana/serin-dashboard.json`) and the chart's
//! alerts (`charts/serin/files/alerts.yaml`) against the real Prometheus scraping the
//! controller's `/metrics` during real rollouts: every expression parses, and every
//! dashboard expression returns data at some point of a promotion and a rollback.

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use serin_api::Phase;
use serin_e2e::cluster::repository_root;
use serin_e2e::manifest::CanaryManifest;
use serin_e2e::prometheus::{Prometheus, ScrapeJob};
use serin_e2e::traffic::Traffic;

use crate::analysis::ERRORS_METRIC;
use crate::cluster;
use crate::rollout::{Rollout, phase, revisions};

/// Every PromQL expression of the dashboard, by where it stands, with Grafana's
/// variables replaced for one Canary.
fn dashboard_queries(namespace: &str, canary: &str) -> Result<BTreeMap<String, String>> {
    let path = repository_root().join("deploy/grafana/serin-dashboard.json");
    let dashboard: Value = serde_json::from_str(&fs::read_to_string(&path)?)?;
    let mut queries = BTreeMap::new();
    for panel in dashboard["panels"].as_array().context("no panels")? {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                let at = format!("{} / {}", panel["title"], target["refId"]);
                queries.insert(at, expr.to_owned());
            }
        }
    }
    for annotation in dashboard["annotations"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(expr) = annotation["expr"].as_str() {
            queries.insert(
                format!("annotation {}", annotation["name"]),
                expr.to_owned(),
            );
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        // label_values(<selector>, label) is Grafana's; the selector is PromQL.
        if let Some(query) = variable["definition"].as_str() {
            let selector = query
                .trim_start_matches("label_values(")
                .rsplit_once(',')
                .map(|(selector, _)| selector.to_owned())
                .with_context(|| format!("variable query {query}"))?;
            queries.insert(format!("variable {}", variable["name"]), selector);
        }
    }
    ensure!(queries.len() >= 10, "too few queries found: {queries:?}");
    Ok(queries
        .into_iter()
        .map(|(at, expr)| {
            let expr = expr
                .replace("$namespace", namespace)
                .replace("$canary", canary)
                .replace("$__rate_interval", "1m");
            (at, expr)
        })
        .collect())
}

/// The alert expressions of the chart's rule file.
fn alert_queries() -> Result<BTreeMap<String, String>> {
    let path = repository_root().join("charts/serin/files/alerts.yaml");
    let rules: Value = serde_norway::from_str(&fs::read_to_string(&path)?)?;
    Ok(rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|group| group["rules"].as_array().into_iter().flatten())
        .filter_map(|rule| {
            Some((
                rule["alert"].as_str()?.to_owned(),
                rule["expr"].as_str()?.to_owned(),
            ))
        })
        .collect())
}

#[test]
fn every_dashboard_query_returns_data_during_rollouts_and_every_alert_parses() -> Result<()> {
    let rollout = Rollout::prepare(cluster(), "dashboard", "web")?;
    let controller = rollout.controller.as_ref().context("no controller")?;
    let traffic = Traffic::start(
        rollout.kubectl.kubeconfig(),
        &rollout.namespace,
        "web",
        200.0,
    )?;
    let mut prometheus = Prometheus::start(
        &[
            ScrapeJob {
                name: "traffic".into(),
                targets: vec![traffic.target()],
            },
            ScrapeJob {
                name: "serin".into(),
                targets: vec![format!("127.0.0.1:{}", controller.metrics_port)],
            },
        ],
        Duration::from_secs(1),
    )?;
    let spec = format!(
        "  steps: [25, 50]\n  stepDuration: 8s\n  scaleDownDelay: 2s\n  analysis:\n    interval: 4s\n    confidence: 0.999\n    prometheus: {{address: '{}'}}\n    metrics:\n{ERRORS_METRIC}",
        prometheus.url()
    );
    let release = |image: &str, error_rate: &str| {
        rollout.apply_manifest(
            &CanaryManifest::new("web")
                .image(image)
                .env("SIM_ERROR_RATE", &format!("'{error_rate}'"))
                .env("SIM_LATENCY_MS", "'20'")
                .spec(&spec),
        )
    };
    let dashboard = dashboard_queries(&rollout.namespace, "web")?;
    let alerts = alert_queries()?;
    let mut answered: BTreeMap<String, bool> =
        dashboard.keys().map(|at| (at.clone(), false)).collect();
    let mut look = |prometheus: &mut Prometheus| -> Result<()> {
        for (at, expr) in &dashboard {
            let result = prometheus
                .query(expr)
                .with_context(|| format!("dashboard {at}: {expr}"))?;
            if result.as_array().is_some_and(|series| !series.is_empty()) {
                answered.insert(at.clone(), true);
            }
        }
        Ok(())
    };

    release("v1", "0.01")?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    let (first, _) = revisions(&rollout.canary()?);
    release("v2", "0.01")?;
    let promoted = rollout.wait("v2 promoted", Duration::from_secs(120), |c| {
        let _ = look(&mut prometheus);
        revisions(c).0 != first && phase(c) == Some(Phase::Healthy)
    })?;
    release("v3", "0.3")?;
    rollout.wait("v3 rolled back", Duration::from_secs(120), |c| {
        let _ = look(&mut prometheus);
        phase(c) == Some(Phase::Aborted)
    })?;
    ensure!(revisions(&promoted).0 != first, "v2 was not promoted");
    // The last scrapes after the rollback, and every expression once more, so an
    // error (not only an empty answer) fails the test.
    std::thread::sleep(Duration::from_secs(3));
    look(&mut prometheus)?;
    let silent: Vec<&String> = answered
        .iter()
        .filter(|(_, answered)| !**answered)
        .map(|(at, _)| at)
        .collect();
    ensure!(
        silent.is_empty(),
        "dashboard queries that never returned data: {silent:?}\n{}",
        traffic.log()
    );
    for (alert, expr) in &alerts {
        prometheus
            .query(expr)
            .with_context(|| format!("alert {alert}: {expr}"))?;
    }
    let rollback = prometheus.query(&alerts["SerinRollback"])?;
    ensure!(
        rollback.as_array().is_some_and(|series| !series.is_empty()),
        "SerinRollback does not fire after an AnalysisFailed: {rollback}"
    );
    println!(
        "{} dashboard queries returned data; {} alert expressions parsed; SerinRollback fired",
        answered.len(),
        alerts.len()
    );
    Ok(())
}

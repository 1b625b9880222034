//! The chart's optional ServiceMonitor and PrometheusRule against prometheus-operator's
//! own CRDs (from its Go module, as its releases ship them): the API server accepts
//! what the chart renders, refuses a broken one (so acceptance means the schema was
//! applied), and the ServiceMonitor selects the metrics Service on a port that leads
//! to the controller's `/metrics`.

use std::collections::BTreeSet;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use serin_e2e::cluster::{default_bin_dir, prometheus_operator_crds, repository_root};

use crate::cluster;

/// The chart rendered with both prometheus-operator objects on, one JSON value per
/// object.
fn rendered(namespace: &str) -> Result<Vec<Value>> {
    let helm = cluster()
        .kubectl
        .with_program(&default_bin_dir().join("helm"));
    let text = helm.run(&[
        "template",
        "serin",
        &repository_root().join("charts/serin").to_string_lossy(),
        "--namespace",
        namespace,
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "prometheusRule.enabled=true",
    ])?;
    let mut objects = Vec::new();
    for document in text.split("\n---") {
        let object: Value = serde_norway::from_str(document)?;
        if object.is_object() {
            objects.push(object);
        }
    }
    Ok(objects)
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Result<&'a Value> {
    objects
        .iter()
        .find(|object| object["kind"] == kind)
        .with_context(|| format!("the chart renders no {kind}"))
}

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

#[test]
fn the_charts_service_monitor_and_prometheus_rule_are_what_prometheus_operator_accepts()
-> Result<()> {
    let kubectl = &cluster().kubectl;
    let crds = prometheus_operator_crds()?;
    for crd in ["servicemonitors", "prometheusrules"] {
        let file = crds.join(format!("monitoring.coreos.com_{crd}.yaml"));
        kubectl.run(&["apply", "--server-side", "-f", &file.to_string_lossy()])?;
        kubectl.run(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            &format!("crd/{crd}.monitoring.coreos.com"),
        ])?;
    }
    let namespace = cluster().namespace("monitoring")?;
    let objects = rendered(&namespace)?;
    let monitor = of_kind(&objects, "ServiceMonitor")?;
    let rule = of_kind(&objects, "PrometheusRule")?;
    let apply = |object: &Value| {
        kubectl.run_with_input(
            &["apply", "--server-side", "-n", &namespace, "-f", "-"],
            Some(&object.to_string()),
        )
    };
    apply(monitor)?;
    apply(rule)?;

    // What the API server kept is what the chart rendered (no field pruned as
    // unknown to the schema).
    let stored_monitor = kubectl.get_json(&["servicemonitor", name(monitor), "-n", &namespace])?;
    ensure!(
        stored_monitor["spec"] == monitor["spec"],
        "the stored ServiceMonitor differs: {} against {}",
        stored_monitor["spec"],
        monitor["spec"]
    );
    let stored_rule = kubectl.get_json(&["prometheusrule", name(rule), "-n", &namespace])?;
    ensure!(
        stored_rule["spec"] == rule["spec"],
        "the stored PrometheusRule differs"
    );
    let alerts: BTreeSet<&str> = stored_rule["spec"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|group| group["rules"].as_array().into_iter().flatten())
        .filter_map(|rule| rule["alert"].as_str())
        .collect();
    let expected: BTreeSet<&str> = [
        "SerinNoLeader",
        "SerinReconcileErrors",
        "SerinCanaryUndecodable",
        "SerinRollback",
    ]
    .into();
    ensure!(
        alerts == expected,
        "the PrometheusRule alerts are {alerts:?}"
    );

    // The schema is applied: a scrape interval prometheus-operator cannot read is
    // refused, naming the field.
    let mut broken = monitor.clone();
    broken["metadata"]["name"] = "broken".into();
    broken["spec"]["endpoints"][0]["interval"] = "thirty seconds".into();
    let refused = apply(&broken)
        .err()
        .context("a broken ServiceMonitor was accepted")?;
    ensure!(
        refused.to_string().contains("spec.endpoints[0].interval"),
        "refused for another reason: {refused}"
    );

    // The ServiceMonitor selects the metrics Service, on its port named in the
    // endpoint, and that port leads to the controller container's metrics port.
    let service = objects
        .iter()
        .find(|object| object["kind"] == "Service" && name(object).ends_with("-metrics"))
        .context("the chart renders no metrics Service")?;
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .context("the ServiceMonitor selects by matchLabels")?;
    ensure!(
        selector
            .iter()
            .all(|(key, value)| service["metadata"]["labels"][key] == *value),
        "the ServiceMonitor's selector {selector:?} does not select {}",
        service["metadata"]["labels"]
    );
    let endpoint_port = &monitor["spec"]["endpoints"][0]["port"];
    let service_port = service["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|port| port["name"] == *endpoint_port)
        .with_context(|| format!("the metrics Service has no port {endpoint_port}"))?;
    let deployment = of_kind(&objects, "Deployment")?;
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    ensure!(
        service["spec"]["selector"]
            .as_object()
            .into_iter()
            .flatten()
            .all(|(key, value)| pod_labels[key] == *value),
        "the metrics Service does not select the controller's pods"
    );
    let container_ports = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(
        container_ports
            .iter()
            .any(|port| port["name"] == service_port["targetPort"]),
        "the Service's targetPort {} names no container port of {container_ports:?}",
        service_port["targetPort"]
    );
    kubectl.run(&["delete", "namespace", &namespace, "--wait=false"])?;
    Ok(())
}

//! The Canary API as the API server enforces it: the CRD installs with
//! `kubectl apply -f crds/`, a valid Canary is stored with its defaults and shown
//! with Serin's columns, and every invalid manifest is refused with a message that
//! names the offending field, leaving nothing behind.

use std::fs;

use anyhow::{Context, Result};
use serin_e2e::cluster::repository_root;
use serin_e2e::controller;
use serin_e2e::kubectl::Kubectl;

use crate::cluster;

/// The CRDs installed (once per test run), and kubectl as the cluster's admin.
fn install_crds() -> &'static Kubectl {
    let cluster = cluster();
    let installed = controller::install_crds(cluster);
    assert!(installed.is_ok(), "{installed:?}");
    &cluster.kubectl
}

#[test]
fn a_valid_canary_is_stored_with_defaults_and_shown_with_serins_columns() -> Result<()> {
    let kubectl = install_crds();
    let namespace = cluster().namespace("valid")?;
    let examples = repository_root().join("docs/examples");
    for example in ["podinfo.yaml", "minimal.yaml"] {
        let path = examples.join(example);
        kubectl.run(&["apply", "-n", &namespace, "-f", &path.to_string_lossy()])?;
    }

    let table = kubectl.run(&["get", "cn", "-n", &namespace])?;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "PHASE", "WEIGHT", "STABLE", "CANARY", "STEP", "AGE"],
        "{table}"
    );
    let names: Vec<&str> = table
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert_eq!(names, ["hello", "podinfo"], "{table}");
    let by_category = kubectl.run(&["get", "serin", "-n", &namespace, "-o", "name"])?;
    assert!(
        by_category.contains("canary.serin.dev/podinfo"),
        "{by_category}"
    );

    let minimal = kubectl.get_json(&["canary", "hello", "-n", &namespace])?;
    let spec = &minimal["spec"];
    assert_eq!(spec["steps"], serde_json::json!([10, 25, 50]), "{spec:#}");
    assert_eq!(spec["stepDuration"], "60s");
    assert_eq!(spec["progressDeadline"], "600s");
    assert_eq!(spec["paused"], false);
    assert_eq!(spec["revisionHistoryLimit"], 2);

    let podinfo = kubectl.get_json(&["canary", "podinfo", "-n", &namespace])?;
    let analysis = &podinfo["spec"]["analysis"];
    assert_eq!(analysis["metrics"][0]["errorRate"]["maxRate"], 0.05);
    assert_eq!(analysis["metrics"][1]["latency"]["threshold"], 0.25);
    assert_eq!(analysis["metrics"][2]["failureLimit"], 3);
    assert_eq!(analysis["confidence"], 0.95);
    assert_eq!(analysis["scrapeInterval"], "15s");
    Ok(())
}

#[test]
fn the_scale_subresource_lets_an_autoscaler_resize_a_canary() -> Result<()> {
    let kubectl = install_crds();
    let namespace = cluster().namespace("scale")?;
    let path = repository_root().join("docs/examples/minimal.yaml");
    kubectl.run(&["apply", "-n", &namespace, "-f", &path.to_string_lossy()])?;
    kubectl.run(&["scale", "-n", &namespace, "canary/hello", "--replicas=5"])?;
    let scale = kubectl.run(&[
        "get",
        "--raw",
        &format!("/apis/serin.dev/v1alpha1/namespaces/{namespace}/canaries/hello/scale"),
    ])?;
    let scale: serde_json::Value = serde_json::from_str(&scale)?;
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 5);
    let canary = kubectl.get_json(&["canary", "hello", "-n", &namespace])?;
    assert_eq!(canary["spec"]["replicas"], 5);
    Ok(())
}

#[test]
fn kubectl_explain_shows_the_field_documentation() -> Result<()> {
    let kubectl = install_crds();
    let explained = kubectl.run(&["explain", "canary.spec.steps"])?;
    assert!(
        explained.contains("strictly increasing") && explained.contains("Default `[10, 25, 50]`"),
        "{explained}"
    );
    Ok(())
}

#[test]
fn every_invalid_manifest_is_refused_naming_its_field() -> Result<()> {
    let kubectl = install_crds();
    let namespace = cluster().namespace("invalid")?;
    let dir = repository_root().join("e2e/testdata/invalid");
    let mut files: Vec<_> = fs::read_dir(&dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    assert!(files.len() >= 15, "only {} invalid manifests", files.len());

    let mut problems = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file)?;
        let field = text
            .lines()
            .find_map(|line| line.strip_prefix("# expect: "))
            .with_context(|| format!("{} has no `# expect: <field>` line", file.display()))?;
        let output = kubectl.output(
            &["apply", "-n", &namespace, "-f", &file.to_string_lossy()],
            None,
        )?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        if output.status.success() {
            problems.push(format!("{name}: accepted"));
        } else if !stderr.contains("is invalid") || !stderr.contains(field) {
            problems.push(format!("{name}: refused without naming {field}: {stderr}"));
        }
    }
    let left = kubectl.run(&["get", "canaries", "-n", &namespace, "-o", "name"])?;
    assert!(
        left.trim().is_empty(),
        "refused manifests left canaries behind: {left}"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

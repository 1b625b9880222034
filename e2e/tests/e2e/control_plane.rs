//! The control plane itself: a Deployment goes through the real controller manager
//! and scheduler to Ready pods on kwok's nodes.

use serin_e2e::cluster::repository_root;

use crate::cluster;

#[test]
fn a_deployment_becomes_available_with_ready_pods() -> anyhow::Result<()> {
    let cluster = cluster();
    let namespace = cluster.namespace("deployment")?;
    let manifest = repository_root().join("e2e/testdata/deployment.yaml");
    let kubectl = &cluster.kubectl;
    kubectl.run(&["apply", "-n", &namespace, "-f", &manifest.to_string_lossy()])?;
    kubectl.run(&[
        "wait",
        "-n",
        &namespace,
        "--for=condition=Available",
        "deployment/web",
        "--timeout=90s",
    ])?;

    let deployment = kubectl.get_json(&["deployment", "web", "-n", &namespace])?;
    assert_eq!(deployment["status"]["readyReplicas"], 3, "{deployment:#}");

    let replica_sets = kubectl.get_json(&["replicasets", "-n", &namespace, "-l", "app=web"])?;
    assert_eq!(
        replica_sets["items"].as_array().map(Vec::len),
        Some(1),
        "the deployment controller made one ReplicaSet"
    );

    let pods = kubectl.get_json(&["pods", "-n", &namespace, "-l", "app=web"])?;
    let pods = pods["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(pods.len(), 3);
    for pod in &pods {
        let name = &pod["metadata"]["name"];
        let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        assert!(
            node.starts_with("kwok-node-"),
            "{name} scheduled on {node:?}"
        );
        assert_eq!(pod["status"]["phase"], "Running", "{name}");
        let ready = pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        assert!(ready, "{name} is Ready");
        assert!(pod["status"]["podIP"].is_string(), "{name} has an IP");
    }
    Ok(())
}

//! The external metrics API (`external.metrics.k8s.io/v1beta1`) with values a test
//! sets: `serin-metrics-adapter` on the real node's bridge, registered as an
//! APIService, so kube-controller-manager's HPA controller scales on a number the
//! test writes. The APIService goes before the adapter stops: an APIService that
//! does not answer stalls discovery, and with it every namespace's deletion.

use std::fs;
use std::time::Duration;

use anyhow::{Context, Result};
use tempfile::TempDir;

use crate::cluster::default_bin_dir;
use crate::kubectl::Kubectl;
use crate::node::NODE_IP;
use crate::process::{Supervised, free_port, wait_until};

/// The APIService's name: one external metrics API per cluster.
const API_SERVICE: &str = "v1beta1.external.metrics.k8s.io";

/// External metrics served from files while this lives.
pub struct ExternalMetrics {
    kubectl: Kubectl,
    values: TempDir,
    adapter: Supervised,
}

impl ExternalMetrics {
    /// Starts the adapter and registers it; returns once the API server reports the
    /// APIService available.
    pub fn start(kubectl: &Kubectl) -> Result<Self> {
        let values = tempfile::Builder::new()
            .prefix("serin-metrics-")
            .tempdir()?;
        let port = free_port()?;
        let program = default_bin_dir().join("serin-metrics-adapter");
        let mut adapter = Supervised::spawn(
            "serin-metrics-adapter",
            &program,
            &[
                format!("--listen={NODE_IP}:{port}"),
                format!("--values={}", values.path().display()),
            ],
            values.path(),
        )
        .context("starting serin-metrics-adapter (run `make controlplane`, which builds it)")?;
        adapter.ensure_running()?;
        // No selector: the endpoint is the adapter on the bridge, where the API
        // server's aggregator connects.
        let registration = format!(
            "apiVersion: v1
kind: Service
metadata: {{name: serin-metrics, namespace: default}}
spec:
  ports: [{{name: https, port: 443, targetPort: {port}}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: serin-metrics, namespace: default}}
subsets:
- addresses: [{{ip: {NODE_IP}}}]
  ports: [{{name: https, port: {port}}}]
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {{name: {API_SERVICE}}}
spec:
  group: external.metrics.k8s.io
  version: v1beta1
  service: {{name: serin-metrics, namespace: default, port: 443}}
  insecureSkipTLSVerify: true
  groupPriorityMinimum: 100
  versionPriority: 100
"
        );
        // Made before the APIService, so that dropping it deletes that too.
        let mut metrics = Self {
            kubectl: kubectl.clone(),
            values,
            adapter,
        };
        kubectl.run_with_input(&["apply", "-f", "-"], Some(&registration))?;
        let available = |kubectl: &Kubectl| {
            kubectl.succeeds(&[
                "wait",
                "--for=condition=Available",
                &format!("apiservice/{API_SERVICE}"),
                "--timeout=1s",
            ])
        };
        wait_until(
            "the external metrics APIService available",
            Duration::from_secs(60),
            || metrics.adapter.ensure_running(),
            || available(kubectl),
        )?;
        Ok(metrics)
    }

    /// Sets what the API answers for `metric` from now on.
    pub fn set(&self, metric: &str, value: u64) -> Result<()> {
        let path = self.values.path().join(metric);
        let staged = self.values.path().join(format!(".{metric}"));
        fs::write(&staged, value.to_string())?;
        fs::rename(&staged, &path).with_context(|| format!("setting {}", path.display()))
    }
}

impl Drop for ExternalMetrics {
    fn drop(&mut self) {
        for object in [
            format!("apiservice/{API_SERVICE}"),
            "service/serin-metrics".to_owned(),
        ] {
            let deleted = self.kubectl.run(&[
                "delete",
                &object,
                "-n",
                "default",
                "--ignore-not-found",
                "--wait=true",
            ]);
            if let Err(error) = deleted {
                eprintln!("deleting {object}: {error:#}");
            }
        }
    }
}

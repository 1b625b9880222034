//! A real Gateway API data plane beside a cluster with a real node: Traefik, built
//! from its Go module, watching the API server with its `kubernetesgateway`
//! provider and proxying requests on the node's bridge address to the pods behind
//! an HTTPRoute's backendRefs, in their weights. One per machine (fixed ports).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use tempfile::TempDir;

use crate::cluster::{default_bin_dir, gateway_api_crds};
use crate::kubectl::Kubectl;
use crate::node::NODE_IP;
use crate::process::{Supervised, wait_until};

/// Where the Gateway's listener takes requests: the node's bridge address.
pub const GATEWAY_PORT: u16 = 8000;
/// Traefik's ping endpoint, on loopback, for readiness.
const PING_PORT: u16 = 18082;
/// The Gateway every test's HTTPRoute attaches to (`parentRefs: [{name: edge,
/// namespace: default}]`).
pub const GATEWAY: &str = "edge";

/// The GatewayClass Traefik implements and the Gateway it serves.
const GATEWAY_MANIFEST: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: traefik}
spec: {controllerName: traefik.io/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  gatewayClassName: traefik
  listeners:
  - {name: web, port: 8000, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
";

/// Traefik, running; stopped when dropped.
pub struct Traefik {
    _process: Supervised,
    _dir: TempDir,
}

impl Traefik {
    /// Installs the Gateway API CRDs, starts Traefik against the API server of
    /// `kubectl`'s kubeconfig, applies the GatewayClass and Gateway, and returns
    /// once the Gateway is Programmed.
    pub fn start(kubectl: &Kubectl) -> Result<Self> {
        let crds = gateway_api_crds()?;
        kubectl.run(&["apply", "--server-side", "-f", &crds.to_string_lossy()])?;
        kubectl.run(&[
            "wait",
            "--for=condition=Established",
            "crd/gateways.gateway.networking.k8s.io",
            "crd/httproutes.gateway.networking.k8s.io",
            "--timeout=30s",
        ])?;
        let dir = tempfile::Builder::new()
            .prefix("serin-traefik-")
            .tempdir()?;
        let server = kubectl.config(".clusters[0].cluster.server")?;
        let ca = kubectl.config(".clusters[0].cluster.certificate-authority")?;
        let token = kubectl.config(".users[0].user.token")?;
        let program = default_bin_dir().join("traefik");
        let mut process = Supervised::spawn(
            "traefik",
            &program,
            &[
                format!("--entryPoints.web.address={NODE_IP}:{GATEWAY_PORT}"),
                format!("--entryPoints.ping.address=127.0.0.1:{PING_PORT}"),
                "--ping=true".into(),
                "--ping.entryPoint=ping".into(),
                "--providers.kubernetesgateway=true".into(),
                format!("--providers.kubernetesgateway.endpoint={}", server),
                format!("--providers.kubernetesgateway.token={}", token),
                format!(
                    "--providers.kubernetesgateway.certAuthFilePath={}",
                    Path::new(&ca).display()
                ),
                "--log.level=INFO".into(),
                // No request leaves the test bed: no version check, no usage data.
                "--global.checkNewVersion=false".into(),
                "--global.sendAnonymousUsage=false".into(),
            ],
            dir.path(),
        )
        .context("starting traefik (run `make controlplane`, which builds it)")?;
        wait_until(
            "traefik",
            Duration::from_secs(30),
            || process.ensure_running(),
            || crate::http::get(PING_PORT, "/ping").is_some_and(|(code, _)| code == 200),
        )?;
        kubectl.run_with_input(&["apply", "-f", "-"], Some(GATEWAY_MANIFEST))?;
        kubectl.run(&[
            "wait",
            "--for=condition=Programmed",
            &format!("gateway/{GATEWAY}"),
            "-n",
            "default",
            "--timeout=60s",
        ])?;
        Ok(Self {
            _process: process,
            _dir: dir,
        })
    }
}

//! Serin installed as a user installs it (`helm install`, or the kustomize base
//! `kubectl apply -k deploy/`) and
//! the controller run as a local process under the `serin` ServiceAccount's
//! permissions, so every test proves the ClusterRole is enough.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::cluster::{default_bin_dir, repository_root};
use crate::harness::Cluster;
use crate::process::{Supervised, eventually, free_port, wait_until};

/// Installs the kustomize base `deploy/` once per test run, and returns a kubeconfig
/// with the `serin` ServiceAccount's token, kept beside the cluster's own (so it
/// goes with the cluster: a static is never dropped, a temporary directory held by
/// one would outlive every run).
pub fn install(cluster: &Cluster) -> Result<&'static Path> {
    static INSTALLED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let installed = INSTALLED.get_or_init(|| install_once(cluster).map_err(|e| format!("{e:#}")));
    match installed {
        Ok(kubeconfig) => Ok(kubeconfig),
        Err(error) => bail!("installing Serin: {error}"),
    }
}

/// Serin installed as the README says, once per test binary: `helm install serin
/// charts/serin -n serin-system --create-namespace` (the CRD, RBAC and the
/// controller from its image, two replicas, one leader), then waits until the
/// Deployment is Available. Needs the real node, `make image` and Helm
/// (`make controlplane`).
pub fn install_in_cluster(cluster: &Cluster) -> Result<()> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    let installed = INSTALLED.get_or_init(|| {
        let kubectl = &cluster.kubectl;
        let helm = kubectl.with_program(&default_bin_dir().join("helm"));
        (|| {
            helm.run(&[
                "install",
                "serin",
                &repository_root().join("charts/serin").to_string_lossy(),
                "--namespace",
                "serin-system",
                "--create-namespace",
            ])?;
            kubectl
                .run(&[
                    "wait",
                    "--for=condition=Available",
                    "deployment/serin-controller",
                    "-n",
                    "serin-system",
                    "--timeout=120s",
                ])
                .with_context(|| {
                    // What the pods say, so a failure names its cause.
                    let said =
                        |args: &[&str]| kubectl.run(args).unwrap_or_else(|e| format!("{e:#}"));
                    format!(
                        "{}\n{}",
                        said(&["get", "pods", "-n", "serin-system", "-o", "wide"]),
                        said(&[
                            "logs",
                            "-n",
                            "serin-system",
                            "deployment/serin-controller",
                            "--tail=20"
                        ])
                    )
                })?;
            Ok::<_, anyhow::Error>(())
        })()
        .map_err(|e| format!("{e:#}"))
    });
    match installed {
        Ok(()) => Ok(()),
        Err(error) => bail!("installing Serin in the cluster: {error}"),
    }
}

/// The one CRD installer: `kubectl apply -f crds/` once per test run, then waits
/// until the API server serves Canaries.
pub fn install_crds(cluster: &Cluster) -> Result<()> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    let installed = INSTALLED.get_or_init(|| {
        let kubectl = &cluster.kubectl;
        let crds = repository_root().join("crds");
        (|| {
            kubectl.run(&["apply", "-f", &crds.to_string_lossy()])?;
            kubectl.run(&[
                "wait",
                "--for=condition=Established",
                "crd/canaries.serin.dev",
                "--timeout=30s",
            ])?;
            eventually(
                "the API server serving Canaries",
                Duration::from_secs(10),
                || Ok(kubectl.succeeds(&["get", "canaries", "-A"]).then_some(())),
            )
        })()
        .map_err(|e| format!("{e:#}"))
    });
    match installed {
        Ok(()) => Ok(()),
        Err(error) => bail!("installing the CRDs: {error}"),
    }
}

fn install_once(cluster: &Cluster) -> Result<PathBuf> {
    let kubectl = &cluster.kubectl;
    let root = repository_root();
    install_crds(cluster)?;
    kubectl.run(&["apply", "-k", &root.join("deploy").to_string_lossy()])?;
    let kubeconfig = kubectl
        .kubeconfig()
        .with_file_name(format!("serin-sa-{}.kubeconfig", std::process::id()));
    write_service_account_kubeconfig(cluster, "serin-system", "serin", &kubeconfig)?;
    Ok(kubeconfig)
}

/// A kubeconfig that acts as ServiceAccount `namespace/name`, in a directory that
/// lives as long as the returned handle.
pub fn service_account_kubeconfig(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
) -> Result<(TempDir, PathBuf)> {
    let dir = tempfile::Builder::new().prefix("serin-e2e-sa-").tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    write_service_account_kubeconfig(cluster, namespace, name, &kubeconfig)?;
    Ok((dir, kubeconfig))
}

/// Writes to `path` a kubeconfig that acts as ServiceAccount `namespace/name`.
fn write_service_account_kubeconfig(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    path: &Path,
) -> Result<()> {
    let kubectl = &cluster.kubectl;
    let token = kubectl.run(&["create", "token", name, "-n", namespace, "--duration=24h"])?;
    let server = kubectl.config(".clusters[0].cluster.server")?;
    let ca = kubectl.config(".clusters[0].cluster.certificate-authority")?;
    fs::write(
        path,
        format!(
            "apiVersion: v1
kind: Config
clusters: [{{name: e2e, cluster: {{server: '{server}', certificate-authority: '{ca}'}}}}]
users: [{{name: sa, user: {{token: '{}'}}}}]
contexts: [{{name: sa, context: {{cluster: e2e, user: sa}}}}]
current-context: sa
",
            token.trim()
        ),
    )?;
    Ok(())
}

/// What a controller has done so far, by its own count.
#[derive(Clone, Debug, Default)]
pub struct Work {
    /// `serin_reconciles_total`.
    pub reconciles: f64,
    /// `serin_api_requests_total` by `(verb, resource)`.
    pub requests: BTreeMap<(String, String), f64>,
}

/// A running `serin controller`.
pub struct Controller {
    process: Supervised,
    /// Port of `/metrics`.
    pub metrics_port: u16,
    /// Port of `/healthz` and `/readyz`.
    pub health_port: u16,
    _logs: TempDir,
}

impl Controller {
    /// Starts the controller watching `namespace`, its leader Lease in the same
    /// namespace, and waits until it is ready.
    pub fn start(cluster: &Cluster, namespace: &str) -> Result<Self> {
        Self::start_with(cluster, namespace, &[])
    }

    /// As [`Self::start`], with more flags for `serin controller`.
    pub fn start_with(cluster: &Cluster, namespace: &str, flags: &[String]) -> Result<Self> {
        let kubeconfig = install(cluster)?;
        let controller = Self::spawn(namespace, kubeconfig, flags)?;
        controller.wait_ready()
    }

    /// Starts the controller with the credentials of `kubeconfig`, and returns at
    /// once, ready or not.
    pub fn spawn(namespace: &str, kubeconfig: &Path, flags: &[String]) -> Result<Self> {
        let binary = binary_dir()?.join("serin");
        let logs = tempfile::Builder::new()
            .prefix("serin-e2e-controller-")
            .tempdir()?;
        let metrics_port = free_port()?;
        let health_port = free_port()?;
        let process = Supervised::spawn_with_env(
            "serin-controller",
            &binary,
            &[
                "controller".into(),
                format!("--namespace={namespace}"),
                format!("--lease-namespace={namespace}"),
                format!("--metrics-address=127.0.0.1:{metrics_port}"),
                format!("--health-address=127.0.0.1:{health_port}"),
            ]
            .into_iter()
            .chain(flags.iter().cloned())
            .collect::<Vec<_>>(),
            &[
                ("KUBECONFIG", kubeconfig.as_os_str()),
                ("RUST_LOG", "info".as_ref()),
            ],
            logs.path(),
        )?;
        Ok(Self {
            process,
            metrics_port,
            health_port,
            _logs: logs,
        })
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(mut self) -> Result<Self> {
        let port = self.health_port;
        wait_until(
            "the controller",
            Duration::from_secs(30),
            || self.process.ensure_running(),
            || crate::http::get(port, "/readyz").is_some_and(|(code, _)| code == 200),
        )?;
        Ok(self)
    }

    /// `/readyz`: its status code and body, None while nothing answers.
    pub fn readyz(&self) -> Option<(u16, String)> {
        crate::http::get(self.health_port, "/readyz")
    }

    /// Sends SIGTERM and returns how long the controller took to exit, or None if
    /// it had not exited after `grace` (it is then killed).
    pub fn terminate(mut self, grace: Duration) -> Option<Duration> {
        self.process.stop(grace)
    }

    /// Kills the controller at once (SIGKILL), as a crash would.
    pub fn kill(mut self) {
        self.process.kill();
    }

    /// Waits up to `limit` for the controller to exit by itself, as it does when
    /// a flag is wrong; its exit status and output.
    pub fn wait_exit(mut self, limit: Duration) -> Result<(std::process::ExitStatus, String)> {
        let status = eventually("the controller exiting", limit, || {
            Ok(self.process.exited())
        })
        .with_context(|| self.log())?;
        Ok((status, self.log()))
    }

    /// The controller's process id.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// The controller's `/metrics`.
    pub fn metrics(&self) -> Result<String> {
        crate::http::get(self.metrics_port, "/metrics")
            .map(|(_, body)| body)
            .context("the controller's /metrics did not answer")
    }

    /// What the controller counts of its own work, from its `/metrics`.
    pub fn work(&self) -> Result<Work> {
        let mut work = Work::default();
        for line in self.metrics()?.lines() {
            let value = || {
                line.rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or_default()
            };
            if line.starts_with("serin_reconciles_total ") {
                work.reconciles = value();
            }
            let Some((labels, _)) = line
                .strip_prefix("serin_api_requests_total{")
                .and_then(|rest| rest.split_once('}'))
            else {
                continue;
            };
            let label = |name: &str| {
                labels
                    .split(',')
                    .find_map(|pair| pair.strip_prefix(&format!("{name}=\"")))
                    .map(|v| v.trim_end_matches('"').to_owned())
                    .unwrap_or_default()
            };
            work.requests
                .insert((label("verb"), label("resource")), value());
        }
        Ok(work)
    }

    /// The controller's output so far, to explain a failure.
    pub fn log(&self) -> String {
        self.process.log_tail(200)
    }
}

/// The directory holding this build's binaries (`target/<profile>`): the running
/// binary's own, or one level up from a test binary in `deps/`. Found by where
/// `serin` is, which `cargo build --workspace --bins` (make test) puts there.
pub fn binary_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("locating the target directory")?;
    [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .find(|dir| dir.join("serin").is_file())
        .map(Path::to_path_buf)
        .with_context(|| {
            format!(
                "no serin binary beside {}: build it with `cargo build --workspace --bins` (make test does)",
                exe.display()
            )
        })
}

/// PATH with [`binary_dir`] first, so kubectl finds the `kubectl-serin` plugin.
pub fn path_with_plugin() -> Result<String> {
    Ok(format!(
        "{}:{}",
        binary_dir()?.display(),
        std::env::var("PATH").unwrap_or_default()
    ))
}

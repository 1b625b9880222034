//! A real Kubernetes control plane on this machine: etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, kwok running fake nodes whose pods
//! become Running and Ready without running anything, and optionally a real node
//! whose pods are real containers (see [`crate::node`]).
//!
//! Without a real node everything listens on loopback. With one, the API server
//! listens on the node's bridge address instead, so pods reach it through the
//! `kubernetes` Service. The kwok nodes are always tainted
//! `kwok.x-k8s.io/node=fake:NoSchedule`, so a manifest chooses its kind of node the
//! same way in every cluster ([`KWOK_PLACEMENT`]) and nothing meant to run lands on
//! a node that runs nothing.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::http;
use crate::kubectl::Kubectl;
use crate::node::{self, NODE_IP, NodeBinaries};
use crate::process::{Supervised, free_port, openssl, wait_until};

/// Where the Kubernetes binaries are: `$SERIN_BIN_DIR`, or `.cache/bin` in the
/// repository, where `make controlplane` builds them.
pub fn default_bin_dir() -> PathBuf {
    std::env::var_os("SERIN_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repository_root().join(".cache/bin"))
}

/// Where `make image` leaves the OCI image archives a real node imports:
/// `$SERIN_IMAGE_DIR`, or `.cache/images` in the repository.
pub fn default_image_dir() -> PathBuf {
    std::env::var_os("SERIN_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repository_root().join(".cache/images"))
}

/// The repository's root directory.
pub fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The programs the control plane runs.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// etcd, from the `etcd-bin-vendored` crate.
    pub etcd: PathBuf,
    /// kube-apiserver, built from k8s.io/kubernetes.
    pub kube_apiserver: PathBuf,
    /// kube-controller-manager, built from k8s.io/kubernetes.
    pub kube_controller_manager: PathBuf,
    /// kube-scheduler, built from k8s.io/kubernetes.
    pub kube_scheduler: PathBuf,
    /// kubectl, built from k8s.io/kubernetes, so client and server match.
    pub kubectl: PathBuf,
    /// kwok, built from sigs.k8s.io/kwok.
    pub kwok: PathBuf,
}

impl Binaries {
    /// Finds every binary in `bin_dir`, or says how to build the missing ones.
    pub fn locate(bin_dir: &Path) -> Result<Self> {
        let find = |name: &str| built_binary(bin_dir, name);
        let etcd = etcd_bin_vendored::etcd_bin_path()
            .context("the etcd-bin-vendored crate has no etcd for this platform")?
            .to_path_buf();
        Ok(Self {
            etcd,
            kube_apiserver: find("kube-apiserver")?,
            kube_controller_manager: find("kube-controller-manager")?,
            kube_scheduler: find("kube-scheduler")?,
            kubectl: find("kubectl")?,
            kwok: find("kwok")?,
        })
    }
}

/// A program `make controlplane` builds into `bin_dir`, or how to build it.
pub fn built_binary(bin_dir: &Path, name: &str) -> Result<PathBuf> {
    let path = bin_dir.join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: run `make controlplane`, which builds it (or set SERIN_BIN_DIR)",
            path.display()
        );
    }
    Ok(path)
}

/// How many fake nodes, and how much each can hold.
#[derive(Clone, Debug)]
pub struct Options {
    /// Directory for the cluster's data, certificates, logs and kubeconfig. Created
    /// on start and removed on stop.
    pub dir: PathBuf,
    /// The programs to run.
    pub binaries: Binaries,
    /// Number of fake nodes.
    pub nodes: usize,
    /// Whether to run a real node too, with images from this directory (`make image`).
    pub real_node: Option<RealNodeOptions>,
    /// Requests per second the controller manager and the scheduler may send (their
    /// defaults, 20 and 50, when None): a fleet of thousands needs more, or it
    /// measures their client limits instead of Serin.
    pub client_qps: Option<u32>,
}

/// A real node's programs and images.
#[derive(Clone, Debug)]
pub struct RealNodeOptions {
    /// kubelet, kube-proxy, containerd, CoreDNS.
    pub binaries: NodeBinaries,
    /// Directory of OCI image archives imported into the node's containerd.
    pub images: PathBuf,
}

/// The pod spec lines that put a pod on a kwok node: kwok nodes are tainted so that
/// nothing meant to run lands on them.
pub const KWOK_PLACEMENT: &str = "nodeSelector: {type: kwok}
tolerations: [{key: kwok.x-k8s.io/node, operator: Exists, effect: NoSchedule}]";

/// A running control plane. Dropping it stops every process and removes its directory.
pub struct ControlPlane {
    dir: PathBuf,
    kubectl: Kubectl,
    processes: Vec<Supervised>,
    /// How the API server was started, to start it again the same way.
    apiserver: Option<(PathBuf, Vec<String>)>,
    /// The machine's real-node lock when a real node was (being) set up: stop cleans
    /// up after the node, then releases it.
    node_lock: Option<node::MachineLock>,
}

/// The file in a cluster's directory that counts API server restarts, written once
/// each restart is complete.
pub const APISERVER_RESTARTS_FILE: &str = "apiserver-restarts";

impl ControlPlane {
    /// Starts etcd, the API server, the controller manager, the scheduler and kwok, and
    /// returns once the fake nodes are Ready and the default ServiceAccount exists.
    pub fn start(options: &Options) -> Result<Self> {
        let dir = &options.dir;
        if dir.exists() && fs::read_dir(dir)?.next().is_some() {
            bail!(
                "{} is not empty: is a cluster already running there? (`make cluster-down` stops it)",
                dir.display()
            );
        }
        fs::create_dir_all(dir.join("pki"))?;
        let dir = fs::canonicalize(dir)?;
        let mut plane = Self {
            kubectl: Kubectl::new(&options.binaries.kubectl, &dir.join("kubeconfig")),
            dir,
            processes: Vec::new(),
            apiserver: None,
            node_lock: None,
        };
        if let Some(node) = &options.real_node {
            plane.node_lock = Some(node::MachineLock::acquire(
                &plane.dir,
                Duration::from_secs(90),
            )?);
            node::prepare_host(&plane.dir)?;
            plane.boot(options, NODE_IP)?;
            let kubectl = plane.kubectl.clone();
            let started = node::start(&plane.dir, &node.binaries, &kubectl, &node.images, |own| {
                ensure_all_running(own)
            })?;
            plane.processes.extend(started);
        } else {
            plane.boot(options, "127.0.0.1")?;
        }
        Ok(plane)
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        self.kubectl.kubeconfig()
    }

    /// Fails if any process of the control plane has died.
    pub fn ensure_running(&mut self) -> Result<()> {
        ensure_all_running(&mut self.processes)
    }

    /// The process id of one of the cluster's programs (`etcd`, `kube-apiserver`,
    /// ...), to measure it.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.processes
            .iter()
            .find(|process| process.name() == name)
            .map(Supervised::id)
    }

    /// Stops the API server (SIGTERM) and starts it again with the same flags and
    /// port, as an upgrade or a crash-looping API server would; returns once it
    /// answers again, and counts the restart in [`APISERVER_RESTARTS_FILE`].
    pub fn restart_apiserver(&mut self) -> Result<()> {
        let (program, args) = self
            .apiserver
            .clone()
            .context("no API server was started")?;
        let index = self
            .processes
            .iter()
            .position(|process| process.name() == "kube-apiserver")
            .context("no API server process")?;
        self.processes[index].stop(Duration::from_secs(10));
        self.processes[index] =
            Supervised::spawn("kube-apiserver", &program, &args, &self.dir.join("logs"))?;
        let kubectl = self.kubectl.clone();
        wait_until(
            "kube-apiserver, restarted",
            Duration::from_secs(90),
            || self.ensure_running(),
            || kubectl.succeeds(&["get", "--raw", "/readyz"]),
        )?;
        let file = self.dir.join(APISERVER_RESTARTS_FILE);
        let count: u32 = fs::read_to_string(&file)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0);
        fs::write(file, (count + 1).to_string())?;
        Ok(())
    }

    /// Stops every process, newest first, cleans up after the real node, and removes
    /// the cluster's directory.
    pub fn stop(&mut self) -> Result<()> {
        while let Some(mut process) = self.processes.pop() {
            process.stop(Duration::from_secs(10));
        }
        if !self.dir.exists() {
            return Ok(());
        }
        if let Some(lock) = self.node_lock.take() {
            node::clean_up(&self.dir)?;
            lock.release()?;
        }
        fs::remove_dir_all(&self.dir).with_context(|| format!("removing {}", self.dir.display()))
    }

    fn boot(&mut self, options: &Options, address: &str) -> Result<()> {
        let (binaries, nodes) = (&options.binaries, options.nodes);
        let dir = self.dir.clone();
        let kubectl = self.kubectl.clone();
        let logs = dir.join("logs");
        let token = random_hex(16)?;
        fs::write(
            dir.join("tokens.csv"),
            format!("{token},serin-e2e-admin,serin-e2e-admin,\"system:masters\"\n"),
        )?;
        service_account_keys(&dir)?;

        let etcd_port = free_port()?;
        let etcd_peer_port = free_port()?;
        let etcd = Supervised::spawn(
            "etcd",
            &binaries.etcd,
            &[
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer_port}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer_port}"),
                format!("--initial-cluster=default=http://127.0.0.1:{etcd_peer_port}"),
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ],
            &logs,
        )?;
        self.processes.push(etcd);
        wait_until(
            "etcd",
            Duration::from_secs(30),
            || ensure_all_running(&mut self.processes),
            || {
                http::get(etcd_port, "/health")
                    .is_some_and(|(code, body)| code == 200 && body.contains("true"))
            },
        )?;

        let api_port = free_port()?;
        let apiserver_args = [
            format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            format!("--bind-address={address}"),
            format!("--advertise-address={address}"),
            format!("--secure-port={api_port}"),
            format!("--cert-dir={}", dir.join("pki").display()),
            format!("--token-auth-file={}", dir.join("tokens.csv").display()),
            "--authorization-mode=RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!(
                "--service-account-key-file={}",
                dir.join("sa.pub").display()
            ),
            format!(
                "--service-account-signing-key-file={}",
                dir.join("sa.key").display()
            ),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--allow-privileged=true".into(),
            // The real node's name resolves nowhere; its address does.
            "--kubelet-preferred-address-types=InternalIP".into(),
            // An aggregated API (the external metrics an HPA test reads) is reached
            // at its Service's endpoint, on the node's bridge: there is no
            // kube-proxy for the API server's own connections on a kwok cluster.
            "--enable-aggregator-routing=true".into(),
            "--profiling=false".into(),
        ];
        let apiserver = Supervised::spawn(
            "kube-apiserver",
            &binaries.kube_apiserver,
            &apiserver_args,
            &logs,
        )?;
        self.processes.push(apiserver);
        self.apiserver = Some((binaries.kube_apiserver.clone(), apiserver_args.to_vec()));
        let ca = dir.join("pki/apiserver.crt");
        wait_until(
            "the API server's certificate",
            Duration::from_secs(30),
            || ensure_all_running(&mut self.processes),
            || ca.is_file(),
        )?;
        fs::write(
            kubectl.kubeconfig(),
            kubeconfig(address, api_port, &ca, &token),
        )?;
        wait_until(
            "kube-apiserver",
            Duration::from_secs(90),
            || ensure_all_running(&mut self.processes),
            || kubectl.succeeds(&["get", "--raw", "/readyz"]),
        )?;

        let kubeconfig_arg = format!("--kubeconfig={}", kubectl.kubeconfig().display());
        let controller_manager = Supervised::spawn(
            "kube-controller-manager",
            &binaries.kube_controller_manager,
            &[
                kubeconfig_arg.clone(),
                "--leader-elect=false".into(),
                "--secure-port=0".into(),
                format!(
                    "--service-account-private-key-file={}",
                    dir.join("sa.key").display()
                ),
                format!("--root-ca-file={}", ca.display()),
                // The HPA controller looks every 5 s rather than 15 s, so a test
                // sees an HPA act within a step.
                "--horizontal-pod-autoscaler-sync-period=5s".into(),
                "--profiling=false".into(),
            ]
            .into_iter()
            .chain(qps_flags(options.client_qps))
            .collect::<Vec<_>>(),
            &logs,
        )?;
        self.processes.push(controller_manager);
        let scheduler = Supervised::spawn(
            "kube-scheduler",
            &binaries.kube_scheduler,
            &[
                kubeconfig_arg.clone(),
                "--leader-elect=false".into(),
                "--secure-port=0".into(),
                "--profiling=false".into(),
            ]
            .into_iter()
            .chain(qps_flags(options.client_qps))
            .collect::<Vec<_>>(),
            &logs,
        )?;
        self.processes.push(scheduler);

        let kwok_config = dir.join("kwok.yaml");
        fs::write(&kwok_config, "")?;
        let kwok = Supervised::spawn(
            "kwok",
            &binaries.kwok,
            &[
                kubeconfig_arg,
                format!("--config={}", kwok_config.display()),
                // Only its own nodes: a real node's pods are the kubelet's.
                "--manage-all-nodes=false".into(),
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".into(),
                "--cidr=10.244.0.1/16".into(),
                "--node-ip=127.0.0.1".into(),
                // Leases every 40s keep the nodes Ready; without them kwok's default
                // stages update node status so rarely that the node lifecycle
                // controller marks the nodes NotReady within a minute.
                "--node-lease-duration-seconds=40".into(),
            ],
            &logs,
        )?;
        self.processes.push(kwok);

        kubectl.run_with_input(&["apply", "-f", "-"], Some(&fake_nodes(nodes)))?;
        wait_until(
            "the fake nodes",
            Duration::from_secs(60),
            || ensure_all_running(&mut self.processes),
            || {
                kubectl.succeeds(&[
                    "wait",
                    "--for=condition=Ready",
                    "node",
                    "--all",
                    "--timeout=2s",
                ])
            },
        )?;
        wait_until(
            "the default ServiceAccount (created by the controller manager)",
            Duration::from_secs(60),
            || ensure_all_running(&mut self.processes),
            || kubectl.succeeds(&["get", "serviceaccount", "default", "-n", "default"]),
        )
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            eprintln!("stopping the cluster: {error:#}");
        }
    }
}

/// `--kube-api-qps` and `--kube-api-burst` (twice the rate) for `qps`.
fn qps_flags(qps: Option<u32>) -> Vec<String> {
    qps.map(|qps| {
        vec![
            format!("--kube-api-qps={qps}"),
            format!("--kube-api-burst={}", qps * 2),
        ]
    })
    .unwrap_or_default()
}

fn ensure_all_running(processes: &mut [Supervised]) -> Result<()> {
    processes
        .iter_mut()
        .try_for_each(Supervised::ensure_running)
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buffer = vec![0u8; bytes];
    fs::File::open("/dev/urandom")?.read_exact(&mut buffer)?;
    Ok(buffer.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// The key pair the API server signs ServiceAccount tokens with.
fn service_account_keys(dir: &Path) -> Result<()> {
    let key = dir.join("sa.key");
    let key_path = key.to_string_lossy();
    let pub_path = dir.join("sa.pub");
    openssl(&["genrsa", "-out", &key_path, "2048"])?;
    openssl(&[
        "rsa",
        "-in",
        &key_path,
        "-pubout",
        "-out",
        &pub_path.to_string_lossy(),
    ])
}

fn kubeconfig(address: &str, port: u16, ca: &Path, token: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: serin-e2e
  cluster:
    server: https://{address}:{port}
    certificate-authority: {ca}
users:
- name: serin-e2e-admin
  user:
    token: {token}
contexts:
- name: serin-e2e
  context:
    cluster: serin-e2e
    user: serin-e2e-admin
    namespace: default
current-context: serin-e2e
",
        ca = ca.display()
    )
}

/// Nodes that kwok manages: Ready, with room for many pods, and tainted, so only a
/// pod that asks for one ([`KWOK_PLACEMENT`]) lands there.
fn fake_nodes(count: usize) -> String {
    (0..count)
        .map(|index| {
            format!(
                "apiVersion: v1
kind: Node
metadata:
  name: kwok-node-{index}
  annotations:
    node.alpha.kubernetes.io/ttl: \"0\"
    kwok.x-k8s.io/node: fake
  labels:
    kubernetes.io/hostname: kwok-node-{index}
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
spec:
  taints: [{{key: kwok.x-k8s.io/node, value: fake, effect: NoSchedule}}]
status:
  allocatable: {{cpu: \"64\", memory: 256Gi, pods: \"1000\"}}
  capacity: {{cpu: \"64\", memory: 256Gi, pods: \"1000\"}}
"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The Gateway API release whose standard CRDs the tests install.
pub const GATEWAY_API_VERSION: &str = "v1.4.0";

/// The standard-channel Gateway API CRDs, from the `sigs.k8s.io/gateway-api` Go
/// module (downloaded through the module proxy into the module cache, not committed).
pub fn gateway_api_crds() -> Result<PathBuf> {
    Ok(
        go_module_dir(&format!("sigs.k8s.io/gateway-api@{GATEWAY_API_VERSION}"))?
            .join("config/crd/standard"),
    )
}

/// The Istio API release whose CRDs the tests install.
pub const ISTIO_API_VERSION: &str = "v1.31.1";

/// Istio's CRDs (VirtualService, DestinationRule, ...) as its Go module
/// `istio.io/api` generates them, in one file.
pub fn istio_crds() -> Result<PathBuf> {
    Ok(go_module_dir(&format!("istio.io/api@{ISTIO_API_VERSION}"))?
        .join("kubernetes/customresourcedefinitions.gen.yaml"))
}

/// The prometheus-operator release whose CRDs the chart's ServiceMonitor and
/// PrometheusRule are checked against.
pub const PROMETHEUS_OPERATOR_VERSION: &str = "v0.81.0";

/// prometheus-operator's CRDs (ServiceMonitor, PrometheusRule, ...), from its Go
/// module, as its releases ship them.
pub fn prometheus_operator_crds() -> Result<PathBuf> {
    Ok(go_module_dir(&format!(
        "github.com/prometheus-operator/prometheus-operator@{PROMETHEUS_OPERATOR_VERSION}"
    ))?
    .join("example/prometheus-operator-crd"))
}

/// The directory of Go module `module` (`path@version`) in the module cache,
/// downloaded through the module proxy when it is not there.
fn go_module_dir(module: &str) -> Result<PathBuf> {
    let output = Command::new("go")
        .args(["mod", "download", "-json", module])
        .current_dir(std::env::temp_dir())
        .env("GO111MODULE", "on")
        .output()
        .context("running go mod download (is Go installed?)")?;
    if !output.status.success() {
        bail!(
            "go mod download {module} failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    let info: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let dir = info["Dir"]
        .as_str()
        .with_context(|| format!("go mod download {module} printed no Dir"))?;
    Ok(PathBuf::from(dir))
}

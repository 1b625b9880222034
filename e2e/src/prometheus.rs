//! A real Prometheus server (Debian's `prometheus` package) on a free port, scraping
//! the targets a test names, or, beside a cluster with a real node, the pods it
//! discovers from the API server; stopped and wiped when dropped.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::cluster::default_bin_dir;
use crate::http;
use crate::kubectl::Kubectl;
use crate::node::NODE_IP;
use crate::process::{Supervised, free_port, openssl, wait_until};

/// One scrape job: a name and the `host:port` addresses it scrapes at `/metrics`.
#[derive(Clone, Debug)]
pub struct ScrapeJob {
    /// The `job` label of the scraped series.
    pub name: String,
    /// `host:port` of each target.
    pub targets: Vec<String>,
}

/// A running Prometheus. Dropping it stops the server and deletes its data.
pub struct Prometheus {
    process: Option<Supervised>,
    /// Where it listens: loopback, or the real node's bridge address.
    host: String,
    port: u16,
    dir: TempDir,
    /// Serving https with basic auth (`start_secured`).
    secured: bool,
}

impl Prometheus {
    /// Starts Prometheus scraping `jobs` every `scrape_interval`, and returns once it
    /// answers `/-/ready`. The binary is `$SERIN_PROMETHEUS` or `prometheus` on PATH.
    pub fn start(jobs: &[ScrapeJob], scrape_interval: Duration) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("serin-prometheus-")
            .tempdir()?;
        fs::write(
            dir.path().join("prometheus.yml"),
            scrape_config(jobs, scrape_interval),
        )?;
        let port = free_port()?;
        let process = launch(dir.path(), LOOPBACK, port, false)?;
        Ok(Self {
            process: Some(process),
            host: LOOPBACK.into(),
            port,
            dir,
            secured: false,
        })
    }

    /// Starts Prometheus beside a cluster with a real node, as operators run it:
    /// pods discovered with `kubernetes_sd_configs` against the API server (as the
    /// ServiceAccount `monitoring/prometheus`, allowed to list and watch pods), kept
    /// when annotated `prometheus.io/scrape: "true"`, scraped at their
    /// `prometheus.io/port` and `prometheus.io/path`, and labelled `namespace`, `pod`
    /// and `container` as kube-prometheus does. It listens on the node's bridge
    /// address, so pods (an in-cluster controller) reach it too.
    pub fn start_discovering(kubectl: &Kubectl, scrape_interval: Duration) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("serin-prometheus-")
            .tempdir()?;
        kubectl.run_with_input(&["apply", "-f", "-"], Some(DISCOVERY_RBAC))?;
        let token = kubectl.run(&[
            "create",
            "token",
            "prometheus",
            "-n",
            "monitoring",
            "--duration=24h",
        ])?;
        let token_file = dir.path().join("token");
        fs::write(&token_file, token.trim())?;
        let server = kubectl.config(".clusters[0].cluster.server")?;
        let ca = kubectl.config(".clusters[0].cluster.certificate-authority")?;
        let mut config = scrape_config(&[], scrape_interval);
        config.push_str(&discovery_job(&server, Path::new(&ca), &token_file));
        fs::write(dir.path().join("prometheus.yml"), config)?;
        let port = free_port()?;
        fs::write(dir.path().join(DISCOVERING), "")?;
        let process = launch(dir.path(), NODE_IP, port, false)?;
        Ok(Self {
            process: Some(process),
            host: NODE_IP.into(),
            port,
            dir,
            secured: false,
        })
    }

    /// Starts Prometheus (no scrape jobs) serving https with a certificate of a fresh
    /// test CA and requiring basic auth as `user`/`password`. Returns the server and
    /// the CA certificate (PEM) a client must trust. Made with `openssl`.
    pub fn start_secured(user: &str, password: &str) -> Result<(Self, Vec<u8>)> {
        let dir = tempfile::Builder::new()
            .prefix("serin-prometheus-")
            .tempdir()?;
        let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        fs::write(
            path("prometheus.yml"),
            scrape_config(&[], Duration::from_secs(5)),
        )?;
        fs::write(
            path("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )?;
        let subject_ca = "/CN=serin-test-ca";
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &path("ca.key"),
            "-out",
            &path("ca.crt"),
            "-days",
            "1",
            "-subj",
            subject_ca,
        ])?;
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &path("server.key"),
            "-out",
            &path("server.csr"),
            "-subj",
            "/CN=127.0.0.1",
        ])?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &path("server.csr"),
            "-CA",
            &path("ca.crt"),
            "-CAkey",
            &path("ca.key"),
            "-CAcreateserial",
            "-out",
            &path("server.crt"),
            "-days",
            "1",
            "-extfile",
            &path("server.ext"),
        ])?;
        let hash = bcrypt::hash(password, 4)?;
        fs::write(
            path("web.yml"),
            format!(
                "tls_server_config:\n  cert_file: {}\n  key_file: {}\nbasic_auth_users:\n  {user}: '{hash}'\n",
                path("server.crt"),
                path("server.key")
            ),
        )?;
        let ca = fs::read(path("ca.crt"))?;
        let port = free_port()?;
        let process = launch(dir.path(), LOOPBACK, port, true)?;
        Ok((
            Self {
                process: Some(process),
                host: LOOPBACK.into(),
                port,
                dir,
                secured: true,
            },
            ca,
        ))
    }

    /// Stops the server, as an outage would; its data stays for [`Self::restart`].
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop(Duration::from_secs(10));
        }
    }

    /// Starts the server again on the same port with the same data.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.process = Some(launch(
            self.dir.path(),
            &self.host,
            self.port,
            self.secured,
        )?);
        Ok(())
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Base URL of the HTTP API, for example `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        let scheme = if self.secured { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.host, self.port)
    }

    /// Makes this Prometheus (beside the cluster) a Service `monitoring/<name>` on
    /// port 9090, as an operator's in-cluster Prometheus would be, and returns the
    /// address pods use: `http://<name>.monitoring:9090`, resolved by the cluster DNS.
    pub fn expose(&self, kubectl: &Kubectl, name: &str) -> Result<String> {
        let manifest = format!(
            "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: monitoring}}
spec:
  ports: [{{name: web, port: 9090, targetPort: {port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}
  namespace: monitoring
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: web, port: {port}, protocol: TCP}}]
endpoints: [{{addresses: [\"{host}\"], conditions: {{ready: true}}}}]
",
            port = self.port,
            host = self.host
        );
        kubectl.run_with_input(&["apply", "-f", "-"], Some(&manifest))?;
        Ok(format!("http://{name}.monitoring:9090"))
    }

    /// Runs an instant query and returns the `data.result` array.
    pub fn query(&mut self, promql: &str) -> Result<serde_json::Value> {
        if let Some(process) = &mut self.process {
            process.ensure_running()?;
        }
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let Some((code, body)) = http::get_at(&self.host, self.port, &path) else {
            bail!("prometheus did not answer {path}");
        };
        let mut reply: serde_json::Value = serde_json::from_str(&body)
            .with_context(|| format!("prometheus answered {code} with: {body}"))?;
        if reply["status"] != "success" {
            bail!("query {promql} failed: {body}");
        }
        Ok(reply["data"]["result"].take())
    }
}

/// Marks a Prometheus directory whose config discovers pods from the API server.
const DISCOVERING: &str = "discovering";

/// Runs Prometheus with the config and data in `dir`, until it answers `/-/ready`. The
/// binary is `$SERIN_PROMETHEUS`, or for pod discovery the one `make controlplane`
/// builds (Debian's has no Kubernetes discovery), or else `prometheus` on PATH.
fn launch(dir: &Path, host: &str, port: u16, secured: bool) -> Result<Supervised> {
    let program = match std::env::var_os("SERIN_PROMETHEUS") {
        Some(program) => PathBuf::from(program),
        None if dir.join(DISCOVERING).exists() => default_bin_dir().join("prometheus"),
        None => PathBuf::from("prometheus"),
    };
    let mut args = vec![
        format!("--config.file={}", dir.join("prometheus.yml").display()),
        format!("--storage.tsdb.path={}", dir.join("data").display()),
        format!("--web.listen-address={host}:{port}"),
        "--log.level=warn".into(),
    ];
    if secured {
        args.push(format!(
            "--web.config.file={}",
            dir.join("web.yml").display()
        ));
    }
    let mut process = Supervised::spawn("prometheus", &program, &args, dir)
        .context("starting prometheus (install it: apt-get install prometheus)")?;
    wait_until(
        "prometheus",
        Duration::from_secs(30),
        || process.ensure_running(),
        || {
            if secured {
                // https and auth: the port accepting is all a plain probe can see.
                std::net::TcpStream::connect((host, port)).is_ok()
            } else {
                http::get_at(host, port, "/-/ready").is_some_and(|(code, _)| code == 200)
            }
        },
    )?;
    Ok(process)
}

fn scrape_config(jobs: &[ScrapeJob], interval: Duration) -> String {
    let seconds = interval.as_secs_f64();
    let mut config = format!(
        "global:\n  scrape_interval: {seconds}s\n  evaluation_interval: {seconds}s\nscrape_configs:\n"
    );
    for job in jobs {
        let targets: Vec<String> = job.targets.iter().map(|t| format!("'{t}'")).collect();
        let _ = write!(
            config,
            "- job_name: '{}'\n  static_configs:\n  - targets: [{}]\n",
            job.name,
            targets.join(", ")
        );
    }
    config
}

const LOOPBACK: &str = "127.0.0.1";

/// Who Prometheus is to the API server: a ServiceAccount that may list and watch pods.
const DISCOVERY_RBAC: &str = "apiVersion: v1
kind: Namespace
metadata: {name: monitoring}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: prometheus, namespace: monitoring}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: prometheus-discovery}
rules:
- apiGroups: [\"\"]
  resources: [pods]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: prometheus-discovery}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: prometheus-discovery}
subjects: [{kind: ServiceAccount, name: prometheus, namespace: monitoring}]
";

/// The pod discovery job, with kube-prometheus' relabelling conventions.
fn discovery_job(server: &str, ca: &Path, token: &Path) -> String {
    format!(
        r#"- job_name: kubernetes-pods
  kubernetes_sd_configs:
  - role: pod
    api_server: {server}
    tls_config: {{ca_file: '{ca}'}}
    authorization: {{credentials_file: '{token}'}}
  relabel_configs:
  - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape]
    action: keep
    regex: "true"
  - source_labels: [__meta_kubernetes_pod_ip, __meta_kubernetes_pod_annotation_prometheus_io_port]
    action: replace
    regex: (.+);(\d+)
    replacement: $1:$2
    target_label: __address__
  - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_path]
    action: replace
    regex: (.+)
    target_label: __metrics_path__
  - source_labels: [__meta_kubernetes_namespace]
    target_label: namespace
  - source_labels: [__meta_kubernetes_pod_name]
    target_label: pod
  - source_labels: [__meta_kubernetes_pod_container_name]
    target_label: container
"#,
        ca = ca.display(),
        token = token.display()
    )
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

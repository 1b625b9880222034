//! A real Prometheus server (Debian's `prometheus` package) on a free loopback port,
//! scraping the targets a test names, stopped and wiped when dropped.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::http;
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
        let process = launch(dir.path(), port, false)?;
        Ok(Self {
            process: Some(process),
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
        let process = launch(dir.path(), port, true)?;
        Ok((
            Self {
                process: Some(process),
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
        self.process = Some(launch(self.dir.path(), self.port, self.secured)?);
        Ok(())
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Base URL of the HTTP API, for example `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        let scheme = if self.secured { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Runs an instant query and returns the `data.result` array.
    pub fn query(&mut self, promql: &str) -> Result<serde_json::Value> {
        if let Some(process) = &mut self.process {
            process.ensure_running()?;
        }
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let Some((code, body)) = http::get(self.port, &path) else {
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

/// Runs Prometheus with the config and data in `dir`, until it answers `/-/ready`. The
/// binary is `$SERIN_PROMETHEUS` or `prometheus` on PATH.
fn launch(dir: &Path, port: u16, secured: bool) -> Result<Supervised> {
    let program = std::env::var_os("SERIN_PROMETHEUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("prometheus"));
    let mut args = vec![
        format!("--config.file={}", dir.join("prometheus.yml").display()),
        format!("--storage.tsdb.path={}", dir.join("data").display()),
        format!("--web.listen-address=127.0.0.1:{port}"),
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
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            } else {
                http::get(port, "/-/ready").is_some_and(|(code, _)| code == 200)
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

//! One control plane shared by every test of a test binary, stopped when the binary
//! exits, however it exits.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::cluster::{APISERVER_RESTARTS_FILE, Binaries, default_bin_dir, repository_root};
use crate::kubectl::Kubectl;
use crate::process::die_with_parent;

/// The first line the launcher prints once the cluster is usable: `ready <kubeconfig>`.
pub const READY_PREFIX: &str = "ready ";

/// A cluster the tests can use.
pub struct Cluster {
    /// kubectl for the cluster's admin.
    pub kubectl: Kubectl,
    /// The launcher this test binary started, and the cluster's directory; None
    /// for a cluster from `$SERIN_E2E_KUBECONFIG`.
    launched: Option<(libc::pid_t, PathBuf)>,
}

static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();
static NAMESPACES: AtomicU32 = AtomicU32::new(0);

impl Cluster {
    /// The test binary's cluster: the one `$SERIN_E2E_KUBECONFIG` points at (for
    /// example from `make cluster-up`), or else one started now with `launcher`
    /// (the `serin-cluster` binary) and stopped when this process exits.
    pub fn shared(launcher: &str) -> &'static Cluster {
        Self::shared_with(launcher, &[])
    }

    /// Like [`Cluster::shared`], with a real node (see [`crate::node`]) beside the
    /// kwok nodes; with `$SERIN_E2E_KUBECONFIG`, that cluster must have one.
    pub fn shared_with_real_node(launcher: &str) -> &'static Cluster {
        Self::shared_with(launcher, &["--real-node"])
    }

    fn shared_with(launcher: &str, args: &[&str]) -> &'static Cluster {
        let shared =
            SHARED.get_or_init(|| Self::connect(launcher, args).map_err(|e| format!("{e:#}")));
        match shared {
            Ok(cluster) => cluster,
            Err(error) => panic!("no Kubernetes control plane for the tests: {error}"),
        }
    }

    fn connect(launcher: &str, args: &[&str]) -> Result<Cluster> {
        let binaries = Binaries::locate(&default_bin_dir())?;
        let (kubeconfig, launched) = match std::env::var_os("SERIN_E2E_KUBECONFIG") {
            Some(path) => (PathBuf::from(path), None),
            None => {
                let (kubeconfig, pid, dir) = launch(launcher, args)?;
                (kubeconfig, Some((pid, dir)))
            }
        };
        Ok(Cluster {
            kubectl: Kubectl::new(&binaries.kubectl, &kubeconfig),
            launched,
        })
    }

    /// A cluster someone else runs (the demo's, the benchmark's), reached with `kubectl`.
    pub fn external(kubectl: Kubectl) -> Self {
        Self {
            kubectl,
            launched: None,
        }
    }

    /// Restarts the API server (stop, then start with the same flags) and returns
    /// once it answers again. Only for a cluster this test binary started.
    pub fn restart_apiserver(&self) -> Result<()> {
        let Some((pid, dir)) = &self.launched else {
            bail!(
                "restarting the API server needs a cluster the tests started (unset SERIN_E2E_KUBECONFIG)"
            );
        };
        let file = dir.join(APISERVER_RESTARTS_FILE);
        let count = || {
            std::fs::read_to_string(&file)
                .ok()
                .and_then(|text| text.trim().parse::<u32>().ok())
                .unwrap_or(0)
        };
        let before = count();
        // SAFETY: a signal to the launcher this process started.
        unsafe { libc::kill(*pid, libc::SIGUSR1) };
        let until = Instant::now() + Duration::from_secs(120);
        while count() == before {
            if Instant::now() > until {
                bail!("the API server was not back within 120s");
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Creates a fresh namespace for one test, named after it.
    pub fn namespace(&self, test: &str) -> Result<String> {
        let number = NAMESPACES.fetch_add(1, Ordering::Relaxed);
        let name = format!("e2e-{test}-{}-{number}", std::process::id());
        self.kubectl.run(&["create", "namespace", &name])?;
        Ok(name)
    }
}

/// Starts the launcher from a thread that lives as long as the process, so the
/// kernel sends the launcher SIGTERM (and it cleans up) exactly when this process
/// ends, whether the tests passed, failed or were killed.
fn launch(launcher: &str, args: &[&str]) -> Result<(PathBuf, libc::pid_t, PathBuf)> {
    let dir = tempfile::Builder::new()
        .prefix("serin-e2e-cluster-")
        .tempdir()?
        .keep();
    let mut command = Command::new(launcher);
    command
        .args(["run", "--dir"])
        .arg(&dir)
        .args(args)
        .current_dir(repository_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    die_with_parent(&mut command, libc::SIGTERM);
    let launcher = launcher.to_owned();
    let (ready, ready_rx) = mpsc::channel::<Result<(PathBuf, u32)>>();
    thread::Builder::new()
        .name("serin-e2e-cluster".into())
        .spawn(move || {
            let mut child = match command.spawn() {
                Ok(child) => child,
                Err(error) => {
                    let _ = ready.send(Err(anyhow!("starting {launcher}: {error}")));
                    return;
                }
            };
            let pid = child.id();
            if let Some(stdout) = child.stdout.take() {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(path) = line.strip_prefix(READY_PREFIX) {
                        let _ = ready.send(Ok((PathBuf::from(path), pid)));
                    }
                }
            }
            let status = child.wait();
            let _ = ready.send(Err(anyhow!("the cluster launcher exited: {status:?}")));
        })?;
    let (kubeconfig, pid) = ready_rx
        .recv()
        .context("the cluster launcher thread ended")??;
    if !kubeconfig.is_file() {
        bail!(
            "the launcher reported {} but it does not exist",
            kubeconfig.display()
        );
    }
    Ok((kubeconfig, libc::pid_t::try_from(pid)?, dir))
}

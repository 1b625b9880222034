//! One control plane shared by every test of a test binary, stopped when the binary
//! exits, however it exits.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;

use anyhow::{Context, Result, anyhow, bail};

use crate::cluster::{Binaries, default_bin_dir, repository_root};
use crate::kubectl::Kubectl;
use crate::process::die_with_parent;

/// The first line the launcher prints once the cluster is usable: `ready <kubeconfig>`.
pub const READY_PREFIX: &str = "ready ";

/// A cluster the tests can use.
pub struct Cluster {
    /// kubectl for the cluster's admin.
    pub kubectl: Kubectl,
}

static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();
static NAMESPACES: AtomicU32 = AtomicU32::new(0);

impl Cluster {
    /// The test binary's cluster: the one `$SERIN_E2E_KUBECONFIG` points at (for
    /// example from `make cluster-up`), or else one started now with `launcher`
    /// (the `serin-cluster` binary) and stopped when this process exits.
    pub fn shared(launcher: &str) -> &'static Cluster {
        let shared = SHARED.get_or_init(|| Self::connect(launcher).map_err(|e| format!("{e:#}")));
        match shared {
            Ok(cluster) => cluster,
            Err(error) => panic!("no Kubernetes control plane for the tests: {error}"),
        }
    }

    fn connect(launcher: &str) -> Result<Cluster> {
        let binaries = Binaries::locate(&default_bin_dir())?;
        let kubeconfig = match std::env::var_os("SERIN_E2E_KUBECONFIG") {
            Some(path) => PathBuf::from(path),
            None => launch(launcher)?,
        };
        Ok(Cluster {
            kubectl: Kubectl::new(&binaries.kubectl, &kubeconfig),
        })
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
fn launch(launcher: &str) -> Result<PathBuf> {
    let dir = tempfile::Builder::new()
        .prefix("serin-e2e-cluster-")
        .tempdir()?
        .keep();
    let mut command = Command::new(launcher);
    command
        .args(["run", "--dir"])
        .arg(&dir)
        .current_dir(repository_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    die_with_parent(&mut command, libc::SIGTERM);
    let launcher = launcher.to_owned();
    let (ready, ready_rx) = mpsc::channel::<Result<PathBuf>>();
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
            if let Some(stdout) = child.stdout.take() {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(path) = line.strip_prefix(READY_PREFIX) {
                        let _ = ready.send(Ok(PathBuf::from(path)));
                    }
                }
            }
            let status = child.wait();
            let _ = ready.send(Err(anyhow!("the cluster launcher exited: {status:?}")));
        })?;
    let kubeconfig = ready_rx
        .recv()
        .context("the cluster launcher thread ended")??;
    if !kubeconfig.is_file() {
        bail!(
            "the launcher reported {} but it does not exist",
            kubeconfig.display()
        );
    }
    Ok(kubeconfig)
}

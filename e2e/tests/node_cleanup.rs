//! Stopping a cluster with a real node leaves nothing of it on the machine: no
//! process, mount, veth, bridge, iptables chain, cgroup or file of its containers,
//! whether the launcher stopped cleanly or was killed. A test binary of its own: it
//! starts and stops real nodes, and a machine holds one at a time. A run killed
//! whole (a session stopped, a CI job cut short) is cleaned up by the next real node.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serin_e2e::cluster::{Binaries, default_bin_dir};
use serin_e2e::kubectl::Kubectl;
use serin_e2e::node::{self, image};

const LAUNCHER: &str = env!("CARGO_BIN_EXE_serin-cluster");

fn launcher(args: &[&str], dir: &Path) -> Result<()> {
    let output = Command::new(LAUNCHER)
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()?;
    if !output.status.success() {
        bail!(
            "serin-cluster {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Two real pods with a Service, so the node has containers, veths, mounts
/// (ServiceAccount tokens, an emptyDir) and kube-proxy chains to leave behind.
fn run_pods(dir: &Path) -> Result<()> {
    let binaries = Binaries::locate(&default_bin_dir())?;
    let kubectl = Kubectl::new(&binaries.kubectl, &dir.join("kubeconfig"));
    let manifest = format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: web
        image: {image}
        volumeMounts: [{{name: scratch, mountPath: /scratch}}]
      volumes: [{{name: scratch, emptyDir: {{}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
",
        image = image("workload")
    );
    kubectl.run_with_input(&["apply", "-f", "-"], Some(&manifest))?;
    kubectl.run(&[
        "wait",
        "--for=condition=Available",
        "deployment/web",
        "--timeout=90s",
    ])?;
    Ok(())
}

fn ip_forward() -> Result<String> {
    Ok(fs::read_to_string("/proc/sys/net/ipv4/ip_forward")?)
}

/// Runs pods on a real node, checks that they left traces, stops the cluster with
/// `stop`, and checks that nothing remains.
fn check_stop_leaves_nothing(kill_launcher_first: bool) -> Result<()> {
    let forwarding = ip_forward()?;
    let dir = tempfile::Builder::new()
        .prefix("serin-e2e-node-")
        .tempdir()?
        .keep();
    launcher(&["start", "--real-node", "--nodes=1"], &dir)?;
    let outcome = (|| -> Result<()> {
        run_pods(&dir)?;
        let traces = node::leftovers(&dir)?;
        for kind in ["process", "mount", "link", "chain", "cgroup"] {
            if !traces.iter().any(|trace| trace.contains(kind)) {
                bail!("a running node shows no {kind} to clean up: {traces:?}");
            }
        }
        let files = node::host_files(&dir)?;
        if !files.iter().any(|file| file.exists()) {
            bail!("a running node shows no file outside its directory: {files:?}");
        }
        if kill_launcher_first {
            kill_launcher(&dir)?;
        }
        launcher(&["stop"], &dir)?;
        let left = node::leftovers(&dir)?;
        let files: Vec<_> = files.into_iter().filter(|file| file.exists()).collect();
        if !left.is_empty() || !files.is_empty() {
            bail!("left behind: {left:?} {files:?}");
        }
        if ip_forward()? != forwarding {
            bail!("IP forwarding was not restored");
        }
        if dir.exists() {
            bail!("{} is still there", dir.display());
        }
        Ok(())
    })();
    if outcome.is_err() {
        let _ = launcher(&["stop"], &dir);
    } else {
        // The launcher's own log, beside the directory `start` was given.
        let _ = fs::remove_file(dir.with_extension("log"));
    }
    outcome
}

fn kill_launcher(dir: &Path) -> Result<()> {
    let pid: i32 = fs::read_to_string(dir.join("launcher.pid"))?
        .trim()
        .parse()
        .context("launcher.pid")?;
    // SAFETY: SIGKILL to the launcher this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    std::thread::sleep(Duration::from_secs(1));
    Ok(())
}

/// Kills a real-node run whole, as a stopped session does: the launcher and every
/// process of the node, with nothing cleaned up. The next real node's start must
/// clean it up itself instead of refusing the bridge it finds.
fn check_next_node_cleans_up_a_killed_run() -> Result<()> {
    let forwarding = ip_forward()?;
    let make_dir = |prefix: &str| -> Result<std::path::PathBuf> {
        Ok(tempfile::Builder::new().prefix(prefix).tempdir()?.keep())
    };
    let (killed, next) = (make_dir("serin-e2e-killed-")?, make_dir("serin-e2e-next-")?);
    launcher(&["start", "--real-node", "--nodes=1"], &killed)?;
    let outcome = (|| -> Result<()> {
        run_pods(&killed)?;
        let files = node::host_files(&killed)?;
        kill_launcher(&killed)?;
        for trace in node::leftovers(&killed)? {
            if let Some(pid) = trace.strip_prefix("process ") {
                // SAFETY: SIGKILL to a process of the node this test started.
                unsafe { libc::kill(pid.parse()?, libc::SIGKILL) };
            }
        }
        std::thread::sleep(Duration::from_secs(1));
        let left = node::leftovers(&killed)?;
        if !left
            .iter()
            .any(|trace| trace == &format!("link {}", node::BRIDGE))
        {
            bail!("the killed run left no bridge to find: {left:?}");
        }
        launcher(&["start", "--real-node", "--nodes=1"], &next)?;
        if killed.exists() {
            bail!("the killed run's {} is still there", killed.display());
        }
        let own = |trace: &&String| trace.starts_with("process") || trace.starts_with("mount");
        let left: Vec<_> = node::leftovers(&killed)?
            .into_iter()
            .filter(|t| own(&t))
            .collect();
        let files: Vec<_> = files.into_iter().filter(|file| file.exists()).collect();
        if !left.is_empty() || !files.is_empty() {
            bail!("the killed run left behind: {left:?} {files:?}");
        }
        launcher(&["stop"], &next)?;
        let left = node::leftovers(&next)?;
        if !left.is_empty() {
            bail!("left behind after the next run stopped: {left:?}");
        }
        if ip_forward()? != forwarding {
            bail!("IP forwarding was not restored");
        }
        Ok(())
    })();
    let _ = launcher(&["stop"], &next);
    let _ = launcher(&["stop"], &killed);
    for dir in [&killed, &next] {
        let _ = fs::remove_file(dir.with_extension("log"));
    }
    outcome
}

#[test]
fn stopping_a_cluster_with_a_real_node_leaves_nothing_behind() -> Result<()> {
    check_stop_leaves_nothing(false)?;
    check_stop_leaves_nothing(true)?;
    check_next_node_cleans_up_a_killed_run()
}

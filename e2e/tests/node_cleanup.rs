//! Stopping a cluster with a real node leaves nothing of it on the machine: no
//! process, mount, veth, bridge, iptables chain, cgroup or file of its containers,
//! whether the launcher stopped cleanly or was killed. A test binary of its own: it
//! starts and stops real nodes, and a machine holds one at a time.

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
            let pid: i32 = fs::read_to_string(dir.join("launcher.pid"))?
                .trim()
                .parse()
                .context("launcher.pid")?;
            // SAFETY: SIGKILL to the launcher this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            std::thread::sleep(Duration::from_secs(1));
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

#[test]
fn stopping_a_cluster_with_a_real_node_leaves_nothing_behind() -> Result<()> {
    check_stop_leaves_nothing(false)?;
    check_stop_leaves_nothing(true)
}

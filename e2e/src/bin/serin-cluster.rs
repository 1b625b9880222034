//! Starts and stops the local Kubernetes control plane for the tests and the demo.
//!
//! `run` keeps it in the foreground until SIGTERM, SIGINT or SIGHUP (SIGUSR1
//! restarts its API server); `start` runs it
//! in the background (for `make cluster-up`) and `stop` ends it (`make cluster-down`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serin_e2e::cluster::{
    Binaries, ControlPlane, Options, RealNodeOptions, default_bin_dir, default_image_dir,
};
use serin_e2e::harness::READY_PREFIX;
use serin_e2e::node::{self, NodeBinaries};

/// The local Kubernetes control plane: etcd, kube-apiserver, kube-controller-manager,
/// kube-scheduler and kwok's fake nodes, on loopback.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Run the cluster in the foreground until interrupted, then remove its directory.
    Run(Where),
    /// Start the cluster in the background and return once it is ready.
    Start(Where),
    /// Stop a cluster started with `start`, and remove its directory.
    Stop(Where),
}

#[derive(clap::Args)]
struct Where {
    /// The cluster's directory: data, logs, and the kubeconfig at `<dir>/kubeconfig`.
    #[arg(long)]
    dir: PathBuf,
    /// Number of fake nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Run a real node too: containerd, kubelet and kube-proxy (needs root and the
    /// images from `make image`).
    #[arg(long)]
    real_node: bool,
}

const PID_FILE: &str = "launcher.pid";
const READY_FILE: &str = "ready";

fn main() -> Result<()> {
    match Cli::parse().command {
        Action::Run(at) => run(&at),
        Action::Start(at) => start(&at),
        Action::Stop(at) => stop(&at.dir),
    }
}

fn run(at: &Where) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    // SIGUSR1: restart the API server, for tests of what survives that.
    let restart_apiserver = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, Arc::clone(&restart_apiserver))?;
    let binaries = Binaries::locate(&default_bin_dir())?;
    let real_node = if at.real_node {
        Some(RealNodeOptions {
            binaries: NodeBinaries::locate(&default_bin_dir())?,
            images: default_image_dir(),
        })
    } else {
        None
    };
    let started = Instant::now();
    let mut plane = ControlPlane::start(&Options {
        dir: at.dir.clone(),
        binaries,
        nodes: at.nodes,
        real_node,
        client_qps: None,
    })?;
    let dir = plane
        .kubeconfig()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    fs::write(dir.join(PID_FILE), std::process::id().to_string())?;
    fs::write(dir.join(READY_FILE), "")?;
    eprintln!(
        "control plane ready in {:.1}s; kubeconfig {}",
        started.elapsed().as_secs_f64(),
        plane.kubeconfig().display()
    );
    println!("{READY_PREFIX}{}", plane.kubeconfig().display());
    let outcome = loop {
        if stop.load(Ordering::Relaxed) {
            break Ok(());
        }
        if restart_apiserver.swap(false, Ordering::Relaxed) {
            eprintln!("restarting kube-apiserver");
            if let Err(error) = plane.restart_apiserver() {
                break Err(error);
            }
        }
        if let Err(error) = plane.ensure_running() {
            break Err(error);
        }
        thread::sleep(Duration::from_millis(200));
    };
    let stopped = plane.stop();
    eprintln!("control plane stopped");
    outcome.and(stopped)
}

fn start(at: &Where) -> Result<()> {
    let log = at.dir.with_extension("log");
    if let Some(parent) = log.parent() {
        fs::create_dir_all(parent)?;
    }
    let output = fs::File::create(&log)?;
    let mut command = Command::new(std::env::current_exe()?);
    command
        .args(["run", "--dir"])
        .arg(&at.dir)
        .arg(format!("--nodes={}", at.nodes))
        .args(at.real_node.then_some("--real-node"))
        .stdin(Stdio::null())
        .stdout(output.try_clone()?)
        .stderr(output);
    // SAFETY: setsid is async-signal-safe; the launcher leaves our session so a
    // closed terminal does not stop the cluster.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    let deadline = Instant::now() + Duration::from_secs(180);
    while !at.dir.join(READY_FILE).exists() {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the control plane did not start ({status}):\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the control plane was not ready within 180s; see {}",
                log.display()
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
    println!("{}", at.dir.join("kubeconfig").display());
    Ok(())
}

fn stop(dir: &Path) -> Result<()> {
    let pid_file = dir.join(PID_FILE);
    let Ok(text) = fs::read_to_string(&pid_file) else {
        eprintln!("no cluster is running in {}", dir.display());
        return Ok(());
    };
    let pid: libc::pid_t = text
        .trim()
        .parse()
        .with_context(|| format!("{} does not hold a process id", pid_file.display()))?;
    // SAFETY: plain signals to the process id the launcher recorded.
    let alive = || unsafe { libc::kill(pid, 0) } == 0;
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(60);
    while alive() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    if alive() {
        // SAFETY: as above; the launcher's children die with it.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    // A launcher that was killed cleaned up nothing: whatever a real node left
    // (containers, mounts, veths, iptables chains, cgroups) goes now.
    if dir.exists() {
        node::clean_up(dir)?;
    }
    let _ = fs::remove_dir_all(dir);
    eprintln!("control plane stopped");
    Ok(())
}

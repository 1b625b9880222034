//! `make demo`: a local control plane, Serin installed as a user installs it, the
//! traffic simulator and a real Prometheus, and two rollouts shown live with
//! `kubectl serin get --watch`: a healthy canary promoted and a bad one rolled back,
//! both by the analysis. Everything is stopped and removed at the end.

use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serin_e2e::cluster::{Binaries, ControlPlane, Options, default_bin_dir, repository_root};
use serin_e2e::controller::{Controller, path_with_plugin};
use serin_e2e::harness::Cluster;
use serin_e2e::kubectl::Kubectl;
use serin_e2e::traffic::Traffic;

const NAME: &str = "podinfo";

fn main() -> Result<()> {
    let binaries = Binaries::locate(&default_bin_dir())?;
    let dir = tempfile::Builder::new().prefix("serin-demo-").tempdir()?;
    say(
        "starting a local Kubernetes control plane (etcd, API server, controller manager, scheduler, kwok nodes)",
    );
    let started = Instant::now();
    let plane = ControlPlane::start(&Options {
        dir: dir.path().join("cluster"),
        binaries: binaries.clone(),
        nodes: 3,
    })?;
    say(&format!(
        "control plane ready in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    let cluster = Cluster::external(Kubectl::new(&binaries.kubectl, plane.kubeconfig()));
    let kubectl = &cluster.kubectl;
    kubectl.run(&["create", "namespace", "demo"])?;
    say("starting the traffic simulator (100 req/s to podinfo) and Prometheus scraping it");
    let traffic = Traffic::start(plane.kubeconfig(), "demo", NAME, 100.0)?;
    let prometheus = traffic.scraped()?;
    say("installing Serin: kubectl apply -f crds/ -f deploy/, controller under its ServiceAccount");
    let controller = Controller::start_with(
        &cluster,
        "demo",
        &[format!("--prometheus-address={}", prometheus.url())],
    )?;

    let example = repository_root().join("docs/examples/demo.yaml");
    kubectl.run(&["apply", "-n", "demo", "-f", &example.to_string_lossy()])?;
    wait_promoted(kubectl)?;
    say(
        "revision 1 is Healthy and Promoted; rolling out podinfo:6.7.1 (1% errors, as stable) in 3 seconds",
    );
    thread::sleep(Duration::from_secs(3));

    let mut watch = watch(kubectl)?;
    set_release(kubectl, "ghcr.io/stefanprodan/podinfo:6.7.1", "0.01")?;
    wait_promoted(kubectl)?;
    thread::sleep(Duration::from_secs(4));
    set_release(kubectl, "ghcr.io/stefanprodan/podinfo:6.8.0-rc1", "0.05")?;
    wait_for(kubectl, "the analysis to roll 6.8.0-rc1 back", |canary| {
        canary["status"]["phase"] == "Aborted"
    })?;
    thread::sleep(Duration::from_secs(8));
    stop(&mut watch);

    let canary = kubectl.get_json(&["canary", NAME, "-n", "demo"])?;
    let status = &canary["status"];
    let progressing = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Progressing")
        .cloned()
        .unwrap_or_default();
    println!();
    say(&format!(
        "6.8.0-rc1 (5% errors): {} — {}",
        progressing["reason"].as_str().unwrap_or_default(),
        progressing["message"].as_str().unwrap_or_default()
    ));
    say(&format!(
        "final: phase {}, stable revision {}, canary weight {}%",
        status["phase"], status["stableRevision"], status["weight"]
    ));
    drop(controller);
    drop(prometheus);
    drop(traffic);
    drop(plane);
    say("control plane stopped and removed");
    Ok(())
}

fn say(text: &str) {
    println!("\x1b[1m==> {text}\x1b[0m");
}

/// A new release: its image, and the error rate the simulator gives its pods.
fn set_release(kubectl: &Kubectl, image: &str, error_rate: &str) -> Result<()> {
    let patch = format!(
        r#"[{{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"{image}"}},
            {{"op":"replace","path":"/spec/template/spec/containers/0/env/0/value","value":"{error_rate}"}}]"#
    );
    kubectl.run(&[
        "patch",
        "-n",
        "demo",
        "canary",
        NAME,
        "--type=json",
        "-p",
        &patch,
    ])?;
    Ok(())
}

fn wait_promoted(kubectl: &Kubectl) -> Result<()> {
    kubectl.run(&[
        "wait",
        "-n",
        "demo",
        &format!("canary/{NAME}"),
        "--for=condition=Promoted",
        "--timeout=120s",
    ])?;
    Ok(())
}

fn wait_for(
    kubectl: &Kubectl,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(120);
    while Instant::now() < until {
        if done(&kubectl.get_json(&["canary", NAME, "-n", "demo"])?) {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(250));
    }
    bail!("{what} not reached within 120s")
}

/// `kubectl serin get --watch`, drawing on this terminal.
fn watch(kubectl: &Kubectl) -> Result<Child> {
    Ok(kubectl
        .plugin(&["serin", "-n", "demo", "get", NAME, "--watch"])
        .env("PATH", path_with_plugin()?)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()?)
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

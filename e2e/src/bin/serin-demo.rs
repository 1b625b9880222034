//! `make demo`: a local control plane with a real node, Serin installed from its
//! image as the README says, Prometheus discovering the pods, real requests through
//! the Service, and two rollouts shown live with `kubectl serin get --watch`: a
//! healthy release promoted and one that answers real 5xx rolled back, both by the
//! analysis. Everything is stopped and removed at the end.
//!
//! `--simulated` (`make demo REAL_NODE=0`, for a machine that cannot run containers)
//! shows the same on kwok's fake nodes, with the traffic simulator and the
//! controller as a local process.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serin_e2e::cluster::{
    Binaries, ControlPlane, Options, RealNodeOptions, default_bin_dir, default_image_dir,
    repository_root,
};
use serin_e2e::controller::{Controller, install_in_cluster, path_with_plugin};
use serin_e2e::harness::Cluster;
use serin_e2e::kubectl::Kubectl;
use serin_e2e::load::{Answer, Load};
use serin_e2e::node::NodeBinaries;
use serin_e2e::prometheus::Prometheus;
use serin_e2e::traffic::Traffic;

/// The demo.
#[derive(Parser)]
#[command(about)]
struct Args {
    /// On kwok's fake nodes with simulated traffic, instead of the real node.
    #[arg(long)]
    simulated: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let binaries = Binaries::locate(&default_bin_dir())?;
    let dir = tempfile::Builder::new().prefix("serin-demo-").tempdir()?;
    let real_node = if args.simulated {
        None
    } else {
        Some(RealNodeOptions {
            binaries: NodeBinaries::locate(&default_bin_dir())?,
            images: default_image_dir(),
        })
    };
    say(if args.simulated {
        "starting a local Kubernetes control plane (etcd, API server, controller manager, scheduler, kwok nodes)"
    } else {
        "starting a local Kubernetes control plane and a real node (containerd, kubelet, kube-proxy, CoreDNS)"
    });
    let started = Instant::now();
    let plane = ControlPlane::start(&Options {
        dir: dir.path().join("cluster"),
        binaries: binaries.clone(),
        nodes: if args.simulated { 3 } else { 1 },
        real_node,
        client_qps: None,
    })?;
    say(&format!(
        "control plane ready in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    let cluster = Cluster::external(Kubectl::new(&binaries.kubectl, plane.kubeconfig()));
    let outcome = if args.simulated {
        simulated(&cluster, plane.kubeconfig())
    } else {
        real(&cluster)
    };
    drop(plane);
    say("control plane stopped and removed");
    outcome
}

/// The demo on the real node.
fn real(cluster: &Cluster) -> Result<()> {
    let kubectl = &cluster.kubectl;
    say("starting Prometheus beside the cluster: it discovers pods through the API server");
    let prometheus = Prometheus::start_discovering(kubectl, Duration::from_secs(1))?;
    prometheus.expose(kubectl, "prometheus")?;
    say(
        "installing Serin from its image: helm install serin charts/serin -n serin-system --create-namespace",
    );
    install_in_cluster(cluster)?;
    kubectl.run(&["create", "namespace", "demo"])?;
    let example = repository_root().join("docs/examples/demo.yaml");
    kubectl.run(&["apply", "-n", "demo", "-f", &example.to_string_lossy()])?;
    wait_promoted(kubectl, "web")?;
    let service = kubectl.get_json(&["service", "web", "-n", "demo"])?;
    let ip = service["spec"]["clusterIP"]
        .as_str()
        .context("the Service web has no ClusterIP")?;
    let address: SocketAddr = format!("{ip}:80").parse()?;
    // Requests sent before kube-proxy has the new Service would be refused by the
    // proxy, which says nothing about a rollout.
    Load::wait_answering(address, Duration::from_secs(60))?;
    say(&format!(
        "version 1.0.0 is Healthy; sending 100 real requests a second to the Service web ({address})"
    ));
    let load = Load::start(address, 100.0, Duration::from_secs(600))?;
    thread::sleep(Duration::from_secs(5));

    let mut watch = watch(kubectl, "web")?;
    set_release(kubectl, "web", &release("1.1.0", "0.01"))?;
    let stable =
        kubectl.get_json(&["canary", "web", "-n", "demo"])?["status"]["stableRevision"].clone();
    wait_for(kubectl, "web", "1.1.0 to be promoted", |canary| {
        canary["status"]["stableRevision"] != stable && canary["status"]["phase"] == "Healthy"
    })?;
    thread::sleep(Duration::from_secs(4));
    set_release(kubectl, "web", &release("1.2.0-rc1", "0.1"))?;
    wait_for(
        kubectl,
        "web",
        "the analysis to roll 1.2.0-rc1 back",
        |canary| canary["status"]["phase"] == "Aborted",
    )?;
    thread::sleep(Duration::from_secs(8));
    stop(&mut watch);
    let answers = load.stop();
    drop(prometheus);

    println!();
    report(kubectl, "web", "1.2.0-rc1 (10% errors)")?;
    say("what the clients saw, by the version that answered:");
    let mut by_version: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for answer in &answers {
        let version = answer
            .version
            .clone()
            .unwrap_or_else(|| "(no answer)".into());
        let entry = by_version.entry(version).or_default();
        entry.0 += 1;
        entry.1 += usize::from(!Answer::succeeded(answer));
    }
    for (version, (count, failed)) in by_version {
        println!("    {version:>12}: {count:>6} requests, {failed:>4} failed");
    }
    let mut unanswered: BTreeMap<String, usize> = BTreeMap::new();
    for answer in &answers {
        if let Err(error) = &answer.outcome {
            *unanswered.entry(error.clone()).or_default() += 1;
        }
    }
    for (error, count) in unanswered {
        println!("    {count:>6} without an answer: {error}");
    }
    Ok(())
}

/// The JSON patch of a release: a version and the error rate its pods answer with.
fn release(version: &str, error_rate: &str) -> String {
    format!(
        r#"[{{"op":"replace","path":"/spec/template/spec/containers/0/env/0/value","value":"{version}"}},
            {{"op":"replace","path":"/spec/template/spec/containers/0/env/1/value","value":"{error_rate}"}}]"#
    )
}

/// The demo on kwok's nodes, with the traffic simulator.
fn simulated(cluster: &Cluster, kubeconfig: &std::path::Path) -> Result<()> {
    const NAME: &str = "podinfo";
    let kubectl = &cluster.kubectl;
    kubectl.run(&["create", "namespace", "demo"])?;
    say("starting the traffic simulator (100 req/s to podinfo) and Prometheus scraping it");
    let traffic = Traffic::start(kubeconfig, "demo", NAME, 100.0)?;
    let prometheus = traffic.scraped()?;
    say("installing Serin: kubectl apply -k deploy/, controller under its ServiceAccount");
    let controller = Controller::start_with(
        cluster,
        "demo",
        &[format!("--prometheus-address={}", prometheus.url())],
    )?;
    let example = repository_root().join("e2e/testdata/demo-simulated.yaml");
    kubectl.run(&["apply", "-n", "demo", "-f", &example.to_string_lossy()])?;
    wait_promoted(kubectl, NAME)?;
    say(
        "revision 1 is Healthy and Promoted; rolling out podinfo:6.7.1 (1% errors, as stable) in 3 seconds",
    );
    thread::sleep(Duration::from_secs(3));
    let mut watch = watch(kubectl, NAME)?;
    let image_and_errors = |image: &str, error_rate: &str| {
        format!(
            r#"[{{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"{image}"}},
                {{"op":"replace","path":"/spec/template/spec/containers/0/env/0/value","value":"{error_rate}"}}]"#
        )
    };
    set_release(
        kubectl,
        NAME,
        &image_and_errors("ghcr.io/stefanprodan/podinfo:6.7.1", "0.01"),
    )?;
    wait_promoted(kubectl, NAME)?;
    thread::sleep(Duration::from_secs(4));
    set_release(
        kubectl,
        NAME,
        &image_and_errors("ghcr.io/stefanprodan/podinfo:6.8.0-rc1", "0.05"),
    )?;
    wait_for(
        kubectl,
        NAME,
        "the analysis to roll 6.8.0-rc1 back",
        |canary| canary["status"]["phase"] == "Aborted",
    )?;
    thread::sleep(Duration::from_secs(8));
    stop(&mut watch);
    println!();
    report(kubectl, NAME, "6.8.0-rc1 (5% errors)")?;
    drop(controller);
    drop(prometheus);
    drop(traffic);
    Ok(())
}

fn say(text: &str) {
    println!("\x1b[1m==> {text}\x1b[0m");
}

/// What the Canary says at the end; fails unless the analysis rolled the bad
/// release back, so the demo's exit status says whether it showed what it claims.
fn report(kubectl: &Kubectl, name: &str, bad: &str) -> Result<()> {
    let canary = kubectl.get_json(&["canary", name, "-n", "demo"])?;
    let status = &canary["status"];
    let progressing = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Progressing")
        .cloned()
        .unwrap_or_default();
    say(&format!(
        "{bad}: {} — {}",
        progressing["reason"].as_str().unwrap_or_default(),
        progressing["message"].as_str().unwrap_or_default()
    ));
    say(&format!(
        "final: phase {}, stable revision {}, canary weight {}%",
        status["phase"], status["stableRevision"], status["weight"]
    ));
    if progressing["reason"] != "AnalysisFailed" {
        bail!("{bad} was not rolled back by the analysis");
    }
    Ok(())
}

/// `kubectl patch canary --type=json`, as a release pipeline would.
fn set_release(kubectl: &Kubectl, name: &str, patch: &str) -> Result<()> {
    kubectl.run(&[
        "patch",
        "-n",
        "demo",
        "canary",
        name,
        "--type=json",
        "-p",
        patch,
    ])?;
    Ok(())
}

fn wait_promoted(kubectl: &Kubectl, name: &str) -> Result<()> {
    kubectl.run(&[
        "wait",
        "-n",
        "demo",
        &format!("canary/{name}"),
        "--for=condition=Promoted",
        "--timeout=120s",
    ])?;
    Ok(())
}

fn wait_for(
    kubectl: &Kubectl,
    name: &str,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(180);
    while Instant::now() < until {
        if done(&kubectl.get_json(&["canary", name, "-n", "demo"])?) {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(250));
    }
    bail!("{what} not reached within 180s")
}

/// `kubectl serin get --watch`, drawing on this terminal.
fn watch(kubectl: &Kubectl, name: &str) -> Result<Child> {
    Ok(kubectl
        .plugin(&["serin", "-n", "demo", "get", name, "--watch"])
        .env("PATH", path_with_plugin()?)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()?)
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

//! `make bench-rollout`: how fast Serin acts, and how much memory it holds, on the
//! local control plane. Every figure is printed beside a baseline measured in the
//! same run, because these machines are noisy.
//!
//! - reaction times, over several runs: a new template to the first weight on the
//!   HTTPRoute, and `kubectl serin abort` to 100% of the route on stable; the
//!   baseline is the time for a plain `kubectl patch` to be seen by `kubectl get`.
//! - the controller's resident memory with 100 Canaries, against the same process
//!   with none.

use serin_api::{COMMAND_ANNOTATION, canary_service};
use serin_e2e::manifest::CanaryManifest;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serin_e2e::cluster::{Binaries, ControlPlane, Options, default_bin_dir, gateway_api_crds};
use serin_e2e::controller::Controller;
use serin_e2e::harness::Cluster;
use serin_e2e::kubectl::Kubectl;
use serin_e2e::process::resident_kib;

const RUNS: usize = 7;
const CANARIES: usize = 100;

const ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web}
spec:
  parentRefs: [{name: edge}]
  rules:
  - backendRefs: [{name: web-stable, port: 80}]
";

fn canary(name: &str, image: &str, extra: &str) -> String {
    CanaryManifest::new(name)
        .image(image)
        .replicas(2)
        .service(Some("{port: 80}"))
        .spec(
            "  steps: [10, 50]\n  stepDuration: 1h\n  progressDeadline: 2h\n  scaleDownDelay: 2s\n",
        )
        .spec(extra)
        .yaml()
}

fn main() -> Result<()> {
    let binaries = Binaries::locate(&default_bin_dir())?;
    let dir = tempfile::Builder::new().prefix("serin-bench-").tempdir()?;
    let plane = ControlPlane::start(&Options {
        dir: dir.path().join("cluster"),
        binaries: binaries.clone(),
        nodes: 3,
        real_node: None,
        client_qps: None,
    })?;
    let cluster = Cluster::external(Kubectl::new(&binaries.kubectl, plane.kubeconfig()));
    let kubectl = &cluster.kubectl;
    let crds = gateway_api_crds()?;
    kubectl.run(&["apply", "--server-side", "-f", &crds.to_string_lossy()])?;
    kubectl.run(&["create", "namespace", "bench"])?;
    kubectl.run_with_input(&["apply", "-n", "bench", "-f", "-"], Some(ROUTE))?;
    let controller = Controller::start(&cluster, "bench")?;
    let pid = controller.pid();

    reaction_times(kubectl)?;
    memory(kubectl, pid)?;
    drop(controller);
    drop(plane);
    Ok(())
}

fn reaction_times(kubectl: &Kubectl) -> Result<()> {
    let routed = "  traffic: {gatewayAPI: {httpRoutes: [web]}}\n";
    kubectl.run_with_input(
        &["apply", "-n", "bench", "-f", "-"],
        Some(&canary("web", "web:0", routed)),
    )?;
    wait_for(|| Ok(canary_weight(kubectl)? == Some(0)))?;
    kubectl.run(&[
        "wait",
        "-n",
        "bench",
        "canary/web",
        "--for=condition=Promoted",
        "--timeout=60s",
    ])?;

    let (mut baseline, mut first_step, mut abort) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=RUNS {
        let started = Instant::now();
        let value = run.to_string();
        let label = format!("bench-run={value}");
        kubectl.run(&[
            "label",
            "-n",
            "bench",
            "httproute",
            "web",
            "--overwrite",
            &label,
        ])?;
        wait_for(|| {
            let route = kubectl.get_json(&["httproute", "web", "-n", "bench"])?;
            Ok(route["metadata"]["labels"]["bench-run"].as_str() == Some(value.as_str()))
        })?;
        baseline.push(started.elapsed());

        let started = Instant::now();
        let patch = format!(
            r#"[{{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"web:{run}"}}]"#
        );
        kubectl.run(&[
            "patch",
            "-n",
            "bench",
            "canary",
            "web",
            "--type=json",
            "-p",
            &patch,
        ])?;
        wait_for(|| Ok(canary_weight(kubectl)?.is_some_and(|w| w > 0)))?;
        first_step.push(started.elapsed());

        let started = Instant::now();
        kubectl.run(&[
            "annotate",
            "-n",
            "bench",
            "canary",
            "web",
            "--overwrite",
            &format!("{COMMAND_ANNOTATION}=abort/{run}"),
        ])?;
        wait_for(|| Ok(canary_weight(kubectl)? == Some(0)))?;
        abort.push(started.elapsed());
    }
    println!("reaction times on the local control plane, {RUNS} runs (seconds):");
    println!(
        "{:<44} {:>8} {:>8} {:>12}",
        "", "median", "max", "× baseline"
    );
    let base = median(&baseline);
    for (what, times) in [
        ("baseline: kubectl patch seen by kubectl get", &baseline),
        ("new template → first weight on the route", &first_step),
        ("kubectl serin abort → route 100% stable", &abort),
    ] {
        println!(
            "{what:<44} {:>8.2} {:>8.2} {:>12.1}",
            median(times),
            times.iter().map(Duration::as_secs_f64).fold(0.0, f64::max),
            median(times) / base
        );
    }
    Ok(())
}

fn memory(kubectl: &Kubectl, pid: u32) -> Result<()> {
    let idle = resident_kib(pid)?;
    let manifests: Vec<String> = (0..CANARIES)
        .map(|index| canary(&format!("app-{index:03}"), "app:1", ""))
        .collect();
    kubectl.run_with_input(
        &["apply", "-n", "bench", "-f", "-"],
        Some(&manifests.join("---\n")),
    )?;
    let until = Instant::now() + Duration::from_secs(300);
    loop {
        let list = kubectl.get_json(&["canaries", "-n", "bench"])?;
        let healthy = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| {
                c["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("app-"))
                    && c["status"]["phase"] == "Healthy"
            })
            .count();
        if healthy == CANARIES {
            break;
        }
        if Instant::now() > until {
            bail!("only {healthy} of {CANARIES} canaries Healthy after 300s");
        }
        thread::sleep(Duration::from_secs(1));
    }
    thread::sleep(Duration::from_secs(5));
    let loaded = resident_kib(pid)?;
    println!();
    println!("controller resident memory (VmRSS):");
    println!("  with 1 Canary:    {:>8.1} MiB", idle as f64 / 1024.0);
    println!(
        "  with {} Canaries: {:>8.1} MiB  ({:.2} × the 1-Canary figure)",
        CANARIES + 1,
        loaded as f64 / 1024.0,
        loaded as f64 / idle as f64
    );
    Ok(())
}

fn canary_weight(kubectl: &Kubectl) -> Result<Option<i64>> {
    let route = kubectl.get_json(&["httproute", "web", "-n", "bench"])?;
    Ok(route["spec"]["rules"][0]["backendRefs"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|backend| backend["name"] == canary_service("web"))
        .and_then(|backend| backend["weight"].as_i64()))
}

fn wait_for(mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(60);
    while !done()? {
        if Instant::now() > until {
            bail!("not reached within 60s");
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn median(times: &[Duration]) -> f64 {
    let mut seconds: Vec<f64> = times.iter().map(Duration::as_secs_f64).collect();
    seconds.sort_by(f64::total_cmp);
    seconds.get(seconds.len() / 2).copied().unwrap_or(f64::NAN)
}

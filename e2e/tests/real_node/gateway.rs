//! Real requests through a real Gateway API data plane: Traefik proxies to the pods
//! behind the HTTPRoute's backendRefs in the weights Serin writes, so the canary's
//! share at each step is what the route says (a fractional step too, written in
//! millionths), and an abort takes it out as soon as the route is written.

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serin_api::{Exposure, Phase, Weight, canary_service};
use serin_e2e::gateway::{GATEWAY_PORT, Traefik};
use serin_e2e::kubectl::Kubectl;
use serin_e2e::load::Load;
use serin_e2e::node::NODE_IP;
use serin_e2e::rollout::{Rollout, is_true, message, phase, revisions, weight};

use crate::cluster;
use crate::traffic::{RATE, Timeline, release, seconds_after, workload};

/// One test's turn at the Gateway: a Traefik of its own (fixed ports, so one at a
/// time), stopped when the turn ends, after the test's route is deleted, so the next
/// test's Traefik sees only its own route. (One Traefik 3.6.12 for the whole run
/// stopped taking route events after a test's route was deleted while other tests
/// waited, and served nothing more.)
pub(crate) struct Turn {
    _traefik: Traefik,
    kubectl: Kubectl,
    namespace: String,
    _held: MutexGuard<'static, ()>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let deleted = self.kubectl.run(&[
            "delete",
            "httproute",
            "web",
            "-n",
            &self.namespace,
            "--ignore-not-found",
            "--wait=true",
        ]);
        if let Err(error) = deleted {
            eprintln!("deleting the route of {}: {error:#}", self.namespace);
        }
    }
}

/// Waits for `rollout`'s turn at the Gateway and starts its Traefik.
pub(crate) fn gateway(rollout: &Rollout) -> Result<Turn> {
    static TURNS: Mutex<()> = Mutex::new(());
    let held = TURNS.lock().unwrap_or_else(PoisonError::into_inner);
    let traefik = Traefik::start(&cluster().kubectl).context("the Gateway")?;
    Ok(Turn {
        _traefik: traefik,
        kubectl: rollout.kubectl.clone(),
        namespace: rollout.namespace.clone(),
        _held: held,
    })
}

const ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web}
spec:
  parentRefs: [{name: edge, namespace: default}]
  rules:
  - backendRefs: [{name: web-stable, port: 80}]
";

/// Applies the route and the workload's v1 with `steps`, and returns the Gateway's
/// address once v1 is promoted and answers through it.
pub(crate) fn promoted_behind_the_gateway(rollout: &Rollout, steps: &str) -> Result<SocketAddr> {
    rollout.apply_yaml(ROUTE)?;
    rollout.apply_manifest(&workload("v1", steps))?;
    rollout.wait_promoted(Duration::from_secs(90))?;
    let address: SocketAddr = format!("{NODE_IP}:{GATEWAY_PORT}").parse()?;
    Load::wait_answering(address, Duration::from_secs(60))?;
    Ok(address)
}

/// The canary's weight on the route as stored.
fn route_canary_weight(rollout: &Rollout) -> Result<i64> {
    let route = rollout
        .kubectl
        .get_json(&["httproute", "web", "-n", &rollout.namespace])?;
    let backends = route["spec"]["rules"][0]["backendRefs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok(backends
        .iter()
        .find(|b| b["name"] == canary_service("web"))
        .and_then(|b| b["weight"].as_i64())
        .unwrap_or(0))
}

#[test]
fn requests_through_the_gateway_follow_the_route_weights_and_an_abort_takes_the_canary_out()
-> Result<()> {
    let rollout = Rollout::prepare_in_cluster(cluster(), "real-gateway", "web")?;
    let _turn = gateway(&rollout)?;
    let steps = "  steps: [12.5, 50]\n  stepDuration: 20s\n  scaleDownDelay: 5s\n  traffic: {gatewayAPI: {httpRoutes: [web]}}\n";
    let address = promoted_behind_the_gateway(&rollout, steps)?;

    // A healthy release, step by step through the Gateway.
    let load = Load::start(address, RATE, Duration::from_secs(300))?;
    std::thread::sleep(Duration::from_secs(2));
    let (stable, _) = revisions(&rollout.canary()?);
    release(&rollout, "v2")?;
    let timeline = Timeline::record(&rollout, Duration::from_secs(150), |c| {
        revisions(c).0 != stable && phase(c) == Some(Phase::Healthy)
    })?;
    let measured = timeline.check_shares(&load.answers(), "v2", "Gateway");
    assert_eq!(
        measured,
        [Weight::from_millionths(125_000), Weight::from_percent(50)],
        "every step measured"
    );

    // Another release, aborted at its first step: once the route says 0, no
    // request reaches it.
    release(&rollout, "v3")?;
    rollout.wait("v3 at 12.5%", Duration::from_secs(60), |c| {
        weight(c) == Weight::from_millionths(125_000)
    })?;
    std::thread::sleep(Duration::from_secs(5));
    rollout.annotate("abort/gateway")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let written = loop {
        if route_canary_weight(&rollout)? == 0 {
            break Instant::now();
        }
        if Instant::now() > deadline {
            bail!("the route still sends traffic to the canary 30s after the abort");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_secs(8));
    let answers = load.stop();
    let last = answers
        .iter()
        .filter(|a| a.version.as_deref() == Some("v3"))
        .map(|a| a.sent)
        .max()
        .context("v3 served nothing before the abort")?;
    let offset = seconds_after(last, written);
    eprintln!(
        "gateway abort: the last request on the canary was sent {offset:+.2}s from when the route was seen written"
    );
    assert!(
        offset < 3.0,
        "Traefik still sent requests to the canary {offset:.2}s after the route was written"
    );
    let failed = answers.iter().filter(|a| !a.succeeded()).count();
    eprintln!("gateway: {} requests, {failed} failed", answers.len());
    assert_eq!(failed, 0, "no request lost through the Gateway");
    Ok(())
}

/// Extra headers of a request.
type Headers<'a> = &'a [(&'a str, &'a str)];

/// Which version served each of `count` requests sent with `headers`.
fn versions(address: SocketAddr, headers: &[(&str, &str)], count: usize) -> Result<Vec<String>> {
    (0..count)
        .map(|_| {
            let answer = Load::ask(address, headers)?;
            if !answer.succeeded() {
                bail!("a request with {headers:?} failed: {:?}", answer.outcome);
            }
            Ok(answer.version.unwrap_or_default())
        })
        .collect()
}

#[test]
fn an_experiment_sends_exactly_the_matching_requests_through_the_gateway_to_the_canary()
-> Result<()> {
    let rollout = Rollout::prepare_in_cluster(cluster(), "real-experiment", "web")?;
    let _turn = gateway(&rollout)?;
    let steps = "  steps: [50]
  stepDuration: 10s
  scaleDownDelay: 5s
  traffic: {gatewayAPI: {httpRoutes: [web]}}
  experiment:
    match:
    - headers: [{name: x-canary, value: 'yes'}]
    - cookie: {name: canary, value: always}
";
    let address = promoted_behind_the_gateway(&rollout, steps)?;

    release(&rollout, "v2")?;
    rollout.wait("the experiment", Duration::from_secs(90), |c| {
        c.status.as_ref().and_then(|s| s.exposure) == Some(Exposure::Experiment)
    })?;
    // Traefik picks the new rule up from its watch: wait for the first matching
    // request the canary answers, then count.
    let seen = Instant::now();
    while versions(address, &[("x-canary", "yes")], 1)? != ["v2"] {
        if seen.elapsed() > Duration::from_secs(30) {
            bail!("no request with x-canary: yes reached the canary within 30s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "experiment: Traefik served the rule {:.2}s after the Canary reported it",
        seen.elapsed().as_secs_f64()
    );
    let cases: [(&str, Headers, usize); 6] = [
        ("x-canary: yes", &[("x-canary", "yes")], 100),
        (
            "X-Canary: yes (names are not case sensitive)",
            &[("X-Canary", "yes")],
            100,
        ),
        (
            "cookie canary=always among others",
            &[("cookie", "a=1; canary=always; b=2")],
            100,
        ),
        ("no header", &[], 0),
        ("x-canary: no", &[("x-canary", "no")], 0),
        ("cookie xcanary=always", &[("cookie", "xcanary=always")], 0),
    ];
    for (what, headers, on_canary) in cases {
        let served = versions(address, headers, 100)?;
        let canary = served.iter().filter(|v| *v == "v2").count();
        let stable = served.iter().filter(|v| *v == "v1").count();
        eprintln!("experiment: {what}: {canary} of 100 on the canary, {stable} on stable");
        assert_eq!((canary, stable), (on_canary, 100 - on_canary), "{what}");
    }

    // Promoted by hand, the rule goes: the header no longer picks the canary, and
    // the weighted step splits every request.
    rollout.annotate("promote/experiment")?;
    rollout.wait("step 2 at 50%", Duration::from_secs(60), |c| {
        weight(c) == Weight::from_percent(50)
    })?;
    std::thread::sleep(Duration::from_secs(3));
    let served = versions(address, &[("x-canary", "yes")], 200)?;
    let canary = served.iter().filter(|v| *v == "v2").count();
    eprintln!("experiment over, at 50%: {canary} of 200 requests with the header on the canary");
    assert!(
        (60..=140).contains(&canary),
        "the header still picks the canary after the experiment: {canary} of 200"
    );
    Ok(())
}

#[test]
fn a_mirror_the_gateway_cannot_carry_is_refused_and_requests_keep_flowing() -> Result<()> {
    let rollout = Rollout::prepare_in_cluster(cluster(), "real-mirror", "web")?;
    let _turn = gateway(&rollout)?;
    let steps = "  steps: [50]\n  stepDuration: 10s\n  scaleDownDelay: 5s\n  traffic: {gatewayAPI: {httpRoutes: [web]}}\n";
    let address = promoted_behind_the_gateway(&rollout, steps)?;
    let read_route = || {
        rollout
            .kubectl
            .get_json(&["httproute", "web", "-n", &rollout.namespace])
    };
    let resting = read_route()?;

    // Traefik reports what it supports on its GatewayClass, and mirroring is not
    // among it: a RequestMirror filter would make it answer 500 for the whole rule.
    let load = Load::start(address, RATE, Duration::from_secs(120))?;
    rollout.patch("merge", r#"{"spec":{"mirror":{"percent":20}}}"#)?;
    release(&rollout, "v2")?;
    let invalid = rollout.wait("InvalidSpec", Duration::from_secs(30), |c| {
        is_true(c, "InvalidSpec")
    })?;
    let said = message(&invalid, "InvalidSpec");
    eprintln!("mirror on Traefik: {said}");
    assert!(
        said.contains("GatewayClass traefik") && said.contains("HTTPRouteRequestPercentageMirror"),
        "{said}"
    );
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        read_route()?["spec"],
        resting["spec"],
        "the route is untouched"
    );
    assert_eq!(rollout.replica_set_count()?, 1, "no canary was started");
    let answers = load.stop();
    let failed = answers.iter().filter(|a| !a.succeeded()).count();
    let on_v1 = answers
        .iter()
        .filter(|a| a.version.as_deref() == Some("v1"))
        .count();
    eprintln!(
        "mirror on Traefik: {} requests, {failed} failed, {on_v1} on v1",
        answers.len()
    );
    assert_eq!((failed, on_v1), (0, answers.len()));
    Ok(())
}

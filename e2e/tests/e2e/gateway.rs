//! The Gateway API router against the upstream standard CRDs, so the real schema
//! validates every write Serin makes to an HTTPRoute.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};
use serin_api::{Canary, Exposure, Phase, Weight, canary_service, stable_service};
use serin_e2e::cluster::gateway_api_crds;

use crate::cluster;
use crate::rollout::{Rollout, is_true, message, phase, revisions, weight};

pub(crate) fn install_gateway_api() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        install_upstream_crds(
            gateway_api_crds(),
            &[
                "crd/httproutes.gateway.networking.k8s.io",
                "crd/grpcroutes.gateway.networking.k8s.io",
            ],
        );
    });
}

/// Applies an upstream project's CRDs (a file or a directory) and waits until
/// `established` are served.
pub(crate) fn install_upstream_crds(crds: Result<PathBuf>, established: &[&str]) {
    let crds = crds.unwrap_or_else(|e| panic!("upstream CRDs: {e:#}"));
    let kubectl = &cluster().kubectl;
    let applied = kubectl.run(&["apply", "--server-side", "-f", &crds.to_string_lossy()]);
    assert!(applied.is_ok(), "{applied:?}");
    let mut wait = vec!["wait", "--for=condition=Established", "--timeout=30s"];
    wait.extend_from_slice(established);
    let served = kubectl.run(&wait);
    assert!(served.is_ok(), "{served:?}");
}

/// Waits for the Canary's `InvalidSpec`, checks its message says each of `says`,
/// and that nothing was made for it.
pub(crate) fn invalid_and_nothing_made(rollout: &Rollout, says: &[&str]) -> Result<()> {
    let invalid = rollout.wait("InvalidSpec", Duration::from_secs(30), |canary| {
        is_true(canary, "InvalidSpec")
    })?;
    let message = message(&invalid, "InvalidSpec");
    assert!(says.iter().all(|s| message.contains(s)), "{message}");
    assert_eq!(
        rollout.replica_set_count()?,
        0,
        "nothing made for an invalid spec"
    );
    Ok(())
}

/// A route with a rule Serin must leave alone and a rule to `web-stable`.
pub(crate) const ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web}
spec:
  parentRefs: [{name: edge}]
  hostnames: [web.example]
  rules:
  - matches: [{path: {type: PathPrefix, value: /static}}]
    backendRefs: [{name: cdn, port: 80}]
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {add: [{name: x-served-by, value: serin}]}
    backendRefs: [{name: web-stable, port: 80}]
";

const ROUTED: &str = "  steps: [25, 50]\n  stepDuration: 3s\n  scaleDownDelay: 3s\n  traffic: {gatewayAPI: {httpRoutes: [web]}}\n";

pub(crate) fn route(rollout: &Rollout) -> Result<Value> {
    rollout
        .kubectl
        .get_json(&["httproute", "web", "-n", &rollout.namespace])
}

/// (stable weight, canary weight) of the rule Serin owns.
pub(crate) fn weights(route: &Value) -> (Option<i64>, Option<i64>) {
    weights_in(route, 1)
}

/// (stable weight, canary weight) in rule `rule` of `route`.
fn weights_in(route: &Value, rule: usize) -> (Option<i64>, Option<i64>) {
    let backends = route["spec"]["rules"][rule]["backendRefs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let weight = |name: &str| {
        backends
            .iter()
            .find(|b| b["name"] == name)
            .and_then(|b| b["weight"].as_i64())
    };
    (
        weight(&stable_service("web")),
        weight(&canary_service("web")),
    )
}

#[test]
fn route_weights_follow_every_step_and_the_rest_of_the_route_is_untouched() -> Result<()> {
    install_gateway_api();
    let rollout = Rollout::prepare(cluster(), "gateway", "web")?;
    rollout.apply_yaml(ROUTE)?;
    let written = route(&rollout)?;
    rollout.apply("web:1", ROUTED)?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    assert_eq!(weights(&route(&rollout)?), (Some(100), Some(0)));
    let (old, _) = revisions(&rollout.canary()?);

    rollout.set_image("web:2")?;
    let mut seen = Vec::new();
    rollout.wait(
        "promoted through the route",
        Duration::from_secs(90),
        |canary| {
            let (stable, canary_revision) = revisions(canary);
            if let (Ok(route), false) = (route(&rollout), canary_revision.is_empty()) {
                let (_, canary_weight) = weights(&route);
                let stable_rs = rollout.replica_set(&stable).unwrap_or_default();
                let canary_rs = rollout.replica_set(&canary_revision).unwrap_or_default();
                seen.push((
                    canary_weight.unwrap_or(0),
                    stable_rs.0,
                    canary_rs.0,
                    canary_rs.1,
                ));
            }
            phase(canary) == Some(Phase::Healthy) && stable != old
        },
    )?;
    assert!(
        seen.iter().any(|&(w, s, c, _)| (w, s, c) == (25, 4, 1)),
        "25%: stable full, 1 canary pod: {seen:?}"
    );
    assert!(
        seen.iter().any(|&(w, s, c, _)| (w, s, c) == (50, 4, 2)),
        "50%: stable full, 2 canary pods: {seen:?}"
    );
    assert!(
        seen.iter()
            .all(|&(weight, _, _, available)| weight == 0 || available > 0),
        "weight on a canary without available pods: {seen:?}"
    );
    let last = route(&rollout)?;
    assert_eq!(weights(&last), (Some(100), Some(0)));
    assert_eq!(
        last["spec"]["rules"][0], written["spec"]["rules"][0],
        "another rule changed"
    );
    assert_eq!(
        last["spec"]["rules"][1]["filters"],
        written["spec"]["rules"][1]["filters"]
    );
    assert_eq!(last["spec"]["hostnames"], json!(["web.example"]));
    Ok(())
}

#[test]
fn a_missing_route_is_an_invalid_spec_and_nothing_is_changed() -> Result<()> {
    install_gateway_api();
    let rollout = Rollout::prepare(cluster(), "noroute", "web")?;
    rollout.apply("web:1", ROUTED)?;
    invalid_and_nothing_made(&rollout, &["HTTPRoute web not found"])?;
    assert!(!rollout.kubectl.succeeds(&[
        "get",
        "service",
        &stable_service("web"),
        "-n",
        &rollout.namespace
    ]));
    assert!(rollout.events()?.contains(&"InvalidSpec".to_owned()));

    // The route watch wakes the Canary: a retry of an invalid spec would wait 30 s.
    rollout.apply_yaml(ROUTE)?;
    rollout.wait(
        "the new route acted on at once",
        ROUTE_WATCH_BOUND,
        |canary| !is_true(canary, "InvalidSpec"),
    )?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    Ok(())
}

/// How soon a change of a route must be acted on: the watch delivers it in well
/// under a second; without it, the next look would come from a retry (30 s for an
/// invalid spec) or the resync of a promoted Canary (5 minutes).
pub(crate) const ROUTE_WATCH_BOUND: Duration = Duration::from_secs(10);

#[test]
fn weights_a_person_changes_on_the_route_are_put_back_at_once() -> Result<()> {
    install_gateway_api();
    let rollout = Rollout::prepare(cluster(), "route-edit", "web")?;
    rollout.apply_yaml(ROUTE)?;
    rollout.apply("web:1", ROUTED)?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    rollout.wait("100% stable on the route", Duration::from_secs(30), |_| {
        route(&rollout).is_ok_and(|r| weights(&r) == (Some(100), Some(0)))
    })?;
    let before = route(&rollout)?;

    // A promoted Canary is looked at again only every few minutes; a person (or a
    // GitOps sync of an old route) sends half the requests to the canary Service.
    rollout.kubectl.run(&[
        "patch",
        "httproute",
        "web",
        "-n",
        &rollout.namespace,
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/rules/1/backendRefs/0/weight","value":50},{"op":"replace","path":"/spec/rules/1/backendRefs/1/weight","value":50},{"op":"add","path":"/metadata/labels","value":{"team":"shop"}}]"#,
    ])?;
    rollout.wait("the weights put back", ROUTE_WATCH_BOUND, |_| {
        route(&rollout).is_ok_and(|r| {
            weights(&r) == (Some(100), Some(0)) && r["metadata"]["labels"]["team"] == "shop"
        })
    })?;
    let after = route(&rollout)?;
    assert_eq!(after["spec"]["rules"][0], before["spec"]["rules"][0]);
    assert_eq!(
        after["spec"]["rules"][1]["filters"],
        before["spec"]["rules"][1]["filters"]
    );
    Ok(())
}

/// A gRPC service's route: a method match, a header filter and a hostname that
/// Serin must keep, and one rule to `web-stable`.
const GRPC_ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: web-grpc}
spec:
  parentRefs: [{name: edge}]
  hostnames: [grpc.web.example]
  rules:
  - matches: [{method: {service: shop.Catalog, method: List}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {add: [{name: x-served-by, value: serin}]}
    backendRefs: [{name: web-stable, port: 80}]
";

fn grpc_route(rollout: &Rollout) -> Result<Value> {
    rollout
        .kubectl
        .get_json(&["grpcroute", "web-grpc", "-n", &rollout.namespace])
}

#[test]
fn grpc_route_weights_follow_every_step_beside_the_http_route() -> Result<()> {
    install_gateway_api();
    let rollout = Rollout::prepare(cluster(), "grpcroute", "web")?;
    rollout.apply_yaml(ROUTE)?;
    rollout.apply(
        "web:1",
        "  steps: [25, 50]\n  stepDuration: 3s\n  scaleDownDelay: 3s\n  traffic: {gatewayAPI: {httpRoutes: [web], grpcRoutes: [web-grpc]}}\n",
    )?;

    // The GRPCRoute does not exist yet: the spec is invalid, nothing is made.
    invalid_and_nothing_made(
        &rollout,
        &[
            "GRPCRoute web-grpc not found",
            "spec.traffic.gatewayAPI.grpcRoutes",
        ],
    )?;

    // The GRPCRoute watch wakes the Canary at once.
    rollout.apply_yaml(GRPC_ROUTE)?;
    let written = grpc_route(&rollout)?;
    rollout.wait(
        "the new GRPCRoute acted on at once",
        ROUTE_WATCH_BOUND,
        |canary| !is_true(canary, "InvalidSpec"),
    )?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    assert_eq!(weights_in(&grpc_route(&rollout)?, 0), (Some(100), Some(0)));
    let (old, _) = revisions(&rollout.canary()?);

    rollout.set_image("web:2")?;
    let mut seen = Vec::new();
    rollout.wait(
        "promoted through both routes",
        Duration::from_secs(90),
        |canary| {
            if let (Ok(http), Ok(grpc)) = (route(&rollout), grpc_route(&rollout)) {
                seen.push((weights(&http), weights_in(&grpc, 0)));
            }
            let (stable, _) = revisions(canary);
            phase(canary) == Some(Phase::Healthy) && stable != old
        },
    )?;
    for canary_weight in [25, 50] {
        let at = (Some(100 - canary_weight), Some(canary_weight));
        assert!(
            seen.iter().any(|(http, grpc)| *http == at && *grpc == at),
            "both routes at {canary_weight}%: {seen:?}"
        );
    }
    let last = grpc_route(&rollout)?;
    assert_eq!(weights_in(&last, 0), (Some(100), Some(0)));
    for field in ["matches", "filters"] {
        assert_eq!(
            last["spec"]["rules"][0][field], written["spec"]["rules"][0][field],
            "the GRPCRoute's {field} changed"
        );
    }
    assert_eq!(last["spec"]["hostnames"], json!(["grpc.web.example"]));
    Ok(())
}

#[test]
fn a_fraction_of_a_percent_reaches_the_route_in_millionths_and_reads_as_a_percent() -> Result<()> {
    install_gateway_api();
    let rollout = Rollout::prepare(cluster(), "fraction", "web")?;
    rollout.apply_yaml(ROUTE)?;
    let steps = "  steps: [0.1, 12.5]\n  stepDuration: 1h\n  progressDeadline: 2h\n  scaleDownDelay: 3s\n  traffic: {gatewayAPI: {httpRoutes: [web]}}\n";
    rollout.apply("web:1", steps)?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    assert_eq!(weights(&route(&rollout)?), (Some(100), Some(0)));

    rollout.set_image("web:2")?;
    rollout.wait("step 1 at 0.1%", Duration::from_secs(60), |canary| {
        weight(canary) == Weight::from_millionths(1_000)
    })?;
    rollout.wait(
        "0.1% on the route, in millionths",
        Duration::from_secs(10),
        |_| route(&rollout).is_ok_and(|r| weights(&r) == (Some(999_000), Some(1_000))),
    )?;
    let status = rollout
        .kubectl
        .get_json(&["canary", "web", "-n", &rollout.namespace])?;
    assert_eq!(
        status["status"]["weight"],
        json!(0.1),
        "status reads as a percent"
    );
    let columns = rollout
        .kubectl
        .run(&["get", "canaries", "-n", &rollout.namespace])?;
    assert!(
        columns
            .lines()
            .nth(1)
            .is_some_and(|row| row.split_whitespace().nth(2) == Some("0.1")),
        "kubectl shows the weight as 0.1: {columns}"
    );

    rollout.annotate("promote/1")?;
    rollout.wait("step 2 at 12.5%", Duration::from_secs(30), |canary| {
        weight(canary) == Weight::from_millionths(125_000)
    })?;
    rollout.wait(
        "12.5% on the route, in millionths",
        Duration::from_secs(10),
        |_| route(&rollout).is_ok_and(|r| weights(&r) == (Some(875_000), Some(125_000))),
    )?;
    Ok(())
}

/// The route as a Git repository holds it, with both backends at their resting
/// weights (as docs/gitops.md asks, so only weights can ever differ from Git).
const ROUTE_IN_GIT: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, labels: {app.kubernetes.io/managed-by: gitops}}
spec:
  parentRefs: [{name: edge}]
  hostnames: [web.example]
  rules:
  - matches: [{path: {type: PathPrefix, value: /static}}]
    backendRefs: [{name: cdn, port: 80}]
  - backendRefs:
    - {name: web-stable, port: 80, weight: 100}
    - {name: web-canary, port: 80, weight: 0}
";

/// The operations of `manager` on `route` and the fields each owns, as
/// managedFields records them.
fn owned_by(route: &Value, manager: &str) -> Vec<(Value, Value)> {
    route["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entry| entry["manager"] == manager)
        .map(|entry| (entry["operation"].clone(), entry["fieldsV1"].clone()))
        .collect()
}

#[test]
fn a_gitops_sync_of_the_route_mid_rollout_is_undone_at_once_and_touches_nothing_else() -> Result<()>
{
    install_gateway_api();
    let rollout = Rollout::prepare(cluster(), "route-sync", "web")?;
    let namespace = rollout.namespace.clone();
    // Argo CD's server-side sync, and its default client-side one (kubectl apply).
    let syncs: [(&str, &[&str]); 2] = [
        (
            "server-side sync",
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager=argocd-controller",
                "-n",
                &namespace,
                "-f",
                "-",
            ],
        ),
        ("client-side sync", &["apply", "-n", &namespace, "-f", "-"]),
    ];
    rollout
        .kubectl
        .run_with_input(syncs[0].1, Some(ROUTE_IN_GIT))?;
    rollout.apply(
        "web:1",
        "  steps: [25, 50]\n  stepDuration: 1h\n  progressDeadline: 2h\n  scaleDownDelay: 3s\n  traffic: {gatewayAPI: {httpRoutes: [web]}}\n",
    )?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    rollout.set_image("web:2")?;
    rollout.wait("25% on the route", Duration::from_secs(60), |_| {
        route(&rollout).is_ok_and(|r| weights(&r) == (Some(75), Some(25)))
    })?;

    for (sync_name, sync) in syncs {
        let before = route(&rollout)?;
        let generation = before["metadata"]["generation"]
            .as_i64()
            .unwrap_or_default();
        rollout.kubectl.run_with_input(sync, Some(ROUTE_IN_GIT))?;
        let synced = std::time::Instant::now();
        // The sync put the weights back to Git's (one generation), Serin put its
        // own back (another one), and nobody wrote again.
        rollout.wait("the weights restored", ROUTE_WATCH_BOUND, |_| {
            route(&rollout).is_ok_and(|r| {
                weights(&r) == (Some(75), Some(25))
                    && r["metadata"]["generation"].as_i64() == Some(generation + 2)
            })
        })?;
        eprintln!(
            "{sync_name}: weights restored {:.2} s after the sync returned",
            synced.elapsed().as_secs_f64()
        );
        std::thread::sleep(Duration::from_secs(2));
        let after = route(&rollout)?;
        assert_eq!(
            after["metadata"]["generation"].as_i64(),
            Some(generation + 2),
            "Serin and the sync kept writing: {after}"
        );
        assert_eq!(weights(&after), (Some(75), Some(25)));
        for field in [
            "/spec/parentRefs",
            "/spec/hostnames",
            "/spec/rules/0",
            "/metadata/labels",
        ] {
            assert_eq!(
                after.pointer(field),
                before.pointer(field),
                "{field} changed"
            );
        }
    }

    // Serin applies spec.rules (an atomic list: the finest field a weight is in)
    // and owns nothing else; Git's manager still owns the rest of the route.
    let last = rollout.kubectl.get_json(&[
        "httproute",
        "web",
        "-n",
        &namespace,
        "--show-managed-fields",
    ])?;
    let serin = owned_by(&last, serin_api::FIELD_MANAGER);
    assert_eq!(
        serin,
        [(json!("Apply"), json!({"f:spec": {"f:rules": {}}}))],
        "{last}"
    );
    let git = owned_by(&last, "argocd-controller");
    assert!(
        git.iter()
            .any(|(_, fields)| fields["f:spec"]["f:hostnames"].is_object()
                && fields["f:spec"]["f:parentRefs"].is_object()),
        "{last}"
    );
    Ok(())
}

/// `status.exposure` as the Canary reports it.
pub(crate) fn exposure(canary: &Canary) -> Option<Exposure> {
    canary.status.as_ref().and_then(|status| status.exposure)
}

#[test]
fn mirroring_then_an_experiment_reach_the_route_and_leave_it_as_it_was() -> Result<()> {
    install_gateway_api();
    let rollout = Rollout::prepare(cluster(), "staged", "web")?;
    rollout.apply_yaml(ROUTE)?;
    let staged = "  steps: [50]
  stepDuration: 3s
  scaleDownDelay: 3s
  traffic: {gatewayAPI: {httpRoutes: [web]}}
  mirror: {percent: 20, duration: 4s}
  experiment:
    match:
    - headers: [{name: x-canary, value: 'yes'}]
    - cookie: {name: canary, value: always}
";
    rollout.apply("web:1", staged)?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    let resting = route(&rollout)?;
    assert_eq!(weights(&resting), (Some(100), Some(0)));

    // Step 1: stable keeps every request, and a fifth of them is copied to the canary.
    rollout.set_image("web:2")?;
    rollout.wait("mirroring", Duration::from_secs(60), |canary| {
        exposure(canary) == Some(Exposure::Mirror)
    })?;
    let mirroring = route(&rollout)?;
    assert_eq!(weights(&mirroring), (Some(100), Some(0)));
    assert_eq!(
        mirroring["spec"]["rules"][1]["filters"],
        json!([
            {"type": "RequestHeaderModifier", "requestHeaderModifier": {"add": [{"name": "x-served-by", "value": "serin"}]}},
            {"type": "RequestMirror", "requestMirror": {"backendRef": {"group": "", "kind": "Service", "name": "web-canary", "port": 80}, "percent": 20}}
        ]),
        "the upstream schema took the mirror filter with its percent"
    );

    // Step 2: the experiment's rule, which runs until a person promotes it.
    rollout.wait("the experiment", Duration::from_secs(60), |canary| {
        exposure(canary) == Some(Exposure::Experiment)
    })?;
    let experimenting = route(&rollout)?;
    let rules = experimenting["spec"]["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(rules.len(), 3, "{rules:?}");
    assert_eq!(rules[0], resting["spec"]["rules"][0]);
    assert_eq!(
        rules[1]["matches"],
        json!([
            {"path": {"type": "PathPrefix", "value": "/"}, "headers": [{"type": "Exact", "name": "x-canary", "value": "yes"}]},
            {"path": {"type": "PathPrefix", "value": "/"}, "headers": [{"type": "RegularExpression", "name": "Cookie", "value": "^(.*;\\s*)?canary=always(\\s*;.*)?$"}]}
        ])
    );
    assert_eq!(
        rules[1]["backendRefs"],
        json!([{"group": "", "kind": "Service", "name": "web-canary", "port": 80, "weight": 1}])
    );
    assert_eq!(rules[2]["filters"], resting["spec"]["rules"][1]["filters"]);
    assert_eq!(weights_in(&experimenting, 2), (Some(100), Some(0)));
    let record = &experimenting["metadata"]["annotations"][serin_api::EXPERIMENT_ANNOTATION];
    assert!(
        record.is_string(),
        "Serin records its rule: {experimenting}"
    );
    std::thread::sleep(Duration::from_secs(5));
    let canary = rollout.canary()?;
    assert_eq!(
        (
            exposure(&canary),
            canary.status.as_ref().map(|status| status.step)
        ),
        (Some(Exposure::Experiment), Some(2)),
        "an experiment without a duration waits for a person"
    );
    assert!(
        message(&canary, "Progressing").contains("until promoted"),
        "{}",
        message(&canary, "Progressing")
    );

    // Promoted by hand: the weighted step, with neither Serin's rule nor its record.
    rollout.annotate("promote/1")?;
    rollout.wait("step 3 at 50%", Duration::from_secs(30), |canary| {
        weight(canary) == Weight::from_percent(50) && exposure(canary).is_none()
    })?;
    rollout.wait("the route at 50/50", Duration::from_secs(10), |_| {
        route(&rollout).is_ok_and(|r| weights(&r) == (Some(50), Some(50)))
    })?;
    let weighted = route(&rollout)?;
    assert_eq!(weighted["spec"]["rules"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        weighted["spec"]["rules"][1]["filters"],
        resting["spec"]["rules"][1]["filters"]
    );
    assert_eq!(
        weighted["metadata"]["annotations"][serin_api::EXPERIMENT_ANNOTATION],
        Value::Null
    );
    rollout.wait_promoted(Duration::from_secs(60))?;

    // A rollback during the experiment takes its rule away with the canary's weight.
    rollout.set_image("web:3")?;
    rollout.wait("the next experiment", Duration::from_secs(60), |canary| {
        exposure(canary) == Some(Exposure::Experiment)
    })?;
    rollout.annotate("abort/2")?;
    rollout.wait("aborted", Duration::from_secs(30), |canary| {
        phase(canary) == Some(Phase::Aborted)
    })?;
    rollout.wait("the route as it rests", Duration::from_secs(10), |_| {
        route(&rollout).is_ok_and(|r| r["spec"] == resting["spec"])
    })?;
    Ok(())
}

#[test]
fn a_mirror_waits_for_a_gateway_class_that_says_it_can_mirror() -> Result<()> {
    install_gateway_api();
    let rollout = Rollout::prepare(cluster(), "mirror-class", "web")?;
    let class = format!("{}-class", rollout.namespace);
    // A GatewayClass as its controller reports it: the features it supports.
    rollout.apply_yaml(&format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: {class}}}
spec: {{controllerName: example.com/gateway}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  gatewayClassName: {class}
  listeners: [{{name: web, port: 80, protocol: HTTP}}]
"
    ))?;
    let report = |features: &str| {
        rollout.kubectl.run(&[
            "patch",
            "gatewayclass",
            &class,
            "--subresource=status",
            "--type=merge",
            "-p",
            &format!(r#"{{"status":{{"supportedFeatures":{features}}}}}"#),
        ])
    };
    report(r#"[{"name":"Gateway"},{"name":"HTTPRoute"}]"#)?;
    rollout.apply_yaml(ROUTE)?;
    let mirrored = format!("{ROUTED}  mirror: {{percent: 20}}\n");
    rollout.apply("web:1", &mirrored)?;
    invalid_and_nothing_made(
        &rollout,
        &[
            &format!(
                "attaches to Gateway {}/edge of GatewayClass {class}",
                rollout.namespace
            ),
            "lack HTTPRouteRequestPercentageMirror",
            "remove spec.mirror",
        ],
    )?;
    let untouched = route(&rollout)?;
    assert_eq!(
        untouched["spec"]["rules"][1]["backendRefs"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // The class says it can: the Canary goes on, and its next rollout mirrors.
    report(
        r#"[{"name":"Gateway"},{"name":"HTTPRoute"},{"name":"HTTPRouteRequestMirror"},{"name":"HTTPRouteRequestPercentageMirror"}]"#,
    )?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    rollout.set_image("web:2")?;
    rollout.wait("mirroring", Duration::from_secs(60), |canary| {
        exposure(canary) == Some(Exposure::Mirror)
    })?;
    Ok(())
}

#[test]
fn a_grpc_route_mirrors_and_matches_metadata_under_the_upstream_schema() -> Result<()> {
    install_gateway_api();
    let rollout = Rollout::prepare(cluster(), "grpc-staged", "web")?;
    rollout.apply_yaml(GRPC_ROUTE)?;
    let staged = "  steps: [50]
  stepDuration: 3s
  scaleDownDelay: 3s
  traffic: {gatewayAPI: {grpcRoutes: [web-grpc]}}
  mirror: {percent: 100, duration: 3s}
  experiment:
    match: [{headers: [{name: x-canary, value: 'yes'}]}]
    duration: 3s
";
    rollout.apply("web:1", staged)?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    let resting = grpc_route(&rollout)?;

    rollout.set_image("web:2")?;
    rollout.wait("mirroring", Duration::from_secs(60), |canary| {
        exposure(canary) == Some(Exposure::Mirror)
    })?;
    let mirroring = grpc_route(&rollout)?;
    assert_eq!(
        mirroring["spec"]["rules"][0]["filters"][1],
        json!({"type": "RequestMirror", "requestMirror": {"backendRef": {"group": "", "kind": "Service", "name": "web-canary", "port": 80}}}),
        "a whole mirror, without percent"
    );
    rollout.wait("the experiment", Duration::from_secs(60), |canary| {
        exposure(canary) == Some(Exposure::Experiment)
    })?;
    let experimenting = grpc_route(&rollout)?;
    assert_eq!(
        experimenting["spec"]["rules"][0]["matches"],
        json!([{"method": {"type": "Exact", "service": "shop.Catalog", "method": "List"},
                "headers": [{"type": "Exact", "name": "x-canary", "value": "yes"}]}])
    );
    rollout.wait_promoted(Duration::from_secs(60))?;
    rollout.wait("the GRPCRoute as it rests", Duration::from_secs(10), |_| {
        grpc_route(&rollout).is_ok_and(|r| r["spec"] == resting["spec"])
    })?;
    Ok(())
}

#[test]
fn an_experiment_the_route_cannot_hold_is_an_invalid_spec_before_anything_is_made() -> Result<()> {
    install_gateway_api();
    let rollout = Rollout::prepare(cluster(), "experiment-large", "web")?;
    let headers: Vec<String> = (0..12)
        .map(|i| format!("{{name: x-{i}, value: '1'}}"))
        .collect();
    rollout.apply_yaml(&format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
  - matches: [{{headers: [{}]}}]
    backendRefs: [{{name: web-stable, port: 80}}]
",
        headers.join(", ")
    ))?;
    let written = route(&rollout)?;
    let experiment = format!(
        "{ROUTED}  experiment:\n    match: [{{headers: [{{name: a, value: '1'}}, {{name: b, value: '1'}}, {{name: c, value: '1'}}, {{name: d, value: '1'}}, {{name: e, value: '1'}}]}}]\n"
    );
    rollout.apply("web:1", &experiment)?;
    invalid_and_nothing_made(
        &rollout,
        &[
            "HTTPRoute web",
            "more than Gateway API allows",
            "spec.experiment.match",
        ],
    )?;
    assert_eq!(
        route(&rollout)?["spec"],
        written["spec"],
        "the route is untouched"
    );
    Ok(())
}

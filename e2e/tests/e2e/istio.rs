//! The Istio router against Istio's own CRDs (from the `istio.io/api` Go module),
//! so the real schema validates every write Serin makes to a VirtualService.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};
use serin_api::{Exposure, Phase, Weight};
use serin_e2e::cluster::istio_crds;

use crate::cluster;
use crate::gateway::{
    ROUTE_WATCH_BOUND, exposure, install_upstream_crds, invalid_and_nothing_made,
};
use crate::rollout::{Rollout, is_true, phase, revisions, weight};

fn install_istio() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        install_upstream_crds(
            istio_crds(),
            &[
                "crd/virtualservices.networking.istio.io",
                "crd/destinationrules.networking.istio.io",
            ],
        );
    });
}

/// A VirtualService with a route Serin must leave alone and a named route to
/// `web-stable` by its full name, with retries Serin must keep.
fn virtual_service(namespace: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web}}
spec:
  hosts: [web.example]
  gateways: [edge]
  http:
  - name: static
    match: [{{uri: {{prefix: /static}}}}]
    route: [{{destination: {{host: cdn}}}}]
  - name: primary
    retries: {{attempts: 3}}
    route: [{{destination: {{host: web-stable.{namespace}.svc.cluster.local, port: {{number: 80}}}}}}]
"
    )
}

fn read(rollout: &Rollout) -> Result<Value> {
    rollout
        .kubectl
        .get_json(&["virtualservice", "web", "-n", &rollout.namespace])
}

/// (stable weight, canary weight) in the route named `primary`.
fn weights(virtual_service: &Value) -> (Option<i64>, Option<i64>) {
    let destinations = virtual_service["spec"]["http"][1]["route"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let weight = |prefix: &str| {
        destinations
            .iter()
            .find(|d| {
                d["destination"]["host"]
                    .as_str()
                    .is_some_and(|host| host.starts_with(prefix))
            })
            .and_then(|d| d["weight"].as_i64())
    };
    (weight("web-stable."), weight("web-canary."))
}

const ROUTED: &str = "  steps: [25, 50]\n  stepDuration: 3s\n  scaleDownDelay: 3s\n  traffic: {istio: {virtualService: web, routes: [primary]}}\n";

#[test]
fn virtual_service_weights_follow_every_step_and_the_rest_is_untouched() -> Result<()> {
    install_istio();
    let rollout = Rollout::prepare(cluster(), "istio", "web")?;
    rollout.apply("web:1", ROUTED)?;

    // No VirtualService yet: the spec is invalid, nothing is made.
    invalid_and_nothing_made(
        &rollout,
        &[
            "VirtualService web not found",
            "spec.traffic.istio.virtualService",
        ],
    )?;

    // The VirtualService watch wakes the Canary at once.
    rollout.apply_yaml(&virtual_service(&rollout.namespace))?;
    let written = read(&rollout)?;
    rollout.wait(
        "the new VirtualService acted on at once",
        ROUTE_WATCH_BOUND,
        |canary| !is_true(canary, "InvalidSpec"),
    )?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    assert_eq!(weights(&read(&rollout)?), (Some(100), Some(0)));
    let (old, _) = revisions(&rollout.canary()?);

    rollout.set_image("web:2")?;
    let mut seen = Vec::new();
    rollout.wait(
        "promoted through the VirtualService",
        Duration::from_secs(90),
        |canary| {
            if let Ok(virtual_service) = read(&rollout) {
                seen.push(weights(&virtual_service));
            }
            let (stable, _) = revisions(canary);
            phase(canary) == Some(Phase::Healthy) && stable != old
        },
    )?;
    for canary_weight in [25, 50] {
        assert!(
            seen.contains(&(Some(100 - canary_weight), Some(canary_weight))),
            "the VirtualService at {canary_weight}%: {seen:?}"
        );
    }
    let last = read(&rollout)?;
    assert_eq!(weights(&last), (Some(100), Some(0)));
    let canary_host = &last["spec"]["http"][1]["route"][1]["destination"];
    assert_eq!(
        canary_host["host"],
        format!("web-canary.{}.svc.cluster.local", rollout.namespace),
        "the canary added in stable's form, with its port"
    );
    assert_eq!(canary_host["port"]["number"], 80);
    for field in [
        "/spec/http/0",
        "/spec/http/1/retries",
        "/spec/hosts",
        "/spec/gateways",
    ] {
        assert_eq!(
            last.pointer(field),
            written.pointer(field),
            "{field} changed"
        );
    }
    Ok(())
}

#[test]
fn an_http_route_the_virtual_service_lacks_is_an_invalid_spec() -> Result<()> {
    install_istio();
    let rollout = Rollout::prepare(cluster(), "istio-route", "web")?;
    rollout.apply_yaml(&virtual_service(&rollout.namespace))?;
    rollout.apply(
        "web:1",
        "  traffic: {istio: {virtualService: web, routes: [canary-only]}}\n",
    )?;
    invalid_and_nothing_made(
        &rollout,
        &[
            "VirtualService web has no HTTP route named canary-only (its named routes: static, primary): fix spec.traffic.istio.routes",
        ],
    )
}

#[test]
fn mirroring_and_an_experiment_are_istio_routes_the_schema_takes_and_leave_with_the_rollout()
-> Result<()> {
    install_istio();
    let rollout = Rollout::prepare(cluster(), "istio-staged", "web")?;
    rollout.apply_yaml(&virtual_service(&rollout.namespace))?;
    let staged = "  steps: [50]
  stepDuration: 3s
  scaleDownDelay: 3s
  traffic: {istio: {virtualService: web, routes: [primary]}}
  mirror: {percent: 30, duration: 4s}
  experiment:
    match: [{headers: [{name: X-Canary, value: 'yes'}], cookie: {name: canary, value: always}}]
    duration: 4s
";
    rollout.apply("web:1", staged)?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    let resting = read(&rollout)?;

    rollout.set_image("web:2")?;
    rollout.wait("mirroring", Duration::from_secs(60), |canary| {
        exposure(canary) == Some(Exposure::Mirror)
    })?;
    let mirroring = read(&rollout)?;
    let canary_host = format!("web-canary.{}.svc.cluster.local", rollout.namespace);
    assert_eq!(
        (
            &mirroring["spec"]["http"][1]["mirror"],
            &mirroring["spec"]["http"][1]["mirrorPercentage"]
        ),
        (
            &json!({"host": canary_host, "port": {"number": 80}}),
            &json!({"value": 30})
        )
    );
    assert_eq!(weights(&mirroring), (Some(100), Some(0)));

    rollout.wait("the experiment", Duration::from_secs(60), |canary| {
        exposure(canary) == Some(Exposure::Experiment)
    })?;
    let experimenting = read(&rollout)?;
    let first = &experimenting["spec"]["http"][1];
    assert_eq!(first["name"], "primary-serin-experiment");
    assert_eq!(
        first["match"],
        json!([{"headers": {
            "x-canary": {"exact": "yes"},
            "cookie": {"regex": "^(.*;\\s*)?canary=always(\\s*;.*)?$"}
        }}])
    );
    assert_eq!(
        first["route"],
        json!([{"destination": {"host": canary_host, "port": {"number": 80}}, "weight": 100}])
    );
    assert_eq!(experimenting["spec"]["http"][2]["name"], "primary");
    assert_eq!(experimenting["spec"]["http"][2]["mirror"], Value::Null);

    rollout.wait_promoted(Duration::from_secs(60))?;
    rollout.wait(
        "the VirtualService as it rests",
        Duration::from_secs(10),
        |_| read(&rollout).is_ok_and(|vs| vs["spec"] == resting["spec"]),
    )?;
    Ok(())
}

#[test]
fn destination_rule_subsets_follow_the_revisions_while_the_virtual_service_weights_them()
-> Result<()> {
    install_istio();
    let rollout = Rollout::prepare(cluster(), "istio-subsets", "web")?;
    rollout.apply_yaml(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web}
spec:
  host: web
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 100}}}
  subsets:
  - {name: legacy, labels: {track: old}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: [web.example]
  http:
  - name: primary
    route: [{destination: {host: web, subset: stable, port: {number: 80}}}]
",
    )?;
    let subsets = "  steps: [50]\n  stepDuration: 3s\n  scaleDownDelay: 3s\n  traffic: {istio: {virtualService: web, destinationRule: web}}\n";
    rollout.apply("web:1", subsets)?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    let (first, _) = revisions(&rollout.canary()?);
    let rule = || {
        rollout
            .kubectl
            .get_json(&["destinationrule", "web", "-n", &rollout.namespace])
    };
    let labels = |rule: &Value, subset: &str| {
        rule["spec"]["subsets"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == subset))
            .map(|s| s["labels"].clone())
            .unwrap_or_default()
    };
    let selects = |revision: &str| json!({"serin.dev/revision": revision});
    let resting = rule()?;
    assert_eq!(labels(&resting, "stable"), selects(&first));
    assert_eq!(
        labels(&resting, "canary"),
        selects(&first),
        "no canary: the stable revision"
    );
    assert_eq!(labels(&resting, "legacy"), json!({"track": "old"}));
    assert_eq!(
        resting["spec"]["trafficPolicy"],
        json!({"connectionPool": {"tcp": {"maxConnections": 100}}})
    );

    rollout.set_image("web:2")?;
    let at_half = rollout.wait("step 1 at 50%", Duration::from_secs(60), |canary| {
        weight(canary) == Weight::from_percent(50)
    })?;
    let (_, second) = revisions(&at_half);
    rollout.wait("the subsets and weights at 50%", Duration::from_secs(10), |_| {
        let (Ok(rule), Ok(service)) = (rule(), read(&rollout)) else {
            return false;
        };
        let route = &service["spec"]["http"][0]["route"];
        labels(&rule, "stable") == selects(&first)
            && labels(&rule, "canary") == selects(&second)
            && *route
                == json!([
                    {"destination": {"host": "web", "subset": "stable", "port": {"number": 80}}, "weight": 50},
                    {"destination": {"host": "web", "subset": "canary", "port": {"number": 80}}, "weight": 50}
                ])
    })?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    let after = rule()?;
    assert_eq!(labels(&after, "stable"), selects(&second));
    assert_eq!(labels(&after, "legacy"), json!({"track": "old"}));
    Ok(())
}

//! Gateway API: Serin sets the weights of the backendRefs that point at
//! `<name>-stable` and `<name>-canary` in the user's HTTPRoutes and GRPCRoutes
//! (whose rules carry backendRefs the same way), and leaves every other field as
//! the user wrote it. How routes are read and written: [`crate::route`].

use serde_json::{Value, json};
use serin_api::{RouteKind, Weight};

use crate::route::{RouteProblem, set_pair};

/// Sets the weights in one route's JSON: in every rule with a backendRef to
/// `stable` or `canary`, the stable ref gets `100 - weight` and the canary ref
/// `weight` in percent when the weight is whole (as operators write them), in
/// millionths otherwise (0.1% is 999000/1000); a missing one of the two is added
/// after the other, copying its port. Returns whether anything changed.
pub fn set_weights(
    route: &mut Value,
    (kind, name): (RouteKind, &str),
    stable: &str,
    canary: &str,
    weight: Weight,
) -> Result<bool, RouteProblem> {
    let problem = || RouteProblem::NoBackendRef {
        kind,
        route: name.to_owned(),
        stable: stable.to_owned(),
        canary: canary.to_owned(),
    };
    let rules = route
        .pointer_mut("/spec/rules")
        .and_then(Value::as_array_mut)
        .ok_or_else(problem)?;
    let is_service = |backend: &Value, service: &str| {
        backend["name"] == service
            && backend.get("kind").is_none_or(|kind| kind == "Service")
            && backend.get("group").is_none_or(|group| group == "")
    };
    let (stable_share, canary_share) = match weight.whole_percent() {
        Some(percent) => (100 - percent, percent),
        None => (weight.rest().millionths(), weight.millionths()),
    };
    let added = |template: &Value, _: &str, service: &str| {
        let mut backend = template.clone();
        backend["name"] = json!(service);
        backend
    };
    let mut owned = false;
    let mut changed = false;
    for rule in rules.iter_mut() {
        let Some(backends) = rule.get_mut("backendRefs").and_then(Value::as_array_mut) else {
            continue;
        };
        let shares = (stable_share, canary_share);
        if let Some(set) = set_pair(backends, is_service, added, (stable, canary), shares) {
            owned = true;
            changed |= set;
        }
    }
    if owned { Ok(changed) } else { Err(problem()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HTTP_WEB: (RouteKind, &str) = (RouteKind::Http, "web");

    fn route(backends: Value) -> Value {
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "web", "resourceVersion": "7"},
            "spec": {
                "parentRefs": [{"name": "edge"}],
                "hostnames": ["web.example"],
                "rules": [
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/static"}}],
                     "backendRefs": [{"name": "cdn", "port": 80}]},
                    {"filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"add": [{"name": "x", "value": "y"}]}}],
                     "backendRefs": backends}
                ],
                "futureField": {"kept": true}
            }
        })
    }

    #[test]
    fn adds_the_canary_ref_and_sets_both_weights() {
        let mut value = route(json!([{"name": "web-stable", "port": 80}]));
        assert_eq!(
            set_weights(
                &mut value,
                HTTP_WEB,
                "web-stable",
                "web-canary",
                Weight::from_percent(25)
            ),
            Ok(true)
        );
        let backends = &value["spec"]["rules"][1]["backendRefs"];
        assert_eq!(
            backends,
            &json!([
                {"name": "web-stable", "port": 80, "weight": 75},
                {"name": "web-canary", "port": 80, "weight": 25}
            ])
        );
    }

    #[test]
    fn leaves_every_other_field_as_written() {
        let mut value = route(json!([{"name": "web-stable", "port": 80}]));
        let before = value.clone();
        set_weights(
            &mut value,
            HTTP_WEB,
            "web-stable",
            "web-canary",
            Weight::from_percent(50),
        )
        .ok();
        assert_eq!(value["spec"]["rules"][0], before["spec"]["rules"][0]);
        assert_eq!(
            value["spec"]["rules"][1]["filters"],
            before["spec"]["rules"][1]["filters"]
        );
        assert_eq!(value["spec"]["futureField"], before["spec"]["futureField"]);
        assert_eq!(value["spec"]["hostnames"], before["spec"]["hostnames"]);
        assert_eq!(value["metadata"], before["metadata"]);
    }

    #[test]
    fn a_fraction_of_a_percent_is_written_in_millionths_and_a_whole_one_in_percent() {
        let mut value = route(json!([{"name": "web-stable", "port": 80}]));
        let tenth = Weight::from_millionths(1_000);
        assert_eq!(
            set_weights(&mut value, HTTP_WEB, "web-stable", "web-canary", tenth),
            Ok(true)
        );
        assert_eq!(
            value["spec"]["rules"][1]["backendRefs"],
            json!([
                {"name": "web-stable", "port": 80, "weight": 999_000},
                {"name": "web-canary", "port": 80, "weight": 1_000}
            ])
        );
        let five = Weight::from_percent(5);
        assert_eq!(
            set_weights(&mut value, HTTP_WEB, "web-stable", "web-canary", five),
            Ok(true)
        );
        assert_eq!(
            value["spec"]["rules"][1]["backendRefs"],
            json!([
                {"name": "web-stable", "port": 80, "weight": 95},
                {"name": "web-canary", "port": 80, "weight": 5}
            ])
        );
    }

    #[test]
    fn reports_no_change_when_weights_are_already_set() {
        let mut value = route(json!([
            {"name": "web-stable", "port": 80, "weight": 100},
            {"name": "web-canary", "port": 80, "weight": 0}
        ]));
        assert_eq!(
            set_weights(
                &mut value,
                HTTP_WEB,
                "web-stable",
                "web-canary",
                Weight::from_percent(0)
            ),
            Ok(false)
        );
    }

    #[test]
    fn a_route_without_the_services_is_a_problem() {
        let mut value = route(json!([{"name": "other", "port": 80}]));
        assert!(matches!(
            set_weights(
                &mut value,
                HTTP_WEB,
                "web-stable",
                "web-canary",
                Weight::from_percent(10)
            ),
            Err(RouteProblem::NoBackendRef { .. })
        ));
    }

    #[test]
    fn a_backend_of_another_kind_with_the_same_name_is_not_ours() {
        let mut value = route(
            json!([{"name": "web-stable", "kind": "ServiceImport", "group": "multicluster.x-k8s.io"}]),
        );
        assert!(
            set_weights(
                &mut value,
                HTTP_WEB,
                "web-stable",
                "web-canary",
                Weight::from_percent(10)
            )
            .is_err()
        );
    }

    #[test]
    fn a_grpc_route_gets_the_same_weights_and_its_problems_name_its_kind_and_field() {
        let mut value = json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GRPCRoute",
            "metadata": {"name": "web-grpc"},
            "spec": {"rules": [{
                "matches": [{"method": {"service": "shop.Catalog", "method": "List"}}],
                "backendRefs": [{"name": "web-stable", "port": 9090}]
            }]}
        });
        let grpc = (RouteKind::Grpc, "web-grpc");
        assert_eq!(
            set_weights(
                &mut value,
                grpc,
                "web-stable",
                "web-canary",
                Weight::from_percent(10)
            ),
            Ok(true)
        );
        assert_eq!(
            value["spec"]["rules"][0]["backendRefs"],
            json!([
                {"name": "web-stable", "port": 9090, "weight": 90},
                {"name": "web-canary", "port": 9090, "weight": 10}
            ])
        );
        let unrelated = set_weights(
            &mut value,
            grpc,
            "api-stable",
            "api-canary",
            Weight::from_percent(10),
        );
        assert!(
            unrelated.as_ref().is_err_and(|problem| problem
                .to_string()
                .starts_with("GRPCRoute web-grpc has no rule")),
            "{unrelated:?}"
        );
        let missing = RouteProblem::Missing {
            kind: RouteKind::Grpc,
            route: "web-grpc".into(),
            namespace: "shop".into(),
        };
        assert_eq!(
            missing.to_string(),
            "GRPCRoute web-grpc not found in namespace shop: create it, or fix spec.traffic.gatewayAPI.grpcRoutes"
        );
    }
}

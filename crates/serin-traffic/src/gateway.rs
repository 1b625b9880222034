//! Gateway API: Serin sets the weights of the backendRefs that point at
//! `<name>-stable` and `<name>-canary` in the user's HTTPRoutes and GRPCRoutes
//! (whose rules carry backendRefs the same way), and leaves every other field as
//! the user wrote it. How routes are read and written: [`crate::route`].

use serde_json::{Value, json};
use serin_api::{RequestMatch, RouteKind};

use crate::route::{RouteProblem, Shares, cookie_pattern, mirror_feature, set_pair};

/// Whether a backendRef is the Service `service` (not another kind of the name).
fn is_service(backend: &Value, service: &str) -> bool {
    backend["name"] == service
        && backend.get("kind").is_none_or(|kind| kind == "Service")
        && backend.get("group").is_none_or(|group| group == "")
}

/// Sets the canary's traffic in one route's JSON. In every rule with a backendRef
/// to `stable` or `canary`: the stable ref gets `100 - weight` and the canary ref
/// `weight`, in percent when the weight is whole (as operators write them), in
/// millionths otherwise (0.1% is 999000/1000), and a missing one of the two is added
/// after the other, copying its port; a `RequestMirror` filter to the canary is
/// there exactly while mirroring; and while an experiment runs, a copy of the rule
/// that sends only to the canary, whose matches also require the experiment's
/// headers or cookie, is added before it. Serin's rules of an earlier call must be
/// removed first; returns the rules added, for the route's record of them.
pub fn set_weights(
    route: &mut Value,
    (kind, name): (RouteKind, &str),
    stable: &str,
    canary: &str,
    shares: Shares<'_>,
) -> Result<Vec<Value>, RouteProblem> {
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
    let weight = shares.weight;
    let pair = match weight.whole_percent() {
        Some(percent) => (100 - percent, percent),
        None => (weight.rest().millionths(), weight.millionths()),
    };
    let added = |template: &Value, _: &str, service: &str| {
        let mut backend = template.clone();
        backend["name"] = json!(service);
        backend
    };
    let mut owned = false;
    let mut experiment_rules = Vec::new();
    let mut written = Vec::with_capacity(rules.len());
    // The rules are copied, not taken: a problem leaves the route whole.
    for mut rule in rules.iter().cloned() {
        let Some(backends) = rule.get_mut("backendRefs").and_then(Value::as_array_mut) else {
            written.push(rule);
            continue;
        };
        if !set_pair(backends, is_service, added, (stable, canary), pair) {
            written.push(rule);
            continue;
        }
        owned = true;
        let canary_ref = backends
            .iter()
            .find(|backend| is_service(backend, canary))
            .map(reference)
            .unwrap_or_else(|| json!({"name": canary}));
        set_mirror(&mut rule, canary, &canary_ref, shares.mirror);
        if !shares.experiment.is_empty() {
            let experiment =
                experiment_rule(&rule, &canary_ref, shares.experiment).ok_or_else(|| {
                    RouteProblem::ExperimentTooLarge {
                        kind,
                        route: name.to_owned(),
                    }
                })?;
            experiment_rules.push(experiment.clone());
            written.push(experiment);
        }
        written.push(rule);
    }
    *rules = written;
    if owned {
        Ok(experiment_rules)
    } else {
        Err(problem())
    }
}

/// A backendRef reduced to what names its backend (for a mirror filter's, which
/// takes no weight or filters).
fn reference(backend: &Value) -> Value {
    let mut reference = serde_json::Map::new();
    for field in ["group", "kind", "name", "namespace", "port"] {
        if let Some(value) = backend.get(field) {
            reference.insert(field.to_owned(), value.clone());
        }
    }
    Value::Object(reference)
}

/// Removes the rule's `RequestMirror` filters to the canary, and adds one that
/// mirrors `percent` of the rule's requests to it, when mirroring.
fn set_mirror(rule: &mut Value, canary: &str, canary_ref: &Value, percent: Option<u32>) {
    let mut filters = match rule.get_mut("filters").map(Value::take) {
        Some(Value::Array(filters)) => filters,
        _ => Vec::new(),
    };
    filters.retain(|filter| {
        !(filter["type"] == "RequestMirror"
            && is_service(&filter["requestMirror"]["backendRef"], canary))
    });
    if let Some(percent) = percent {
        // A whole mirror leaves `percent` out, so a gateway that mirrors but
        // cannot mirror a share still takes it.
        let mut mirror = json!({"backendRef": canary_ref});
        if mirror_feature(percent) != mirror_feature(100) {
            mirror["percent"] = json!(percent);
        }
        filters.push(json!({"type": "RequestMirror", "requestMirror": mirror}));
    }
    match rule.as_object_mut() {
        Some(rule) if filters.is_empty() => {
            rule.remove("filters");
        }
        Some(rule) => {
            rule.insert("filters".into(), Value::Array(filters));
        }
        None => {}
    }
}

/// The experiment's copy of `rule`: each of its matches (the implicit match-all
/// when it has none) combined with each of the experiment's, and only the canary
/// as backend. A header the rule already matches on takes the experiment's value.
/// No name: rule names are unique within a route. None when the copy would break
/// Gateway API's limits (64 matches a rule, 16 headers a match), which the API
/// server would refuse.
fn experiment_rule(rule: &Value, canary_ref: &Value, experiment: &[RequestMatch]) -> Option<Value> {
    let mut copy = rule.clone();
    let matches = match rule.get("matches").and_then(Value::as_array) {
        Some(matches) if !matches.is_empty() => matches.clone(),
        _ => vec![json!({})],
    };
    let mut combined = Vec::new();
    for original in &matches {
        for wanted in experiment {
            let mut headers: Vec<Value> =
                original["headers"].as_array().cloned().unwrap_or_default();
            let mut add = |name: &str, kind: &str, value: String| {
                headers.retain(|h| {
                    !h["name"]
                        .as_str()
                        .is_some_and(|n| n.eq_ignore_ascii_case(name))
                });
                headers.push(json!({"type": kind, "name": name, "value": value}));
            };
            for header in &wanted.headers {
                add(&header.name, "Exact", header.value.clone());
            }
            if let Some(cookie) = &wanted.cookie {
                add("Cookie", "RegularExpression", cookie_pattern(cookie));
            }
            if headers.len() > MAX_HEADERS {
                return None;
            }
            let mut matched = original.clone();
            matched["headers"] = Value::Array(headers);
            combined.push(matched);
        }
    }
    if combined.len() > MAX_MATCHES {
        return None;
    }
    copy["matches"] = Value::Array(combined);
    copy["backendRefs"] = json!([canary_ref]);
    if let Some(copy) = copy.as_object_mut() {
        copy.remove("name");
    }
    Some(copy)
}

/// Gateway API's most header matches in one match.
const MAX_HEADERS: usize = 16;
/// Gateway API's most matches in one rule.
const MAX_MATCHES: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Target;
    use serin_api::Weight;

    /// Sets `weight` through the route's setter, as the controller does.
    fn set_weights(
        value: &mut Value,
        route: (RouteKind, &str),
        stable: &str,
        canary: &str,
        weight: Weight,
    ) -> Result<bool, RouteProblem> {
        let target = Target {
            stable,
            canary,
            namespace: "shop",
            subsets_of: None,
        };
        let shares = Shares {
            weight,
            ..Shares::default()
        };
        crate::route::set_weights(value, route, &[], target, shares)
    }

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

    fn staged(weight: Weight, mirror: Option<u32>, experiment: &[RequestMatch]) -> Shares<'_> {
        Shares {
            weight,
            mirror,
            experiment,
            ..Shares::default()
        }
    }

    fn set_staged(value: &mut Value, shares: Shares<'_>) -> Result<bool, RouteProblem> {
        let target = Target {
            stable: "web-stable",
            canary: "web-canary",
            namespace: "shop",
            subsets_of: None,
        };
        crate::route::set_weights(value, HTTP_WEB, &[], target, shares)
    }

    fn matches(yaml: &str) -> Vec<RequestMatch> {
        serde_norway::from_str(yaml).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_mirror_filter_to_the_canary_is_there_exactly_while_mirroring() {
        let mut value = route(json!([{"name": "web-stable", "port": 80}]));
        set_staged(&mut value, staged(Weight::ZERO, None, &[])).ok();
        let weighted = value.clone();
        assert_eq!(
            set_staged(&mut value, staged(Weight::ZERO, Some(20), &[])),
            Ok(true)
        );
        assert_eq!(
            value["spec"]["rules"][1]["filters"],
            json!([
                {"type": "RequestHeaderModifier", "requestHeaderModifier": {"add": [{"name": "x", "value": "y"}]}},
                {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "web-canary", "port": 80}, "percent": 20}}
            ])
        );
        assert_eq!(
            set_staged(&mut value, staged(Weight::ZERO, Some(20), &[])),
            Ok(false),
            "the same mirror again changes nothing"
        );
        assert_eq!(
            set_staged(&mut value, staged(Weight::ZERO, None, &[])),
            Ok(true)
        );
        assert_eq!(value, weighted, "the operator's filter stays, Serin's goes");
    }

    #[test]
    fn an_experiment_adds_a_rule_to_the_canary_before_the_weighted_one_and_removes_it_after() {
        let mut value = route(json!([{"name": "web-stable", "port": 80}]));
        set_staged(&mut value, staged(Weight::ZERO, None, &[])).ok();
        let weighted = value.clone();
        let experiment = matches(
            "[{headers: [{name: X-Canary, value: 'yes'}]}, {cookie: {name: canary, value: always}}]",
        );
        assert_eq!(
            set_staged(&mut value, staged(Weight::ZERO, None, &experiment)),
            Ok(true)
        );
        let rules = &value["spec"]["rules"];
        assert_eq!(rules.as_array().map(Vec::len), Some(3));
        assert_eq!(rules[0], weighted["spec"]["rules"][0]);
        assert_eq!(
            rules[1]["matches"],
            json!([
                {"headers": [{"type": "Exact", "name": "X-Canary", "value": "yes"}]},
                {"headers": [{"type": "RegularExpression", "name": "Cookie", "value": "^(.*;\\s*)?canary=always(\\s*;.*)?$"}]}
            ])
        );
        assert_eq!(
            rules[1]["backendRefs"],
            json!([{"name": "web-canary", "port": 80}])
        );
        assert_eq!(rules[1]["filters"], weighted["spec"]["rules"][1]["filters"]);
        assert_eq!(rules[2], weighted["spec"]["rules"][1]);
        let record = value["metadata"]["annotations"][serin_api::EXPERIMENT_ANNOTATION].clone();
        assert_eq!(record, json!(json!([rules[1]]).to_string()));
        assert_eq!(
            set_staged(&mut value, staged(Weight::ZERO, None, &experiment)),
            Ok(false),
            "the same experiment again changes nothing"
        );
        // The weighted step after it: Serin's rule and its record go, nothing else.
        assert_eq!(
            set_staged(&mut value, staged(Weight::from_percent(10), None, &[])),
            Ok(true)
        );
        let mut expected = weighted.clone();
        set_staged(&mut expected, staged(Weight::from_percent(10), None, &[])).ok();
        assert_eq!(value, expected);
        assert_eq!(
            value["metadata"]["annotations"][serin_api::EXPERIMENT_ANNOTATION],
            Value::Null
        );
    }

    /// What the API server stores for rules Serin wrote: the schema's defaults
    /// filled in.
    fn defaulted(value: &mut Value) {
        for rule in value["spec"]["rules"].as_array_mut().into_iter().flatten() {
            for backend in rule["backendRefs"].as_array_mut().into_iter().flatten() {
                backend["group"] = json!("");
                backend["kind"] = json!("Service");
                if backend.get("weight").is_none() {
                    backend["weight"] = json!(1);
                }
            }
            match rule["matches"].as_array_mut() {
                Some(matches) => matches.iter_mut().for_each(|m| {
                    if m.get("path").is_none() {
                        m["path"] = json!({"type": "PathPrefix", "value": "/"});
                    }
                }),
                None => rule["matches"] = json!([{"path": {"type": "PathPrefix", "value": "/"}}]),
            }
        }
    }

    #[test]
    fn serins_rule_is_recognised_with_the_api_servers_defaults_filled_in() {
        let mut value = route(json!([{"name": "web-stable", "port": 80}]));
        let experiment = matches("[{headers: [{name: x-canary, value: 'yes'}]}]");
        set_staged(&mut value, staged(Weight::ZERO, None, &experiment)).ok();
        defaulted(&mut value);
        assert_eq!(
            set_staged(&mut value, staged(Weight::ZERO, None, &experiment)),
            Ok(false),
            "the stored experiment rule is Serin's, as written"
        );
        set_staged(&mut value, staged(Weight::from_percent(10), None, &[])).ok();
        let rules = value["spec"]["rules"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(rules.len(), 2, "{rules:?}");
        assert_eq!(weights_of(&rules[1]), (Some(90), Some(10)));
    }

    fn weights_of(rule: &Value) -> (Option<i64>, Option<i64>) {
        let weight = |name: &str| {
            rule["backendRefs"]
                .as_array()
                .and_then(|b| b.iter().find(|b| b["name"] == name))
                .and_then(|b| b["weight"].as_i64())
        };
        (weight("web-stable"), weight("web-canary"))
    }

    #[test]
    fn an_experiment_keeps_the_rules_own_matches_and_its_header_takes_a_clashing_one() {
        let mut value = route(json!([{"name": "web-stable", "port": 80}]));
        value["spec"]["rules"][1]["matches"] = json!([
            {"path": {"type": "PathPrefix", "value": "/api"}, "headers": [{"name": "x-canary", "value": "no"}, {"name": "x-team", "value": "a"}]},
            {"path": {"type": "Exact", "value": "/"}}
        ]);
        let experiment = matches("[{headers: [{name: X-Canary, value: 'yes'}]}]");
        set_staged(&mut value, staged(Weight::ZERO, None, &experiment)).ok();
        assert_eq!(
            value["spec"]["rules"][1]["matches"],
            json!([
                {"path": {"type": "PathPrefix", "value": "/api"}, "headers": [{"name": "x-team", "value": "a"}, {"type": "Exact", "name": "X-Canary", "value": "yes"}]},
                {"path": {"type": "Exact", "value": "/"}, "headers": [{"type": "Exact", "name": "X-Canary", "value": "yes"}]}
            ])
        );
    }

    #[test]
    fn the_cookie_pattern_matches_the_cookie_among_others_and_nothing_like_it() {
        let cookie: serin_api::CookieMatch =
            serde_norway::from_str("{name: canary, value: a.b}").unwrap_or_else(|e| panic!("{e}"));
        let pattern = regex::Regex::new(&cookie_pattern(&cookie)).unwrap_or_else(|e| panic!("{e}"));
        for header in [
            "canary=a.b",
            "x=1; canary=a.b",
            "canary=a.b; x=1",
            "x=1;canary=a.b;y=2",
        ] {
            assert!(pattern.is_match(header), "{header}");
        }
        for header in [
            "canary=axb",
            "xcanary=a.b",
            "canary=a.bc",
            "canary=a",
            "x=canary=a.b",
        ] {
            assert!(!pattern.is_match(header), "{header}");
        }
    }

    #[test]
    fn an_experiment_gateway_api_cannot_hold_is_a_problem_and_changes_nothing() {
        let mut value = route(json!([{"name": "web-stable", "port": 80}]));
        let headers: Vec<Value> = (0..12)
            .map(|i| json!({"name": format!("x-{i}"), "value": "1"}))
            .collect();
        value["spec"]["rules"][1]["matches"] = json!([{"headers": headers}]);
        let before = value.clone();
        let experiment = matches(
            "[{headers: [{name: a, value: '1'}, {name: b, value: '1'}, {name: c, value: '1'}, {name: d, value: '1'}, {name: e, value: '1'}]}]",
        );
        let problem = set_staged(&mut value, staged(Weight::ZERO, None, &experiment));
        assert!(
            problem
                .as_ref()
                .is_err_and(|p| p.to_string().contains("more than Gateway API allows")),
            "{problem:?}"
        );
        assert_eq!(value["spec"], before["spec"]);
    }
}

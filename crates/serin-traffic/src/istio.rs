//! Istio: Serin sets the weights of the HTTP route destinations whose host is
//! `<name>-stable` or `<name>-canary` in the user's VirtualService, and leaves
//! every other field as the user wrote it. How routes are read and written:
//! [`crate::route`].
//!
//! A destination host names a Service short (`web-stable`), with its namespace
//! (`web-stable.shop`) or fully (`web-stable.shop.svc.cluster.local`, whatever the
//! cluster domain); a destination Serin adds copies the other one's form and port.
//! Istio weights are whole percents, so steps are whole with this router (the
//! API server refuses fractions).
//!
//! With a DestinationRule (`spec.traffic.istio.destinationRule`) the destinations
//! are instead the subsets `stable` and `canary` of host `<name>`, and Serin keeps
//! those two subsets selecting the revisions.

use serde_json::{Value, json};
use serin_api::{REVISION_LABEL, RequestMatch};

use crate::route::{RouteProblem, Shares, Target, cookie_pattern, set_pair};

/// Whether `host` names Service `service` in `namespace`.
fn names_service(host: &str, service: &str, namespace: &str) -> bool {
    let Some(rest) = host.strip_prefix(service) else {
        return false;
    };
    let within = format!(".{namespace}");
    rest.is_empty()
        || rest == within
        || rest == format!("{within}.svc")
        || rest.starts_with(&format!("{within}.svc."))
}

/// Sets the canary's traffic in one VirtualService's JSON. In every HTTP route (of
/// those named in `only`, when it names any) with a destination to `target.stable`
/// or `target.canary`: stable gets `100 - weight` and the canary `weight`, and a
/// missing one of the two is added after the other; the route mirrors
/// `shares.mirror` percent of its requests to the canary exactly while mirroring;
/// and while an experiment runs, a copy of the route that sends only to the canary,
/// whose matches also require the experiment's headers or cookie, is put before it
/// (Istio takes the first route that matches). Serin's routes of an earlier call
/// must be removed first; returns the routes added, for the record of them.
pub fn set_weights(
    virtual_service: &mut Value,
    name: &str,
    only: &[String],
    target: Target<'_>,
    shares: Shares<'_>,
) -> Result<Vec<Value>, RouteProblem> {
    let no_destination = || RouteProblem::NoDestination {
        route: name.to_owned(),
        stable: target.stable.to_owned(),
        canary: target.canary.to_owned(),
    };
    let Some(routes) = virtual_service
        .pointer_mut("/spec/http")
        .and_then(Value::as_array_mut)
    else {
        return Err(no_destination());
    };
    let route_name = |route: &Value| route["name"].as_str().map(str::to_owned);
    if let Some(missing) = only.iter().find(|wanted| {
        !routes
            .iter()
            .any(|r| route_name(r).as_ref() == Some(wanted))
    }) {
        let known: Vec<String> = routes.iter().filter_map(route_name).collect();
        return Err(RouteProblem::UnknownHttpRoute {
            route: name.to_owned(),
            name: missing.clone(),
            known: if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            },
        });
    }
    let weight = shares.weight;
    let percent = weight
        .whole_percent()
        .unwrap_or_else(|| weight.percent().round() as u32);
    let arms = Arms::of(target);
    let names = |d: &Value, arm: &str| arms.names(&d["destination"], arm);
    let added = |template: &Value, template_arm: &str, arm: &str| {
        let mut destination = template.clone();
        arms.rename(&mut destination["destination"], template_arm, arm);
        destination
    };
    let services = arms.keys();
    let mut owned = false;
    let mut experiment_routes = Vec::new();
    let mut written = Vec::with_capacity(routes.len());
    // The routes are copied, not taken: a problem leaves the VirtualService whole.
    for mut route in routes.iter().cloned() {
        let ours = only.is_empty() || route_name(&route).is_some_and(|n| only.contains(&n));
        let Some(destinations) = route.get_mut("route").and_then(Value::as_array_mut) else {
            written.push(route);
            continue;
        };
        if !ours
            || !set_pair(
                destinations,
                names,
                added,
                services,
                (100 - percent, percent),
            )
        {
            written.push(route);
            continue;
        }
        owned = true;
        let canary_destination = destinations
            .iter()
            .find(|d| names(d, services.1))
            .map(|d| d["destination"].clone())
            .unwrap_or_else(|| json!({"host": target.canary}));
        set_mirror(&mut route, name, arms, &canary_destination, shares.mirror)?;
        if !shares.experiment.is_empty() {
            let experiment = experiment_route(&route, &canary_destination, shares.experiment);
            experiment_routes.push(experiment.clone());
            written.push(experiment);
        }
        written.push(route);
    }
    *routes = written;
    if owned {
        Ok(experiment_routes)
    } else {
        Err(no_destination())
    }
}

/// Points the DestinationRule's subsets `stable` and `canary` at the two revisions
/// (by their `serin.dev/revision` label), adding either when it is missing, and
/// keeps every other subset and field. The rule must be for the Service `<name>`.
pub fn set_subsets(
    rule: &mut Value,
    name: &str,
    target: Target<'_>,
    (stable, canary): (&str, &str),
) -> Result<(), RouteProblem> {
    let service = target.subsets_of.unwrap_or(target.stable);
    let host = rule["spec"]["host"].as_str().unwrap_or_default().to_owned();
    if !names_service(&host, service, target.namespace) {
        return Err(RouteProblem::DestinationRuleHost {
            rule: name.to_owned(),
            host,
            service: service.to_owned(),
        });
    }
    let Some(spec) = rule["spec"].as_object_mut() else {
        return Ok(());
    };
    let subsets = spec.entry("subsets").or_insert_with(|| json!([]));
    let Some(subsets) = subsets.as_array_mut() else {
        return Ok(());
    };
    for (key, revision) in [(STABLE_SUBSET, stable), (CANARY_SUBSET, canary)] {
        let labels = json!({REVISION_LABEL: revision});
        match subsets.iter_mut().find(|subset| subset["name"] == key) {
            Some(subset) => subset["labels"] = labels,
            None => subsets.push(json!({"name": key, "labels": labels})),
        }
    }
    Ok(())
}

/// How destinations name the two revisions: by host (`<name>-stable`,
/// `<name>-canary`), or as subsets `stable` and `canary` of the host `<name>`,
/// which a DestinationRule defines.
#[derive(Clone, Copy)]
struct Arms<'a> {
    target: Target<'a>,
}

impl<'a> Arms<'a> {
    fn of(target: Target<'a>) -> Self {
        Self { target }
    }

    /// The names [`set_pair`] tells the two arms apart by.
    fn keys(self) -> (&'a str, &'a str) {
        match self.target.subsets_of {
            Some(_) => (STABLE_SUBSET, CANARY_SUBSET),
            None => (self.target.stable, self.target.canary),
        }
    }

    /// Whether `destination` (host, subset, port) sends to the arm `key` names.
    fn names(self, destination: &Value, key: &str) -> bool {
        let host = destination["host"].as_str().unwrap_or_default();
        match self.target.subsets_of {
            Some(service) => {
                names_service(host, service, self.target.namespace) && destination["subset"] == key
            }
            None => names_service(host, key, self.target.namespace),
        }
    }

    /// Turns a destination of the arm `from` into one of the arm `to`, keeping the
    /// host's form and the port.
    fn rename(self, destination: &mut Value, from: &str, to: &str) {
        match self.target.subsets_of {
            Some(_) => destination["subset"] = json!(to),
            None => {
                let host = destination["host"].as_str().unwrap_or_default();
                destination["host"] = json!(host.replacen(from, to, 1));
            }
        }
    }
}

/// The subsets of the host `<name>` a DestinationRule defines for the two revisions.
pub const STABLE_SUBSET: &str = "stable";
/// See [`STABLE_SUBSET`].
pub const CANARY_SUBSET: &str = "canary";

/// Mirrors `percent` of the route's requests to the canary, or stops Serin's
/// mirror. Istio takes one `mirror` per route: one to another host is the
/// operator's, and Serin will not replace it.
fn set_mirror(
    route: &mut Value,
    name: &str,
    arms: Arms<'_>,
    canary: &Value,
    percent: Option<u32>,
) -> Result<(), RouteProblem> {
    let Some(fields) = route.as_object_mut() else {
        return Ok(());
    };
    let ours = fields
        .get("mirror")
        .map(|mirror| arms.names(mirror, arms.keys().1));
    let current = fields
        .get("mirror")
        .and_then(|mirror| mirror["host"].as_str())
        .map(str::to_owned);
    match current {
        Some(host) if ours == Some(false) => {
            if percent.is_some() {
                return Err(RouteProblem::MirrorTaken {
                    route: name.to_owned(),
                    host,
                });
            }
            return Ok(());
        }
        _ => {}
    }
    match percent {
        Some(percent) => {
            fields.insert("mirror".into(), canary.clone());
            fields.insert("mirrorPercentage".into(), json!({"value": percent}));
        }
        None if current.is_some() => {
            fields.remove("mirror");
            fields.remove("mirrorPercentage");
        }
        None => {}
    }
    Ok(())
}

/// The experiment's copy of `route`, named after it: each of its matches (match-all
/// when it has none) combined with each of the experiment's, and only the canary as
/// destination. Istio header names are lowercase; a header the route already
/// matches on takes the experiment's value.
fn experiment_route(route: &Value, canary: &Value, experiment: &[RequestMatch]) -> Value {
    let mut copy = route.clone();
    let matches = match route.get("match").and_then(Value::as_array) {
        Some(matches) if !matches.is_empty() => matches.clone(),
        _ => vec![json!({})],
    };
    let mut combined = Vec::new();
    for original in &matches {
        for wanted in experiment {
            let mut matched = original.clone();
            let mut headers = match original.get("headers") {
                Some(Value::Object(headers)) => headers.clone(),
                _ => serde_json::Map::new(),
            };
            for header in &wanted.headers {
                headers.insert(
                    header.name.to_ascii_lowercase(),
                    json!({"exact": header.value}),
                );
            }
            if let Some(cookie) = &wanted.cookie {
                headers.insert("cookie".into(), json!({"regex": cookie_pattern(cookie)}));
            }
            matched["headers"] = Value::Object(headers);
            combined.push(matched);
        }
    }
    let name = route["name"].as_str().unwrap_or("route");
    copy["name"] = json!(format!("{name}-serin-experiment"));
    copy["match"] = Value::Array(combined);
    copy["route"] = json!([{"destination": canary, "weight": 100}]);
    if let Some(fields) = copy.as_object_mut() {
        fields.remove("mirror");
        fields.remove("mirrorPercentage");
    }
    copy
}

#[cfg(test)]
mod tests {
    use super::*;
    use serin_api::{RouteKind, Weight};

    /// Sets `weight` through the route's setter, as the controller does.
    fn set_weights(
        value: &mut Value,
        name: &str,
        only: &[String],
        target: Target<'_>,
        weight: Weight,
    ) -> Result<bool, RouteProblem> {
        let shares = Shares {
            weight,
            ..Shares::default()
        };
        let route = (RouteKind::IstioVirtualService, name);
        crate::route::set_weights(value, route, only, target, shares)
    }

    const TARGET: Target<'static> = Target {
        stable: "web-stable",
        canary: "web-canary",
        namespace: "shop",
        subsets_of: None,
    };

    fn virtual_service(host: &str) -> Value {
        json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "3"},
            "spec": {
                "hosts": ["web.example"],
                "gateways": ["edge"],
                "http": [
                    {"name": "static", "match": [{"uri": {"prefix": "/static"}}],
                     "route": [{"destination": {"host": "cdn"}}]},
                    {"name": "primary", "retries": {"attempts": 3},
                     "route": [{"destination": {"host": host, "port": {"number": 80}}}]}
                ]
            }
        })
    }

    #[test]
    fn adds_the_canary_in_the_stable_hosts_form_and_sets_both_weights() {
        for host in [
            "web-stable",
            "web-stable.shop",
            "web-stable.shop.svc",
            "web-stable.shop.svc.cluster.local",
        ] {
            let mut value = virtual_service(host);
            let before = value.clone();
            let set = set_weights(&mut value, "web", &[], TARGET, Weight::from_percent(25));
            assert_eq!(set, Ok(true), "{host}");
            let canary = host.replacen("web-stable", "web-canary", 1);
            assert_eq!(
                value["spec"]["http"][1]["route"],
                json!([
                    {"destination": {"host": host, "port": {"number": 80}}, "weight": 75},
                    {"destination": {"host": canary, "port": {"number": 80}}, "weight": 25}
                ])
            );
            assert_eq!(value["spec"]["http"][0], before["spec"]["http"][0]);
            assert_eq!(
                value["spec"]["http"][1]["retries"],
                before["spec"]["http"][1]["retries"]
            );
            assert_eq!(value["spec"]["hosts"], before["spec"]["hosts"]);
        }
    }

    #[test]
    fn a_host_in_another_namespace_or_with_a_longer_name_is_not_ours() {
        for host in [
            "web-stable.blog",
            "web-stable-old",
            "web-stable.blog.svc.cluster.local",
        ] {
            let mut value = virtual_service(host);
            assert!(
                matches!(
                    set_weights(&mut value, "web", &[], TARGET, Weight::from_percent(25)),
                    Err(RouteProblem::NoDestination { .. })
                ),
                "{host}"
            );
        }
    }

    #[test]
    fn only_the_named_http_routes_are_set_and_an_unknown_name_is_a_problem() {
        let mut value = virtual_service("web-stable");
        value["spec"]["http"][0]["route"] = json!([{"destination": {"host": "web-stable"}}]);
        let only = ["primary".to_owned()];
        assert_eq!(
            set_weights(&mut value, "web", &only, TARGET, Weight::from_percent(10)),
            Ok(true)
        );
        assert_eq!(
            value["spec"]["http"][0]["route"],
            json!([{"destination": {"host": "web-stable"}}]),
            "a route not named is left alone"
        );
        assert_eq!(value["spec"]["http"][1]["route"][1]["weight"], json!(10));
        let unknown = set_weights(
            &mut value,
            "web",
            &["canary".to_owned()],
            TARGET,
            Weight::ZERO,
        );
        assert_eq!(
            unknown.map_err(|problem| problem.to_string()),
            Err("VirtualService web has no HTTP route named canary (its named routes: static, primary): fix spec.traffic.istio.routes".to_owned())
        );
    }

    #[test]
    fn reports_no_change_when_weights_are_already_set() {
        let mut value = virtual_service("web-stable");
        set_weights(&mut value, "web", &[], TARGET, Weight::from_percent(50)).ok();
        assert_eq!(
            set_weights(&mut value, "web", &[], TARGET, Weight::from_percent(50)),
            Ok(false)
        );
    }

    fn set_staged(
        value: &mut Value,
        mirror: Option<u32>,
        experiment: &[RequestMatch],
    ) -> Result<bool, RouteProblem> {
        let shares = Shares {
            weight: Weight::ZERO,
            mirror,
            experiment,
            ..Shares::default()
        };
        let route = (RouteKind::IstioVirtualService, "web");
        crate::route::set_weights(value, route, &[], TARGET, shares)
    }

    #[test]
    fn mirrors_to_the_canary_while_mirroring_and_never_over_the_operators_mirror() {
        let mut value = virtual_service("web-stable.shop.svc.cluster.local");
        set_staged(&mut value, None, &[]).ok();
        let weighted = value.clone();
        assert_eq!(set_staged(&mut value, Some(20), &[]), Ok(true));
        let primary = &value["spec"]["http"][1];
        assert_eq!(
            primary["mirror"],
            json!({"host": "web-canary.shop.svc.cluster.local", "port": {"number": 80}})
        );
        assert_eq!(primary["mirrorPercentage"], json!({"value": 20}));
        assert_eq!(set_staged(&mut value, None, &[]), Ok(true));
        assert_eq!(value, weighted);

        value["spec"]["http"][1]["mirror"] = json!({"host": "shadow"});
        let taken = set_staged(&mut value, Some(20), &[]);
        assert!(
            matches!(&taken, Err(RouteProblem::MirrorTaken { host, .. }) if host == "shadow"),
            "{taken:?}"
        );
        assert_eq!(set_staged(&mut value, None, &[]), Ok(false));
        assert_eq!(
            value["spec"]["http"][1]["mirror"],
            json!({"host": "shadow"})
        );
    }

    #[test]
    fn an_experiment_puts_a_route_to_the_canary_first_and_removes_only_it() {
        let mut value = virtual_service("web-stable");
        value["spec"]["http"][1]["match"] = json!([{"uri": {"prefix": "/api"}}]);
        set_staged(&mut value, None, &[]).ok();
        let weighted = value.clone();
        let experiment: Vec<RequestMatch> = serde_norway::from_str(
            "[{headers: [{name: X-Canary, value: 'yes'}], cookie: {name: canary, value: always}}]",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(set_staged(&mut value, None, &experiment), Ok(true));
        let routes = &value["spec"]["http"];
        assert_eq!(routes[0], weighted["spec"]["http"][0]);
        assert_eq!(
            routes[1],
            json!({
                "name": "primary-serin-experiment",
                "retries": {"attempts": 3},
                "match": [{"uri": {"prefix": "/api"}, "headers": {
                    "x-canary": {"exact": "yes"},
                    "cookie": {"regex": "^(.*;\\s*)?canary=always(\\s*;.*)?$"}
                }}],
                "route": [{"destination": {"host": "web-canary", "port": {"number": 80}}, "weight": 100}]
            })
        );
        assert_eq!(routes[2], weighted["spec"]["http"][1]);
        assert_eq!(set_staged(&mut value, None, &experiment), Ok(false));
        assert_eq!(set_staged(&mut value, None, &[]), Ok(true));
        assert_eq!(value, weighted);
    }

    const SUBSETS: Target<'static> = Target {
        subsets_of: Some("web"),
        ..TARGET
    };

    #[test]
    fn the_destination_rules_two_subsets_select_the_revisions_and_nothing_else_changes() {
        let mut rule = json!({
            "metadata": {"name": "web"},
            "spec": {"host": "web.shop.svc.cluster.local",
                     "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}},
                     "subsets": [{"name": "legacy", "labels": {"track": "old"}},
                                 {"name": "stable", "labels": {"version": "v1"}}]}
        });
        let before = rule.clone();
        assert_eq!(
            set_subsets(&mut rule, "web", SUBSETS, ("aaaa", "bbbb")),
            Ok(())
        );
        assert_eq!(
            rule["spec"]["subsets"],
            json!([{"name": "legacy", "labels": {"track": "old"}},
                   {"name": "stable", "labels": {"serin.dev/revision": "aaaa"}},
                   {"name": "canary", "labels": {"serin.dev/revision": "bbbb"}}])
        );
        assert_eq!(
            rule["spec"]["trafficPolicy"],
            before["spec"]["trafficPolicy"]
        );
        let mut other = json!({"spec": {"host": "api"}});
        assert!(matches!(
            set_subsets(&mut other, "api-rule", SUBSETS, ("aaaa", "bbbb")),
            Err(RouteProblem::DestinationRuleHost { .. })
        ));
    }

    #[test]
    fn with_subsets_the_weights_mirror_and_experiment_name_the_subsets_of_one_host() {
        let mut value = virtual_service("web.shop.svc.cluster.local");
        value["spec"]["http"][1]["route"][0]["destination"]["subset"] = json!("stable");
        value["spec"]["http"][1]["route"]
            .as_array_mut()
            .unwrap_or_else(|| unreachable!())
            .push(json!({"destination": {"host": "web", "subset": "legacy"}, "weight": 0}));
        let route = (RouteKind::IstioVirtualService, "web");
        let weighted = Shares {
            weight: Weight::from_percent(10),
            ..Shares::default()
        };
        assert_eq!(
            crate::route::set_weights(&mut value, route, &[], SUBSETS, weighted),
            Ok(true)
        );
        let destination = |subset: &str| json!({"host": "web.shop.svc.cluster.local", "subset": subset, "port": {"number": 80}});
        assert_eq!(
            value["spec"]["http"][1]["route"],
            json!([
                {"destination": destination("stable"), "weight": 90},
                {"destination": {"host": "web", "subset": "legacy"}, "weight": 0},
                {"destination": destination("canary"), "weight": 10}
            ])
        );
        let mirrored = Shares {
            mirror: Some(20),
            ..Shares::default()
        };
        crate::route::set_weights(&mut value, route, &[], SUBSETS, mirrored).ok();
        assert_eq!(value["spec"]["http"][1]["mirror"], destination("canary"));
        let experiment: Vec<RequestMatch> =
            serde_norway::from_str("[{headers: [{name: x-canary, value: 'yes'}]}]")
                .unwrap_or_else(|e| panic!("{e}"));
        let experimenting = Shares {
            experiment: &experiment,
            ..Shares::default()
        };
        crate::route::set_weights(&mut value, route, &[], SUBSETS, experimenting).ok();
        assert_eq!(
            value["spec"]["http"][1]["route"],
            json!([{"destination": destination("canary"), "weight": 100}])
        );
        assert_eq!(value["spec"]["http"][2]["mirror"], Value::Null);
    }
}

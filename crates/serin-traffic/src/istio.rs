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

use serde_json::{Value, json};
use serin_api::Weight;

use crate::route::{RouteProblem, Target, set_pair};

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

/// Sets the weights in one VirtualService's JSON: in every HTTP route (of those
/// named in `only`, when it names any) with a destination to `target.stable` or
/// `target.canary`, stable gets `100 - weight` and the canary `weight`; a missing
/// one of the two is added after the other. Returns whether anything changed.
pub fn set_weights(
    virtual_service: &mut Value,
    name: &str,
    only: &[String],
    target: Target<'_>,
    weight: Weight,
) -> Result<bool, RouteProblem> {
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
    let percent = weight
        .whole_percent()
        .unwrap_or_else(|| weight.percent().round() as u32);
    let host_of = |d: &Value| {
        d["destination"]["host"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let names = |d: &Value, service: &str| names_service(&host_of(d), service, target.namespace);
    let added = |template: &Value, template_service: &str, service: &str| {
        let mut destination = template.clone();
        destination["destination"]["host"] =
            json!(host_of(template).replacen(template_service, service, 1));
        destination
    };
    let services = (target.stable, target.canary);
    let mut owned = false;
    let mut changed = false;
    for route in routes.iter_mut() {
        if !only.is_empty() && !route_name(route).is_some_and(|n| only.contains(&n)) {
            continue;
        }
        let Some(destinations) = route.get_mut("route").and_then(Value::as_array_mut) else {
            continue;
        };
        if let Some(set) = set_pair(
            destinations,
            names,
            added,
            services,
            (100 - percent, percent),
        ) {
            owned = true;
            changed |= set;
        }
    }
    if owned {
        Ok(changed)
    } else {
        Err(no_destination())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: Target<'static> = Target {
        stable: "web-stable",
        canary: "web-canary",
        namespace: "shop",
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
}

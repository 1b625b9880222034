//! The route resources Serin sets weights on (Gateway API HTTPRoutes and
//! GRPCRoutes, Istio VirtualServices), read and written the same way.
//!
//! The list that carries the weights (Gateway API's `rules`, Istio's `http`) is
//! read as JSON and written back with server-side apply by Serin's field manager:
//! fields Serin does not know (new API releases, filters, extensions) are kept
//! byte for byte, and every other field of the route (parentRefs, hostnames, gateways,
//! labels) stays owned by whoever wrote it. Both lists are atomic, so the field
//! Serin owns is the list as a whole: no finer ownership exists (see
//! docs/operations.md#routes-in-git for what GitOps tools need). The apply carries
//! the resourceVersion it read, so a concurrent edit is never overwritten (the
//! write fails and the next reconcile starts from the new route).

use std::sync::Arc;

use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use serin_api::{CookieMatch, EXPERIMENT_ANNOTATION, RequestMatch, RouteKind, Weight};

use crate::{Seen, gateway, istio};

/// Why a route cannot carry the weights.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteProblem {
    /// The route does not exist.
    #[error(
        "{} {route} not found in namespace {namespace}: create it, or fix {}", kind.kind(), kind.field()
    )]
    Missing {
        /// Route kind.
        kind: RouteKind,
        /// Route name.
        route: String,
        /// Namespace.
        namespace: String,
    },
    /// No rule of the route sends to the Canary's Services.
    #[error(
        "{} {route} has no rule with a backendRef to Service {stable} or {canary}: point a rule's backendRefs at {stable}", kind.kind()
    )]
    NoBackendRef {
        /// Route kind.
        kind: RouteKind,
        /// Route name.
        route: String,
        /// `<name>-stable`.
        stable: String,
        /// `<name>-canary`.
        canary: String,
    },
    /// No HTTP route of the VirtualService sends to the Canary's Services.
    #[error(
        "VirtualService {route} has no HTTP route with a destination host {stable} or {canary}: point an http route's destination at {stable}"
    )]
    NoDestination {
        /// VirtualService name.
        route: String,
        /// `<name>-stable`.
        stable: String,
        /// `<name>-canary`.
        canary: String,
    },
    /// The HTTP route already mirrors to another host, and Istio takes one mirror.
    #[error(
        "VirtualService {route} already mirrors an HTTP route to {host}, and Istio takes one mirror per route: remove that mirror, or spec.mirror"
    )]
    MirrorTaken {
        /// VirtualService name.
        route: String,
        /// Where it mirrors.
        host: String,
    },
    /// The experiment's copy of a rule would hold more matches or header matches
    /// than Gateway API allows.
    #[error(
        "{} {route}: the experiment's copy of a rule would hold more than Gateway API allows (64 matches a rule, 16 headers a match): match on fewer headers in spec.experiment.match, or on fewer in the rule", kind.kind()
    )]
    ExperimentTooLarge {
        /// Route kind.
        kind: RouteKind,
        /// Route name.
        route: String,
    },
    /// The GatewayClass of a Gateway the route attaches to says it cannot mirror.
    #[error(
        "HTTPRoute {route} attaches to Gateway {gateway} of GatewayClass {class}, whose status.supportedFeatures lack {feature}: it would not mirror (some gateways answer 500 for the whole rule instead); remove spec.mirror, or route through a Gateway that supports it"
    )]
    MirrorUnsupported {
        /// HTTPRoute name.
        route: String,
        /// `namespace/name` of the Gateway.
        gateway: String,
        /// Its GatewayClass.
        class: String,
        /// The Gateway API feature it lacks.
        feature: &'static str,
    },
    /// The DestinationRule is for another host than the Canary's Service.
    #[error(
        "DestinationRule {rule} is for host {host}, not the Service {service}: set its spec.host to {service}, or fix spec.traffic.istio.destinationRule"
    )]
    DestinationRuleHost {
        /// DestinationRule name.
        rule: String,
        /// Its host.
        host: String,
        /// `<name>`.
        service: String,
    },
    /// `spec.traffic.istio.routes` names an HTTP route the VirtualService lacks.
    #[error(
        "VirtualService {route} has no HTTP route named {name} (its named routes: {known}): fix spec.traffic.istio.routes"
    )]
    UnknownHttpRoute {
        /// VirtualService name.
        route: String,
        /// The name it lacks.
        name: String,
        /// The names it has, comma-separated, or "none".
        known: String,
    },
}

/// Errors talking to the API server about routes.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The route is not usable as it is.
    #[error(transparent)]
    Invalid(#[from] RouteProblem),
    /// The API server refused or failed.
    #[error("{} {route}: {source}", kind.kind())]
    Api {
        /// Route kind.
        kind: RouteKind,
        /// Route name.
        route: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The route could not be read or written as JSON.
    #[error("{} {route}: {source}", kind.kind())]
    Json {
        /// Route kind.
        kind: RouteKind,
        /// Route name.
        route: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// The route resource of `kind`.
pub fn route_resource(kind: RouteKind) -> ApiResource {
    let (group, version) = kind.api_version();
    let gvk = GroupVersionKind::gvk(group, version, kind.kind());
    ApiResource::from_gvk_with_plural(&gvk, kind.plural())
}

fn routes_api(client: &Client, namespace: &str, kind: RouteKind) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), namespace, &route_resource(kind))
}

/// What a watch last saw of one route.
#[derive(Clone, Debug)]
pub enum RouteSighting {
    /// The route, as last seen.
    Seen(Arc<DynamicObject>),
    /// The watch has no such route.
    Absent,
    /// No watch of this kind runs (its CRD was not served when the controller
    /// started): the route is read from the API server.
    NotWatched,
}

/// The routes a Canary names, and for Istio the HTTP routes within its
/// VirtualService to set (none: every one that sends to the Canary's Services).
#[derive(Clone, Debug, Default)]
pub struct Routes<'a> {
    /// Each route resource, with its kind.
    pub routes: Vec<(RouteKind, &'a str)>,
    /// `spec.traffic.istio.routes`.
    pub istio_routes: &'a [String],
    /// `spec.mirror.percent`: the routes must be able to mirror that share.
    pub mirror: Option<u32>,
    /// `spec.experiment.match`: the routes must be able to hold its rules.
    pub experiment: &'a [RequestMatch],
}

impl Routes<'_> {
    /// Whether the VirtualService's destinations are subsets of one host, which
    /// a DestinationRule defines.
    pub fn subsets(&self) -> bool {
        self.routes
            .iter()
            .any(|(kind, _)| *kind == RouteKind::IstioDestinationRule)
    }
}

/// Where the weights go in one route resource.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// `<name>-stable`.
    pub stable: &'a str,
    /// `<name>-canary`.
    pub canary: &'a str,
    /// The Canary's namespace (Istio hosts may name it).
    pub namespace: &'a str,
    /// Istio with a DestinationRule: the Service `<name>` whose subsets `stable`
    /// and `canary` the destinations name instead of the two Services.
    pub subsets_of: Option<&'a str>,
}

/// What the routes carry to the canary: its weight, and beside it copies of
/// stable's requests (mirroring) or the requests an experiment matches.
#[derive(Clone, Copy, Debug, Default)]
pub struct Shares<'a> {
    /// Share of the requests.
    pub weight: Weight,
    /// Percent of stable's requests mirrored to the canary; None: no mirror.
    pub mirror: Option<u32>,
    /// Requests matching any of these go to the canary; empty: no experiment.
    pub experiment: &'a [RequestMatch],
    /// The revisions the stable and canary arms run (a DestinationRule's subsets
    /// select them by label).
    pub revisions: (&'a str, &'a str),
}

/// A regular expression that matches a `Cookie` header carrying `cookie` with
/// exactly its value, among any others, whether the router matches the whole
/// header (Envoy) or any part of it (Go, in Traefik).
pub(crate) fn cookie_pattern(cookie: &CookieMatch) -> String {
    format!(
        "^(.*;\\s*)?{}={}(\\s*;.*)?$",
        regex::escape(&cookie.name),
        regex::escape(&cookie.value)
    )
}

/// Sets the weights of one list of weighted targets (a Gateway API rule's
/// backendRefs, an Istio HTTP route's destinations): the target `names` says is
/// `stable` gets `shares.0` and `canary`'s `shares.1`; a missing one of the two is
/// `added` after the other, from it (the template, the service it names, and the
/// service to name). False when the list names neither: it is not Serin's to set.
pub(crate) fn set_pair(
    targets: &mut Vec<Value>,
    names: impl Fn(&Value, &str) -> bool,
    added: impl Fn(&Value, &str, &str) -> Value,
    (stable, canary): (&str, &str),
    (stable_share, canary_share): (u32, u32),
) -> bool {
    let stable_at = targets.iter().position(|t| names(t, stable));
    let canary_at = targets.iter().position(|t| names(t, canary));
    let (template, template_service) = match (stable_at, canary_at) {
        (None, None) => return false,
        (Some(at), _) => (targets[at].clone(), stable),
        (None, Some(at)) => (targets[at].clone(), canary),
    };
    for (service, at, share) in [
        (stable, stable_at, stable_share),
        (canary, canary_at, canary_share),
    ] {
        match at {
            Some(index) => targets[index]["weight"] = json!(share),
            None => {
                let mut target = added(&template, template_service, service);
                target["weight"] = json!(share);
                targets.push(target);
            }
        }
    }
    true
}

/// Sets the canary's traffic (`shares`) in one route resource's JSON, by its kind:
/// the items Serin added for an experiment before (as the route's annotation
/// records them) are removed, the kind's setter runs, and what it added is
/// recorded. Returns whether anything changed.
pub fn set_weights(
    value: &mut Value,
    (kind, name): (RouteKind, &str),
    istio_routes: &[String],
    target: Target<'_>,
    shares: Shares<'_>,
) -> Result<bool, RouteProblem> {
    let before = value.clone();
    let list = kind.weighted_list();
    let recorded: Vec<Value> = value["metadata"]["annotations"][EXPERIMENT_ANNOTATION]
        .as_str()
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default();
    let mut removed = Vec::new();
    if let Some(items) = value["spec"][list].as_array_mut() {
        let (serins, others) = std::mem::take(items)
            .into_iter()
            .partition(|item| recorded.iter().any(|added| holds(item, added)));
        *items = others;
        removed = serins;
    }
    let added = match kind {
        RouteKind::Http | RouteKind::Grpc => {
            gateway::set_weights(value, (kind, name), target.stable, target.canary, shares)?
        }
        RouteKind::IstioVirtualService => {
            istio::set_weights(value, name, istio_routes, target, shares)?
        }
        RouteKind::IstioDestinationRule => {
            istio::set_subsets(value, name, target, shares.revisions)?;
            Vec::new()
        }
    };
    // An added item the route already held stays as stored (defaults and all) and
    // as recorded, so the same experiment again changes nothing.
    let mut record = Vec::with_capacity(added.len());
    if let Some(items) = value["spec"][list].as_array_mut() {
        for item in items.iter_mut().filter(|item| added.contains(item)) {
            let stored = removed.iter().find(|stored| holds(stored, item));
            let written = stored.and_then(|stored| recorded.iter().find(|r| holds(stored, r)));
            match (stored, written) {
                (Some(stored), Some(written)) => {
                    *item = stored.clone();
                    record.push(written.clone());
                }
                _ => record.push(item.clone()),
            }
        }
    }
    let metadata = value["metadata"].as_object_mut();
    match (metadata, record.is_empty()) {
        (Some(metadata), true) => {
            if let Some(Value::Object(annotations)) = metadata.get_mut("annotations") {
                annotations.remove(EXPERIMENT_ANNOTATION);
                if annotations.is_empty() {
                    metadata.remove("annotations");
                }
            }
        }
        (Some(metadata), false) => {
            let record = Value::String(Value::Array(record).to_string());
            match metadata.entry("annotations").or_insert_with(|| json!({})) {
                Value::Object(annotations) => {
                    annotations.insert(EXPERIMENT_ANNOTATION.to_owned(), record);
                }
                other => *other = json!({EXPERIMENT_ANNOTATION: record}),
            }
        }
        (None, _) => {}
    }
    Ok(*value != before)
}

/// Whether `stored` holds everything `written` says: the API server fills in
/// defaults (a backendRef's `group`, `kind` and `weight`, a match's `path`) but
/// never changes a field that was written, so a rule Serin added is recognised by
/// what it wrote.
fn holds(stored: &Value, written: &Value) -> bool {
    match (stored, written) {
        (Value::Object(stored), Value::Object(written)) => written
            .iter()
            .all(|(key, value)| stored.get(key).is_some_and(|s| holds(s, value))),
        (Value::Array(stored), Value::Array(written)) => {
            stored.len() == written.len() && stored.iter().zip(written).all(|(s, w)| holds(s, w))
        }
        _ => stored == written,
    }
}

/// Checks that each route exists, has a rule Serin can set weights on, can hold
/// the experiment's rules, and (for a mirror) attaches to Gateways that can mirror.
pub async fn check(
    client: &Client,
    seen: &dyn Seen,
    routes: &Routes<'_>,
    target: Target<'_>,
) -> Result<(), RouteError> {
    for &route in &routes.routes {
        let api = routes_api(client, target.namespace, route.0);
        let mut value = read(&api, seen, target.namespace, route).await?;
        if let (RouteKind::Http, Some(percent)) = (route.0, routes.mirror) {
            can_mirror(client, &value, (target.namespace, route.1), percent).await?;
        }
        // The experiment's rules too, so a spec they cannot be written for is
        // refused before its rollout starts.
        let checked = Shares {
            experiment: routes.experiment,
            ..Shares::default()
        };
        set_weights(&mut value, route, routes.istio_routes, target, checked)?;
    }
    Ok(())
}

/// The Gateway API feature a gateway needs to mirror `percent` of a rule's requests.
pub(crate) fn mirror_feature(percent: u32) -> &'static str {
    if percent >= 100 {
        "HTTPRouteRequestMirror"
    } else {
        "HTTPRouteRequestPercentageMirror"
    }
}

/// Checks that every Gateway the HTTPRoute attaches to can mirror `percent` of its
/// requests, where its GatewayClass says what it supports (`status.supportedFeatures`,
/// standard since Gateway API v1.4). A class that says nothing, or a Gateway or class
/// that cannot be read, is trusted: only a gateway known not to mirror is refused.
async fn can_mirror(
    client: &Client,
    route: &Value,
    (namespace, name): (&str, &str),
    percent: u32,
) -> Result<(), RouteError> {
    let feature = mirror_feature(percent);
    let (group, version) = RouteKind::Http.api_version();
    let resource = |kind: &str, plural: &str| {
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
    };
    let classes: Api<DynamicObject> =
        Api::all_with(client.clone(), &resource("GatewayClass", "gatewayclasses"));
    for parent in route["spec"]["parentRefs"].as_array().into_iter().flatten() {
        let is_gateway = parent.get("group").is_none_or(|g| g == group)
            && parent.get("kind").is_none_or(|k| k == "Gateway");
        let Some(gateway_name) = parent["name"].as_str().filter(|_| is_gateway) else {
            continue;
        };
        let gateway_namespace = parent["namespace"].as_str().unwrap_or(namespace);
        let gateways: Api<DynamicObject> = Api::namespaced_with(
            client.clone(),
            gateway_namespace,
            &resource("Gateway", "gateways"),
        );
        let Ok(Some(gateway)) = gateways.get_opt(gateway_name).await else {
            continue;
        };
        let Some(class_name) = gateway.data["spec"]["gatewayClassName"].as_str() else {
            continue;
        };
        let Ok(Some(class)) = classes.get_opt(class_name).await else {
            continue;
        };
        let supported: Vec<&str> = class.data["status"]["supportedFeatures"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["name"].as_str().or_else(|| f.as_str()))
            .collect();
        if !supported.is_empty() && !supported.contains(&feature) {
            return Err(RouteProblem::MirrorUnsupported {
                route: name.to_owned(),
                gateway: format!("{gateway_namespace}/{gateway_name}"),
                class: class_name.to_owned(),
                feature,
            }
            .into());
        }
    }
    Ok(())
}

/// Sets `weight` on the canary Service in each route, writing only routes
/// whose weights differ (as last seen: a write from a stale copy fails on its
/// resourceVersion and is retried at once).
pub async fn apply(
    client: &Client,
    seen: &dyn Seen,
    routes: &Routes<'_>,
    target: Target<'_>,
    shares: Shares<'_>,
) -> Result<(), RouteError> {
    for &(kind, route) in &routes.routes {
        let api = routes_api(client, target.namespace, kind);
        let mut value = read(&api, seen, target.namespace, (kind, route)).await?;
        if !set_weights(
            &mut value,
            (kind, route),
            routes.istio_routes,
            target,
            shares,
        )? {
            continue;
        }
        api.patch(
            route,
            &PatchParams::apply(serin_api::FIELD_MANAGER).force(),
            &Patch::Apply(weights_apply(&value, kind)),
        )
        .await
        .map_err(|source| RouteError::Api {
            kind,
            route: route.to_owned(),
            source,
        })?;
    }
    Ok(())
}

/// The server-side apply body that sets the list carrying `route`'s weights, and
/// the record of the rules Serin added to it (an apply without the record removes
/// it), and nothing else, at the resourceVersion it was read at. Forced: a GitOps tool or a
/// person that applied the route owns that list too, and the weights are Serin's
/// to set.
pub fn weights_apply(route: &Value, kind: RouteKind) -> Value {
    let (group, version) = kind.api_version();
    let list = kind.weighted_list();
    let mut apply = json!({
        "apiVersion": format!("{group}/{version}"),
        "kind": kind.kind(),
        "metadata": {
            "name": route["metadata"]["name"],
            "namespace": route["metadata"]["namespace"],
            "resourceVersion": route["metadata"]["resourceVersion"],
        },
        "spec": {list: route["spec"][list]},
    });
    let record = &route["metadata"]["annotations"][EXPERIMENT_ANNOTATION];
    if record.is_string() {
        apply["metadata"]["annotations"] = json!({EXPERIMENT_ANNOTATION: record});
    }
    apply
}

/// The route as last seen by the watch, or from the API server without one.
async fn read(
    api: &Api<DynamicObject>,
    seen: &dyn Seen,
    namespace: &str,
    (kind, route): (RouteKind, &str),
) -> Result<Value, RouteError> {
    let missing = || RouteProblem::Missing {
        kind,
        route: route.to_owned(),
        namespace: namespace.to_owned(),
    };
    let object = match seen.route(kind, namespace, route) {
        RouteSighting::Seen(object) => object,
        RouteSighting::Absent => return Err(missing().into()),
        RouteSighting::NotWatched => Arc::new(
            api.get_opt(route)
                .await
                .map_err(|source| RouteError::Api {
                    kind,
                    route: route.to_owned(),
                    source,
                })?
                .ok_or_else(missing)?,
        ),
    };
    serde_json::to_value(object.as_ref()).map_err(|source| RouteError::Json {
        kind,
        route: route.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_apply_carries_the_weighted_list_and_the_version_read_and_nothing_else() {
        let http = json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "7", "labels": {"team": "shop"}},
            "spec": {"parentRefs": [{"name": "edge"}], "rules": [{"backendRefs": [{"name": "web-stable", "weight": 75}]}]}
        });
        assert_eq!(
            weights_apply(&http, RouteKind::Http),
            json!({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "HTTPRoute",
                "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "7"},
                "spec": {"rules": http["spec"]["rules"]},
            })
        );
        let mut recorded = http.clone();
        recorded["metadata"]["annotations"] = json!({EXPERIMENT_ANNOTATION: "[]", "team": "shop"});
        assert_eq!(
            weights_apply(&recorded, RouteKind::Http)["metadata"]["annotations"],
            json!({EXPERIMENT_ANNOTATION: "[]"}),
            "the record of Serin's rules goes with them, no other annotation"
        );
        let virtual_service = json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "9"},
            "spec": {"hosts": ["web"], "gateways": ["edge"], "http": [{"route": [{"destination": {"host": "web-stable"}, "weight": 100}]}]}
        });
        assert_eq!(
            weights_apply(&virtual_service, RouteKind::IstioVirtualService),
            json!({
                "apiVersion": "networking.istio.io/v1",
                "kind": "VirtualService",
                "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "9"},
                "spec": {"http": virtual_service["spec"]["http"]},
            })
        );
    }
}

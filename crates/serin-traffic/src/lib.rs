//! How a canary weight reaches requests.
//!
//! Serin owns three Services per Canary: `<name>-stable` and `<name>-canary`
//! select one revision each, `<name>` selects the workload. Without a router the
//! pods carry the weight: `<name>` selects both revisions while a canary has
//! weight, and only stable otherwise. A router sets weights between
//! `<name>-stable` and `<name>-canary` on route resources ([`route`]): Gateway API
//! routes ([`gateway`]) or an Istio VirtualService ([`istio`]).

pub mod gateway;
pub mod istio;
pub mod route;

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serin_api::{
    CANARY_LABEL, Exposure, FIELD_MANAGER, REVISION_LABEL, RouteKind, ServicePorts, Weight,
    canary_service, stable_service,
};

/// Errors while applying traffic.
#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    /// The API server refused or failed a write.
    #[error("writing Service {name}: {source}")]
    Service {
        /// The Service.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// A route could not be read or written.
    #[error(transparent)]
    Route(#[from] route::RouteError),
}

impl TrafficError {
    /// The spec problem behind this error, if it is one a person must fix (as
    /// opposed to a failure worth retrying).
    pub fn spec_problem(&self) -> Option<String> {
        match self {
            Self::Route(route::RouteError::Invalid(problem)) => Some(problem.to_string()),
            _ => None,
        }
    }

    /// The API server's error behind this one, if any (a conflict, say).
    pub fn kube_error(&self) -> Option<&kube::Error> {
        match self {
            Self::Service { source, .. } | Self::Route(route::RouteError::Api { source, .. }) => {
                Some(source)
            }
            _ => None,
        }
    }
}

/// Serin's Services and the routes as watches last saw them: reads cost no round
/// trip, and a Service already as wanted is not written again, so an idle Canary
/// costs the API server nothing.
pub trait Seen: Sync {
    /// Service `namespace/name`, if it was seen.
    fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>>;
    /// Route `namespace/name` of `kind`.
    fn route(&self, kind: RouteKind, namespace: &str, name: &str) -> route::RouteSighting;
}

/// Something that sends a share of requests to the canary revision.
pub trait WeightRouter {
    /// Checks that the router can carry weights; a spec problem is reported with
    /// [`TrafficError::spec_problem`] and nothing is changed.
    fn check(&self) -> impl Future<Output = Result<(), TrafficError>> + Send;
    /// Sends `weights.weight` of the requests to the canary, the rest to stable.
    fn apply(&self, weights: Weights<'_>) -> impl Future<Output = Result<(), TrafficError>> + Send;
}

/// The router a Canary's spec names: pod counts when it names none.
pub enum Router<'a> {
    /// The pods carry the weight; only the Services change.
    PodCount {
        /// API client.
        client: &'a Client,
        /// The workload.
        workload: Workload<'a>,
        /// The Services as last seen.
        seen: &'a dyn Seen,
    },
    /// Weights on route resources (Gateway API routes, an Istio VirtualService),
    /// between `<name>-stable` and `<name>-canary`.
    Routes {
        /// API client.
        client: &'a Client,
        /// The workload.
        workload: Workload<'a>,
        /// The Services and routes as last seen.
        seen: &'a dyn Seen,
        /// The routes, with their kinds.
        routes: route::Routes<'a>,
    },
}

impl<'a> Router<'a> {
    /// The router for `workload`, from the Canary's `spec.traffic`, and what
    /// `spec.mirror` and `spec.experiment` will ask of its routes.
    pub fn new(
        client: &'a Client,
        workload: Workload<'a>,
        seen: &'a dyn Seen,
        spec: &'a serin_api::CanarySpec,
    ) -> Self {
        match &spec.traffic {
            Some(traffic) => Self::Routes {
                client,
                workload,
                seen,
                routes: route::Routes {
                    routes: traffic.routes(),
                    istio_routes: traffic
                        .istio
                        .as_ref()
                        .map_or(&[], |istio| istio.routes.as_slice()),
                    mirror: spec.mirror.as_ref().map(|mirror| mirror.percent),
                    experiment: spec
                        .experiment
                        .as_ref()
                        .map_or(&[], |experiment| experiment.r#match.as_slice()),
                },
            },
            None => Self::PodCount {
                client,
                workload,
                seen,
            },
        }
    }
}

impl WeightRouter for Router<'_> {
    async fn check(&self) -> Result<(), TrafficError> {
        match self {
            Self::PodCount { .. } => Ok(()),
            Self::Routes {
                client,
                workload,
                seen,
                routes,
            } => {
                let (stable, canary) = service_names(workload.name);
                let target = route::Target {
                    stable: &stable,
                    canary: &canary,
                    namespace: workload.namespace,
                    subsets_of: routes.subsets().then_some(workload.name),
                };
                route::check(client, *seen, routes, target).await?;
                Ok(())
            }
        }
    }

    async fn apply(&self, weights: Weights<'_>) -> Result<(), TrafficError> {
        match self {
            Self::PodCount {
                client,
                workload,
                seen,
            } => apply_services(client, workload, *seen, weights).await,
            Self::Routes {
                client,
                workload,
                seen,
                routes,
            } => {
                apply_services(client, workload, *seen, weights).await?;
                let (stable, canary) = service_names(workload.name);
                let target = route::Target {
                    stable: &stable,
                    canary: &canary,
                    namespace: workload.namespace,
                    subsets_of: routes.subsets().then_some(workload.name),
                };
                let shares = route::Shares {
                    weight: weights.weight,
                    mirror: routes
                        .mirror
                        .filter(|_| weights.exposure == Some(Exposure::Mirror)),
                    experiment: match weights.exposure {
                        Some(Exposure::Experiment) => routes.experiment,
                        _ => &[],
                    },
                    revisions: (weights.stable, weights.canary.unwrap_or(weights.stable)),
                };
                route::apply(client, *seen, routes, target, shares).await?;
                Ok(())
            }
        }
    }
}

/// `<name>-stable` and `<name>-canary`.
pub fn service_names(name: &str) -> (String, String) {
    (stable_service(name), canary_service(name))
}

/// The workload whose traffic is shaped.
#[derive(Clone, Debug)]
pub struct Workload<'a> {
    /// Namespace of the Canary.
    pub namespace: &'a str,
    /// Name of the Canary, and of its main Service.
    pub name: &'a str,
    /// The workload's pod labels (`spec.selector.matchLabels`).
    pub labels: &'a BTreeMap<String, String>,
    /// Ports of the Services; None: no Services.
    pub ports: Option<&'a ServicePorts>,
    /// True when a router sets the weights, false when pod counts carry them.
    pub routed: bool,
    /// Owner reference to the Canary, so deleting it deletes the Services.
    pub owner: OwnerReference,
}

/// Where traffic goes: which revision is stable, which is the canary, the
/// canary's percent of requests and what it receives beside them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Weights<'a> {
    /// The stable revision.
    pub stable: &'a str,
    /// The canary revision, while there is one.
    pub canary: Option<&'a str>,
    /// Share of requests to the canary.
    pub weight: Weight,
    /// What the canary receives beside its weight: copies of stable's requests
    /// (`spec.mirror`) or the requests matching `spec.experiment`.
    pub exposure: Option<Exposure>,
}

/// The Services for `weights`, as Serin wants them.
pub fn services(workload: &Workload, weights: Weights) -> Vec<Service> {
    let Some(ports) = workload.ports else {
        return Vec::new();
    };
    let with_revision = |revision: &str| {
        let mut selector = workload.labels.clone();
        selector.insert(REVISION_LABEL.to_owned(), revision.to_owned());
        selector
    };
    let canary_has_traffic = weights.canary.is_some() && !weights.weight.is_zero();
    let main_selector = if workload.routed || canary_has_traffic {
        workload.labels.clone()
    } else {
        with_revision(weights.stable)
    };
    let canary = weights.canary.unwrap_or(weights.stable);
    [
        (workload.name.to_owned(), main_selector),
        (stable_service(workload.name), with_revision(weights.stable)),
        (canary_service(workload.name), with_revision(canary)),
    ]
    .into_iter()
    .map(|(name, selector)| service(workload, ports, name, selector))
    .collect()
}

fn service(
    workload: &Workload,
    ports: &ServicePorts,
    name: String,
    selector: BTreeMap<String, String>,
) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(workload.namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                CANARY_LABEL.to_owned(),
                workload.name.to_owned(),
            )])),
            owner_references: Some(vec![workload.owner.clone()]),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: ports.port,
                target_port: Some(
                    ports
                        .target_port
                        .clone()
                        .unwrap_or(IntOrString::Int(ports.port)),
                ),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// Whether `current` already is what `wanted` asks for, in every field Serin sets:
/// its label, its owner, its selector and its one port. Anything else on it
/// (fields the API server fills in, a person's annotations) does not matter.
pub fn in_place(wanted: &Service, current: &Service) -> bool {
    let labels = current.metadata.labels.as_ref();
    let labelled = wanted
        .metadata
        .labels
        .iter()
        .flatten()
        .all(|(key, value)| labels.and_then(|labels| labels.get(key)) == Some(value));
    let owners = current
        .metadata
        .owner_references
        .as_deref()
        .unwrap_or_default();
    let owned = wanted
        .metadata
        .owner_references
        .iter()
        .flatten()
        .all(|owner| {
            owners
                .iter()
                .any(|o| o.uid == owner.uid && o.controller == owner.controller)
        });
    let (wanted, current) = (wanted.spec.as_ref(), current.spec.as_ref());
    let selector = |spec: Option<&ServiceSpec>| spec.and_then(|s| s.selector.clone());
    let ports = |spec: Option<&ServiceSpec>| {
        spec.and_then(|s| s.ports.as_ref())
            .into_iter()
            .flatten()
            .map(|p| (p.name.clone(), p.port, p.target_port.clone()))
            .collect::<Vec<_>>()
    };
    labelled && owned && selector(wanted) == selector(current) && ports(wanted) == ports(current)
}

/// Applies the Services for `weights` with server-side apply, each only when the
/// one last seen is not already as wanted.
async fn apply_services(
    client: &Client,
    workload: &Workload<'_>,
    seen: &dyn Seen,
    weights: Weights<'_>,
) -> Result<(), TrafficError> {
    let api: Api<Service> = Api::namespaced(client.clone(), workload.namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for mut service in services(workload, weights) {
        let name = service.metadata.name.clone().unwrap_or_default();
        if seen
            .service(workload.namespace, &name)
            .is_some_and(|current| in_place(&service, &current))
        {
            continue;
        }
        service.metadata.managed_fields = None;
        let body = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": service.metadata,
            "spec": service.spec,
        });
        api.patch(&name, &params, &Patch::Apply(body))
            .await
            .map_err(|source| TrafficError::Service { name, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload<'a>(
        labels: &'a BTreeMap<String, String>,
        ports: &'a ServicePorts,
        routed: bool,
    ) -> Workload<'a> {
        Workload {
            namespace: "demo",
            name: "web",
            labels,
            ports: Some(ports),
            routed,
            owner: OwnerReference::default(),
        }
    }

    fn selector(service: &Service) -> BTreeMap<String, String> {
        service
            .spec
            .as_ref()
            .and_then(|spec| spec.selector.clone())
            .unwrap_or_default()
    }

    #[test]
    fn by_pod_count_the_main_service_selects_both_revisions_only_while_the_canary_has_weight() {
        let labels = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
        let ports = ServicePorts {
            port: 80,
            target_port: None,
        };
        let workload = workload(&labels, &ports, false);
        let steady = services(
            &workload,
            Weights {
                stable: "a",
                canary: None,
                weight: Weight::from_percent(0),
                exposure: None,
            },
        );
        assert_eq!(
            selector(&steady[0]).get(REVISION_LABEL).map(String::as_str),
            Some("a")
        );
        let rolling = services(
            &workload,
            Weights {
                stable: "a",
                canary: Some("b"),
                weight: Weight::from_percent(25),
                exposure: None,
            },
        );
        assert_eq!(selector(&rolling[0]), labels);
        assert_eq!(
            selector(&rolling[1])
                .get(REVISION_LABEL)
                .map(String::as_str),
            Some("a")
        );
        assert_eq!(
            selector(&rolling[2])
                .get(REVISION_LABEL)
                .map(String::as_str),
            Some("b")
        );
        let names: Vec<_> = rolling
            .iter()
            .filter_map(|s| s.metadata.name.clone())
            .collect();
        assert_eq!(names, ["web", "web-stable", "web-canary"]);
    }

    #[test]
    fn a_service_as_the_api_server_returns_it_is_in_place_until_a_field_serin_sets_differs() {
        let labels = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
        let ports = ServicePorts {
            port: 80,
            target_port: None,
        };
        let mut workload = workload(&labels, &ports, false);
        workload.owner.uid = "u-1".into();
        workload.owner.controller = Some(true);
        let weights = Weights {
            stable: "a",
            canary: Some("b"),
            weight: Weight::from_percent(25),
            exposure: None,
        };
        let wanted = services(&workload, weights).remove(0);
        // What the API server stores: defaults filled in, a person's annotation.
        let mut stored = wanted.clone();
        stored.metadata.annotations = Some([("team".to_owned(), "shop".to_owned())].into());
        stored.metadata.resource_version = Some("42".into());
        if let Some(spec) = stored.spec.as_mut() {
            spec.cluster_ip = Some("10.96.0.7".into());
            spec.type_ = Some("ClusterIP".into());
            for port in spec.ports.iter_mut().flatten() {
                port.protocol = Some("TCP".into());
            }
        }
        assert!(in_place(&wanted, &stored));

        let moved = services(
            &workload,
            Weights {
                weight: Weight::from_percent(0),
                ..weights
            },
        )
        .remove(0);
        assert!(!in_place(&moved, &stored), "the selector changed");
        let mut edited = stored.clone();
        if let Some(port) = edited
            .spec
            .as_mut()
            .and_then(|s| s.ports.as_mut())
            .and_then(|p| p.first_mut())
        {
            port.target_port = Some(IntOrString::Int(9090));
        }
        assert!(!in_place(&wanted, &edited), "a person changed the port");
        let mut orphaned = stored.clone();
        orphaned.metadata.owner_references = None;
        assert!(!in_place(&wanted, &orphaned), "the owner was removed");
        let mut unlabelled = stored;
        unlabelled.metadata.labels = None;
        assert!(!in_place(&wanted, &unlabelled), "the label was removed");
    }

    #[test]
    fn target_port_defaults_to_the_port() {
        let labels = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
        let ports = ServicePorts {
            port: 8080,
            target_port: None,
        };
        let made = services(
            &workload(&labels, &ports, true),
            Weights {
                stable: "a",
                canary: None,
                weight: Weight::from_percent(0),
                exposure: None,
            },
        );
        let port = made[0]
            .spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap_or_default();
        assert_eq!(port[0].target_port, Some(IntOrString::Int(8080)));
    }

    #[test]
    fn no_ports_no_services() {
        let labels = BTreeMap::new();
        let mut workload = workload(
            &labels,
            &ServicePorts {
                port: 80,
                target_port: None,
            },
            false,
        );
        workload.ports = None;
        assert!(
            services(
                &workload,
                Weights {
                    stable: "a",
                    canary: None,
                    weight: Weight::from_percent(0),
                    exposure: None,
                }
            )
            .is_empty()
        );
    }
}

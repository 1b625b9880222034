//! What the reconciler reads without asking the API server: Serin's own
//! ReplicaSets and Services, and the routes, as the watches last saw them, so
//! an idle fleet costs the API server nothing and a reconcile's reads cost no
//! round trip.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetSpec, ReplicaSetStatus};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::DynamicObject;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serin_api::{CANARY_LABEL, REVISION_LABEL, RouteKind, SCALE_DOWN_AT_ANNOTATION};
use serin_traffic::route::{RouteSighting, route_resource};

use crate::watched::WatchedCanary;

/// Serin's ReplicaSets and Services (those labelled with [`CANARY_LABEL`]), and
/// the routes (Gateway API's, Istio's) of each kind the API server serves.
#[derive(Clone)]
pub struct Cache {
    replica_sets: Store<Compact<ReplicaSet>>,
    services: Store<Compact<Service>>,
    routes: BTreeMap<RouteKind, Store<DynamicObject>>,
}

/// The cache is gone: its watches stopped before they listed once.
#[derive(Debug, thiserror::Error)]
#[error("the watches of Serin's ReplicaSets, Services and routes stopped before they listed them")]
pub struct CacheGone;

impl Cache {
    /// A cache fed by the watches behind `replica_sets`, `services` and `routes`,
    /// one store per route kind that is served (a kind without one is read from
    /// the API server).
    pub fn new(
        replica_sets: Store<Compact<ReplicaSet>>,
        services: Store<Compact<Service>>,
        routes: BTreeMap<RouteKind, Store<DynamicObject>>,
    ) -> Self {
        Self {
            replica_sets,
            services,
            routes,
        }
    }

    /// A cache holding `replica_sets` and `services`, and no watch of routes (they
    /// are read from the API server), for a caller that has the objects already
    /// (the reconciler's in-process tests).
    pub fn holding(replica_sets: Vec<ReplicaSet>, services: Vec<Service>) -> Self {
        Self {
            replica_sets: filled(replica_sets.into_iter().map(Compact::new).collect(), ()),
            services: filled(services.into_iter().map(Compact::new).collect(), ()),
            routes: BTreeMap::new(),
        }
    }

    /// Waits until every watch has listed once: a reconcile before that would
    /// take a missing ReplicaSet for one to create, or a route for one missing.
    pub async fn ready(&self) -> Result<(), CacheGone> {
        self.replica_sets
            .wait_until_ready()
            .await
            .map_err(|_| CacheGone)?;
        self.services
            .wait_until_ready()
            .await
            .map_err(|_| CacheGone)?;
        for routes in self.routes.values() {
            routes.wait_until_ready().await.map_err(|_| CacheGone)?;
        }
        Ok(())
    }

    /// The ReplicaSets of Canary `namespace/canary`.
    pub fn replica_sets(&self, namespace: &str, canary: &str) -> Vec<ReplicaSet> {
        self.replica_sets
            .state_filter(|rs| {
                rs.namespace().as_deref() == Some(namespace)
                    && rs.labels().get(CANARY_LABEL).map(String::as_str) == Some(canary)
            })
            .iter()
            .filter_map(|rs| rs.object())
            .collect()
    }
}

impl serin_traffic::Seen for Cache {
    fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
        self.services
            .get(&ObjectRef::new(name).within(namespace))
            .and_then(|service| service.object())
            .map(Arc::new)
    }

    fn route(&self, kind: RouteKind, namespace: &str, name: &str) -> RouteSighting {
        let Some(routes) = self.routes.get(&kind) else {
            return RouteSighting::NotWatched;
        };
        let key = ObjectRef::new_with(name, route_resource(kind)).within(namespace);
        match routes.get(&key) {
            Some(route) => RouteSighting::Seen(route),
            None => RouteSighting::Absent,
        }
    }
}

/// The Canaries whose `spec.traffic` names `route`, of `kind`, in its
/// namespace: those to wake when the route changes. One that does not decode
/// names no route it can act on.
pub fn canaries_routed_by(
    canaries: &Store<WatchedCanary>,
    kind: RouteKind,
    route: &DynamicObject,
) -> Vec<Arc<WatchedCanary>> {
    let (namespace, name) = (route.namespace(), route.name_any());
    canaries
        .state_filter(|canary| canary.namespace() == namespace && canary.names_route(kind, &name))
}

fn filled<K>(objects: Vec<K>, resource: K::DynamicType) -> Store<K>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let mut writer = reflector::store::Writer::new(resource);
    writer.apply_watcher_event(&watcher::Event::Init);
    for object in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(object));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    // The reader outlives the writer: it keeps the objects, and is ready.
    writer.as_reader()
}

/// An object of the cache, stripped to the fields the reconciler reads and kept as
/// compact JSON beside its metadata: a typed object is mostly empty fields (a
/// Service's spec alone is hundreds of bytes of `None`), and decoding one again
/// when a reconcile reads it takes microseconds.
#[derive(Clone, Debug)]
pub struct Compact<K> {
    metadata: Box<ObjectMeta>,
    /// The object without its metadata, as JSON.
    rest: Box<str>,
    kind: PhantomData<K>,
}

/// A kind the cache keeps compact, with what of it the reconciler reads.
pub trait Cached: Resource<DynamicType = ()> + Serialize + DeserializeOwned {
    /// Drops what the reconciler never reads.
    fn strip(&mut self);
}

impl<K: Cached> Compact<K> {
    /// `object`, stripped and compacted.
    pub fn new(mut object: K) -> Self {
        object.strip();
        let metadata = Box::new(std::mem::take(object.meta_mut()));
        Self {
            metadata,
            rest: serde_json::to_string(&object)
                .unwrap_or_default()
                .into_boxed_str(),
            kind: PhantomData,
        }
    }

    /// The object as cached (None only if its JSON no longer decodes, which
    /// the cache never writes).
    pub fn object(&self) -> Option<K> {
        let mut object: K = serde_json::from_str(&self.rest).ok()?;
        *object.meta_mut() = self.metadata.as_ref().clone();
        Some(object)
    }
}

impl<'de, K: Cached> Deserialize<'de> for Compact<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        K::deserialize(deserializer).map(Self::new)
    }
}

impl<K: Cached> Resource for Compact<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl Cached for ReplicaSet {
    fn strip(&mut self) {
        strip_replica_set(self);
    }
}

impl Cached for Service {
    fn strip(&mut self) {
        strip_service(self);
    }
}

/// Keeps of a ReplicaSet only what the reconciler reads (its identity, owner,
/// Serin's labels and scale-down mark, the replica counts), before it is cached:
/// the pod template alone is most of its size.
fn strip_replica_set(rs: &mut ReplicaSet) {
    rs.metadata = identity(
        std::mem::take(&mut rs.metadata),
        &[CANARY_LABEL, REVISION_LABEL],
        &[SCALE_DOWN_AT_ANNOTATION],
    );
    rs.spec = rs.spec.take().map(|spec| ReplicaSetSpec {
        replicas: spec.replicas,
        ..ReplicaSetSpec::default()
    });
    rs.status = rs.status.take().map(|status| ReplicaSetStatus {
        replicas: status.replicas,
        available_replicas: status.available_replicas,
        observed_generation: status.observed_generation,
        ..ReplicaSetStatus::default()
    });
}

/// Keeps of a Service only what [`serin_traffic::in_place`] compares (its
/// identity, owner and Serin's label, its selector and ports), before it is cached.
fn strip_service(service: &mut Service) {
    service.metadata = identity(std::mem::take(&mut service.metadata), &[CANARY_LABEL], &[]);
    service.spec = service.spec.take().map(|spec| ServiceSpec {
        selector: spec.selector,
        ports: spec.ports.map(|ports| {
            ports
                .into_iter()
                .map(|port| ServicePort {
                    name: port.name,
                    port: port.port,
                    target_port: port.target_port,
                    ..ServicePort::default()
                })
                .collect()
        }),
        ..ServiceSpec::default()
    });
    service.status = None;
}

/// An object's name, namespace, uid, version, generation, creation time and
/// owners, with only the `labels` and `annotations` named.
fn identity(metadata: ObjectMeta, labels: &[&str], annotations: &[&str]) -> ObjectMeta {
    let only = |map: Option<BTreeMap<String, String>>, keys: &[&str]| {
        map.map(|map| {
            map.into_iter()
                .filter(|(key, _)| keys.contains(&key.as_str()))
                .collect::<BTreeMap<_, _>>()
        })
        .filter(|map| !map.is_empty())
    };
    ObjectMeta {
        name: metadata.name,
        namespace: metadata.namespace,
        uid: metadata.uid,
        resource_version: metadata.resource_version,
        generation: metadata.generation,
        creation_timestamp: metadata.creation_timestamp,
        owner_references: metadata.owner_references,
        labels: only(metadata.labels, labels),
        annotations: only(metadata.annotations, annotations),
        ..ObjectMeta::default()
    }
}

/// Drops an object's managed fields before it is cached (routes, which are
/// written back whole and so are kept whole otherwise).
pub fn strip_managed_fields<K: kube::Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::ReplicaSetSpec;
    use k8s_openapi::api::core::v1::PodTemplateSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use serin_traffic::Seen;

    fn replica_set(namespace: &str, name: &str, canary: &str) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                labels: Some([(CANARY_LABEL.to_owned(), canary.to_owned())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(2),
                template: Some(PodTemplateSpec::default()),
                ..ReplicaSetSpec::default()
            }),
            status: None,
        }
    }

    #[tokio::test]
    async fn a_canary_sees_only_its_own_replica_sets_in_its_namespace() {
        let cache = Cache::holding(
            vec![
                replica_set("shop", "web-1", "web"),
                replica_set("shop", "web-2", "web"),
                replica_set("shop", "api-1", "api"),
                replica_set("blog", "web-1", "web"),
            ],
            vec![Service {
                metadata: ObjectMeta {
                    name: Some("web".into()),
                    namespace: Some("shop".into()),
                    ..ObjectMeta::default()
                },
                ..Service::default()
            }],
        );
        assert!(cache.ready().await.is_ok());
        let mut names: Vec<String> = cache
            .replica_sets("shop", "web")
            .iter()
            .map(|rs| rs.name_any())
            .collect();
        names.sort();
        assert_eq!(names, ["web-1", "web-2"]);
        assert!(cache.service("shop", "web").is_some());
        assert!(cache.service("blog", "web").is_none());
    }

    fn canary(namespace: &str, name: &str, routes: &[&str], grpc: &[&str]) -> WatchedCanary {
        let stored = serde_json::json!({
            "apiVersion": "serin.dev/v1alpha1",
            "kind": "Canary",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "app", "image": "web:1"}]}
                },
                "traffic": {"gatewayAPI": {"httpRoutes": routes, "grpcRoutes": grpc}}
            }
        });
        WatchedCanary::from_stored(stored).unwrap()
    }

    #[test]
    fn a_route_wakes_the_canaries_that_name_it_in_its_namespace() {
        let canaries = filled(
            vec![
                canary("shop", "web", &["web", "web-internal"], &[]),
                canary("shop", "api", &["api"], &["web"]),
                canary("shop", "pods", &[], &[]),
                canary("blog", "web", &["web"], &["web"]),
            ],
            (),
        );
        let woken = |kind| {
            let route = DynamicObject::new("web", &route_resource(kind)).within("shop");
            canaries_routed_by(&canaries, kind, &route)
                .iter()
                .map(|canary| {
                    format!(
                        "{}/{}",
                        canary.namespace().unwrap_or_default(),
                        canary.name_any()
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(woken(RouteKind::Http), ["shop/web"]);
        assert_eq!(woken(RouteKind::Grpc), ["shop/api"]);
    }

    #[test]
    fn a_cached_service_is_in_place_exactly_when_the_whole_one_is() {
        let owner = OwnerReference {
            uid: "u-1".into(),
            controller: Some(true),
            ..OwnerReference::default()
        };
        let wanted = Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("shop".into()),
                labels: Some([(CANARY_LABEL.to_owned(), "web".to_owned())].into()),
                owner_references: Some(vec![owner]),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                selector: Some([("app".to_owned(), "web".to_owned())].into()),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    target_port: Some(IntOrString::Int(8080)),
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            status: None,
        };
        let mut stored = wanted.clone();
        stored.metadata.annotations = Some([("team".to_owned(), "shop".to_owned())].into());
        if let Some(spec) = stored.spec.as_mut() {
            spec.cluster_ip = Some("10.96.0.7".into());
            for port in spec.ports.iter_mut().flatten() {
                port.protocol = Some("TCP".into());
            }
        }
        let mut moved = stored.clone();
        if let Some(spec) = moved.spec.as_mut() {
            spec.selector = Some([("app".to_owned(), "api".to_owned())].into());
        }
        let mut unowned = stored.clone();
        unowned.metadata.owner_references = None;
        for whole in [stored, moved, unowned] {
            let cached = Compact::new(whole.clone()).object().unwrap();
            assert_eq!(
                serin_traffic::in_place(&wanted, &cached),
                serin_traffic::in_place(&wanted, &whole)
            );
            assert!(cached.metadata.annotations.is_none());
        }
    }
}

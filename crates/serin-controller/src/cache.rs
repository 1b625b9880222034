//! What the reconciler reads without asking the API server: Serin's own
//! ReplicaSets and Services as the watches last saw them, so an idle fleet costs
//! the API server nothing and a reconcile's reads cost no round trip.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use serin_api::CANARY_LABEL;

/// Serin's ReplicaSets and Services (those labelled with [`CANARY_LABEL`]).
#[derive(Clone)]
pub struct Cache {
    replica_sets: Store<ReplicaSet>,
    services: Store<Service>,
}

/// The cache is gone: its watches stopped before they listed once.
#[derive(Debug, thiserror::Error)]
#[error("the watch of Serin's ReplicaSets and Services stopped before it listed them")]
pub struct CacheGone;

impl Cache {
    /// A cache fed by the watches behind `replica_sets` and `services`.
    pub fn new(replica_sets: Store<ReplicaSet>, services: Store<Service>) -> Self {
        Self {
            replica_sets,
            services,
        }
    }

    /// A cache holding `replica_sets` and `services`, for a caller that has them
    /// already (the reconciler's in-process tests).
    pub fn holding(replica_sets: Vec<ReplicaSet>, services: Vec<Service>) -> Self {
        Self {
            replica_sets: filled(replica_sets),
            services: filled(services),
        }
    }

    /// Waits until both watches have listed once: a reconcile before that would
    /// take a missing ReplicaSet for one to create.
    pub async fn ready(&self) -> Result<(), CacheGone> {
        self.replica_sets
            .wait_until_ready()
            .await
            .map_err(|_| CacheGone)?;
        self.services
            .wait_until_ready()
            .await
            .map_err(|_| CacheGone)
    }

    /// The ReplicaSets of Canary `namespace/canary`.
    pub fn replica_sets(&self, namespace: &str, canary: &str) -> Vec<Arc<ReplicaSet>> {
        self.replica_sets.state_filter(|rs| {
            rs.metadata.namespace.as_deref() == Some(namespace)
                && rs.labels().get(CANARY_LABEL).map(String::as_str) == Some(canary)
        })
    }
}

impl serin_traffic::SeenServices for Cache {
    fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
        self.services.get(&ObjectRef::new(name).within(namespace))
    }
}

fn filled<K>(objects: Vec<K>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let mut writer = reflector::store::Writer::default();
    writer.apply_watcher_event(&watcher::Event::Init);
    for object in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(object));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    // The reader outlives the writer: it keeps the objects, and is ready.
    writer.as_reader()
}

/// Drops what the reconciler never reads before a ReplicaSet is cached: its pod
/// template (most of its size) and managed fields.
pub fn strip_replica_set(rs: &mut ReplicaSet) {
    rs.metadata.managed_fields = None;
    if let Some(spec) = rs.spec.as_mut() {
        spec.template = None;
    }
}

/// Drops a Service's managed fields before it is cached.
pub fn strip_service(service: &mut Service) {
    service.metadata.managed_fields = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::ReplicaSetSpec;
    use k8s_openapi::api::core::v1::PodTemplateSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use serin_traffic::SeenServices;

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

    #[test]
    fn stripping_keeps_what_the_reconciler_reads() {
        let mut rs = replica_set("shop", "web-1", "web");
        strip_replica_set(&mut rs);
        let spec = rs.spec.as_ref();
        assert_eq!(spec.and_then(|s| s.replicas), Some(2));
        assert!(spec.is_some_and(|s| s.template.is_none()));
        assert_eq!(
            rs.labels().get(CANARY_LABEL).map(String::as_str),
            Some("web")
        );
    }
}

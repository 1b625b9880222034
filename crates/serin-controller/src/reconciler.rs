//! The thin shell: observe a Canary and its ReplicaSets, ask the state machine,
//! apply the plan, record status and events, and requeue when the plan says.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::{ObjectReference, Pod, PodTemplateSpec, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    Condition, LabelSelector, MicroTime, ObjectMeta, Time,
};
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action as Requeue, Config, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serin_api::{
    ADOPTION_FINALIZER, CANARY_LABEL, COMMAND_ANNOTATION, Canary, DecodeError,
    EXACTLY_ONE_TEMPLATE, FIELD_MANAGER, REPORTING_CONTROLLER, REVISION_LABEL, RouteKind,
    SCALE_DOWN_AT_ANNOTATION, reason, replica_set_name,
};
use serin_traffic::route::route_resource;
use serin_traffic::{Router, WeightRouter, Weights, Workload};
use tokio::sync::Semaphore;
use tracing::{Instrument, info, info_span, warn};

use crate::adoption::{self, GiveBack};
use crate::analysis::Analyst;
use crate::cache::{self, Cache, CacheGone, Compact};
use crate::gates::GateCaller;
use crate::health::WatchHealth;
use crate::metrics::Metrics;
use crate::notify::{self, ClusterSinks, Notifier, Sink, SinkError};
use crate::own_writes::OwnWrites;
use crate::pods;
use crate::watched::{Read, WatchedCanary};
use serin_api::{CanaryStatus, Phase};
use serin_core::conditions::{self, ConditionStatus};
use serin_core::gate::GateAnswer;
use serin_core::machine::{
    self, Action, AdoptedWorkload, EventType, ObservedReplicaSet, Plan, Snapshot, StepVerdict,
};
use serin_core::revision::revision_of;

/// The layer of a reconcile: what it was doing when it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    /// Reading what is (ReplicaSets, routes, the dry run).
    Observe,
    /// Carrying out the plan's actions.
    Apply,
    /// Writing status and Events.
    Report,
}

impl Layer {
    /// The layer's name, as the `layer` label of `serin_reconcile_errors_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Observe => "observe",
            Self::Apply => "apply",
            Self::Report => "report",
        }
    }
}

/// Errors of one reconcile; each is retried, sooner or later by its kind.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The Canary has no namespace (it is a namespaced resource, so this is a bug).
    #[error("canary has no namespace")]
    NoNamespace,
    /// A read or write of the API failed.
    #[error("{what}: {source}")]
    Kube {
        /// Where.
        layer: Layer,
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: kube::Error,
    },
    /// The cache of ReplicaSets, Services and routes is gone (the watches stopped).
    #[error(transparent)]
    Cache(#[from] CacheGone),
    /// Reading or writing Services or routes failed.
    #[error("{source}")]
    Traffic {
        /// Where.
        layer: Layer,
        /// Why.
        #[source]
        source: serin_traffic::TrafficError,
    },
    /// Reading the Secrets of the notification sinks failed.
    #[error("{source}")]
    Notify {
        /// Where.
        layer: Layer,
        /// Why.
        #[source]
        source: notify::SinkError,
    },
}

impl ReconcileError {
    /// The layer that failed (observe for a namespace-less Canary).
    pub fn layer(&self) -> Layer {
        match self {
            Self::NoNamespace | Self::Cache(_) => Layer::Observe,
            Self::Kube { layer, .. } | Self::Traffic { layer, .. } | Self::Notify { layer, .. } => {
                *layer
            }
        }
    }

    /// Someone else wrote the object first: planning again at once from what is
    /// there now is the answer, not waiting.
    pub fn is_conflict(&self) -> bool {
        match self {
            Self::Kube { source, .. } => is_conflict(source),
            Self::Traffic { source, .. } => source.kube_error().is_some_and(is_conflict),
            Self::NoNamespace | Self::Cache(_) | Self::Notify { .. } => false,
        }
    }

    /// How long to wait before the next try.
    pub fn retry_after(&self) -> Duration {
        match (self.is_conflict(), self.layer()) {
            (true, _) => Duration::from_millis(500),
            (false, Layer::Observe) => Duration::from_secs(5),
            (false, Layer::Apply | Layer::Report) => Duration::from_secs(2),
        }
    }
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

fn kube_error(layer: Layer, what: impl Into<String>) -> impl FnOnce(kube::Error) -> ReconcileError {
    let what = what.into();
    move |source| ReconcileError::Kube {
        layer,
        what,
        source,
    }
}

/// How long a reconcile that starts a revision (until its first weight) waits
/// when the start slots are taken: the deferred reconcile costs a cache read, and
/// a wave of new revisions then takes at most half the reconciles in flight, so
/// timed steps and analyses of the rollouts already running keep their cadence.
pub const START_DEFERRED: Duration = Duration::from_secs(1);

/// When to look again at a Canary read from before its own last status write, in
/// case the watch event that ends the wait never comes (it normally comes within
/// milliseconds and wakes the Canary itself).
pub const STALE_READ_RETRY: Duration = Duration::from_secs(1);

/// What every reconcile shares.
pub struct Context {
    client: Client,
    /// The Canary resource, for untyped reads and writes.
    canary_type: ApiResource,
    analyst: Analyst,
    /// Who records the Events: the pod name in a cluster.
    instance: String,
    metrics: Arc<Metrics>,
    /// Serin's ReplicaSets and Services and the routes, as the watches last saw them.
    cache: Cache,
    /// Slots for reconciles that start a revision, until its first weight: half
    /// the concurrency.
    starts: Arc<Semaphore>,
    /// Status writes the watch has not shown yet.
    own_writes: OwnWrites,
    /// Tells the Canaries' sinks of their transitions.
    notifier: Notifier,
    /// Asks the Canaries' checks and calls their hooks.
    gates: Arc<GateCaller>,
}

impl Context {
    /// What reconciles share: the client, the analyst with its default Prometheus,
    /// the metrics and the cache. Events are recorded as `$POD_NAME` (or `serin-<pid>`).
    pub fn new(client: Client, settings: &Settings, metrics: Arc<Metrics>, cache: Cache) -> Self {
        let instance =
            std::env::var("POD_NAME").unwrap_or_else(|_| format!("serin-{}", std::process::id()));
        Self {
            cache,
            starts: Arc::new(Semaphore::new(usize::from(
                (settings.concurrency / 2).max(1),
            ))),
            notifier: Notifier::new(
                client.clone(),
                instance.clone(),
                Arc::clone(&metrics),
                settings.cluster_sinks.clone(),
            ),
            gates: Arc::new(GateCaller::default()),
            instance,
            client,
            analyst: Analyst::new(
                settings.prometheus_address.clone(),
                settings.prometheus_queries,
            ),
            metrics,
            canary_type: ApiResource::erase::<Canary>(&()),
            own_writes: OwnWrites::default(),
        }
    }
}

/// One reconcile of a decoded Canary: observe, decide, apply, report. What the
/// controller runs for each Canary, and what the shell's in-process tests drive.
pub async fn reconcile_canary(
    canary: &Canary,
    context: &Context,
) -> Result<Requeue, ReconcileError> {
    let namespace = canary.namespace().ok_or(ReconcileError::NoNamespace)?;
    reconcile_one(canary, &namespace, &canary.name_any(), context).await
}

/// Where the controller looks, and how hard it works.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespace to watch; None: every namespace.
    pub namespace: Option<String>,
    /// Label selector on Canaries: the shard this controller owns; None: all.
    pub shard_selector: Option<String>,
    /// Canaries reconciled at once; at most half of them start a revision (until
    /// its first weight).
    pub concurrency: u16,
    /// Prometheus for Canaries whose analysis names none.
    pub prometheus_address: Option<String>,
    /// Queries in flight to one Prometheus address, at most.
    pub prometheus_queries: usize,
    /// The ConfigMap of the sinks told of every Canary's transitions; None: only
    /// each Canary's own.
    pub cluster_sinks: Option<ClusterSinks>,
}

/// Reconciles every Canary in scope until `stop` resolves.
///
/// Canaries are checked one at a time as the watch delivers them (see
/// [`WatchedCanary`]), so one that does not decode cannot stop the watch of the
/// others.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    health: Arc<WatchHealth>,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let canaries: Api<WatchedCanary> = in_scope(&client, &settings);
    let replica_sets: Api<Compact<ReplicaSet>> = in_scope(&client, &settings);
    let services: Api<Compact<Service>> = in_scope(&client, &settings);
    let shard = match &settings.shard_selector {
        Some(selector) => watcher::Config::default().labels(selector),
        None => watcher::Config::default(),
    };
    let owned = watcher::Config::default().labels(CANARY_LABEL);
    let writer = reflector::store::Writer::default();
    let store = writer.as_reader();
    let gone = Arc::clone(&metrics);
    let canary_events = tracked("canaries", watcher(canaries, shard), &health)
        // A Canary deleted, or moved out of this shard by a label edit, leaves
        // the watch without a reconcile to see it go: its series go here.
        .inspect(move |event| {
            if let Ok(watcher::Event::Delete(canary)) = event {
                gone.forget(&canary.namespace().unwrap_or_default(), &canary.name_any());
            }
        })
        .reflect(writer)
        .applied_objects();
    let replica_set_writer = reflector::store::Writer::default();
    let service_writer = reflector::store::Writer::default();
    let route_writers: Vec<_> = routes_served(&client)
        .await
        .into_iter()
        .map(|kind| (kind, reflector::store::Writer::new(route_resource(kind))))
        .collect();
    let cache = Cache::new(
        replica_set_writer.as_reader(),
        service_writer.as_reader(),
        route_writers
            .iter()
            .map(|(kind, writer)| (*kind, writer.as_reader()))
            .collect(),
    );
    let replica_set_events = tracked("replicasets", watcher(replica_sets, owned.clone()), &health)
        .reflect(replica_set_writer)
        .touched_objects();
    let service_events = tracked("services", watcher(services, owned), &health)
        .reflect(service_writer)
        .touched_objects();
    // Adopted Deployments (labelled with their Canary) wake it when their template
    // changes or their pods come and go; only their metadata is kept.
    let deployments: Api<PartialObjectMeta<Deployment>> = in_scope(&client, &settings);
    let deployment_events = tracked(
        "deployments",
        watcher(deployments, watcher::Config::default().labels(CANARY_LABEL)),
        &health,
    )
    .touched_objects();
    let context = Arc::new(Context::new(client.clone(), &settings, metrics, cache));
    let mut controller = Controller::for_stream(canary_events, store.clone())
        .owns_stream(replica_set_events)
        .owns_stream(service_events)
        .watches_stream(deployment_events, |deployment| {
            let namespace = deployment.namespace()?;
            let canary = deployment.labels().get(CANARY_LABEL)?;
            Some(ObjectRef::<WatchedCanary>::new(canary).within(&namespace))
        });
    for kind in RouteKind::ALL {
        if !route_writers.iter().any(|(served, _)| *served == kind) {
            info!(
                "{} is not served: such routes are read on each reconcile (restart after installing its CRDs to watch them)",
                kind.kind()
            );
        }
    }
    for (kind, writer) in route_writers {
        let routes = scoped(&client, &settings, &route_resource(kind));
        let route_events = tracked(
            kind.plural(),
            watcher(routes, watcher::Config::default()),
            &health,
        )
        .modify(cache::strip_managed_fields)
        .reflect(writer)
        .touched_objects();
        // A route created or edited (by a person, a GitOps sync) wakes the Canaries
        // that name it at once, not at their next retry.
        let store = store.clone();
        controller = controller.watches_stream_with(
            route_events,
            move |route| {
                cache::canaries_routed_by(&store, kind, &route)
                    .iter()
                    .map(|canary| ObjectRef::from_obj(canary.as_ref()))
                    .collect::<Vec<_>>()
            },
            route_resource(kind),
        );
    }
    controller
        .with_config(Config::default().concurrency(settings.concurrency))
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                warn!(%error, "reconcile failed");
            }
        })
        .await;
    health.clear();
}

/// The route kinds the API server serves (Gateway API's, Istio's), so they can be
/// watched; each API group is asked once. A failure to ask counts as not served: such routes are then read on
/// each reconcile, which works either way.
async fn routes_served(client: &Client) -> Vec<RouteKind> {
    let mut served = Vec::new();
    let api_versions: BTreeSet<String> = RouteKind::ALL
        .into_iter()
        .map(|kind| route_resource(kind).api_version)
        .collect();
    for api_version in api_versions {
        match client.list_api_group_resources(&api_version).await {
            Ok(list) => served.extend(RouteKind::ALL.into_iter().filter(|kind| {
                route_resource(*kind).api_version == api_version
                    && list.resources.iter().any(|r| r.name == kind.plural())
            })),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => warn!(%error, "asking whether {api_version} is served"),
        }
    }
    served
}

/// The Canaries in the controller's namespace (or all), as untyped objects.
pub fn canaries(client: &Client, settings: &Settings) -> Api<DynamicObject> {
    scoped(client, settings, &ApiResource::erase::<Canary>(&()))
}

/// Objects of kind `K` in the controller's namespace (or all).
fn in_scope<K>(client: &Client, settings: &Settings) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    match &settings.namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// Objects of `resource` in the controller's namespace (or all), untyped.
fn scoped(client: &Client, settings: &Settings, resource: &ApiResource) -> Api<DynamicObject> {
    match &settings.namespace {
        Some(namespace) => Api::namespaced_with(client.clone(), namespace, resource),
        None => Api::all_with(client.clone(), resource),
    }
}

/// A watch with back-off whose every outcome is reported to `health`.
fn tracked<K: Send + 'static>(
    name: &'static str,
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    health: &Arc<WatchHealth>,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static {
    health.starting(name);
    let health = Arc::clone(health);
    events
        .default_backoff()
        .inspect(move |event| health.observe(name, event))
}

/// Backs off by the kind of failure (see [`ReconcileError::retry_after`]); the
/// failure is counted by layer when the reconcile ends.
fn error_policy(
    _canary: Arc<WatchedCanary>,
    error: &ReconcileError,
    _context: Arc<Context>,
) -> Requeue {
    Requeue::requeue(error.retry_after())
}

async fn reconcile(
    watched: Arc<WatchedCanary>,
    context: Arc<Context>,
) -> Result<Requeue, ReconcileError> {
    let namespace = watched.namespace().ok_or(ReconcileError::NoNamespace)?;
    let name = watched.name_any();
    let span = info_span!("reconcile", canary = %format!("{namespace}/{name}"));
    let started = Instant::now();
    let result = async {
        if watched.meta().deletion_timestamp.is_some() {
            context.metrics.forget(&namespace, &name);
            let adopting = watched.finalizers().iter().any(|f| f == ADOPTION_FINALIZER);
            if let (true, Read::Canary(canary)) = (adopting, watched.read()) {
                return give_back(&canary, &namespace, &context).await;
            }
            return Ok(Requeue::await_change());
        }
        match watched.read() {
            Read::Canary(canary) => {
                context.metrics.undecodable(&namespace, &name, false);
                reconcile_canary(&canary, &context).await
            }
            Read::Undecodable(object, error) => {
                context.metrics.undecodable(&namespace, &name, true);
                report_undecodable(&object, &namespace, &name, &error, &context).await
            }
        }
    }
    .instrument(span)
    .await;
    context.metrics.reconciled(
        started.elapsed(),
        result.as_ref().err().map(|error| error.layer().as_str()),
    );
    result
}

/// How often a deleted Canary looks at the Deployment it gives back, beside the
/// watch of adopted Deployments that wakes it as their pods become available.
const GIVE_BACK_RECHECK: Duration = Duration::from_secs(2);

/// A deleted Canary that adopted a Deployment: the Deployment goes back to the
/// Canary's replicas, and only once its pods are available (or the progress
/// deadline passed) do its label and the finalizer go, so the Canary's own pods,
/// which the garbage collector then deletes, never leave the workload short.
async fn give_back(
    canary: &Canary,
    namespace: &str,
    context: &Context,
) -> Result<Requeue, ReconcileError> {
    let name = canary.name_any();
    let span = info_span!("give back", canary = %format!("{namespace}/{name}"));
    async {
        let deployment_name = canary.spec.workload_ref.as_ref().map(|r| r.name.clone());
        let deployments: Api<Deployment> = Api::namespaced(context.client.clone(), namespace);
        let deployment = match &deployment_name {
            Some(deployment) => deployments.get_opt(deployment).await.map_err(kube_error(
                Layer::Observe,
                format!("reading Deployment {deployment}"),
            ))?,
            None => None,
        };
        let deleted = canary
            .metadata
            .deletion_timestamp
            .as_ref()
            .map_or(Timestamp::now(), |at| at.0);
        let waited = Duration::try_from(Timestamp::now() - deleted).unwrap_or_default();
        let deadline = Duration::from(canary.spec.progress_deadline);
        let replicas = canary.spec.replicas;
        let event = match adoption::give_back(deployment.as_ref(), replicas, waited, deadline) {
            GiveBack::Scale(replicas) => {
                if let Some(deployment) = &deployment_name {
                    adoption::scale(&context.client, namespace, deployment, replicas)
                        .await
                        .map_err(kube_error(
                            Layer::Apply,
                            format!("scaling Deployment {deployment} back"),
                        ))?;
                }
                return Ok(Requeue::requeue(GIVE_BACK_RECHECK));
            }
            GiveBack::Wait => return Ok(Requeue::requeue(GIVE_BACK_RECHECK)),
            GiveBack::Done => machine::Event {
                kind: EventType::Normal,
                reason: reason::DEPLOYMENT_RELEASED,
                note: format!(
                    "Deployment {} is back at {replicas} available pods; the Canary's pods go",
                    deployment_name.as_deref().unwrap_or_default()
                ),
            },
            GiveBack::GiveUp => machine::Event {
                kind: EventType::Warning,
                reason: reason::DEPLOYMENT_RELEASED,
                note: format!(
                    "Deployment {} is back at {replicas} pods, but they were not all available within spec.progressDeadline; the Canary's pods go anyway",
                    deployment_name.as_deref().unwrap_or_default()
                ),
            },
        };
        adoption::release(
            &context.client,
            canary,
            namespace,
            deployment.as_ref().and(deployment_name.as_deref()),
        )
        .await
        .map_err(kube_error(Layer::Apply, "releasing the adopted Deployment"))?;
        record_events(context, namespace, &name, canary.object_ref(&()), &[event]).await;
        Ok(Requeue::await_change())
    }
    .instrument(span)
    .await
}

/// A Canary that does not decode gets `InvalidSpec` (and `Promoted` False, `Stalled`
/// True) naming the field, written as a merge patch of the conditions so the rest of its status
/// (the stable revision above all) survives until the spec is fixed. Nothing else
/// is touched; the fix is an edit, which the watch sees.
async fn report_undecodable(
    object: &DynamicObject,
    namespace: &str,
    name: &str,
    error: &DecodeError,
    context: &Context,
) -> Result<Requeue, ReconcileError> {
    let generation = object.metadata.generation.unwrap_or_default();
    let mut conditions: Vec<Condition> = object
        .data
        .pointer("/status/conditions")
        .and_then(|value| serde_json::from_value(value.clone()).ok())
        .unwrap_or_default();
    let message = format!(
        "{error}; fix the field (a value in the pod template is checked as a Deployment's would be)"
    );
    let reported = conditions
        .iter()
        .any(|c| c.type_ == conditions::INVALID_SPEC && c.status == "True" && c.message == message);
    let now = Time(Timestamp::now());
    conditions::set(
        &mut conditions,
        conditions::INVALID_SPEC,
        ConditionStatus::True,
        reason::INVALID_SPEC,
        message.clone(),
        &now,
        generation,
    );
    conditions::set(
        &mut conditions,
        conditions::PROMOTED,
        ConditionStatus::False,
        reason::INVALID_SPEC,
        format!("the spec cannot be read: {error}"),
        &now,
        generation,
    );
    let phase = object
        .data
        .pointer("/status/phase")
        .and_then(|value| serde_json::from_value(value.clone()).ok());
    conditions::summarize(&mut conditions, phase, &now, generation);
    let canaries: Api<DynamicObject> =
        Api::namespaced_with(context.client.clone(), namespace, &context.canary_type);
    let patch =
        serde_json::json!({"status": {"observedGeneration": generation, "conditions": conditions}});
    canaries
        .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(kube_error(Layer::Report, "writing status"))?;
    if !reported {
        warn!(%error, "the Canary does not decode");
        let event = machine::Event {
            kind: EventType::Warning,
            reason: reason::INVALID_SPEC,
            note: message,
        };
        record_events(
            context,
            namespace,
            name,
            object.object_ref(&context.canary_type),
            &[event],
        )
        .await;
    }
    Ok(Requeue::await_change())
}

async fn reconcile_one(
    canary: &Canary,
    namespace: &str,
    name: &str,
    context: &Context,
) -> Result<Requeue, ReconcileError> {
    let version = canary.resource_version();
    if context
        .own_writes
        .is_stale(namespace, name, version.as_deref())
    {
        context.metrics.stale_read();
        return Ok(Requeue::requeue(STALE_READ_RETRY));
    }
    // An adopting Canary rolls out its Deployment's template: the rest of the
    // reconcile sees a Canary with that template, as if it were written in it.
    let adopting;
    let (canary, adoption, adoption_problem) = match &canary.spec.workload_ref {
        None if canary.finalizers().iter().any(|f| f == ADOPTION_FINALIZER) => {
            adoption::end(&context.client, canary, namespace)
                .await
                .map_err(kube_error(Layer::Apply, "ending the adoption"))?;
            info!("spec.workloadRef removed: the adoption ended");
            return Ok(Requeue::requeue(STALE_READ_RETRY));
        }
        None => (canary, None, None),
        Some(_) if canary.spec.template.is_some() => {
            (canary, None, Some(EXACTLY_ONE_TEMPLATE.to_owned()))
        }
        Some(reference) => {
            match adoption::read(&context.client, namespace, name, &canary.spec, reference)
                .await
                .map_err(kube_error(
                    Layer::Observe,
                    format!("reading Deployment {}", reference.name),
                ))? {
                Ok(adoption) => {
                    let mut with_template = canary.clone();
                    with_template.spec.template = Some(adoption.template.clone());
                    adopting = with_template;
                    (&adopting, Some(adoption), None)
                }
                Err(problem) => (canary, None, Some(problem)),
            }
        }
    };
    let owner = canary.controller_owner_ref(&()).unwrap_or_default();
    let workload = Workload {
        namespace,
        name,
        labels: &canary.spec.selector.match_labels,
        ports: canary.spec.service.as_ref(),
        routed: canary.spec.traffic.is_some(),
        owner,
    };
    let router = Router::new(&context.client, workload, &context.cache, &canary.spec);
    context.cache.ready().await?;
    // Without a template (its Deployment is missing), nothing is rolled out: the
    // spec is invalid, and the revision is the stable one's.
    let revision = match &canary.spec.template {
        Some(template) => revision_of(template),
        None => canary
            .status
            .as_ref()
            .and_then(|status| status.stable_revision.clone())
            .unwrap_or_default(),
    };
    let replica_sets: Vec<ObservedReplicaSet> = context
        .cache
        .replica_sets(namespace, name)
        .iter()
        .filter_map(observe_replica_set)
        .collect();
    // Starting a revision (its dry run and ReplicaSet, then each look until its
    // first weight) waits for a start slot; a rollout past its first weight, with
    // its timed steps and analyses, never does.
    let starting = !replica_sets.iter().any(|rs| rs.revision == revision)
        || before_first_weight(canary, &revision);
    let _start = if !starting {
        None
    } else {
        match Arc::clone(&context.starts).try_acquire_owned() {
            Ok(slot) => Some(slot),
            Err(_) => {
                context.metrics.start_deferred();
                return Ok(Requeue::requeue(START_DEFERRED));
            }
        }
    };
    let observed = observe(
        canary,
        revision,
        adoption_problem,
        replica_sets,
        namespace,
        name,
        &router,
        context,
    )
    .await?;
    if let (Some(adoption), Some(reference), None) =
        (&adoption, &canary.spec.workload_ref, &observed.invalid)
    {
        let claimed = adoption::claim(
            &context.client,
            canary,
            namespace,
            adoption,
            &reference.name,
        )
        .await
        .map_err(kube_error(
            Layer::Apply,
            format!("adopting Deployment {}", reference.name),
        ))?;
        // The finalizer changed the Canary: a plan made from the Canary as it was
        // would be refused at its status write; plan from the new one instead.
        if claimed {
            return Ok(Requeue::requeue(STALE_READ_RETRY));
        }
    }
    let sinks = observed.sinks.clone();
    let adopted = adoption.as_ref().map(|adoption| adoption.workload);
    let plan = decide(canary, observed.clone(), adopted);
    apply(canary, namespace, name, &router, &observed, &plan, context).await?;
    report(canary, namespace, name, &plan, &sinks, context).await
}

/// A rollout of `revision` that has not put weight on it yet: its canary pods are
/// still coming up, the part of a rollout that a wave of image changes is made of.
fn before_first_weight(canary: &Canary, revision: &str) -> bool {
    canary.status.as_ref().is_some_and(|status| {
        status.phase == Some(Phase::Progressing)
            && status.canary_revision.as_deref() == Some(revision)
            && status.weight.is_zero()
    })
}

/// What one reconcile saw: the Canary's ReplicaSets, the spec's revision, a spec
/// problem only the controller can see, the analysis verdict, and the time.
#[derive(Clone, Debug)]
struct Observed {
    revision: String,
    replica_sets: Vec<ObservedReplicaSet>,
    invalid: Option<String>,
    analysis: Option<StepVerdict>,
    /// How soon the analysis looks again.
    next_look: Option<std::time::Duration>,
    /// What came of the checks asked and the hooks being called.
    gate_answers: Vec<GateAnswer>,
    /// The stored status, with the analysis just run written into it.
    status: CanaryStatus,
    /// The sinks of `spec.notifications`, their URLs read; none while a Secret
    /// they name is missing (an invalid spec).
    sinks: Vec<Sink>,
    now: Timestamp,
}

/// Reads the ReplicaSets, checks the spec (its promises, the router, the analysis,
/// a dry run of a new revision's ReplicaSet) and runs the analysis when due.
#[expect(
    clippy::too_many_arguments,
    reason = "what one reconcile observes from"
)]
async fn observe(
    canary: &Canary,
    revision: String,
    known_problem: Option<String>,
    mut observed: Vec<ObservedReplicaSet>,
    namespace: &str,
    name: &str,
    router: &Router<'_>,
    context: &Context,
) -> Result<Observed, ReconcileError> {
    let now = Timestamp::now();
    let stable = canary
        .status
        .as_ref()
        .and_then(|s| s.stable_revision.clone());
    if let Some(rs) = observed.iter_mut().find(|rs| {
        rs.revision == revision
            && Some(&rs.revision) != stable.as_ref()
            && rs.available < rs.replicas
    }) {
        rs.pods_failing = pods_failing(context, canary, namespace, &revision, now).await;
    }
    let invalid = match known_problem.or_else(|| canary.spec.problem()) {
        Some(problem) => Some(problem),
        None => match router.check().await {
            Ok(()) => None,
            Err(error) => match error.spec_problem() {
                Some(problem) => Some(problem),
                None => {
                    return Err(ReconcileError::Traffic {
                        layer: Layer::Observe,
                        source: error,
                    });
                }
            },
        },
    }
    .or_else(|| context.analyst.spec_problem(canary.spec.analysis.as_ref()));
    let (sinks, invalid) =
        match notify::sinks(&context.client, namespace, &canary.spec.notifications).await {
            Ok(sinks) => (sinks, invalid),
            Err(SinkError::Spec(problem)) => (Vec::new(), invalid.or(Some(problem))),
            Err(error) => {
                return Err(ReconcileError::Notify {
                    layer: Layer::Observe,
                    source: error,
                });
            }
        };
    let invalid = match invalid {
        None if !observed.iter().any(|rs| rs.revision == revision) => {
            let owner = canary.controller_owner_ref(&()).unwrap_or_default();
            let rs = replica_set(canary, namespace, name, &revision, 0, owner);
            let replica_sets: Api<ReplicaSet> = Api::namespaced(context.client.clone(), namespace);
            template_problem(&replica_sets, &rs).await?
        }
        invalid => invalid,
    };
    let mut status = canary.status.clone().unwrap_or_default();
    let step = match invalid {
        None => {
            context
                .analyst
                .step_verdict(
                    &context.client,
                    canary,
                    namespace,
                    &revision,
                    &mut status,
                    now,
                )
                .await
        }
        Some(_) => None,
    };
    let (analysis, next_look) = match step {
        Some(step) => (Some(step.verdict), step.next_look),
        None => (None, None),
    };
    let gate_answers = match invalid {
        None => {
            context
                .gates
                .answers(canary, namespace, name, &status, now)
                .await
        }
        Some(_) => Vec::new(),
    };
    Ok(Observed {
        revision,
        replica_sets: observed,
        invalid,
        analysis,
        next_look,
        gate_answers,
        status,
        sinks,
        now,
    })
}

/// Why the canary revision's pods are not available, from one list of them. Only
/// words for the status: a failure to read pods is logged and changes nothing.
async fn pods_failing(
    context: &Context,
    canary: &Canary,
    namespace: &str,
    revision: &str,
    now: Timestamp,
) -> Option<String> {
    let selector = canary
        .spec
        .selector
        .match_labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .chain([format!("{REVISION_LABEL}={revision}")])
        .collect::<Vec<_>>()
        .join(",");
    let pods: Api<Pod> = Api::namespaced(context.client.clone(), namespace);
    match pods.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => pods::failure(&list.items, now),
        Err(error) => {
            warn!(%error, "reading the canary's pods to say why they are not available");
            None
        }
    }
}

/// Asks the state machine what to do about what was observed, and the adopted
/// Deployment's pods.
fn decide(canary: &Canary, observed: Observed, adopted: Option<AdoptedWorkload>) -> Plan {
    machine::plan(&Snapshot {
        spec: &canary.spec,
        generation: canary.metadata.generation.unwrap_or_default(),
        status: observed.status,
        command: canary.annotations().get(COMMAND_ANNOTATION).cloned(),
        revision: observed.revision,
        replica_sets: observed.replica_sets,
        invalid: observed.invalid,
        analysis: observed.analysis,
        next_look: observed.next_look,
        gate_answers: observed.gate_answers,
        adopted,
        now: observed.now,
    })
}

/// Carries out the plan's actions in order; the first failure stops the rest and
/// the status is not written, so the next reconcile plans from the same status.
async fn apply(
    canary: &Canary,
    namespace: &str,
    name: &str,
    router: &Router<'_>,
    observed: &Observed,
    plan: &Plan,
    context: &Context,
) -> Result<(), ReconcileError> {
    let replica_sets: Api<ReplicaSet> = Api::namespaced(context.client.clone(), namespace);
    // The ReplicaSets as they stand after each write, so a patch that would change
    // nothing is not sent.
    let mut current = observed.replica_sets.clone();
    for action in &plan.actions {
        let exists = |revision: &String| {
            observed
                .replica_sets
                .iter()
                .any(|rs| rs.revision == *revision)
        };
        match action {
            Action::Scale { revision, replicas } if !exists(revision) => {
                if *revision == observed.revision {
                    create_replica_set(&replica_sets, canary, revision, *replicas).await?;
                } else {
                    let rs_name = replica_set_name(name, revision);
                    warn!(replicaset = %rs_name, "ReplicaSet of an older revision is gone; it cannot be recreated");
                }
            }
            Action::Scale { revision, .. } | Action::ScaleDownAt { revision, .. } => {
                let Some(rs) = current.iter_mut().find(|rs| rs.revision == *revision) else {
                    continue;
                };
                let before = rs.clone();
                action.apply_to(rs);
                let rs_name = replica_set_name(name, revision);
                if let (true, Some(patch)) = (*rs != before, replica_set_patch(action)) {
                    replica_sets
                        .patch(&rs_name, &PatchParams::default(), &Patch::Merge(patch))
                        .await
                        .map_err(kube_error(
                            Layer::Apply,
                            format!("updating ReplicaSet {rs_name}"),
                        ))?;
                }
            }
            Action::Route(routing) => {
                let weights = Weights {
                    stable: &routing.stable,
                    canary: routing.canary.as_deref(),
                    weight: routing.weight,
                    exposure: routing.exposure,
                };
                router
                    .apply(weights)
                    .await
                    .map_err(|source| ReconcileError::Traffic {
                        layer: Layer::Apply,
                        source,
                    })?;
            }
            Action::ScaleAdopted { replicas } => {
                let Some(reference) = &canary.spec.workload_ref else {
                    continue;
                };
                adoption::scale(&context.client, namespace, &reference.name, *replicas)
                    .await
                    .map_err(kube_error(
                        Layer::Apply,
                        format!("scaling Deployment {}", reference.name),
                    ))?;
                info!(deployment = %reference.name, replicas, "scaled the adopted Deployment");
            }
            Action::Delete { revision } => {
                let rs_name = replica_set_name(name, revision);
                match replica_sets
                    .delete(&rs_name, &DeleteParams::background())
                    .await
                {
                    // Gone already: the cache had not seen the deletion yet.
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    result => {
                        result.map_err(kube_error(
                            Layer::Apply,
                            format!("deleting ReplicaSet {rs_name}"),
                        ))?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Creates the ReplicaSet of the spec's revision, owned by the Canary, with a
/// server-side apply as Serin's field manager.
async fn create_replica_set(
    replica_sets: &Api<ReplicaSet>,
    canary: &Canary,
    revision: &str,
    replicas: i32,
) -> Result<(), ReconcileError> {
    let (namespace, name) = (canary.namespace().unwrap_or_default(), canary.name_any());
    let rs_name = replica_set_name(&name, revision);
    let owner = canary.controller_owner_ref(&()).unwrap_or_default();
    let rs = replica_set(canary, &namespace, &name, revision, replicas, owner);
    replica_sets
        .patch(
            &rs_name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&rs),
        )
        .await
        .map_err(kube_error(
            Layer::Apply,
            format!("creating ReplicaSet {rs_name}"),
        ))?;
    info!(replicaset = %rs_name, replicas, "created ReplicaSet");
    Ok(())
}

/// Writes the new status when it differs from the stored one (server-side apply
/// of status alone, forced: Serin owns it), updates the per-Canary metrics and
/// records the Events. The write carries the resourceVersion the plan was made
/// from: a plan from a Canary that changed since is refused (a conflict, planned
/// again at once) before any of its Events is recorded.
async fn report(
    canary: &Canary,
    namespace: &str,
    name: &str,
    plan: &Plan,
    sinks: &[Sink],
    context: &Context,
) -> Result<Requeue, ReconcileError> {
    if canary.status.as_ref() != Some(&plan.status) {
        let canaries: Api<Canary> = Api::namespaced(context.client.clone(), namespace);
        let read = canary.resource_version();
        let mut status = serde_json::json!({
            "apiVersion": Canary::api_version(&()),
            "kind": Canary::kind(&()),
            "status": plan.status,
        });
        if let Some(read) = &read {
            status["metadata"] = serde_json::json!({"resourceVersion": read});
        }
        let stored = canaries
            .patch_status(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(status),
            )
            .await
            .map_err(kube_error(Layer::Report, "writing status"))?;
        context.own_writes.wrote(
            namespace,
            name,
            read.as_deref(),
            stored.resource_version().as_deref(),
        );
        // Only now that the status saying so is stored: each hook at most once.
        let before = canary.status.clone().unwrap_or_default();
        context
            .gates
            .call_hooks(canary, namespace, name, &before, &plan.status);
        context.gates.recorded(namespace, name, &plan.status);
    }
    let evidence_limit = canary
        .spec
        .analysis
        .as_ref()
        .map(|analysis| 1.0 / (1.0 - analysis.confidence));
    context
        .metrics
        .canary(namespace, name, &plan.status, evidence_limit);
    context
        .metrics
        .transitions(plan.events.iter().map(|event| event.reason));
    let regarding = canary.object_ref(&());
    context.notifier.notify(
        sinks,
        namespace,
        name,
        &plan.events,
        &plan.status,
        &regarding,
    );
    record_events(context, namespace, name, regarding, &plan.events).await;
    Ok(Requeue::requeue(plan.requeue_after))
}

/// Asks the API server, with a dry run, whether it would create the first
/// ReplicaSet of a revision: it checks the pod template as it checks a
/// Deployment's (container names, ports, label keys, probes, ...). Its refusal is a
/// spec problem with its own message; nothing is created either way.
///
/// A create, not a server-side apply: apply refuses some invalid templates (two
/// containers with one name) with a 500 about the patch instead of the 422 that
/// says which field is wrong.
async fn template_problem(
    replica_sets: &Api<ReplicaSet>,
    rs: &ReplicaSet,
) -> Result<Option<String>, ReconcileError> {
    let dry_run = PostParams {
        dry_run: true,
        field_manager: Some(FIELD_MANAGER.to_owned()),
    };
    match replica_sets.create(&dry_run, rs).await {
        Ok(_) => Ok(None),
        Err(kube::Error::Api(status)) if status.code == 422 || status.code == 400 => {
            Ok(Some(format!(
                "spec.template is refused by the API server: {}",
                status.message
            )))
        }
        Err(source) => Err(ReconcileError::Kube {
            layer: Layer::Observe,
            what: format!("checking ReplicaSet {} with a dry run", rs.name_any()),
            source,
        }),
    }
}

/// Records each transition as an Event on the Canary; a failure to record is
/// logged, never fatal to the reconcile.
async fn record_events(
    context: &Context,
    namespace: &str,
    name: &str,
    regarding: ObjectReference,
    transitions: &[machine::Event],
) {
    let events: Api<Event> = Api::namespaced(context.client.clone(), namespace);
    for event in transitions {
        info!(reason = event.reason, note = %event.note, "transition");
        let record = transition_event(name, namespace, regarding.clone(), event, &context.instance);
        if let Err(error) = events.create(&PostParams::default(), &record).await {
            warn!(%error, reason = event.reason, "recording event");
        }
    }
}

/// One Event per transition. Each is its own object: the client-side series of
/// kube's Recorder would fold two transitions with one reason into one Event that
/// keeps the first message, which hides what happened the second time.
pub(crate) fn transition_event(
    name: &str,
    namespace: &str,
    regarding: ObjectReference,
    event: &machine::Event,
    instance: &str,
) -> Event {
    Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(Timestamp::now())),
        type_: Some(event.kind.as_str().to_owned()),
        reason: Some(event.reason.to_owned()),
        note: Some(event.note.chars().take(1000).collect()),
        action: Some("Rollout".to_owned()),
        reporting_controller: Some(REPORTING_CONTROLLER.to_owned()),
        reporting_instance: Some(instance.to_owned()),
        regarding: Some(regarding),
        ..Event::default()
    }
}

/// The merge patch that makes an existing ReplicaSet what `action` says: its
/// replica count, or its scale-down mark (`null` removes it). It writes exactly the
/// fields `Action::apply_to` changes; see the round-trip test below.
fn replica_set_patch(action: &Action) -> Option<serde_json::Value> {
    match action {
        Action::Scale { replicas, .. } => Some(serde_json::json!({"spec": {"replicas": replicas}})),
        Action::ScaleDownAt { at, .. } => Some(serde_json::json!({"metadata": {"annotations": {
            SCALE_DOWN_AT_ANNOTATION: at.map(|at| at.to_string()),
        }}})),
        Action::Route(_) | Action::Delete { .. } | Action::ScaleAdopted { .. } => None,
    }
}

fn revision_label(rs: &ReplicaSet) -> Option<&String> {
    rs.metadata.labels.as_ref()?.get(REVISION_LABEL)
}

fn observe_replica_set(rs: &ReplicaSet) -> Option<ObservedReplicaSet> {
    let revision = revision_label(rs)?.clone();
    let scale_down_at = rs
        .annotations()
        .get(SCALE_DOWN_AT_ANNOTATION)
        .and_then(|text| text.parse::<Timestamp>().ok());
    let status = rs.status.as_ref();
    // Counts from a status the ReplicaSet controller has not caught up with are stale.
    let current = status.and_then(|s| s.observed_generation) == rs.metadata.generation;
    Some(ObservedReplicaSet {
        revision,
        replicas: rs.spec.as_ref().and_then(|spec| spec.replicas).unwrap_or(0),
        available: if current {
            status.and_then(|s| s.available_replicas).unwrap_or(0)
        } else {
            0
        },
        created: rs
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(Timestamp::UNIX_EPOCH, |time| time.0),
        scale_down_at,
        pods_failing: None,
    })
}

/// The ReplicaSet of the spec's revision.
fn replica_set(
    canary: &Canary,
    namespace: &str,
    name: &str,
    revision: &str,
    replicas: i32,
    owner: k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
) -> ReplicaSet {
    let mut labels: BTreeMap<String, String> = canary.spec.selector.match_labels.clone();
    labels.insert(REVISION_LABEL.to_owned(), revision.to_owned());
    // An adopting Canary's template is the Deployment's, filled in before this.
    let mut template: PodTemplateSpec = canary.spec.template.clone().unwrap_or_default();
    let metadata = template.metadata.get_or_insert_with(ObjectMeta::default);
    metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(REVISION_LABEL.to_owned(), revision.to_owned());
    let mut rs_labels = labels.clone();
    rs_labels.insert(CANARY_LABEL.to_owned(), name.to_owned());
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(replica_set_name(name, revision)),
            namespace: Some(namespace.to_owned()),
            labels: Some(rs_labels),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(labels),
                match_expressions: None,
            },
            template: Some(template),
            min_ready_seconds: None,
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::ReplicaSetStatus;

    use super::*;

    fn observed_replica_set(mark: Option<&str>) -> ReplicaSet {
        let mut annotations = BTreeMap::from([("team".to_owned(), "web".to_owned())]);
        if let Some(mark) = mark {
            annotations.insert(SCALE_DOWN_AT_ANNOTATION.to_owned(), mark.to_owned());
        }
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some("web-aaaa".into()),
                labels: Some(BTreeMap::from([(
                    REVISION_LABEL.to_owned(),
                    "aaaa".to_owned(),
                )])),
                annotations: Some(annotations),
                generation: Some(3),
                ..ObjectMeta::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(4),
                ..ReplicaSetSpec::default()
            }),
            status: Some(ReplicaSetStatus {
                observed_generation: Some(3),
                available_replicas: Some(4),
                ..ReplicaSetStatus::default()
            }),
        }
    }

    /// The cache keeps too little of a ReplicaSet to change what is observed of it.
    #[test]
    fn a_cached_replica_set_is_observed_as_the_whole_one() {
        for mark in [None, Some("2027-01-15T08:00:00Z")] {
            let mut whole = observed_replica_set(mark);
            whole.metadata.creation_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
            if let Some(status) = whole.status.as_mut() {
                status.observed_generation = Some(2);
            }
            for generation in [2, 3] {
                whole.metadata.generation = Some(generation);
                let cached = cache::Compact::new(whole.clone()).object().unwrap();
                assert_eq!(observe_replica_set(&cached), observe_replica_set(&whole));
                assert!(observe_replica_set(&cached).is_some());
            }
        }
    }

    /// The patches the reconciler sends change, as the API server merges them,
    /// exactly what the state machine's model of an action says, and nothing else.
    #[test]
    fn replica_set_patches_do_what_the_machine_models() {
        let at = "2027-01-15T08:00:00Z".parse::<Timestamp>().ok();
        let actions = [
            Action::Scale {
                revision: "aaaa".into(),
                replicas: 0,
            },
            Action::Scale {
                revision: "aaaa".into(),
                replicas: 7,
            },
            Action::ScaleDownAt {
                revision: "aaaa".into(),
                at,
            },
            Action::ScaleDownAt {
                revision: "aaaa".into(),
                at: None,
            },
        ];
        for mark in [None, Some("2026-01-01T00:00:00Z")] {
            for action in &actions {
                let before = observed_replica_set(mark);
                let mut document = serde_json::to_value(&before).unwrap_or_default();
                let patch = replica_set_patch(action).unwrap_or_default();
                json_patch::merge(&mut document, &patch);
                let after: ReplicaSet =
                    serde_json::from_value(document).unwrap_or_else(|e| panic!("{e}"));
                let mut modelled =
                    observe_replica_set(&before).unwrap_or_else(|| panic!("no revision"));
                action.apply_to(&mut modelled);
                assert_eq!(
                    observe_replica_set(&after),
                    Some(modelled),
                    "{action:?} on mark {mark:?}"
                );
                assert_eq!(
                    after.annotations().get("team").map(String::as_str),
                    Some("web"),
                    "other annotations are kept"
                );
            }
        }
    }
}

//! The thin shell: observe a Canary and its ReplicaSets, ask the state machine,
//! apply the plan, record status and events, and requeue when the plan says.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::{PodTemplateSpec, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action as Requeue, Config, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serin_api::{COMMAND_ANNOTATION, Canary, REVISION_LABEL};
use serin_traffic::{FIELD_MANAGER, Router, WeightRouter, Weights, Workload};
use tracing::{Instrument, info, info_span, warn};

use crate::analysis::Analyst;
use crate::machine::{self, Action, ObservedReplicaSet, Snapshot};
use crate::metrics::Metrics;
use crate::revision::revision_of;

/// Label on everything Serin creates for a Canary: the Canary's name.
pub const CANARY_LABEL: &str = "serin.dev/canary";
/// Annotation on a ReplicaSet without traffic: when Serin scales it to zero.
pub const SCALE_DOWN_AT_ANNOTATION: &str = "serin.dev/scale-down-at";

/// Errors of one reconcile; each is retried with a back-off.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The Canary has no namespace (it is a namespaced resource, so this is a bug).
    #[error("canary has no namespace")]
    NoNamespace,
    /// A read or write of the API failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: kube::Error,
    },
    /// Applying Services or weights failed.
    #[error(transparent)]
    Traffic(#[from] serin_traffic::TrafficError),
}

fn kube_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> ReconcileError {
    let what = what.into();
    move |source| ReconcileError::Kube { what, source }
}

/// What every reconcile shares.
pub struct Context {
    client: Client,
    analyst: Analyst,
    /// Who records the Events: the pod name in a cluster.
    instance: String,
    metrics: Arc<Metrics>,
}

/// Where the controller looks, and how hard it works.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespace to watch; None: every namespace.
    pub namespace: Option<String>,
    /// Canaries reconciled at once.
    pub concurrency: u16,
    /// Prometheus for Canaries whose analysis names none.
    pub prometheus_address: Option<String>,
}

/// Reconciles every Canary in scope until `stop` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let (canaries, replica_sets, services) = match &settings.namespace {
        Some(namespace) => (
            Api::<Canary>::namespaced(client.clone(), namespace),
            Api::<ReplicaSet>::namespaced(client.clone(), namespace),
            Api::<Service>::namespaced(client.clone(), namespace),
        ),
        None => (
            Api::<Canary>::all(client.clone()),
            Api::<ReplicaSet>::all(client.clone()),
            Api::<Service>::all(client.clone()),
        ),
    };
    let owned = watcher::Config::default().labels(CANARY_LABEL);
    let context = Arc::new(Context {
        instance: std::env::var("POD_NAME")
            .unwrap_or_else(|_| format!("serin-{}", std::process::id())),
        client,
        analyst: Analyst::new(settings.prometheus_address.clone()),
        metrics,
    });
    Controller::new(canaries, watcher::Config::default())
        .owns(replica_sets, owned.clone())
        .owns(services, owned)
        .with_config(Config::default().concurrency(settings.concurrency))
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                warn!(%error, "reconcile failed");
            }
        })
        .await;
}

fn error_policy(_canary: Arc<Canary>, _error: &ReconcileError, _context: Arc<Context>) -> Requeue {
    Requeue::requeue(Duration::from_secs(5))
}

async fn reconcile(canary: Arc<Canary>, context: Arc<Context>) -> Result<Requeue, ReconcileError> {
    let namespace = canary.namespace().ok_or(ReconcileError::NoNamespace)?;
    let name = canary.name_any();
    let span = info_span!("reconcile", canary = %format!("{namespace}/{name}"));
    let started = Instant::now();
    let result = reconcile_one(&canary, &namespace, &name, &context)
        .instrument(span)
        .await;
    context
        .metrics
        .reconciled(started.elapsed(), result.is_err());
    result
}

async fn reconcile_one(
    canary: &Canary,
    namespace: &str,
    name: &str,
    context: &Context,
) -> Result<Requeue, ReconcileError> {
    if canary.metadata.deletion_timestamp.is_some() {
        context.metrics.forget(namespace, name);
        return Ok(Requeue::await_change());
    }
    let client = &context.client;
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), namespace);
    let owned = replica_sets
        .list(&ListParams::default().labels(&format!("{CANARY_LABEL}={name}")))
        .await
        .map_err(kube_error("listing ReplicaSets"))?;
    let observed: Vec<ObservedReplicaSet> = owned.items.iter().filter_map(observe).collect();
    let revision = revision_of(&canary.spec.template);
    let owner = canary.controller_owner_ref(&()).unwrap_or_default();
    let workload = Workload {
        namespace,
        name,
        labels: &canary.spec.selector.match_labels,
        ports: canary.spec.service.as_ref(),
        routed: canary.spec.traffic.is_some(),
        owner: owner.clone(),
    };
    let router = Router::new(client, workload, canary.spec.traffic.as_ref());
    let invalid = match router.check().await {
        Ok(()) => None,
        Err(error) => match error.spec_problem() {
            Some(problem) => Some(problem),
            None => return Err(error.into()),
        },
    }
    .or_else(|| context.analyst.spec_problem(canary.spec.analysis.as_ref()));
    let now = Timestamp::now();
    let mut status = canary.status.clone().unwrap_or_default();
    let analysis = if invalid.is_none() {
        context
            .analyst
            .step_verdict(client, canary, namespace, &revision, &mut status, now)
            .await
    } else {
        None
    };
    let snapshot = Snapshot {
        spec: &canary.spec,
        generation: canary.metadata.generation.unwrap_or_default(),
        status,
        command: canary.annotations().get(COMMAND_ANNOTATION).cloned(),
        revision: revision.clone(),
        replica_sets: observed,
        invalid,
        analysis,
        now,
    };
    let plan = machine::plan(&snapshot);

    let owner = canary.controller_owner_ref(&()).unwrap_or_default();
    for action in &plan.actions {
        match action {
            Action::Scale {
                revision: rs_revision,
                replicas,
            } => {
                let exists = owned
                    .items
                    .iter()
                    .any(|rs| revision_label(rs) == Some(rs_revision));
                let rs_name = format!("{name}-{rs_revision}");
                if exists {
                    replica_sets
                        .patch(
                            &rs_name,
                            &PatchParams::default(),
                            &Patch::Merge(serde_json::json!({"spec": {"replicas": replicas}})),
                        )
                        .await
                        .map_err(kube_error(format!("scaling ReplicaSet {rs_name}")))?;
                } else if *rs_revision == revision {
                    let rs =
                        replica_set(canary, namespace, name, &revision, *replicas, owner.clone());
                    replica_sets
                        .patch(
                            &rs_name,
                            &PatchParams::apply(FIELD_MANAGER).force(),
                            &Patch::Apply(rs),
                        )
                        .await
                        .map_err(kube_error(format!("creating ReplicaSet {rs_name}")))?;
                    info!(replicaset = %rs_name, replicas, "created ReplicaSet");
                } else {
                    warn!(replicaset = %rs_name, "ReplicaSet of an older revision is gone; it cannot be recreated");
                }
            }
            Action::Route(routing) => {
                let weights = Weights {
                    stable: &routing.stable,
                    canary: routing.canary.as_deref(),
                    weight: routing.weight,
                };
                router.apply(weights).await?;
            }
            Action::ScaleDownAt {
                revision: rs_revision,
                at,
            } => {
                let rs_name = format!("{name}-{rs_revision}");
                let patch = serde_json::json!({"metadata": {"annotations": {SCALE_DOWN_AT_ANNOTATION: at.to_string()}}});
                replica_sets
                    .patch(&rs_name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .map_err(kube_error(format!(
                        "marking ReplicaSet {rs_name} for scale-down"
                    )))?;
            }
            Action::Delete {
                revision: rs_revision,
            } => {
                let rs_name = format!("{name}-{rs_revision}");
                replica_sets
                    .delete(&rs_name, &DeleteParams::background())
                    .await
                    .map_err(kube_error(format!("deleting ReplicaSet {rs_name}")))?;
            }
        }
    }

    let canaries: Api<Canary> = Api::namespaced(client.clone(), namespace);
    let status = serde_json::json!({
        "apiVersion": "serin.dev/v1alpha1",
        "kind": "Canary",
        "status": plan.status,
    });
    canaries
        .patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(status),
        )
        .await
        .map_err(kube_error("writing status"))?;

    context
        .metrics
        .canary(namespace, name, plan.status.phase, plan.status.weight);

    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    for event in &plan.events {
        info!(reason = event.reason, note = %event.note, "transition");
        let record = transition_event(canary, namespace, event, &context.instance);
        if let Err(error) = events.create(&PostParams::default(), &record).await {
            warn!(%error, reason = event.reason, "recording event");
        }
    }
    Ok(Requeue::requeue(plan.requeue_after))
}

/// One Event per transition. Each is its own object: the client-side series of
/// kube's Recorder would fold two transitions with one reason into one Event that
/// keeps the first message, which hides what happened the second time.
fn transition_event(
    canary: &Canary,
    namespace: &str,
    event: &machine::Event,
    instance: &str,
) -> Event {
    let name = canary.name_any();
    Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(Timestamp::now())),
        type_: Some(if event.warning { "Warning" } else { "Normal" }.to_owned()),
        reason: Some(event.reason.to_owned()),
        note: Some(event.note.chars().take(1000).collect()),
        action: Some("Rollout".to_owned()),
        reporting_controller: Some("serin.dev/controller".to_owned()),
        reporting_instance: Some(instance.to_owned()),
        regarding: Some(canary.object_ref(&())),
        ..Event::default()
    }
}

fn revision_label(rs: &ReplicaSet) -> Option<&String> {
    rs.metadata.labels.as_ref()?.get(REVISION_LABEL)
}

fn observe(rs: &ReplicaSet) -> Option<ObservedReplicaSet> {
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
) -> serde_json::Value {
    let mut labels: BTreeMap<String, String> = canary.spec.selector.match_labels.clone();
    labels.insert(REVISION_LABEL.to_owned(), revision.to_owned());
    let mut template: PodTemplateSpec = canary.spec.template.clone();
    let metadata = template.metadata.get_or_insert_with(ObjectMeta::default);
    metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(REVISION_LABEL.to_owned(), revision.to_owned());
    let mut rs_labels = labels.clone();
    rs_labels.insert(CANARY_LABEL.to_owned(), name.to_owned());
    let rs = ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!("{name}-{revision}")),
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
    };
    serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": rs.metadata,
        "spec": rs.spec,
    })
}

//! Adopting a Deployment (`spec.workloadRef`). The Canary rolls out the
//! Deployment's pod template in ReplicaSets of its own; the state machine decides
//! when the Deployment's own pods go (`Action::ScaleAdopted`); deleting the Canary
//! gives the Deployment back at full size before Serin's pods go.
//!
//! Serin writes two fields of the Deployment, each with a merge patch as the field
//! manager `serin`: the label `serin.dev/canary=<canary>`, which marks it adopted
//! (one Canary per Deployment) and wakes the Canary through a watch of adopted
//! Deployments, and `spec.replicas`, through the scale subresource. Nothing else
//! of it changes, so a GitOps tool that leaves `replicas` alone (as it must for an
//! HPA) never sees a difference to undo.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serin_api::{ADOPTION_FINALIZER, CANARY_LABEL, Canary, CanarySpec, FIELD_MANAGER, WorkloadRef};
use serin_core::machine::AdoptedWorkload;

/// The adopted Deployment as the reconcile uses it.
#[derive(Clone, Debug)]
pub struct Adoption {
    /// The pod template Serin rolls out.
    pub template: PodTemplateSpec,
    /// Its own pods, for the state machine.
    pub workload: AdoptedWorkload,
    /// Whether it already carries the Canary's label.
    pub labelled: bool,
}

/// Reads the Deployment of `reference`. `Ok(Err(problem))` is a spec problem for
/// `InvalidSpec`, naming the field and the fix; `Err` a failed read.
pub async fn read(
    client: &Client,
    namespace: &str,
    canary: &str,
    spec: &CanarySpec,
    reference: &WorkloadRef,
) -> Result<Result<Adoption, String>, kube::Error> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    Ok(match deployments.get_opt(&reference.name).await? {
        Some(deployment) => adoptable(&deployment, canary, spec, reference),
        None => Err(format!(
            "spec.workloadRef.name: Deployment {} is not found in namespace {namespace}; create it, or name one that exists",
            reference.name
        )),
    })
}

/// What keeps `deployment` from being adopted by the Canary `canary`, or what
/// the reconcile needs of it.
pub fn adoptable(
    deployment: &Deployment,
    canary: &str,
    spec: &CanarySpec,
    reference: &WorkloadRef,
) -> Result<Adoption, String> {
    let name = &reference.name;
    let holder = deployment.labels().get(CANARY_LABEL);
    if let Some(other) = holder.filter(|other| *other != canary) {
        return Err(format!(
            "spec.workloadRef.name: Deployment {name} is adopted by Canary {other}; a Deployment has one Canary: delete that one first, or adopt another Deployment"
        ));
    }
    let deployment_spec = deployment.spec.clone().unwrap_or_default();
    let template = deployment_spec.template;
    let labels = template
        .metadata
        .as_ref()
        .and_then(|metadata| metadata.labels.clone())
        .unwrap_or_default();
    let missing: Vec<String> = spec
        .selector
        .match_labels
        .iter()
        .filter(|(key, value)| labels.get(*key) != Some(*value))
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "spec.selector.matchLabels: {} not in the pod template labels of Deployment {name}; use labels its pods carry",
            missing.join(", ")
        ));
    }
    let available = deployment
        .status
        .as_ref()
        .and_then(|status| status.available_replicas)
        .unwrap_or(0);
    Ok(Adoption {
        template,
        workload: AdoptedWorkload {
            replicas: deployment_spec.replicas.unwrap_or(1),
            available,
            scale_down: reference.scale_down.unwrap_or_default(),
        },
        labelled: holder.is_some(),
    })
}

/// Marks the Canary with the finalizer and the Deployment with the Canary's
/// label, in that order and before anything scales the Deployment: a Canary
/// deleted from then on gives it back. True when it wrote either.
pub async fn claim(
    client: &Client,
    canary: &Canary,
    namespace: &str,
    adoption: &Adoption,
    deployment: &str,
) -> Result<bool, kube::Error> {
    let name = canary.name_any();
    let held = canary.finalizers().iter().any(|f| f == ADOPTION_FINALIZER);
    if !held {
        let mut finalizers = canary.finalizers().to_vec();
        finalizers.push(ADOPTION_FINALIZER.to_owned());
        // The resourceVersion makes a concurrent edit of the list a conflict.
        let patch = serde_json::json!({"metadata": {
            "finalizers": finalizers,
            "resourceVersion": canary.resource_version(),
        }});
        let canaries: Api<Canary> = Api::namespaced(client.clone(), namespace);
        canaries
            .patch(&name, &params(), &Patch::Merge(patch))
            .await?;
    }
    if !adoption.labelled {
        let patch = serde_json::json!({"metadata": {"labels": {CANARY_LABEL: name}}});
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
        deployments
            .patch(deployment, &params(), &Patch::Merge(patch))
            .await?;
    }
    Ok(!held || !adoption.labelled)
}

/// Sets the Deployment's replicas through its scale subresource.
pub async fn scale(
    client: &Client,
    namespace: &str,
    deployment: &str,
    replicas: i32,
) -> Result<(), kube::Error> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({"spec": {"replicas": replicas}});
    deployments
        .patch_scale(deployment, &params(), &Patch::Merge(patch))
        .await
        .map(drop)
}

/// Where giving the Deployment back stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GiveBack {
    /// Scale it to this many pods.
    Scale(i32),
    /// Its pods are starting.
    Wait,
    /// It serves at full size (or is gone): the Canary may go.
    Done,
    /// Its pods did not all become available within the deadline: the Canary goes
    /// anyway, rather than hang in deletion.
    GiveUp,
}

/// The next step in giving `deployment` back at `replicas` pods, `waited` after
/// the Canary's deletion began. The Canary's own pods stay until it is done, so
/// the workload never serves with fewer.
pub fn give_back(
    deployment: Option<&Deployment>,
    replicas: i32,
    waited: Duration,
    deadline: Duration,
) -> GiveBack {
    let Some(deployment) = deployment else {
        return GiveBack::Done;
    };
    let asked = deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.replicas)
        .unwrap_or(1);
    if asked < replicas {
        return GiveBack::Scale(replicas);
    }
    let status = deployment.status.clone().unwrap_or_default();
    let current = status.observed_generation >= deployment.metadata.generation;
    if current && status.available_replicas.unwrap_or(0) >= replicas {
        GiveBack::Done
    } else if waited >= deadline {
        GiveBack::GiveUp
    } else {
        GiveBack::Wait
    }
}

/// Takes the Canary's label off the Deployment, then the finalizer off the Canary.
pub async fn release(
    client: &Client,
    canary: &Canary,
    namespace: &str,
    deployment: Option<&str>,
) -> Result<(), kube::Error> {
    if let Some(deployment) = deployment {
        unlabel(client, namespace, deployment).await?;
    }
    let finalizers: Vec<String> = canary
        .finalizers()
        .iter()
        .filter(|f| *f != ADOPTION_FINALIZER)
        .cloned()
        .collect();
    let patch = serde_json::json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": canary.resource_version(),
    }});
    let canaries: Api<Canary> = Api::namespaced(client.clone(), namespace);
    canaries
        .patch(&canary.name_any(), &params(), &Patch::Merge(patch))
        .await
        .map(drop)
}

/// Ends the adoption of a Canary whose spec no longer names a Deployment (its
/// template moved into `spec.template`): the label comes off every Deployment it
/// adopted, left at the replicas it has, and the finalizer off the Canary. Giving
/// a Deployment back here would run its pods beside the Canary's.
pub async fn end(client: &Client, canary: &Canary, namespace: &str) -> Result<(), kube::Error> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let labelled = ListParams::default().labels(&format!("{CANARY_LABEL}={}", canary.name_any()));
    for deployment in deployments.list_metadata(&labelled).await? {
        unlabel(client, namespace, &deployment.name_any()).await?;
    }
    release(client, canary, namespace, None).await
}

/// Takes the Canary's label off a Deployment (gone already is fine).
async fn unlabel(client: &Client, namespace: &str, deployment: &str) -> Result<(), kube::Error> {
    let patch = serde_json::json!({"metadata": {"labels": {CANARY_LABEL: null}}});
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    match deployments
        .patch(deployment, &params(), &Patch::Merge(patch))
        .await
    {
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        result => result.map(drop),
    }
}

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use serin_api::ScaleDown;
    use std::collections::BTreeMap;

    fn deployment(replicas: i32, available: i32, holder: Option<&str>) -> Deployment {
        let labels = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
        Deployment {
            metadata: ObjectMeta {
                name: Some("web".into()),
                generation: Some(3),
                labels: holder.map(|h| BTreeMap::from([(CANARY_LABEL.to_owned(), h.to_owned())])),
                ..ObjectMeta::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels),
                        ..ObjectMeta::default()
                    }),
                    spec: None,
                },
                ..DeploymentSpec::default()
            }),
            status: Some(DeploymentStatus {
                observed_generation: Some(3),
                available_replicas: Some(available),
                ..DeploymentStatus::default()
            }),
        }
    }

    fn spec(selector: &str) -> CanarySpec {
        let yaml = format!(
            "apiVersion: serin.dev/v1alpha1\nkind: Canary\nmetadata: {{name: web}}\nspec:\n  selector: {{matchLabels: {selector}}}\n  workloadRef: {{kind: Deployment, name: web}}\n"
        );
        let canary: Canary = serde_norway::from_str(&yaml).unwrap_or_else(|e| panic!("{e}"));
        canary.spec
    }

    fn reference() -> WorkloadRef {
        WorkloadRef {
            kind: serin_api::WorkloadKind::Deployment,
            name: "web".into(),
            scale_down: None,
        }
    }

    #[test]
    fn a_deployment_is_adopted_with_its_template_and_pods() {
        let adopted = adoptable(
            &deployment(4, 3, None),
            "web",
            &spec("{app: web}"),
            &reference(),
        );
        let adopted = adopted.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            adopted.workload,
            AdoptedWorkload {
                replicas: 4,
                available: 3,
                scale_down: ScaleDown::Progressively
            }
        );
        assert!(!adopted.labelled);
        let again = adoptable(
            &deployment(4, 3, Some("web")),
            "web",
            &spec("{app: web}"),
            &reference(),
        );
        assert!(again.is_ok_and(|a| a.labelled));
    }

    #[test]
    fn one_adopted_by_another_canary_or_without_the_selector_labels_is_refused() {
        let taken = adoptable(
            &deployment(4, 4, Some("api")),
            "web",
            &spec("{app: web}"),
            &reference(),
        );
        assert!(taken.is_err_and(|e| {
            e.starts_with("spec.workloadRef.name: Deployment web is adopted by Canary api")
        }));
        let unlabelled = adoptable(
            &deployment(4, 4, None),
            "web",
            &spec("{app: shop}"),
            &reference(),
        );
        assert!(unlabelled.is_err_and(|e| e.starts_with(
            "spec.selector.matchLabels: app=shop not in the pod template labels of Deployment web"
        )));
    }

    #[test]
    fn the_deployment_is_given_back_at_full_size_before_the_canary_goes() {
        let deadline = Duration::from_secs(600);
        let at = |replicas, available, waited| {
            give_back(
                Some(&deployment(replicas, available, Some("web"))),
                4,
                Duration::from_secs(waited),
                deadline,
            )
        };
        assert_eq!(at(0, 0, 0), GiveBack::Scale(4));
        assert_eq!(at(4, 2, 10), GiveBack::Wait);
        assert_eq!(at(4, 4, 10), GiveBack::Done);
        assert_eq!(
            at(6, 4, 10),
            GiveBack::Done,
            "never scaled down on the way back"
        );
        assert_eq!(at(4, 2, 600), GiveBack::GiveUp);
        assert_eq!(give_back(None, 4, Duration::ZERO, deadline), GiveBack::Done);
    }
}

//! One test's rollout, driven through kubectl as a person would: a namespace of
//! its own, a controller under Serin's ServiceAccount, and a Canary, with the
//! waits and reads the end-to-end tests share.

use serin_api::{CANARY_LABEL, COMMAND_ANNOTATION};
use std::time::Duration;

use anyhow::Result;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde_json::Value;
use serin_api::{Canary, CanaryStatus, MetricStatus, Phase, Weight};

use crate::controller::Controller;
use crate::harness::Cluster;
use crate::kubectl::Kubectl;
use crate::manifest::CanaryManifest;
use crate::process::eventually;

/// One test's namespace, controller and Canary.
pub struct Rollout {
    /// kubectl as the cluster's admin.
    pub kubectl: Kubectl,
    /// The test's own namespace.
    pub namespace: String,
    name: String,
    /// The controller reconciling the namespace, while one runs.
    pub controller: Option<Controller>,
    cluster: &'static Cluster,
}

impl Rollout {
    /// A namespace with its own controller and a Canary named `name` at `image`.
    pub fn start(
        cluster: &'static Cluster,
        test: &str,
        name: &str,
        image: &str,
        extra: &str,
    ) -> Result<Self> {
        let rollout = Self::prepare(cluster, test, name)?;
        rollout.apply(image, extra)?;
        Ok(rollout)
    }

    /// A namespace with its own controller, and no Canary yet.
    pub fn prepare(cluster: &'static Cluster, test: &str, name: &str) -> Result<Self> {
        Self::prepare_with(cluster, test, name, &[])
    }

    /// As [`Self::prepare`], the controller given more `flags`.
    pub fn prepare_with(
        cluster: &'static Cluster,
        test: &str,
        name: &str,
        flags: &[String],
    ) -> Result<Self> {
        let namespace = cluster.namespace(test)?;
        let controller = Controller::start_with(cluster, &namespace, flags)?;
        Ok(Self {
            kubectl: cluster.kubectl.clone(),
            namespace,
            name: name.to_owned(),
            controller: Some(controller),
            cluster,
        })
    }

    /// A namespace for a Canary that the controller installed in the cluster
    /// ([`crate::controller::install_in_cluster`]) reconciles: no local controller.
    pub fn prepare_in_cluster(cluster: &'static Cluster, test: &str, name: &str) -> Result<Self> {
        crate::controller::install_in_cluster(cluster)?;
        let namespace = cluster.namespace(test)?;
        Ok(Self {
            kubectl: cluster.kubectl.clone(),
            namespace,
            name: name.to_owned(),
            controller: None,
            cluster,
        })
    }

    /// Another Canary, `name`, in the same namespace and under the same controller.
    pub fn sibling(&self, name: &str) -> Self {
        Self {
            kubectl: self.kubectl.clone(),
            namespace: self.namespace.clone(),
            name: name.to_owned(),
            controller: None,
            cluster: self.cluster,
        }
    }

    /// Kills the controller (SIGKILL) and starts a new one, ready.
    pub fn restart_controller(&mut self) -> Result<()> {
        if let Some(controller) = self.controller.take() {
            controller.kill();
        }
        self.controller = Some(Controller::start(self.cluster, &self.namespace)?);
        Ok(())
    }

    /// Applies the Canary at `image`, with `extra` spec lines.
    pub fn apply(&self, image: &str, extra: &str) -> Result<()> {
        self.apply_manifest(&CanaryManifest::new(&self.name).image(image).spec(extra))
    }

    /// Applies `manifest`, which names this rollout's Canary or a sibling.
    pub fn apply_manifest(&self, manifest: &CanaryManifest) -> Result<()> {
        self.apply_yaml(&manifest.yaml())
    }

    /// `kubectl apply` of `yaml` (an HTTPRoute, a quota) in the rollout's namespace.
    pub fn apply_yaml(&self, yaml: &str) -> Result<()> {
        self.kubectl
            .run_with_input(&["apply", "-n", &self.namespace, "-f", "-"], Some(yaml))?;
        Ok(())
    }

    /// Patches the template's image, as a release would.
    pub fn set_image(&self, image: &str) -> Result<()> {
        self.patch(
            "json",
            &format!(
                r#"[{{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"{image}"}}]"#
            ),
        )
    }

    /// `kubectl patch canary --type=<kind> -p <body>`, as a person edits it.
    pub fn patch(&self, kind: &str, body: &str) -> Result<()> {
        self.kubectl.run(&[
            "patch",
            "-n",
            &self.namespace,
            "canary",
            &self.name,
            &format!("--type={kind}"),
            "-p",
            body,
        ])?;
        Ok(())
    }

    /// Sets `image` and waits until its revision is the canary at step 1's 25%.
    pub fn roll_out(&self, image: &str) -> Result<Canary> {
        let (_, previous) = revisions(&self.canary()?);
        self.set_image(image)?;
        self.wait(
            &format!("{image} at step 1, 25%"),
            Duration::from_secs(30),
            |c| {
                let (_, canary) = revisions(c);
                !canary.is_empty() && canary != previous && weight(c) == Weight::from_percent(25)
            },
        )
    }

    /// Sets the command annotation, as `kubectl serin` does.
    pub fn annotate(&self, command: &str) -> Result<()> {
        self.kubectl.run(&[
            "annotate",
            "-n",
            &self.namespace,
            "canary",
            &self.name,
            "--overwrite",
            &format!("{COMMAND_ANNOTATION}={command}"),
        ])?;
        Ok(())
    }

    /// `kubectl delete` of the Canary, which returns once it is gone (its
    /// finalizers done) or after `limit`.
    pub fn delete(&self, limit: Duration) -> Result<()> {
        self.kubectl.run(&[
            "delete",
            "canary",
            &self.name,
            "-n",
            &self.namespace,
            &format!("--timeout={}s", limit.as_secs()),
        ])?;
        Ok(())
    }

    /// The Canary as `kubectl get -o json` shows it.
    pub fn canary(&self) -> Result<Canary> {
        Ok(serin_api::decode(&self.object()?)?)
    }

    /// Replicas and available pods of the ReplicaSet of `revision`.
    pub fn replica_set(&self, revision: &str) -> Result<(i64, i64)> {
        let rs = self.kubectl.get_json(&[
            "replicaset",
            &format!("{}-{revision}", self.name),
            "-n",
            &self.namespace,
        ])?;
        Ok((
            rs["spec"]["replicas"].as_i64().unwrap_or(0),
            rs["status"]["availableReplicas"].as_i64().unwrap_or(0),
        ))
    }

    /// How many ReplicaSets the Canary owns.
    pub fn replica_set_count(&self) -> Result<usize> {
        self.owned_count("replicasets")
    }

    /// How many Services the Canary owns.
    pub fn service_count(&self) -> Result<usize> {
        self.owned_count("services")
    }

    /// How many objects of `kind` carry the Canary's label.
    fn owned_count(&self, kind: &str) -> Result<usize> {
        let label = format!("{CANARY_LABEL}={}", self.name);
        let list = self
            .kubectl
            .get_json(&[kind, "-n", &self.namespace, "-l", &label])?;
        Ok(list["items"].as_array().map_or(0, Vec::len))
    }

    /// The selector of one of the Services Serin owns.
    pub fn service_selector(&self, service: &str) -> Result<Value> {
        let svc = self
            .kubectl
            .get_json(&["service", service, "-n", &self.namespace])?;
        Ok(svc["spec"]["selector"].clone())
    }

    /// Polls the Canary until `done` holds, or fails after `limit` with its status.
    pub fn wait(
        &self,
        what: &str,
        limit: Duration,
        mut done: impl FnMut(&Canary) -> bool,
    ) -> Result<Canary> {
        let mut last = None;
        eventually(what, limit, || {
            let canary = self.canary()?;
            Ok(if done(&canary) {
                Some(canary)
            } else {
                last = Some(canary);
                None
            })
        })
        .map_err(|error| {
            let log = self
                .controller
                .as_ref()
                .map(Controller::log)
                .unwrap_or_default();
            let status = last.as_ref().map(status).unwrap_or_default();
            anyhow::anyhow!("{error}; status: {status:#?}\ncontroller log:\n{log}")
        })
    }

    /// The status alone, as stored: readable even when the spec does not decode.
    pub fn stored_status(&self) -> Result<CanaryStatus> {
        Ok(serde_json::from_value(self.object()?["status"].clone()).unwrap_or_default())
    }

    /// Polls the stored status until `done` holds, or fails after `limit`.
    pub fn wait_status(
        &self,
        what: &str,
        limit: Duration,
        mut done: impl FnMut(&CanaryStatus) -> bool,
    ) -> Result<CanaryStatus> {
        eventually(what, limit, || {
            let status = self.stored_status()?;
            Ok(done(&status).then_some(status))
        })
    }

    /// Waits until the ReplicaSet of `revision` is scaled to zero.
    pub fn wait_scaled_down(&self, what: &str, revision: &str) -> Result<()> {
        eventually(
            &format!("{what} ({revision}) scaled down"),
            Duration::from_secs(30),
            || Ok((self.replica_set(revision)?.0 == 0).then_some(())),
        )
    }

    /// `kubectl wait --for=condition=Promoted`, within `limit`.
    pub fn wait_promoted(&self, limit: Duration) -> Result<()> {
        self.wait_condition("Promoted", limit)
    }

    /// `kubectl wait --for=condition=<condition>` (`Ready`, `Stalled=False`, ...),
    /// within `limit`.
    pub fn wait_condition(&self, condition: &str, limit: Duration) -> Result<()> {
        self.kubectl.run(&[
            "wait",
            "-n",
            &self.namespace,
            &format!("canary/{}", self.name),
            &format!("--for=condition={condition}"),
            &format!("--timeout={}s", limit.as_secs()),
        ])?;
        Ok(())
    }

    /// The Canary as stored, undecoded: what GitOps tools read.
    pub fn object(&self) -> Result<Value> {
        self.kubectl
            .get_json(&["canary", &self.name, "-n", &self.namespace])
    }

    /// The reasons of the Canary's Events.
    pub fn events(&self) -> Result<Vec<String>> {
        Ok(self
            .event_objects()?
            .iter()
            .filter_map(|event| event["reason"].as_str().map(str::to_owned))
            .collect())
    }

    /// The Canary's Events as the API server returns them.
    pub fn event_objects(&self) -> Result<Vec<Value>> {
        canary_events(&self.kubectl, &self.namespace, &self.name)
    }
}

/// The Events recorded on Canary `namespace/name`, as the API server returns them.
pub fn canary_events(kubectl: &Kubectl, namespace: &str, name: &str) -> Result<Vec<Value>> {
    let events = kubectl.get_json(&[
        "events",
        "-n",
        namespace,
        "--field-selector",
        &format!("involvedObject.kind=Canary,involvedObject.name={name}"),
    ])?;
    Ok(events["items"].as_array().cloned().unwrap_or_default())
}

/// The Canary's status (the default before the first one is written).
pub fn status(canary: &Canary) -> CanaryStatus {
    canary.status.clone().unwrap_or_default()
}

/// The condition of type `kind`, if set.
pub fn condition(canary: &Canary, kind: &str) -> Option<Condition> {
    status_condition(&status(canary), kind)
}

/// The condition of type `kind` in `status`, if set.
pub fn status_condition(status: &CanaryStatus, kind: &str) -> Option<Condition> {
    status.conditions.iter().find(|c| c.type_ == kind).cloned()
}

/// The status of condition `kind` (`True`, `False`), empty when it is not set.
pub fn condition_status(canary: &Canary, kind: &str) -> String {
    condition(canary, kind)
        .map(|c| c.status)
        .unwrap_or_default()
}

/// Whether condition `kind` is True.
pub fn is_true(canary: &Canary, kind: &str) -> bool {
    condition(canary, kind).is_some_and(|c| c.status == "True")
}

/// The reason of condition `kind`, empty when it is not set.
pub fn reason(canary: &Canary, kind: &str) -> String {
    condition(canary, kind)
        .map(|c| c.reason)
        .unwrap_or_default()
}

/// The message of condition `kind`, empty when it is not set.
pub fn message(canary: &Canary, kind: &str) -> String {
    condition(canary, kind)
        .map(|c| c.message)
        .unwrap_or_default()
}

/// `status.phase`, None before the first status.
pub fn phase(canary: &Canary) -> Option<Phase> {
    canary.status.as_ref().and_then(|s| s.phase)
}

/// `status.weight`.
pub fn weight(canary: &Canary) -> Weight {
    canary.status.as_ref().map_or(Weight::ZERO, |s| s.weight)
}

/// `status.stableRevision` and `status.canaryRevision`, empty when absent.
pub fn revisions(canary: &Canary) -> (String, String) {
    let status = status(canary);
    (
        status.stable_revision.unwrap_or_default(),
        status.canary_revision.unwrap_or_default(),
    )
}

/// The analysis of metric `name` in status, if any.
pub fn metric(canary: &Canary, name: &str) -> Option<MetricStatus> {
    status(canary).analysis.into_iter().find(|m| m.name == name)
}

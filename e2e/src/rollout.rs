//! One test's rollout, driven through kubectl as a person would: a namespace of
//! its own, a controller under Serin's ServiceAccount, and a Canary, with the
//! waits and reads the end-to-end tests share.

use serin_api::{CANARY_LABEL, COMMAND_ANNOTATION};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::Value;

use crate::controller::Controller;
use crate::harness::Cluster;
use crate::kubectl::Kubectl;

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
        let namespace = cluster.namespace(test)?;
        let controller = Controller::start(cluster, &namespace)?;
        Ok(Self {
            kubectl: cluster.kubectl.clone(),
            namespace,
            name: name.to_owned(),
            controller: Some(controller),
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
        let manifest = format!(
            "apiVersion: serin.dev/v1alpha1
kind: Canary
metadata: {{name: {name}}}
spec:
  replicas: 4
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec: {{containers: [{{name: app, image: '{image}'}}]}}
  service: {{port: 80, targetPort: 8080}}
{extra}",
            name = self.name
        );
        self.kubectl.run_with_input(
            &["apply", "-n", &self.namespace, "-f", "-"],
            Some(&manifest),
        )?;
        Ok(())
    }

    /// Patches the template's image, as a release would.
    pub fn set_image(&self, image: &str) -> Result<()> {
        let patch = format!(
            r#"[{{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"{image}"}}]"#
        );
        self.kubectl.run(&[
            "patch",
            "-n",
            &self.namespace,
            "canary",
            &self.name,
            "--type=json",
            "-p",
            &patch,
        ])?;
        Ok(())
    }

    /// Sets `image` and waits until its revision is the canary at step 1's 25%.
    pub fn roll_out(&self, image: &str) -> Result<Value> {
        let (_, previous) = revisions(&self.canary()?);
        self.set_image(image)?;
        self.wait(
            &format!("{image} at step 1, 25%"),
            Duration::from_secs(30),
            |c| {
                let (_, canary) = revisions(c);
                !canary.is_empty()
                    && canary != previous
                    && c["status"]["weight"].as_i64() == Some(25)
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

    /// The Canary as `kubectl get -o json` shows it.
    pub fn canary(&self) -> Result<Value> {
        self.kubectl
            .get_json(&["canary", &self.name, "-n", &self.namespace])
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
        let list = self.kubectl.get_json(&[
            "replicasets",
            "-n",
            &self.namespace,
            "-l",
            &format!("{CANARY_LABEL}={}", self.name),
        ])?;
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
        mut done: impl FnMut(&Value) -> bool,
    ) -> Result<Value> {
        let until = Instant::now() + limit;
        loop {
            let canary = self.canary()?;
            if done(&canary) {
                return Ok(canary);
            }
            if Instant::now() > until {
                let log = self
                    .controller
                    .as_ref()
                    .map(Controller::log)
                    .unwrap_or_default();
                bail!(
                    "{what} within {limit:?}; status: {:#}\ncontroller log:\n{log}",
                    canary["status"]
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the ReplicaSet of `revision` is scaled to zero.
    pub fn wait_scaled_down(&self, what: &str, revision: &str) -> Result<()> {
        let until = Instant::now() + Duration::from_secs(30);
        while self.replica_set(revision)?.0 > 0 {
            if Instant::now() > until {
                bail!("{what} ({revision}) was not scaled down within 30s");
            }
            thread::sleep(Duration::from_millis(250));
        }
        Ok(())
    }

    /// `kubectl wait --for=condition=Promoted`, within `limit`.
    pub fn wait_promoted(&self, limit: Duration) -> Result<()> {
        self.kubectl.run(&[
            "wait",
            "-n",
            &self.namespace,
            &format!("canary/{}", self.name),
            "--for=condition=Promoted",
            &format!("--timeout={}s", limit.as_secs()),
        ])?;
        Ok(())
    }

    /// The reasons of the Canary's Events.
    pub fn events(&self) -> Result<Vec<String>> {
        let events = self.kubectl.get_json(&[
            "events",
            "-n",
            &self.namespace,
            "--field-selector",
            &format!(
                "involvedObject.kind=Canary,involvedObject.name={}",
                self.name
            ),
        ])?;
        Ok(events["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|event| event["reason"].as_str().map(str::to_owned))
            .collect())
    }
}

/// The condition of type `kind` (Null when absent).
pub fn condition(canary: &Value, kind: &str) -> Value {
    canary["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind)
        .cloned()
        .unwrap_or_default()
}

/// `status.phase`, empty before the first status.
pub fn phase(canary: &Value) -> &str {
    canary["status"]["phase"].as_str().unwrap_or_default()
}

/// `status.stableRevision` and `status.canaryRevision`, empty when absent.
pub fn revisions(canary: &Value) -> (String, String) {
    let status = &canary["status"];
    (
        status["stableRevision"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        status["canaryRevision"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

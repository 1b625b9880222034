//! What GitOps tools read, run against the real Canary in every phase it passes
//! through: kstatus (Flux's `wait: true`, built from Flux's cli-utils), Argo CD's
//! health check and resource actions (Lua 5.1, from `deploy/argocd/argocd-cm.yaml`
//! as operators install them), and `kubectl wait --for=condition=...`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use mlua::serde::SerializeOptions;
use mlua::{Lua, LuaSerdeExt};
use serde_json::{Map, Value};
use serin_e2e::cluster::{default_bin_dir, repository_root};
use serin_e2e::process::eventually;

use crate::cluster;
use crate::rollout::Rollout;

const STEPS: &str =
    "  steps: [25, 50]\n  stepDuration: 1h\n  progressDeadline: 2h\n  scaleDownDelay: 2s\n";

/// Argo CD's customizations for Canaries, as `deploy/argocd/argocd-cm.yaml` gives them.
struct ArgoCd {
    health: String,
    discovery: String,
    actions: BTreeMap<String, String>,
}

impl ArgoCd {
    fn load() -> Result<Self> {
        let path = repository_root().join("deploy/argocd/argocd-cm.yaml");
        let config: Value = serde_norway::from_str(&fs::read_to_string(&path)?)?;
        let data = &config["data"];
        let text = |key: &str| {
            data[key]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("{} has no data.{key}", path.display()))
        };
        let health = text("resource.customizations.health.serin.dev_Canary")?;
        let actions: Value =
            serde_norway::from_str(&text("resource.customizations.actions.serin.dev_Canary")?)?;
        let discovery = actions["discovery.lua"]
            .as_str()
            .context("no discovery.lua")?
            .to_owned();
        let actions = actions["definitions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|action| {
                Some((
                    action["name"].as_str()?.to_owned(),
                    action["action.lua"].as_str()?.to_owned(),
                ))
            })
            .collect();
        Ok(Self {
            health,
            discovery,
            actions,
        })
    }

    /// The health Argo CD shows: `(status, message)`.
    fn health(&self, object: &Value) -> Result<(String, String)> {
        let health = run_lua(&self.health, object)?;
        Ok((
            health["status"].as_str().unwrap_or_default().to_owned(),
            health["message"].as_str().unwrap_or_default().to_owned(),
        ))
    }

    /// The actions Argo CD offers on `object` (the enabled ones).
    fn offered(&self, object: &Value) -> Result<BTreeSet<String>> {
        let actions = run_lua(&self.discovery, object)?;
        let actions = actions.as_object().context("discovery returned no table")?;
        Ok(actions
            .iter()
            .filter(|(_, action)| action["disabled"] != Value::Bool(true))
            .map(|(name, _)| name.clone())
            .collect())
    }

    /// Fails unless Argo CD offers exactly `actions` on `object`.
    fn ensure_offers(&self, object: &Value, actions: &[&str]) -> Result<()> {
        let offered = self.offered(object)?;
        let wanted: BTreeSet<String> = actions.iter().map(|a| (*a).to_owned()).collect();
        ensure!(
            offered == wanted,
            "Argo CD offers {offered:?} on a {} Canary, not {wanted:?}",
            phase(object)
        );
        Ok(())
    }

    /// Runs action `name` as Argo CD does: the script changes the object, and the
    /// difference is sent as a merge patch. Checks that nothing but the command
    /// annotation and `spec.paused` changes.
    fn act(&self, name: &str, rollout: &Rollout) -> Result<()> {
        let script = self
            .actions
            .get(name)
            .with_context(|| format!("no action {name}"))?;
        let before = rollout.object()?;
        ensure!(
            self.offered(&before)?.contains(name),
            "Argo CD would not offer {name} now: {}",
            before["status"]
        );
        let after = run_lua(script, &before)?;
        let patch = merge_patch(&before, &after);
        let touched: BTreeSet<String> = leaves(&patch, "");
        ensure!(
            touched
                .iter()
                .all(|path| path == "/spec/paused"
                    || path == "/metadata/annotations/serin.dev~1command"),
            "action {name} changed more than its command: {touched:?}"
        );
        rollout.kubectl.run(&[
            "patch",
            "canary",
            before["metadata"]["name"].as_str().unwrap_or_default(),
            "-n",
            &rollout.namespace,
            "--type=merge",
            "-p",
            &patch.to_string(),
        ])?;
        Ok(())
    }
}

/// Runs `script` with the global `obj`, as Argo CD's Lua VM does, and returns what it returns.
fn run_lua(script: &str, object: &Value) -> Result<Value> {
    let lua = Lua::new();
    let options = SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false);
    let object = lua
        .to_value_with(object, options)
        .map_err(|e| anyhow!("{e}"))?;
    lua.globals()
        .set("obj", object)
        .map_err(|e| anyhow!("{e}"))?;
    let result: mlua::Value = lua.load(script).eval().map_err(|e| anyhow!("{e}"))?;
    lua.from_value(result).map_err(|e| anyhow!("{e}"))
}

/// The JSON merge patch (RFC 7386) that turns `before` into `after`.
fn merge_patch(before: &Value, after: &Value) -> Value {
    match (before, after) {
        (Value::Object(before), Value::Object(after)) => {
            let mut patch = Map::new();
            for key in before.keys().filter(|key| !after.contains_key(*key)) {
                patch.insert(key.clone(), Value::Null);
            }
            for (key, value) in after {
                match before.get(key) {
                    Some(old) if old == value => {}
                    Some(old) => {
                        patch.insert(key.clone(), merge_patch(old, value));
                    }
                    None => {
                        patch.insert(key.clone(), value.clone());
                    }
                }
            }
            Value::Object(patch)
        }
        _ => after.clone(),
    }
}

/// JSON pointers of a patch's leaves.
fn leaves(patch: &Value, at: &str) -> BTreeSet<String> {
    match patch {
        Value::Object(fields) if !fields.is_empty() => fields
            .iter()
            .flat_map(|(key, value)| {
                leaves(
                    value,
                    &format!("{at}/{}", key.replace('~', "~0").replace('/', "~1")),
                )
            })
            .collect(),
        _ => BTreeSet::from([at.to_owned()]),
    }
}

/// kstatus' status of each object (`Current`, `InProgress`, `Failed`, ...).
fn kstatus(objects: &[Value]) -> Result<Vec<String>> {
    let binary = default_bin_dir().join("serin-kstatus");
    let mut child = Command::new(&binary)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (make controlplane builds it)",
                binary.display()
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        for object in objects {
            writeln!(stdin, "{object}")?;
        }
    }
    let output = child.wait_with_output()?;
    ensure!(
        output.status.success(),
        "serin-kstatus: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| line.split('\t').next().unwrap_or_default().to_owned())
        .collect())
}

/// While `held`, a ResourceQuota of no pods in the rollout's namespace: the
/// ReplicaSets cannot add a pod, so a phase that waits for pods lasts.
fn hold_pods(rollout: &Rollout, held: bool) -> Result<()> {
    let quota = "apiVersion: v1\nkind: ResourceQuota\nmetadata:\n  name: no-pods\nspec:\n  hard:\n    pods: \"0\"\n";
    let verb = if held { "apply" } else { "delete" };
    rollout
        .kubectl
        .run_with_input(&[verb, "-n", &rollout.namespace, "-f", "-"], Some(quota))?;
    Ok(())
}

/// Every version of the Canary the test looked at.
#[derive(Default)]
struct Seen(Vec<Value>);

impl Seen {
    /// Polls the Canary, keeping each version, until `done` holds.
    fn until(
        &mut self,
        rollout: &Rollout,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        eventually(what, Duration::from_secs(60), || {
            let object = rollout.object()?;
            self.0.push(object.clone());
            Ok(done(&object).then_some(object))
        })
    }
}

fn phase(object: &Value) -> &str {
    object["status"]["phase"].as_str().unwrap_or_default()
}

fn acted_on(object: &Value) -> bool {
    object["status"]["observedGeneration"] == object["metadata"]["generation"]
}

fn condition_true(object: &Value, kind: &str) -> bool {
    object["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == kind && c["status"] == "True")
}

/// What Argo CD and kstatus should read, from the phase Serin reports.
fn expected(object: &Value) -> (&'static str, &'static str) {
    if !acted_on(object) {
        return ("Progressing", "InProgress");
    }
    match phase(object) {
        "Healthy" if condition_true(object, "Available") => ("Healthy", "Current"),
        "Paused" => ("Suspended", "InProgress"),
        "Aborted" => ("Degraded", "Failed"),
        _ => ("Progressing", "InProgress"),
    }
}

#[test]
fn gitops_tools_read_every_phase_and_argo_cd_actions_steer_the_rollout() -> Result<()> {
    let argocd = ArgoCd::load()?;
    let mut rollout = Rollout::prepare(cluster(), "gitops", "web")?;
    let mut seen = Seen::default();
    // A quota of no pods holds the first revision in Initializing.
    hold_pods(&rollout, true)?;
    rollout.apply("web:1", STEPS)?;
    seen.until(&rollout, "initializing", |o| {
        phase(o) == "Initializing" && acted_on(o)
    })?;
    hold_pods(&rollout, false)?;
    seen.until(&rollout, "healthy", |o| phase(o) == "Healthy")?;
    rollout.wait_condition("Ready", Duration::from_secs(30))?;
    rollout.wait_condition("Stalled=False", Duration::from_secs(5))?;

    argocd.act("pause", &rollout)?;
    seen.until(&rollout, "paused in spec", |o| {
        o["spec"]["paused"] == true && acted_on(o)
    })?;
    rollout.set_image("web:2")?;
    let paused = seen.until(&rollout, "the rollout paused", |o| phase(o) == "Paused")?;
    argocd.ensure_offers(&paused, &["abort", "promote", "promote-full", "resume"])?;
    argocd.act("resume", &rollout)?;
    seen.until(&rollout, "step 1", |o| {
        phase(o) == "Progressing" && o["status"]["weight"] == 25
    })?;
    rollout.wait_condition("Reconciling", Duration::from_secs(5))?;
    rollout.wait_condition("Ready=False", Duration::from_secs(5))?;

    argocd.act("abort", &rollout)?;
    let aborted = seen.until(&rollout, "aborted", |o| phase(o) == "Aborted")?;
    rollout.wait_condition("Stalled", Duration::from_secs(5))?;
    argocd.ensure_offers(&aborted, &["pause", "retry"])?;
    argocd.act("retry", &rollout)?;
    seen.until(&rollout, "retried", |o| {
        phase(o) == "Progressing" && o["status"]["weight"] == 25
    })?;
    let stable = rollout.object()?["status"]["stableRevision"].clone();
    // The quota holds the canary short of full size: Promoting lasts until it goes.
    hold_pods(&rollout, true)?;
    argocd.act("promote-full", &rollout)?;
    seen.until(&rollout, "promoting", |o| phase(o) == "Promoting")?;
    hold_pods(&rollout, false)?;
    seen.until(&rollout, "promoted", |o| {
        phase(o) == "Healthy" && o["status"]["stableRevision"] != stable
    })?;
    rollout.wait_condition("Ready", Duration::from_secs(30))?;

    // A spec the controller has not seen yet reads as work under way, whatever
    // the phase says: the controller is stopped, then the spec changes.
    if let Some(controller) = rollout.controller.take() {
        controller.kill();
    }
    argocd.act("pause", &rollout)?;
    seen.0.push(rollout.object()?);

    let with_status: Vec<Value> = seen
        .0
        .into_iter()
        .filter(|o| o["status"].is_object())
        .collect();
    let read = kstatus(&with_status)?;
    ensure!(read.len() == with_status.len(), "kstatus read {read:?}");
    let mut table = BTreeMap::new();
    for (object, kstatus) in with_status.iter().zip(&read) {
        let (health, message) = argocd.health(object)?;
        let (want_health, want_kstatus) = expected(object);
        let row = if acted_on(object) {
            phase(object).to_owned()
        } else {
            format!("{} (spec not yet seen)", phase(object))
        };
        ensure!(
            (health.as_str(), kstatus.as_str()) == (want_health, want_kstatus),
            "{row}: Argo CD {health} ({message}), kstatus {kstatus}; expected {want_health}, {want_kstatus}: {}",
            object["status"]
        );
        table.insert(row, (health, kstatus.clone(), message));
    }
    for (row, (health, kstatus, message)) in &table {
        println!("{row:32} Argo CD {health:12} kstatus {kstatus:11} {message}");
    }
    for phase in [
        "Initializing",
        "Healthy",
        "Paused",
        "Progressing",
        "Promoting",
        "Aborted",
    ] {
        ensure!(table.contains_key(phase), "never saw {phase}: {table:?}");
    }
    ensure!(table.keys().any(|row| row.contains("not yet seen")));
    Ok(())
}

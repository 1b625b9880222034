//! Gates, as the shell needs them: which checks to ask now, which hooks to call
//! after a status write, and what a call sends. Pure; the state machine decides
//! where gates stand (`machine`), the shell only calls them.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use serin_api::{CanarySpec, CanaryStatus, Gate, GateState, GateStatus};

/// How often a check that did not pass is asked again.
pub const RECHECK: Duration = Duration::from_secs(10);

/// What the shell learned of a gate that status lists as `Waiting` or `Calling`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateAnswer {
    /// The gate's name.
    pub name: String,
    /// The revision of the record it answers.
    pub revision: String,
    /// The step of the record it answers.
    pub step: i32,
    /// What came of it.
    pub outcome: GateOutcome,
}

/// What came of asking a check or calling a hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GateOutcome {
    /// Answered 2xx; what it answered.
    Passed(String),
    /// Answered otherwise, or not at all; why.
    Refused(String),
    /// A hook whose call this controller did not make: another process was calling
    /// it when it stopped, so its answer is unknown. Never called again.
    Lost,
}

impl GateAnswer {
    /// Whether this answers `record`.
    pub fn answers(&self, record: &GateStatus) -> bool {
        self.name == record.name && self.revision == record.revision && self.step == record.step
    }
}

/// The spec's gate of a record.
pub fn gate_of<'s>(spec: &'s CanarySpec, record: &GateStatus) -> Option<&'s Gate> {
    spec.gates.iter().find(|gate| gate.name == record.name)
}

/// The checks to ask now: waiting, with a URL, and not asked within [`RECHECK`].
pub fn checks_due<'a>(
    spec: &CanarySpec,
    status: &'a CanaryStatus,
    now: Timestamp,
) -> Vec<&'a GateStatus> {
    status
        .gates
        .iter()
        .filter(|record| record.state == GateState::Waiting)
        .filter(|record| gate_of(spec, record).is_some_and(|gate| !gate.is_manual()))
        .filter(|record| {
            record.at.as_ref().is_none_or(|at| {
                Duration::try_from(now.duration_since(at.0)).unwrap_or_default() >= RECHECK
            })
        })
        .collect()
}

/// The hooks to call once `after` is written: those it lists as `Calling` that
/// `before` did not. A hook is called only after the status saying so is stored,
/// so a controller that restarts mid-call finds it `Calling` and never calls it
/// again.
pub fn hooks_to_call<'a>(before: &CanaryStatus, after: &'a CanaryStatus) -> Vec<&'a GateStatus> {
    after
        .gates
        .iter()
        .filter(|record| record.state == GateState::Calling)
        .filter(|record| {
            !before.gates.iter().any(|old| {
                old.state == GateState::Calling
                    && old.name == record.name
                    && old.revision == record.revision
                    && old.step == record.step
            })
        })
        .collect()
}

/// The key a receiver can tell calls apart by (the `Idempotency-Key` header): the
/// same for every call of one record, across retries and restarts.
pub fn call_key(namespace: &str, name: &str, record: &GateStatus) -> String {
    format!(
        "{namespace}/{name}/{}/{}/{}/{}",
        record.revision,
        record.name,
        record.step,
        record.since.0.as_second()
    )
}

/// The JSON body of a call: the gate, the Canary, and where the rollout stands.
pub fn body(
    namespace: &str,
    name: &str,
    gate: &Gate,
    record: &GateStatus,
    status: &CanaryStatus,
) -> Value {
    json!({
        "gate": gate.name,
        "type": gate.r#type,
        "namespace": namespace,
        "name": name,
        "revision": record.revision,
        "stableRevision": status.stable_revision,
        "step": record.step,
        "phase": status.phase,
        "weight": status.weight,
        "key": call_key(namespace, name, record),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serin_api::{Canary, Phase};

    fn spec() -> CanarySpec {
        let canary: Canary = serde_json::from_value(json!({
            "apiVersion": "serin.dev/v1alpha1", "kind": "Canary", "metadata": {"name": "web"},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "web:1"}]}},
                "gates": [
                    {"name": "smoke", "type": "BeforeStep", "url": "http://tests/smoke"},
                    {"name": "approval", "type": "ConfirmPromotion"},
                    {"name": "deployed", "type": "PostRollout", "url": "http://chat/deployed"}
                ]
            }
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        canary.spec
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + second).unwrap_or_else(|e| panic!("{e}"))
    }

    fn record(name: &str, state: GateState, asked: Option<i64>) -> GateStatus {
        GateStatus {
            name: name.into(),
            revision: "bbbb".into(),
            step: 2,
            state,
            message: None,
            since: Time(at(0)),
            at: asked.map(|s| Time(at(s))),
        }
    }

    #[test]
    fn a_waiting_check_with_a_url_is_asked_at_once_then_every_recheck() {
        let spec = spec();
        let mut status = CanaryStatus {
            gates: vec![
                record("smoke", GateState::Waiting, None),
                record("approval", GateState::Waiting, None),
            ],
            ..CanaryStatus::default()
        };
        let names = |status: &CanaryStatus, now| {
            checks_due(&spec, status, now)
                .iter()
                .map(|r| r.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(&status, at(1)),
            ["smoke"],
            "a manual check is never called"
        );
        status.gates[0].at = Some(Time(at(1)));
        assert!(names(&status, at(10)).is_empty());
        assert_eq!(names(&status, at(11)), ["smoke"]);
        status.gates[0].state = GateState::Passed;
        assert!(names(&status, at(100)).is_empty());
    }

    #[test]
    fn a_hook_is_called_only_when_it_first_becomes_calling() {
        let before = CanaryStatus::default();
        let after = CanaryStatus {
            gates: vec![record("deployed", GateState::Calling, None)],
            ..CanaryStatus::default()
        };
        assert_eq!(hooks_to_call(&before, &after).len(), 1);
        assert!(hooks_to_call(&after, &after).is_empty(), "not again");
    }

    #[test]
    fn the_body_says_which_gate_canary_revision_and_step_with_a_stable_key() {
        let spec = spec();
        let gate = &spec.gates[0];
        let status = CanaryStatus {
            phase: Some(Phase::Progressing),
            stable_revision: Some("aaaa".into()),
            ..CanaryStatus::default()
        };
        let body = body(
            "shop",
            "web",
            gate,
            &record("smoke", GateState::Waiting, None),
            &status,
        );
        assert_eq!(
            body,
            json!({"gate": "smoke", "type": "BeforeStep", "namespace": "shop", "name": "web",
                "revision": "bbbb", "stableRevision": "aaaa", "step": 2, "phase": "Progressing",
                "weight": 0, "key": "shop/web/bbbb/smoke/2/1800000000"})
        );
    }
}

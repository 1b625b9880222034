//! Standard Kubernetes conditions, with transition times that change only when the
//! status does, so `kubectl wait` and people see when something really happened.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serin_api::{Phase, reason};

pub use serin_api::condition::{
    AVAILABLE, INVALID_SPEC, PROGRESSING, PROMOTED, READY, RECONCILING, STALLED,
};

/// A condition's status, as Kubernetes spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// It does not.
    False,
}

impl ConditionStatus {
    /// `"True"` or `"False"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
        }
    }
}

/// Sets condition `kind` to `status` with `reason` and `message`, keeping its
/// transition time when the status does not change.
pub fn set(
    conditions: &mut Vec<Condition>,
    kind: &str,
    status: ConditionStatus,
    reason: &str,
    message: String,
    now: &Time,
    generation: i64,
) {
    let status = status.as_str();
    let fresh = Condition {
        type_: kind.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time: now.clone(),
        observed_generation: Some(generation),
    };
    match conditions.iter_mut().find(|c| c.type_ == kind) {
        Some(existing) => {
            let since = if existing.status == status {
                existing.last_transition_time.clone()
            } else {
                now.clone()
            };
            *existing = Condition {
                last_transition_time: since,
                ..fresh
            };
        }
        None => conditions.push(fresh),
    }
}

/// The status of condition `kind`, if set.
pub fn is_true(conditions: &[Condition], kind: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == kind && c.status == "True")
}

/// Sets the kstatus summary (`Ready`, `Reconciling`, `Stalled`) from Serin's own
/// conditions and phase, so tools that know nothing of Serin read a Canary the way
/// they read a Deployment: Ready once the spec's template serves on available pods;
/// Reconciling while a rollout (or the first revision) is under way, a pause included,
/// since only a person ends it; Stalled after a rollback or while the spec is invalid,
/// since neither ends without an edit or a command. All three are always present, so
/// `kubectl get` shows them and `kubectl wait --for=condition=Stalled=False` works.
pub fn summarize(
    conditions: &mut Vec<Condition>,
    phase: Option<Phase>,
    now: &Time,
    generation: i64,
) {
    let condition = |kind: &str| conditions.iter().find(|c| c.type_ == kind);
    let said = |c: &Condition| (c.reason.clone(), c.message.clone());
    let holds = |kind: &str| is_true(conditions, kind);
    let progressing = condition(PROGRESSING)
        .map(said)
        .unwrap_or_else(|| (reason::INITIALIZING.to_owned(), String::new()));
    let healthy = phase == Some(Phase::Healthy);
    // The one of the three that is True, and the reason all three give.
    let (true_one, (why, message)) = match condition(INVALID_SPEC).filter(|c| c.status == "True") {
        Some(invalid) => (STALLED, said(invalid)),
        None if phase == Some(Phase::Aborted) => (STALLED, progressing),
        None if healthy && holds(PROMOTED) && holds(AVAILABLE) => {
            let serving = condition(AVAILABLE).map(|c| c.message.clone());
            (
                READY,
                (reason::HEALTHY.to_owned(), serving.unwrap_or_default()),
            )
        }
        None if healthy && !holds(AVAILABLE) => (
            RECONCILING,
            condition(AVAILABLE).map(said).unwrap_or(progressing),
        ),
        None => (RECONCILING, progressing),
    };
    for kind in [READY, RECONCILING, STALLED] {
        let status = if kind == true_one {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        };
        set(
            conditions,
            kind,
            status,
            &why,
            message.clone(),
            now,
            generation,
        );
    }
}

//! Standard Kubernetes conditions, with transition times that change only when the
//! status does, so `kubectl wait` and people see when something really happened.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub use serin_api::condition::{AVAILABLE, INVALID_SPEC, PROGRESSING, PROMOTED};

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

//! What Serin reports: where a rollout is, why, and on what evidence.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::weight::Weight;

/// Observed state of a Canary, written only by the controller.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    /// Where the rollout is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// Revision (pod template hash) that receives the stable share of traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_revision: Option<String>,

    /// Revision being rolled out, while there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_revision: Option<String>,

    /// Percent of traffic on the canary revision, 0 to 100, to 0.0001%.
    #[serde(default)]
    pub weight: Weight,

    /// What the canary receives beside its weight, while it does: `Mirror` (copies of
    /// stable's requests, `spec.mirror`) or `Experiment` (the requests matching
    /// `spec.experiment`). Absent at the weighted steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposure: Option<Exposure>,

    /// Current step, counted from 1; 0 before the first step and when no rollout runs.
    #[serde(default)]
    pub step: i32,

    /// When the current step began; the progress deadline counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<Time>,

    /// When the current step's weight took effect; step time and the analysis
    /// window (`{{elapsed}}`) count from here. Absent while the canary's pods start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis_started_at: Option<Time>,

    /// The pods that make up `spec.replicas`, for the scale subresource: an HPA
    /// compares them with its target, so a retiring revision's pods, or a canary's
    /// on top of a full stable, are not counted.
    #[serde(default)]
    pub replicas: i32,

    /// The pod selector in string form, for the scale subresource (an HPA reads it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Latest analysis of each metric in the current step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub analysis: Vec<MetricStatus>,

    /// The gates of the current rollout (and hooks still being called): each
    /// check's verdict at its step, each hook's call. A check passed is not asked
    /// again, and a hook is called at most once, across controller restarts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<GateStatus>,

    /// The last one-shot command run from the `serin.dev/command` annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_command: Option<AcknowledgedCommand>,

    /// Standard conditions: `Available`, `Progressing` (its reason says why),
    /// `Promoted` (true exactly when spec.template is fully serving) and `InvalidSpec`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Where a rollout is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Seen for the first time; the first revision is being created.
    Initializing,
    /// One revision serves all traffic and matches the spec.
    Healthy,
    /// A canary is stepping through its weights.
    Progressing,
    /// A rollout holds at its step because `spec.paused` is true.
    Paused,
    /// The canary passed; it is becoming the stable revision.
    Promoting,
    /// The canary was rolled back; the spec still names it (retry, or restore stable).
    Aborted,
}

/// Requests the canary receives other than its weighted share.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Exposure {
    /// Copies of a share of stable's requests; the canary's answers are discarded.
    Mirror,
    /// The requests that match the experiment.
    Experiment,
}

/// Analysis of one metric: both arms' values, the evidence, the verdict.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricStatus {
    /// The metric's name in spec.
    pub name: String,
    /// Latest value for the canary arm: an error rate, a share of slow requests
    /// (latency metrics), or the query's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<f64>,
    /// Latest value for the stable arm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<f64>,
    /// Error-rate and latency metrics: the request and error counts of both arms in
    /// the window (for latency, the errors are the requests slower than its threshold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<ErrorCounts>,
    /// Error-rate and latency metrics: evidence against "canary no worse", as an e-value over the
    /// whole rollout; the canary fails when it reaches 1 / (1 - confidence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<f64>,
    /// Error-rate and latency metrics: log-likelihood ratios of the earlier windows of this
    /// rollout, one per alternative the judge weighs. Kept in status so that evidence
    /// survives a new step and a restarted controller; not meant for people.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub carried: Vec<f64>,
    /// Error-rate and latency metrics: the counts of the rollout's earlier windows
    /// (one per step), kept so that the interval covers the whole rollout; not
    /// meant for people.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<ErrorCounts>,
    /// Error-rate and latency metrics: an anytime-valid interval for the ratio of
    /// the canary's error rate (or share of slow requests) to stable's, over the
    /// whole rollout; its lower bound is the judge's decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<RatioInterval>,
    /// Threshold metrics: intervals out of bounds so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<i32>,
    /// The verdict on the latest evidence.
    pub verdict: Verdict,
    /// Start of the analysis window the values cover (the step's weight took effect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    /// When the values were measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Time>,
    /// What a person should know about the verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The metric is in dry run: its verdict is shown, never acted on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// Requests and errors of both arms in one analysis window, as Prometheus counted
/// them (possibly fractional: `increase()` extrapolates). For a latency metric an
/// error is a request slower than its threshold.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorCounts {
    /// Requests the canary served.
    pub canary_requests: f64,
    /// Of those, errors.
    pub canary_errors: f64,
    /// Requests stable served.
    pub stable_requests: f64,
    /// Of those, errors.
    pub stable_errors: f64,
}

/// An interval estimate of the canary/stable error-rate ratio.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, JsonSchema)]
pub struct RatioInterval {
    /// Lower bound.
    pub lower: f64,
    /// Upper bound; absent when the data bound it from below only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upper: Option<f64>,
}

/// A metric's verdict.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Verdict {
    /// No evidence against the canary; the step may advance when its time is up.
    Pass,
    /// The canary is worse than allowed; the rollout aborts.
    Fail,
    /// Not enough to judge (no data, too little traffic); the step holds.
    Inconclusive,
}

/// A one-shot command that was run, so the same nonce never runs twice.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AcknowledgedCommand {
    /// The command: `promote`, `promote-full`, `abort` or `retry`.
    pub command: String,
    /// The nonce it carried.
    pub nonce: String,
    /// What it did, or why it did nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// When it was acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Time>,
}

/// A gate of the rollout: where it stands at one step of one revision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateStatus {
    /// The gate's name in spec.
    pub name: String,
    /// The revision it is about (the canary).
    pub revision: String,
    /// The step it runs at (0: the rollout as a whole).
    pub step: i32,
    /// Where it stands.
    pub state: GateState,
    /// The last answer, or why there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When it became due; with the rest, what a receiver can tell calls apart by
    /// (the `Idempotency-Key` header).
    pub since: Time,
    /// When it was last asked or called.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Time>,
}

/// Where a gate stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum GateState {
    /// A check not passed yet: the rollout holds.
    Waiting,
    /// A check that answered 2xx, or that a person approved.
    Passed,
    /// A hook being called: written before the call, so a controller that restarts
    /// mid-call does not call it again.
    Calling,
    /// A hook that answered 2xx.
    Called,
    /// A hook that answered otherwise, or not at all.
    Failed,
    /// A hook whose call was under way when the controller restarted: not called
    /// again, its answer unknown.
    Unconfirmed,
}

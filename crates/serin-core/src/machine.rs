//! The rollout state machine: a snapshot of what is observed in, a plan out.
//!
//! Everything is derived from the Canary's spec and status and the ReplicaSets as
//! they are, so a controller killed at any moment and started again continues the
//! same rollout. Each plan repeats the whole desired state (the shell sends only
//! what would change the ReplicaSets or the status), and a step only moves on once
//! what it waits for is observed. A plan that asks to wait is a fixed point:
//! planning again with nothing new changes nothing.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serin_api::{
    AcknowledgedCommand, CanarySpec, CanaryStatus, Duration as SpecDuration, Exposure, GateFailure,
    GateState, GateStatus, GateType, Phase, ScaleDown, StableScale, Stage, Weight, reason,
};

use crate::command::{self, Command, CommandKind};
use crate::conditions::{self, AVAILABLE, ConditionStatus, INVALID_SPEC, PROGRESSING, PROMOTED};
use crate::gate::{self, GateAnswer, GateOutcome};
use crate::replicas::{self, Split};

/// How long to wait before looking again when nothing else sets a time: the
/// watches on ReplicaSets and the Canary wake the controller sooner on any change.
pub const RESYNC: Duration = Duration::from_secs(300);

/// How often to look at canary pods that are not available: their restarts and
/// image pulls change nothing the ReplicaSet watch sees.
pub const PODS_RECHECK: Duration = Duration::from_secs(10);

/// A ReplicaSet of the Canary as observed.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedReplicaSet {
    /// The revision it runs.
    pub revision: String,
    /// Pods it is asked to run.
    pub replicas: i32,
    /// Pods available for `minReadySeconds`, that may receive traffic.
    pub available: i32,
    /// When it was created; the oldest are pruned first.
    pub created: Timestamp,
    /// When Serin scales it to zero, once it receives no traffic.
    pub scale_down_at: Option<Timestamp>,
    /// Why its pods are not available, in the pods' own words (a container's waiting
    /// reason, such as `CrashLoopBackOff` or `ErrImageNeverPull`, or a failing
    /// readiness probe), so an operator learns it from the Canary; None when it has
    /// every pod, or when the pods say nothing yet.
    pub pods_failing: Option<String>,
}

/// The analysis of the current step, from the judges.
#[derive(Clone, Debug, PartialEq)]
pub enum StepVerdict {
    /// No metric fails; the step may advance when its time is up.
    Pass,
    /// A metric fails; the reason carries the metric and the evidence.
    Fail(String),
    /// Not enough data to judge; the step holds until its deadline.
    Inconclusive(String),
    /// No analysis of this step yet; the step holds, as it would for its time anyway.
    Pending(String),
}

/// Everything the state machine looks at.
#[derive(Clone, Debug)]
pub struct Snapshot<'a> {
    /// The Canary's spec.
    pub spec: &'a CanarySpec,
    /// `metadata.generation` of that spec.
    pub generation: i64,
    /// The status as last written (default on first sight).
    pub status: CanaryStatus,
    /// The `serin.dev/command` annotation, if set.
    pub command: Option<String>,
    /// The revision of `spec.template`.
    pub revision: String,
    /// The Canary's ReplicaSets.
    pub replica_sets: Vec<ObservedReplicaSet>,
    /// A spec error only the controller can see (a missing HTTPRoute, say).
    pub invalid: Option<String>,
    /// The verdict on the current step; None when the spec has no analysis.
    pub analysis: Option<StepVerdict>,
    /// How soon the analysis looks again: sooner than `analysis.interval` while a
    /// metric leans against the canary. None: every interval.
    pub next_look: Option<Duration>,
    /// What the shell learned of the gates status lists as waiting or calling.
    pub gate_answers: Vec<GateAnswer>,
    /// The Deployment of `spec.workloadRef`, when the Canary adopts one.
    pub adopted: Option<AdoptedWorkload>,
    /// The current time.
    pub now: Timestamp,
}

/// An adopted Deployment as observed: its own pods, which go as Serin's take over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdoptedWorkload {
    /// Pods it is asked to run.
    pub replicas: i32,
    /// Its pods available.
    pub available: i32,
    /// When its pods go.
    pub scale_down: ScaleDown,
}

/// Where traffic goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routing {
    /// The revision behind `<name>-stable`.
    pub stable: String,
    /// The revision behind `<name>-canary`, while there is one.
    pub canary: Option<String>,
    /// Share of requests to the canary.
    pub weight: Weight,
    /// What the canary receives beside its weight: mirrored copies of stable's
    /// requests (`spec.mirror`) or the requests matching `spec.experiment`.
    pub exposure: Option<Exposure>,
}

/// A change to make in the cluster, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Create the ReplicaSet of the spec's revision, or resize an existing one.
    Scale {
        /// Revision of the ReplicaSet.
        revision: String,
        /// Pods it should run.
        replicas: i32,
    },
    /// Point the Services and the router at the revisions, with this weight.
    Route(Routing),
    /// Record when a ReplicaSet that no longer receives traffic is scaled down, or
    /// clear that mark on one that serves again (stable or canary), so a stale mark
    /// can never drain it early the next time it retires.
    ScaleDownAt {
        /// Revision of the ReplicaSet.
        revision: String,
        /// When; None clears the mark.
        at: Option<Timestamp>,
    },
    /// Delete an old, scaled-down ReplicaSet beyond the history limit.
    Delete {
        /// Revision of the ReplicaSet.
        revision: String,
    },
    /// Resize the adopted Deployment: only ever down, as Serin's stable pods cover
    /// its own.
    ScaleAdopted {
        /// Pods it should run.
        replicas: i32,
    },
}

impl Action {
    /// What this action changes on a ReplicaSet as observed: the replica count for
    /// `Scale`, the scale-down mark for `ScaleDownAt`, nothing else. The reconciler's
    /// patches write exactly these fields (its tests check the round trip), and the
    /// model cluster of the state machine's tests applies actions with this function,
    /// so the two cannot drift apart.
    pub fn apply_to(&self, rs: &mut ObservedReplicaSet) {
        match self {
            Self::Scale { revision, replicas } if *revision == rs.revision => {
                rs.replicas = *replicas;
            }
            Self::ScaleDownAt { revision, at } if *revision == rs.revision => {
                rs.scale_down_at = *at;
            }
            _ => {}
        }
    }
}

/// The type of an Event, as Kubernetes has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// Something happened as it should.
    Normal,
    /// Something went wrong: a rollback, a spec to fix.
    Warning,
}

impl EventType {
    /// The Event's `type` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

/// Something worth an Event: a transition, with a reason a person can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Warning (something went wrong) or Normal.
    pub kind: EventType,
    /// CamelCase reason, as in `kubectl get events`.
    pub reason: &'static str,
    /// What happened, for people.
    pub note: String,
}

/// What the reconciler is to do.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Changes to apply, in order; stop at the first that fails.
    pub actions: Vec<Action>,
    /// The status to write once the actions are applied.
    pub status: CanaryStatus,
    /// Events to record.
    pub events: Vec<Event>,
    /// When to look again if nothing changes before.
    pub requeue_after: Duration,
}

/// Where a step stands against its progress deadline.
#[derive(Clone, Copy, Debug)]
struct StepClock {
    since_step: Duration,
    deadline: Duration,
}

impl StepClock {
    /// The step has run out of time.
    fn expired(self) -> bool {
        self.since_step >= self.deadline
    }

    /// Time left before the deadline.
    fn left(self) -> Duration {
        self.deadline.saturating_sub(self.since_step)
    }
}

/// Why a rollout was rolled back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AbortReason {
    AnalysisFailed,
    ProgressDeadlineExceeded,
    AbortedByUser,
    GateFailed,
}

impl AbortReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::AnalysisFailed => reason::ANALYSIS_FAILED,
            Self::ProgressDeadlineExceeded => reason::PROGRESS_DEADLINE_EXCEEDED,
            Self::AbortedByUser => reason::ABORTED_BY_USER,
            Self::GateFailed => reason::GATE_FAILED,
        }
    }
}

/// Whether a rollout may pass the checks at a point of it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Passage {
    /// Every check passed.
    Open,
    /// A check has not passed; the rollout holds.
    Held,
    /// A check with `onFailure: Abort` refused; why.
    Refused(String),
}

/// Decides what to do about one Canary.
pub fn plan(snapshot: &Snapshot) -> Plan {
    let mut planner = Planner::new(snapshot);
    planner.run();
    planner.finish()
}

struct Planner<'s, 'a> {
    snap: &'s Snapshot<'a>,
    now: Time,
    status: CanaryStatus,
    actions: Vec<Action>,
    events: Vec<Event>,
    wake: Duration,
    command: Option<Command>,
}

impl<'s, 'a> Planner<'s, 'a> {
    fn new(snap: &'s Snapshot<'a>) -> Self {
        let mut status = snap.status.clone();
        status.observed_generation = Some(snap.generation);
        status.selector = Some(selector_string(snap.spec));
        Self {
            snap,
            now: Time(snap.now),
            status,
            actions: Vec::new(),
            events: Vec::new(),
            wake: RESYNC,
            command: None,
        }
    }

    fn finish(mut self) -> Plan {
        self.status.replicas = self.counted_replicas();
        conditions::summarize(
            &mut self.status.conditions,
            self.status.phase,
            &self.now,
            self.snap.generation,
        );
        Plan {
            actions: self.actions,
            status: self.status,
            events: self.events,
            requeue_after: self.wake,
        }
    }

    fn run(&mut self) {
        if let Some(reason) = &self.snap.invalid {
            let reported = self
                .status
                .conditions
                .iter()
                .any(|c| c.type_ == INVALID_SPEC && c.status == "True" && c.message == *reason);
            self.condition(
                INVALID_SPEC,
                ConditionStatus::True,
                reason::INVALID_SPEC,
                reason.clone(),
            );
            if !reported {
                self.event(EventType::Warning, reason::INVALID_SPEC, reason.clone());
            }
            if self.status.stable_revision.as_deref() != Some(self.snap.revision.as_str()) {
                self.condition(
                    PROMOTED,
                    ConditionStatus::False,
                    reason::INVALID_SPEC,
                    format!(
                        "revision {} is not rolled out: {reason}",
                        self.snap.revision
                    ),
                );
            }
            self.wake = Duration::from_secs(30);
            return;
        }
        self.condition(
            INVALID_SPEC,
            ConditionStatus::False,
            reason::VALID,
            String::new(),
        );
        self.take_command();
        self.hooks_answered();

        let target = self.snap.revision.clone();
        let Some(stable) = self.status.stable_revision.clone() else {
            self.first_revision(&target);
            return;
        };
        if target == stable {
            self.steady(&stable);
        } else {
            self.rollout(&stable, &target);
        }
        // A promotion in this plan changed which revision is stable.
        let stable = self.status.stable_revision.clone().unwrap_or(stable);
        self.retire_unused(&stable);
        self.take_over_adopted(&stable);
        if self
            .status
            .gates
            .iter()
            .any(|record| record.state == GateState::Calling)
        {
            self.wake_in(Duration::from_secs(1));
        }
    }

    /// The first revision ever: one ReplicaSet at full size, all traffic to it.
    fn first_revision(&mut self, target: &str) {
        self.status.stable_revision = Some(target.to_owned());
        self.status.phase = Some(Phase::Initializing);
        self.event(
            EventType::Normal,
            reason::INITIALIZING,
            format!("first revision {target}"),
        );
        self.steady(target);
        self.take_over_adopted(target);
    }

    /// An adopted Deployment's pods go as Serin's stable pods cover them: pod for
    /// pod (`Progressively`), all at once when stable has every pod (`OnSuccess`),
    /// or never. It is only ever scaled down, so a stable short of pods later (a
    /// rollout splitting pods, a node lost) never brings it back: the Canary owns
    /// the workload from then on.
    fn take_over_adopted(&mut self, stable: &str) {
        let Some(adopted) = self.snap.adopted else {
            return;
        };
        let replicas = self.snap.spec.replicas;
        let covered = self.available(stable);
        let wanted = match adopted.scale_down {
            ScaleDown::Never => return,
            ScaleDown::Progressively => (replicas - covered).max(0),
            ScaleDown::OnSuccess if covered >= replicas => 0,
            ScaleDown::OnSuccess => return,
        };
        if wanted < adopted.replicas {
            self.actions.push(Action::ScaleAdopted { replicas: wanted });
        }
    }

    /// No rollout: the stable revision serves everything at the spec's size.
    fn steady(&mut self, stable: &str) {
        let replicas = self.snap.spec.replicas;
        if let Some(canary) = self.status.canary_revision.take() {
            self.event(
                EventType::Normal,
                reason::STABLE_RESTORED,
                format!("spec.template is revision {stable} again; rollout of {canary} dropped"),
            );
        }
        self.actions.push(Action::Scale {
            revision: stable.to_owned(),
            replicas,
        });
        self.route(stable, None, Weight::ZERO, None);
        self.status.step = 0;
        self.status.step_started_at = None;
        self.status.analysis_started_at = None;
        self.status.analysis.clear();
        self.status
            .gates
            .retain(|record| record.state != GateState::Waiting);

        let available = self.available(stable);
        let ready = available >= replicas;
        self.availability(stable);
        let was = self.status.phase;
        if ready {
            self.status.phase = Some(Phase::Healthy);
            self.condition(
                PROGRESSING,
                ConditionStatus::False,
                reason::PROMOTED,
                format!("revision {stable} serves all traffic"),
            );
            self.condition(
                PROMOTED,
                ConditionStatus::True,
                reason::PROMOTED,
                format!("revision {stable} is fully available"),
            );
            if was != Some(Phase::Healthy) {
                self.event(
                    EventType::Normal,
                    reason::HEALTHY,
                    format!("revision {stable} is fully available"),
                );
            }
        } else {
            if was != Some(Phase::Initializing) {
                self.status.phase = Some(Phase::Healthy);
            }
            self.condition(
                PROGRESSING,
                ConditionStatus::True,
                reason::WAITING_FOR_PODS,
                format!("revision {stable}: {available} of {replicas} pods available"),
            );
            self.condition(
                PROMOTED,
                ConditionStatus::False,
                reason::WAITING_FOR_PODS,
                format!("revision {stable}: {available} of {replicas} pods available"),
            );
        }
        if let Some(command) = self.command.take() {
            self.acknowledge(&command, "no rollout in progress; nothing to do");
        }
    }

    /// A template that differs from stable: start, continue, hold or finish a rollout.
    fn rollout(&mut self, stable: &str, target: &str) {
        if self.status.canary_revision.as_deref() != Some(target) {
            self.start_rollout(stable, target);
        }
        if self.status.phase == Some(Phase::Aborted)
            && let Some(command) = self.take(CommandKind::Retry)
        {
            self.acknowledge(&command, "rollout starts again from step 1");
            self.status.analysis.clear();
            self.clear_gates();
            self.begin_step(1);
            self.status.phase = Some(Phase::Progressing);
            self.event(
                EventType::Normal,
                reason::RETRIED,
                format!("rollout of {target} starts again from step 1"),
            );
        }
        match self.status.phase {
            Some(Phase::Aborted) => self.aborted(stable, target),
            Some(Phase::Promoting) => self.promoting(stable, target),
            _ => self.progress(stable, target),
        }
        if let Some(command) = self.command.take() {
            let phase = self
                .status
                .phase
                .map(|p| format!("{p:?}"))
                .unwrap_or_default();
            self.acknowledge(&command, &format!("not applicable while {phase}"));
        }
    }

    fn start_rollout(&mut self, stable: &str, target: &str) {
        if let Some(previous) = self.status.canary_revision.replace(target.to_owned()) {
            self.event(
                EventType::Normal,
                reason::ROLLOUT_RESTARTED,
                format!(
                    "spec.template changed to revision {target}; rollout of {previous} dropped"
                ),
            );
        } else {
            self.event(
                EventType::Normal,
                reason::ROLLOUT_STARTED,
                format!("rolling out revision {target} beside stable {stable}"),
            );
        }
        self.status.phase = Some(Phase::Progressing);
        // The new canary has had no traffic: the old one's weight is not its own.
        self.status.weight = Weight::ZERO;
        self.status.exposure = None;
        self.status.analysis.clear();
        self.clear_gates();
        self.condition(
            PROMOTED,
            ConditionStatus::False,
            reason::ROLLOUT_IN_PROGRESS,
            format!("revision {target} is being rolled out"),
        );
        self.begin_step(1);
    }

    /// A step (re)starts: its clock, and a new analysis window. The analysis of the
    /// earlier windows stays: the judges carry its evidence into the new one.
    fn begin_step(&mut self, step: i32) {
        self.status.step = step;
        self.status.step_started_at = Some(self.now.clone());
        self.status.analysis_started_at = None;
    }

    /// Progressing or Paused at a step.
    fn progress(&mut self, stable: &str, target: &str) {
        if let Some(command) = self.take(CommandKind::Abort) {
            self.acknowledge(&command, "rollout aborted");
            return self.abort(
                stable,
                target,
                AbortReason::AbortedByUser,
                "aborted by a person".into(),
            );
        }
        if let Some(command) = self.take(CommandKind::PromoteFull) {
            self.acknowledge(&command, "skipping the remaining steps");
            return self.start_promotion(stable, target);
        }
        let step = self.status.step.min(steps(self.snap.spec)).max(1);
        self.status.step = step;
        let stage = stage(self.snap.spec, step);
        let split = self.split_for(stage);
        self.actions.push(Action::Scale {
            revision: stable.to_owned(),
            replicas: split.stable.max(self.stable_for_current_weight()),
        });
        self.actions.push(Action::Scale {
            revision: target.to_owned(),
            replicas: split.canary,
        });
        self.availability(stable);
        if self.snap.spec.paused {
            return self.hold_paused(stable, target, step);
        }
        if self.status.phase == Some(Phase::Paused) {
            self.event(
                EventType::Normal,
                reason::RESUMED,
                format!("rollout of {target} resumed at step {step}"),
            );
            self.begin_step(step);
        }
        self.status.phase = Some(Phase::Progressing);
        let clock = self.step_clock();
        if self.available(target) < split.canary {
            return self.wait_for_canary_pods(stable, target, step, split, clock);
        }
        if self.status.analysis_started_at.is_none() {
            // The first step's checks hold before any canary traffic; a later
            // step's were asked as the step before it finished, still judged.
            if step == 1 {
                let kinds = [GateType::PreRollout, GateType::BeforeStep];
                match self.checks(&kinds, step, target, clock) {
                    Passage::Open => {}
                    Passage::Held => return self.keep_current_weight(stable, target),
                    Passage::Refused(why) => {
                        return self.abort(stable, target, AbortReason::GateFailed, why);
                    }
                }
            }
            self.call_hooks(GateType::LoadTest, step, target);
        }
        if self.status.analysis_started_at.is_none() {
            self.status.analysis_started_at = Some(self.now.clone());
        }
        self.route(stable, Some(target), split.weight, exposure(stage));
        if self.weighted() {
            // The weight moved off stable: its pods follow, after the route.
            self.actions.push(Action::Scale {
                revision: stable.to_owned(),
                replicas: split.stable,
            });
        }
        self.judge_step(stable, target, step, stage, clock);
    }

    /// Paused: the step, its pods and its weight stay as they are.
    fn hold_paused(&mut self, stable: &str, target: &str, step: i32) {
        if self.status.phase != Some(Phase::Paused) {
            self.event(
                EventType::Normal,
                reason::PAUSED,
                format!("rollout of {target} paused at step {step}"),
            );
        }
        self.status.phase = Some(Phase::Paused);
        self.keep_current_weight(stable, target);
        self.condition(
            PROGRESSING,
            ConditionStatus::False,
            reason::PAUSED,
            format!("paused at step {step} (weight {}%)", self.status.weight),
        );
    }

    /// The step's canary pods are not all available: no new weight, and the
    /// deadline rolls the rollout back if they never come.
    fn wait_for_canary_pods(
        &mut self,
        stable: &str,
        target: &str,
        step: i32,
        split: Split,
        clock: StepClock,
    ) {
        self.keep_current_weight(stable, target);
        let mut waiting = format!(
            "step {step}: {} of {} canary pods available",
            self.available(target),
            split.canary
        );
        let failing = self.pods_failing(target);
        if let Some(why) = &failing {
            waiting = format!("{waiting}: {why}");
        }
        if clock.expired() {
            return self.abort(
                stable,
                target,
                AbortReason::ProgressDeadlineExceeded,
                waiting,
            );
        }
        let reported = self
            .status
            .conditions
            .iter()
            .any(|c| c.type_ == PROGRESSING && c.reason == reason::CANARY_PODS_FAILING);
        if failing.is_none() && reported && self.asked(target) < split.canary {
            // The pods asked for only now have not been looked at (the ReplicaSet had
            // all it was asked for): what its failing pods said stands until then.
            self.wake_in(clock.left().min(PODS_RECHECK));
            return;
        }
        if failing.is_some() {
            if !reported {
                self.event(
                    EventType::Warning,
                    reason::CANARY_PODS_FAILING,
                    waiting.clone(),
                );
            }
            self.condition(
                PROGRESSING,
                ConditionStatus::True,
                reason::CANARY_PODS_FAILING,
                waiting,
            );
        } else {
            self.condition(
                PROGRESSING,
                ConditionStatus::True,
                reason::WAITING_FOR_PODS,
                waiting,
            );
        }
        self.wake_in(clock.left().min(PODS_RECHECK));
    }

    /// The step's weight is in effect: the analysis verdict and the step's time
    /// decide whether it fails, holds, waits or advances.
    fn judge_step(
        &mut self,
        stable: &str,
        target: &str,
        step: i32,
        stage: Stage<'_>,
        clock: StepClock,
    ) {
        let analysis_started = self
            .status
            .analysis_started_at
            .clone()
            .unwrap_or_else(|| self.now.clone());
        let at_weight = self.since(&analysis_started);
        let step_duration = self.stage_duration(stage);
        let doing = describe(stage);
        let verdict = self.snap.analysis.clone().unwrap_or(StepVerdict::Pass);
        // A person finishes a step early, but not a failing one.
        let promote = match verdict {
            StepVerdict::Fail(_) => None,
            _ => self.take(CommandKind::Promote),
        };
        match verdict {
            StepVerdict::Fail(evidence) => {
                self.abort(stable, target, AbortReason::AnalysisFailed, evidence)
            }
            _ if let Some(command) = promote => {
                self.acknowledge(&command, &format!("step {step} finished early"));
                self.advance(stable, target, step, "promoted by a person".into());
            }
            // The step already finished (its time, or a person's promote) and waits
            // at the next step's checks or a ConfirmPromotion check, still judged.
            _ if self.finished(target, step) => {
                self.advance(stable, target, step, format!("step {step} passed"));
            }
            StepVerdict::Inconclusive(why) if clock.expired() => self.abort(
                stable,
                target,
                AbortReason::ProgressDeadlineExceeded,
                format!("step {step} inconclusive until its deadline: {why}"),
            ),
            StepVerdict::Inconclusive(why) => {
                self.condition(
                    PROGRESSING,
                    ConditionStatus::True,
                    reason::INCONCLUSIVE,
                    format!("step {step} {doing}: {why}"),
                );
                self.wake_in(self.next_look().min(clock.left()));
            }
            StepVerdict::Pass if step_duration.is_some_and(|d| at_weight >= d) => {
                self.advance(stable, target, step, format!("step {step} passed"));
            }
            StepVerdict::Pass | StepVerdict::Pending(_) => {
                let waiting = match (self.snap.analysis.as_ref(), step_duration) {
                    (Some(StepVerdict::Pending(why)), _) => format!(": {why}"),
                    (_, None) => {
                        ": the experiment runs until promoted (kubectl serin promote)".to_owned()
                    }
                    _ => String::new(),
                };
                self.condition(
                    PROGRESSING,
                    ConditionStatus::True,
                    reason::STEP_IN_PROGRESS,
                    format!("step {step} of {} {doing}{waiting}", steps(self.snap.spec)),
                );
                let left = step_duration.map_or(RESYNC, |d| d.saturating_sub(at_weight));
                self.wake_in(self.next_look().min(left));
            }
        }
    }

    /// The step finished: on to the next one, or to promotion, once the checks
    /// before it pass. While they hold, the step stays in effect and judged.
    fn advance(&mut self, stable: &str, target: &str, step: i32, why: String) {
        let last = step >= steps(self.snap.spec);
        let (kind, at) = if last {
            (GateType::ConfirmPromotion, step)
        } else {
            (GateType::BeforeStep, step + 1)
        };
        match self.checks(&[kind], at, target, self.step_clock()) {
            Passage::Open => {}
            Passage::Held => return self.wake_in(self.next_look()),
            Passage::Refused(why) => {
                return self.abort(stable, target, AbortReason::GateFailed, why);
            }
        }
        if last {
            self.event(
                EventType::Normal,
                reason::STEP_ADVANCED,
                format!("{why}; last step done, promoting {target}"),
            );
            return self.start_promotion(stable, target);
        }
        self.begin_step(step + 1);
        let doing = describe(stage(self.snap.spec, step + 1));
        self.event(
            EventType::Normal,
            reason::STEP_ADVANCED,
            format!("{why}; step {} {doing}", step + 1),
        );
        self.condition(
            PROGRESSING,
            ConditionStatus::True,
            reason::STEP_ADVANCED,
            format!("step {} {doing}", step + 1),
        );
        self.wake = Duration::ZERO;
    }

    fn start_promotion(&mut self, stable: &str, target: &str) {
        self.status.phase = Some(Phase::Promoting);
        self.event(
            EventType::Normal,
            reason::PROMOTING,
            format!("scaling revision {target} to full size"),
        );
        self.promoting(stable, target);
    }

    /// The canary passed: scale it to full size, then make it stable.
    fn promoting(&mut self, stable: &str, target: &str) {
        let replicas = self.snap.spec.replicas;
        if self.snap.spec.traffic.is_some() {
            self.actions.push(Action::Scale {
                revision: stable.to_owned(),
                replicas: self.stable_for_current_weight(),
            });
        }
        self.actions.push(Action::Scale {
            revision: target.to_owned(),
            replicas,
        });
        let available = self.available(target);
        if available < replicas {
            self.keep_current_weight(stable, target);
            self.availability(stable);
            self.condition(
                PROGRESSING,
                ConditionStatus::True,
                reason::PROMOTING,
                format!("revision {target}: {available} of {replicas} pods available"),
            );
            return;
        }
        self.status.stable_revision = Some(target.to_owned());
        self.status.canary_revision = None;
        self.status.phase = Some(Phase::Healthy);
        self.call_hooks(GateType::PostRollout, 0, target);
        self.event(
            EventType::Normal,
            reason::PROMOTED,
            format!("revision {target} is now stable; {stable} retires"),
        );
        self.steady(target);
    }

    /// Roll back: all traffic to stable first, then the canary is scaled down.
    fn abort(&mut self, stable: &str, target: &str, reason: AbortReason, why: String) {
        self.status.phase = Some(Phase::Aborted);
        let message = format!(
            "rollout of {target} aborted at step {}: {why}",
            self.status.step
        );
        self.event(EventType::Warning, reason.as_str(), message.clone());
        self.condition(
            PROGRESSING,
            ConditionStatus::False,
            reason.as_str(),
            message.clone(),
        );
        self.condition(PROMOTED, ConditionStatus::False, reason.as_str(), message);
        let step = self.status.step;
        self.call_hooks(GateType::OnRollback, step, target);
        self.aborted(stable, target);
    }

    /// Aborted: stable at full size with all traffic until a retry or a new template.
    fn aborted(&mut self, stable: &str, _target: &str) {
        self.actions.push(Action::Scale {
            revision: stable.to_owned(),
            replicas: self.snap.spec.replicas,
        });
        self.route(stable, None, Weight::ZERO, None);
        self.status.analysis_started_at = None;
        self.availability(stable);
    }

    /// The checks of `kinds` at `step` of `target`, in spec order: a passed one is
    /// not asked again; the first not passed holds the rollout (a manual one until
    /// `approve`, one with a URL until it answers 2xx or, past the progress
    /// deadline, rolls the rollout back), unless it refused with `onFailure: Abort`.
    fn checks(&mut self, kinds: &[GateType], step: i32, target: &str, clock: StepClock) -> Passage {
        let spec = self.snap.spec;
        let due = spec.gates.iter().filter(|gate| {
            kinds.contains(&gate.r#type)
                && (gate.r#type != GateType::BeforeStep || gate.at_step(step))
        });
        for gate in due {
            let found = self.status.gates.iter().position(|record| {
                record.name == gate.name && record.step == step && record.revision == target
            });
            let index = found.unwrap_or_else(|| {
                let waiting_for = if gate.is_manual() {
                    "kubectl serin approve".to_owned()
                } else {
                    "an answer 2xx".to_owned()
                };
                self.event(
                    EventType::Normal,
                    reason::GATE_WAITING,
                    format!(
                        "gate {} ({:?}) holds revision {target} at step {step} until {waiting_for}",
                        gate.name, gate.r#type
                    ),
                );
                self.status.gates.push(GateStatus {
                    name: gate.name.clone(),
                    revision: target.to_owned(),
                    step,
                    state: GateState::Waiting,
                    message: None,
                    since: self.now.clone(),
                    at: None,
                });
                self.status.gates.len() - 1
            });
            if self.status.gates[index].state == GateState::Passed {
                continue;
            }
            let answer = if gate.is_manual() {
                self.take(CommandKind::Approve).map(|command| {
                    self.acknowledge(&command, &format!("gate {} approved", gate.name));
                    GateOutcome::Passed("approved by a person".to_owned())
                })
            } else {
                let record = &self.status.gates[index];
                self.snap
                    .gate_answers
                    .iter()
                    .find(|answer| answer.answers(record))
                    .map(|answer| answer.outcome.clone())
            };
            let record = &mut self.status.gates[index];
            match answer {
                Some(GateOutcome::Passed(said)) => {
                    record.state = GateState::Passed;
                    record.message = Some(said.clone());
                    record.at = Some(self.now.clone());
                    self.event(
                        EventType::Normal,
                        reason::GATE_PASSED,
                        format!(
                            "gate {} ({:?}) at step {step}: {said}",
                            gate.name, gate.r#type
                        ),
                    );
                    continue;
                }
                Some(GateOutcome::Refused(said)) => {
                    record.message = Some(said.clone());
                    record.at = Some(self.now.clone());
                    if gate.on_failure == Some(GateFailure::Abort) {
                        return Passage::Refused(format!(
                            "gate {} ({:?}, step {step}) refused: {said}",
                            gate.name, gate.r#type
                        ));
                    }
                }
                Some(GateOutcome::Lost) | None => {}
            }
            return self.hold_at_gate(gate.is_manual(), index, step, clock);
        }
        Passage::Open
    }

    /// Step `step` of `target` finished and waits at a check before what comes
    /// next: the next step's BeforeStep, or ConfirmPromotion after the last.
    fn finished(&self, target: &str, step: i32) -> bool {
        self.status.gates.iter().any(|record| {
            record.revision == target
                && record.state == GateState::Waiting
                && gate::gate_of(self.snap.spec, record).is_some_and(|gate| {
                    (gate.r#type == GateType::ConfirmPromotion && record.step == step)
                        || (gate.r#type == GateType::BeforeStep && record.step == step + 1)
                })
        })
    }

    /// A check holds the rollout: said in Progressing; one with a URL is asked
    /// again soon, and rolls the rollout back past the progress deadline (a person
    /// is waited for however long).
    fn hold_at_gate(&mut self, manual: bool, index: usize, step: i32, clock: StepClock) -> Passage {
        let record = &self.status.gates[index];
        let waiting = match (&record.message, manual) {
            (_, true) => "waiting for kubectl serin approve".to_owned(),
            (Some(said), false) => format!("waiting: {said}"),
            (None, false) => "asking".to_owned(),
        };
        let message = format!("step {step}: gate {} {waiting}", record.name);
        if !manual && clock.expired() {
            return Passage::Refused(format!("{message}, until the progress deadline"));
        }
        let asked = record.at.is_some();
        self.condition(
            PROGRESSING,
            ConditionStatus::True,
            reason::GATE_WAITING,
            message,
        );
        if !manual {
            let again = if asked { gate::RECHECK } else { Duration::ZERO };
            self.wake_in(again.min(clock.left()));
        }
        Passage::Held
    }

    /// Records a call of each hook of `kind` (at `step`, for `LoadTest`) for
    /// `revision` that has none yet: the shell calls it once that is stored.
    fn call_hooks(&mut self, kind: GateType, step: i32, revision: &str) {
        let spec = self.snap.spec;
        for gate in spec.gates.iter().filter(|gate| {
            gate.r#type == kind && (kind != GateType::LoadTest || gate.at_step(step))
        }) {
            let called = self.status.gates.iter().any(|record| {
                record.name == gate.name && record.step == step && record.revision == revision
            });
            if !called {
                self.status.gates.push(GateStatus {
                    name: gate.name.clone(),
                    revision: revision.to_owned(),
                    step,
                    state: GateState::Calling,
                    message: None,
                    since: self.now.clone(),
                    at: Some(self.now.clone()),
                });
            }
        }
    }

    /// The answers of the hooks being called, recorded with an Event each.
    fn hooks_answered(&mut self) {
        let snap = self.snap;
        for index in 0..self.status.gates.len() {
            let record = &self.status.gates[index];
            if record.state != GateState::Calling {
                continue;
            }
            let Some(answer) = snap.gate_answers.iter().find(|a| a.answers(record)) else {
                continue;
            };
            let kind = gate::gate_of(snap.spec, record).map_or_else(
                || "no longer in spec".to_owned(),
                |gate| format!("{:?}", gate.r#type),
            );
            let what = format!(
                "hook {} ({kind}) for revision {}",
                record.name, record.revision
            );
            let (state, event, note) = match &answer.outcome {
                GateOutcome::Passed(said) => (
                    GateState::Called,
                    EventType::Normal,
                    format!("{what}: {said}"),
                ),
                GateOutcome::Refused(said) => (
                    GateState::Failed,
                    EventType::Warning,
                    format!("{what}: {said}; the rollout goes on"),
                ),
                GateOutcome::Lost => (
                    GateState::Unconfirmed,
                    EventType::Warning,
                    format!(
                        "{what} was being called when the controller restarted; not called again, its answer unknown"
                    ),
                ),
            };
            let reason = match event {
                EventType::Normal => reason::HOOK_CALLED,
                EventType::Warning => reason::HOOK_FAILED,
            };
            let record = &mut self.status.gates[index];
            record.state = state;
            record.message = Some(note.clone());
            record.at = Some(self.now.clone());
            self.event(event, reason, note);
        }
    }

    /// A new rollout (or a retry) asks every check again; a hook being called stays
    /// until its answer is recorded.
    fn clear_gates(&mut self) {
        self.status
            .gates
            .retain(|record| record.state == GateState::Calling);
    }

    /// Where the current step stands against its deadline.
    fn step_clock(&self) -> StepClock {
        let started = self
            .status
            .step_started_at
            .clone()
            .unwrap_or_else(|| self.now.clone());
        StepClock {
            since_step: self.since(&started),
            deadline: duration(self.snap.spec.progress_deadline),
        }
    }

    /// Revisions that no longer receive traffic are scaled down after the delay,
    /// and the oldest beyond the history limit are deleted. A revision in use keeps
    /// no scale-down mark.
    fn retire_unused(&mut self, stable: &str) {
        let active_canary = match self.status.phase {
            Some(Phase::Progressing | Phase::Paused | Phase::Promoting) => {
                self.status.canary_revision.clone()
            }
            _ => None,
        };
        let in_use =
            |revision: &str| revision == stable || active_canary.as_deref() == Some(revision);
        let delay = duration(self.snap.spec.scale_down_delay);
        let mut idle = Vec::new();
        for rs in &self.snap.replica_sets {
            if in_use(&rs.revision) {
                if rs.scale_down_at.is_some() {
                    self.actions.push(Action::ScaleDownAt {
                        revision: rs.revision.clone(),
                        at: None,
                    });
                }
                continue;
            }
            if rs.replicas == 0 {
                idle.push(rs);
                continue;
            }
            match rs.scale_down_at {
                Some(at) if at <= self.snap.now => self.actions.push(Action::Scale {
                    revision: rs.revision.clone(),
                    replicas: 0,
                }),
                Some(at) => self.wake_in(until(self.snap.now, at)),
                None => {
                    let at = self.snap.now + SignedDuration::try_from(delay).unwrap_or_default();
                    self.actions.push(Action::ScaleDownAt {
                        revision: rs.revision.clone(),
                        at: Some(at),
                    });
                    self.wake_in(delay);
                }
            }
        }
        idle.sort_by_key(|rs| std::cmp::Reverse(rs.created));
        let keep = usize::try_from(self.snap.spec.revision_history_limit).unwrap_or(0);
        for rs in idle.into_iter().skip(keep) {
            self.actions.push(Action::Delete {
                revision: rs.revision.clone(),
            });
        }
    }

    /// Replicas for a step: for its weight; while mirroring, for the mirrored share;
    /// in an experiment (whose share of requests is not known), as for the first
    /// weighted step, which then finds its pods ready. The weight is zero unless the
    /// step is weighted.
    fn split_for(&self, stage: Stage<'_>) -> Split {
        // No weight moves off stable: it keeps the pods for all of the traffic.
        let unweighted = |split: Split| Split {
            weight: Weight::ZERO,
            stable: self.split(Weight::ZERO).stable,
            ..split
        };
        match stage {
            Stage::Weight(weight) => self.split(weight),
            Stage::Mirror(mirror) => unweighted(self.split(Weight::from_percent(mirror.percent))),
            Stage::Experiment(_) => {
                let first = self
                    .snap
                    .spec
                    .steps
                    .first()
                    .copied()
                    .unwrap_or(Weight::ZERO);
                unweighted(self.split(first))
            }
        }
    }

    /// How long a step runs once its traffic is in effect; None: until promoted.
    fn stage_duration(&self, stage: Stage<'_>) -> Option<Duration> {
        let step_duration = duration(self.snap.spec.step_duration);
        match stage {
            Stage::Weight(_) => Some(step_duration),
            Stage::Mirror(mirror) => Some(mirror.duration.map_or(step_duration, duration)),
            Stage::Experiment(experiment) => experiment.duration.map(duration),
        }
    }

    /// The pods the scale subresource reports against `spec.replicas`, which an
    /// HPA compares with its target: those of the revisions that make up the
    /// total. Never a retiring ReplicaSet's, nor a canary's on top of a full
    /// stable, so an HPA is not led to keep a count inflated by them.
    fn counted_replicas(&self) -> i32 {
        let replicas = |revision: Option<&String>| revision.map_or(0, |r| self.asked(r));
        let (stable, canary) = (
            self.status.stable_revision.as_ref(),
            self.status.canary_revision.as_ref(),
        );
        // A mirrored or experimenting canary serves no share of the total.
        let shared =
            (self.weighted() || self.snap.spec.traffic.is_none()) && self.status.exposure.is_none();
        match self.status.phase {
            Some(Phase::Progressing | Phase::Paused) if shared => {
                replicas(stable) + replicas(canary)
            }
            Some(Phase::Promoting) => replicas(canary),
            _ => replicas(stable),
        }
    }

    /// The router's total is split by weight (`stableScale: Weighted`).
    fn weighted(&self) -> bool {
        self.snap.spec.traffic.is_some()
            && self.snap.spec.stable_scale == Some(StableScale::Weighted)
    }

    /// Stable's pods for the share of traffic it has now, with a router (a split
    /// by weight shrinks stable only once the step's weight has moved off it).
    /// Without one the pods are the weight: nothing beyond the step's split.
    fn stable_for_current_weight(&self) -> i32 {
        if self.snap.spec.traffic.is_some() {
            self.split(self.status.weight).stable
        } else {
            0
        }
    }

    /// Replicas for a step's weight: by the router, with stable full or the total
    /// split by weight, or by pod counts.
    fn split(&self, weight: Weight) -> Split {
        let spec = self.snap.spec;
        if self.weighted() {
            replicas::weighted(spec.replicas, weight)
        } else if spec.traffic.is_some() {
            replicas::routed(spec.replicas, weight)
        } else {
            replicas::by_pod_count(spec.replicas, weight)
        }
    }

    /// Keeps the weight already applied while a step waits, but never on a canary
    /// without an available pod.
    fn keep_current_weight(&mut self, stable: &str, target: &str) {
        let (weight, exposure) = if self.available(target) > 0 {
            (self.status.weight, self.status.exposure)
        } else {
            (Weight::ZERO, None)
        };
        let canary = (!weight.is_zero() || exposure.is_some()).then_some(target);
        self.route(stable, canary, weight, exposure);
    }

    fn route(
        &mut self,
        stable: &str,
        canary: Option<&str>,
        weight: Weight,
        exposure: Option<Exposure>,
    ) {
        self.status.weight = weight;
        self.status.exposure = exposure;
        self.actions.push(Action::Route(Routing {
            stable: stable.to_owned(),
            canary: canary.map(str::to_owned),
            weight,
            exposure,
        }));
    }

    fn availability(&mut self, stable: &str) {
        let available = self.available(stable);
        let wanted = self
            .actions
            .iter()
            .rev()
            .find_map(|action| match action {
                Action::Scale { revision, replicas } if revision == stable => Some(*replicas),
                _ => None,
            })
            .unwrap_or(self.snap.spec.replicas);
        let (ok, reason) = if available >= wanted && (available > 0 || wanted == 0) {
            (ConditionStatus::True, reason::STABLE_AVAILABLE)
        } else {
            (ConditionStatus::False, reason::STABLE_UNAVAILABLE)
        };
        self.condition(
            AVAILABLE,
            ok,
            reason,
            format!("revision {stable}: {available} of {wanted} pods available"),
        );
    }

    /// Pods the ReplicaSet of `revision` was asked to run, as observed.
    fn asked(&self, revision: &str) -> i32 {
        self.snap
            .replica_sets
            .iter()
            .find(|rs| rs.revision == revision)
            .map_or(0, |rs| rs.replicas)
    }

    fn available(&self, revision: &str) -> i32 {
        self.snap
            .replica_sets
            .iter()
            .find(|rs| rs.revision == revision)
            .map_or(0, |rs| rs.available)
    }

    fn pods_failing(&self, revision: &str) -> Option<String> {
        self.snap
            .replica_sets
            .iter()
            .find(|rs| rs.revision == revision)
            .and_then(|rs| rs.pods_failing.clone())
    }

    /// When the analysis looks again, as the shell said, or its interval.
    fn next_look(&self) -> Duration {
        self.snap
            .next_look
            .unwrap_or_else(|| self.analysis_interval())
    }

    fn analysis_interval(&self) -> Duration {
        self.snap
            .spec
            .analysis
            .as_ref()
            .map_or(Duration::from_secs(5), |analysis| {
                duration(analysis.interval)
            })
    }

    fn take_command(&mut self) {
        let Some(text) = &self.snap.command else {
            return;
        };
        match command::parse(text) {
            Ok(command) => {
                let done = self
                    .status
                    .last_command
                    .as_ref()
                    .map(|last| last.nonce.as_str());
                if done != Some(command.nonce.as_str()) {
                    self.command = Some(command);
                }
            }
            Err(problem) => {
                let seen = self
                    .status
                    .last_command
                    .as_ref()
                    .is_some_and(|last| last.command == *text);
                if !seen {
                    self.status.last_command = Some(AcknowledgedCommand {
                        command: text.clone(),
                        nonce: String::new(),
                        outcome: Some(problem.clone()),
                        at: Some(self.now.clone()),
                    });
                    self.event(EventType::Warning, reason::INVALID_COMMAND, problem);
                }
            }
        }
    }

    /// The pending command, if it is of `kind`.
    fn take(&mut self, kind: CommandKind) -> Option<Command> {
        if self.command.as_ref().is_some_and(|c| c.kind == kind) {
            self.command.take()
        } else {
            None
        }
    }

    fn acknowledge(&mut self, command: &Command, outcome: &str) {
        self.status.last_command = Some(AcknowledgedCommand {
            command: command.kind.as_str().to_owned(),
            nonce: command.nonce.clone(),
            outcome: Some(outcome.to_owned()),
            at: Some(self.now.clone()),
        });
        self.event(
            EventType::Normal,
            reason::COMMAND_ACKNOWLEDGED,
            format!("{}: {outcome}", command.kind),
        );
    }

    fn condition(&mut self, kind: &str, status: ConditionStatus, reason: &str, message: String) {
        conditions::set(
            &mut self.status.conditions,
            kind,
            status,
            reason,
            message,
            &self.now,
            self.snap.generation,
        );
    }

    fn event(&mut self, kind: EventType, reason: &'static str, note: String) {
        self.events.push(Event { kind, reason, note });
    }

    fn since(&self, then: &Time) -> Duration {
        until(then.0, self.snap.now)
    }

    fn wake_in(&mut self, after: Duration) {
        self.wake = self.wake.min(after.max(Duration::from_secs(1)));
    }
}

/// Step `step` (from 1); weight 0 for a step the spec does not have, which only a
/// spec that breaks the schema's promises can ask for (and it is refused).
fn stage(spec: &CanarySpec, step: i32) -> Stage<'_> {
    usize::try_from(step - 1)
        .ok()
        .and_then(|index| spec.stages().nth(index))
        .unwrap_or(Stage::Weight(Weight::ZERO))
}

fn steps(spec: &CanarySpec) -> i32 {
    i32::try_from(spec.stages().count()).unwrap_or(i32::MAX)
}

/// What the canary receives at a step, beside its weight.
fn exposure(stage: Stage<'_>) -> Option<Exposure> {
    match stage {
        Stage::Weight(_) => None,
        Stage::Mirror(_) => Some(Exposure::Mirror),
        Stage::Experiment(_) => Some(Exposure::Experiment),
    }
}

/// A step's traffic, for people: "at 10%", "mirroring 20% of stable's requests".
fn describe(stage: Stage<'_>) -> String {
    match stage {
        Stage::Weight(weight) => format!("at {weight}%"),
        Stage::Mirror(mirror) => format!("mirroring {}% of stable's requests", mirror.percent),
        Stage::Experiment(_) => "sending the requests matching spec.experiment".to_owned(),
    }
}

fn duration(value: SpecDuration) -> Duration {
    Duration::from(value)
}

/// Time from `from` to `to`, zero when `to` is earlier.
fn until(from: Timestamp, to: Timestamp) -> Duration {
    Duration::try_from(to.duration_since(from)).unwrap_or_default()
}

/// The workload's selector in the string form the scale subresource reports.
fn selector_string(spec: &CanarySpec) -> String {
    spec.selector
        .match_labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

//! The names every part of Serin and its users agree on: labels, annotations, the
//! field manager, condition types and reasons, command names, and how the objects
//! Serin owns are named. Defined once here and used by the controller, the
//! routers, the plugin and the tests.

use std::fmt;

/// Label on every ReplicaSet and pod Serin creates: the revision (template hash) it runs.
pub const REVISION_LABEL: &str = "serin.dev/revision";

/// Label on everything Serin creates for a Canary: the Canary's name.
pub const CANARY_LABEL: &str = "serin.dev/canary";

/// Annotation on a ReplicaSet that no longer serves: when Serin scales it to zero.
pub const SCALE_DOWN_AT_ANNOTATION: &str = "serin.dev/scale-down-at";

/// Annotation a person sets to run a one-shot command: `<command>/<nonce>`, for
/// example `promote/7f3a`. Status acknowledges the nonce so it runs exactly once.
pub const COMMAND_ANNOTATION: &str = "serin.dev/command";

/// Annotation on a route: the rules (Istio: HTTP routes) Serin added to it for an
/// experiment, as a JSON list, so it removes exactly those when the experiment ends
/// and never a rule someone else wrote.
pub const EXPERIMENT_ANNOTATION: &str = "serin.dev/experiment-rules";

/// Field manager of every server-side apply Serin makes, so its fields are its own.
pub const FIELD_MANAGER: &str = "serin";

/// The finalizer of a Canary that adopted a Deployment: the Canary goes only once
/// the Deployment is back at full size.
pub const ADOPTION_FINALIZER: &str = "serin.dev/adoption";

/// `reportingController` of Serin's Events.
pub const REPORTING_CONTROLLER: &str = "serin.dev/controller";

/// `<name>-stable`: the Service that selects the stable revision only.
pub fn stable_service(canary: &str) -> String {
    format!("{canary}-stable")
}

/// `<name>-canary`: the Service that selects the canary revision only.
pub fn canary_service(canary: &str) -> String {
    format!("{canary}-canary")
}

/// `<name>-<revision>`: the ReplicaSet of one revision.
pub fn replica_set_name(canary: &str, revision: &str) -> String {
    format!("{canary}-{revision}")
}

/// Condition types in `status.conditions`.
pub mod condition {
    /// The revision serving as stable has all its pods available.
    pub const AVAILABLE: &str = "Available";
    /// A rollout is under way; the reason says at what point.
    pub const PROGRESSING: &str = "Progressing";
    /// The template in spec is the one fully serving (`kubectl wait --for=condition=Promoted`).
    pub const PROMOTED: &str = "Promoted";
    /// The spec is wrong in a way only the controller can see.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// kstatus' summary: the spec's template fully serves on available pods
    /// (`kubectl wait --for=condition=Ready`, Flux `wait: true`, Argo CD health).
    pub const READY: &str = "Ready";
    /// kstatus' "work under way": True while a rollout or the first revision is in
    /// progress, so GitOps tools wait instead of calling the Canary done.
    pub const RECONCILING: &str = "Reconciling";
    /// kstatus' "will not get there on its own": True after a rollback and while the
    /// spec is invalid, so GitOps tools fail fast instead of waiting for a timeout.
    pub const STALLED: &str = "Stalled";
}

/// Reasons of conditions and Events, as `kubectl get events` and the docs show them.
pub mod reason {
    /// The spec cannot be acted on; the message names the field.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The spec has no problem the controller can see.
    pub const VALID: &str = "Valid";
    /// The first revision ever is being brought up.
    pub const INITIALIZING: &str = "Initializing";
    /// The stable revision has all its pods available.
    pub const HEALTHY: &str = "Healthy";
    /// Pods are not available yet.
    pub const WAITING_FOR_PODS: &str = "WaitingForPods";
    /// Canary pods are not available and say why (crash loop, missing image,
    /// failing readiness probe): no traffic goes to them, and the progress deadline
    /// rolls the rollout back unless they recover.
    pub const CANARY_PODS_FAILING: &str = "CanaryPodsFailing";
    /// Stable has every pod it should.
    pub const STABLE_AVAILABLE: &str = "StableAvailable";
    /// Stable lacks pods.
    pub const STABLE_UNAVAILABLE: &str = "StableUnavailable";
    /// A rollout of a new revision began.
    pub const ROLLOUT_STARTED: &str = "RolloutStarted";
    /// The template changed during a rollout; it starts over.
    pub const ROLLOUT_RESTARTED: &str = "RolloutRestarted";
    /// The revision in spec is being rolled out (Promoted is False meanwhile).
    pub const ROLLOUT_IN_PROGRESS: &str = "RolloutInProgress";
    /// The template was set back to stable's; the rollout is dropped.
    pub const STABLE_RESTORED: &str = "StableRestored";
    /// A step is running.
    pub const STEP_IN_PROGRESS: &str = "StepInProgress";
    /// A step passed and the next began.
    pub const STEP_ADVANCED: &str = "StepAdvanced";
    /// The analysis has too little data to judge; the step holds.
    pub const INCONCLUSIVE: &str = "Inconclusive";
    /// `spec.paused` holds the rollout.
    pub const PAUSED: &str = "Paused";
    /// `spec.paused` was cleared.
    pub const RESUMED: &str = "Resumed";
    /// The canary is scaled to full size before it becomes stable.
    pub const PROMOTING: &str = "Promoting";
    /// The canary became stable.
    pub const PROMOTED: &str = "Promoted";
    /// A person aborted the rollout.
    pub const ABORTED_BY_USER: &str = "AbortedByUser";
    /// The analysis failed the canary.
    pub const ANALYSIS_FAILED: &str = "AnalysisFailed";
    /// A step did not finish by `progressDeadline`.
    pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
    /// An aborted rollout runs again from step 1.
    pub const RETRIED: &str = "Retried";
    /// A command was carried out or found not applicable.
    pub const COMMAND_ACKNOWLEDGED: &str = "CommandAcknowledged";
    /// The command annotation could not be read.
    pub const INVALID_COMMAND: &str = "InvalidCommand";
    /// A check gate holds the rollout until it passes (an answer 2xx, or a
    /// person's approval).
    pub const GATE_WAITING: &str = "GateWaiting";
    /// A check gate passed; the rollout goes on.
    pub const GATE_PASSED: &str = "GatePassed";
    /// A check gate with `onFailure: Abort` refused: the canary was rolled back.
    pub const GATE_FAILED: &str = "GateFailed";
    /// A hook gate was called and answered 2xx.
    pub const HOOK_CALLED: &str = "HookCalled";
    /// A hook gate answered otherwise or not at all, or its call was under way when
    /// the controller restarted (not called again); the rollout goes on.
    pub const HOOK_FAILED: &str = "HookFailed";
    /// A notification could not be delivered (the sink answered an error or
    /// nothing), or was dropped because the sink had too many in a minute.
    pub const NOTIFICATION_FAILED: &str = "NotificationFailed";
    /// The Canary was deleted and the Deployment it adopted is back at full size
    /// (Normal), or was given back though its pods did not all become available
    /// within the progress deadline (Warning).
    pub const DEPLOYMENT_RELEASED: &str = "DeploymentReleased";

    /// Every reason of a transition the state machine reports as an Event, which a
    /// notification sink may ask for (`spec.notifications[].reasons`).
    pub const TRANSITIONS: [&str; 23] = [
        INVALID_SPEC,
        INITIALIZING,
        HEALTHY,
        CANARY_PODS_FAILING,
        ROLLOUT_STARTED,
        ROLLOUT_RESTARTED,
        STABLE_RESTORED,
        STEP_ADVANCED,
        PAUSED,
        RESUMED,
        PROMOTING,
        PROMOTED,
        ABORTED_BY_USER,
        ANALYSIS_FAILED,
        PROGRESS_DEADLINE_EXCEEDED,
        RETRIED,
        COMMAND_ACKNOWLEDGED,
        INVALID_COMMAND,
        GATE_WAITING,
        GATE_PASSED,
        GATE_FAILED,
        HOOK_CALLED,
        HOOK_FAILED,
    ];
}

/// The one-shot commands of [`COMMAND_ANNOTATION`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandKind {
    /// Finish the current step now, skipping its remaining time and analysis.
    Promote,
    /// Skip every remaining step and promote the canary now.
    PromoteFull,
    /// Roll the canary back now.
    Abort,
    /// Run an aborted rollout again from its first step.
    Retry,
    /// Pass the check gate without a URL that the rollout waits at.
    Approve,
}

impl CommandKind {
    /// Every command, in the order the docs list them.
    pub const ALL: [Self; 5] = [
        Self::Promote,
        Self::PromoteFull,
        Self::Abort,
        Self::Retry,
        Self::Approve,
    ];

    /// The command's name in the annotation.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Promote => "promote",
            Self::PromoteFull => "promote-full",
            Self::Abort => "abort",
            Self::Retry => "retry",
            Self::Approve => "approve",
        }
    }

    /// The command of that name, if there is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

impl fmt::Display for CommandKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

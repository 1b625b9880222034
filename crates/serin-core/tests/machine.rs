//! The state machine, phase by phase and event by event, against a small model of
//! the cluster: ReplicaSets that the plans scale, and whose pods become available
//! when the test says so.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serin_api::{
    Canary, CanarySpec, CanaryStatus, Exposure, GateState, GateStatus, GateType, MetricStatus,
    NotificationFormat, Phase, ScaleDown, Stage, Verdict, Weight,
};
use serin_core::conditions;
use serin_core::gate::{self, GateAnswer, GateOutcome};
use serin_core::machine::{
    Action, AdoptedWorkload, Event, EventType, ObservedReplicaSet, Plan, Routing, Snapshot,
    StepVerdict, plan,
};
use serin_core::notification::{self, Notice};

const STABLE: &str = "aaaaaaaaaa";
const CANARY: &str = "bbbbbbbbbb";
const THIRD: &str = "cccccccccc";

fn pct(percent: u32) -> Weight {
    Weight::from_percent(percent)
}

fn spec(yaml_extra: &str) -> CanarySpec {
    let yaml = format!(
        "apiVersion: serin.dev/v1alpha1
kind: Canary
metadata: {{name: web}}
spec:
  replicas: 4
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec: {{containers: [{{name: web, image: 'web:1'}}]}}
  steps: [25, 50]
  stepDuration: 1m
  progressDeadline: 5m
  scaleDownDelay: 30s
{yaml_extra}"
    );
    let canary: Canary = serde_norway::from_str(&yaml).unwrap_or_else(|e| panic!("{e}"));
    canary.spec
}

/// The cluster as the state machine sees it, and a clock.
#[derive(Clone)]
struct World {
    spec: CanarySpec,
    generation: i64,
    status: CanaryStatus,
    revision: String,
    replica_sets: Vec<ObservedReplicaSet>,
    command: Option<String>,
    analysis: Option<StepVerdict>,
    /// How soon the shell says the analysis looks again.
    next_look: Option<Duration>,
    invalid: Option<String>,
    now: Timestamp,
    /// Pods become available as soon as they are asked for.
    instant_pods: bool,
    /// What pods that are not available say about why (a crash loop, say).
    pods_failing: Option<String>,
    /// Every Route action applied, in order.
    routes: Vec<Routing>,
    /// Events of the last `reconcile`.
    events: Vec<&'static str>,
    /// The same Events whole, as the shell notifies them.
    last_events: Vec<Event>,
    /// What the last plan asked to wait for.
    last_wait: Duration,
    /// When each revision last stopped serving (neither stable nor an active canary).
    left_use: std::collections::HashMap<String, Timestamp>,
    /// What a check with a URL answers: 2xx (true), a refusal (false), nothing (None).
    check_reply: Option<bool>,
    /// Whether a hook answers 2xx.
    hook_reply: bool,
    /// Hook calls this controller process has under way, by call key.
    in_flight: std::collections::BTreeSet<String>,
    /// Every hook call ever made, by call key and rollout, across restarts (a
    /// rollout of the same revision again in the same second has the same key).
    hooks_called: Vec<String>,
    /// Rollouts started so far (started, restarted, retried).
    rollouts: usize,
    /// The shell tells nothing new (a plan made again at the same moment).
    quiet: bool,
    /// The Deployment the Canary adopted, if it adopts one.
    adopted: Option<AdoptedWorkload>,
}

impl World {
    fn new(spec: CanarySpec) -> Self {
        Self {
            spec,
            generation: 1,
            status: CanaryStatus::default(),
            revision: STABLE.into(),
            replica_sets: Vec::new(),
            command: None,
            analysis: None,
            next_look: None,
            invalid: None,
            now: Timestamp::from_second(1_800_000_000).unwrap_or_else(|e| panic!("{e}")),
            instant_pods: true,
            pods_failing: None,
            routes: Vec::new(),
            events: Vec::new(),
            last_events: Vec::new(),
            last_wait: Duration::ZERO,
            left_use: std::collections::HashMap::new(),
            check_reply: Some(true),
            hook_reply: true,
            in_flight: std::collections::BTreeSet::new(),
            hooks_called: Vec::new(),
            rollouts: 0,
            quiet: false,
            adopted: None,
        }
    }

    /// A world where the first revision is already Healthy.
    fn healthy(spec: CanarySpec) -> Self {
        let mut world = Self::new(spec);
        world.reconcile();
        assert_eq!(world.phase(), Phase::Healthy);
        world
    }

    /// One reconcile, then more while the plan changed the ReplicaSets: the
    /// controller's watch on them triggers those.
    /// Returns the first plan, the answer to what the test changed.
    fn reconcile(&mut self) -> Plan {
        self.events.clear();
        self.last_events.clear();
        let mut first = None;
        for _ in 0..5 {
            let before = self.replica_sets.clone();
            let plan = self.reconcile_once();
            self.events
                .extend(plan.events.iter().map(|event| event.reason));
            self.last_events.extend(plan.events.iter().cloned());
            first.get_or_insert(plan);
            if self.replica_sets == before {
                break;
            }
        }
        first.unwrap_or_else(|| unreachable!())
    }

    fn reconcile_once(&mut self) -> Plan {
        // The shell reads why pods fail only for a ReplicaSet short of pods.
        let replica_sets = self
            .replica_sets
            .iter()
            .map(|rs| ObservedReplicaSet {
                pods_failing: (rs.available < rs.replicas)
                    .then(|| self.pods_failing.clone())
                    .flatten(),
                ..rs.clone()
            })
            .collect();
        let gate_answers = self.gate_answers();
        let snapshot = Snapshot {
            spec: &self.spec,
            generation: self.generation,
            status: self.status.clone(),
            command: self.command.clone(),
            revision: self.revision.clone(),
            replica_sets,
            invalid: self.invalid.clone(),
            analysis: self.analysis.clone(),
            next_look: self.next_look,
            gate_answers,
            adopted: self.adopted,
            now: self.now,
        };
        let plan = plan(&snapshot);
        // Stable's pods as the plan saw them: an adopted Deployment goes down only as
        // far as they cover.
        let covered = plan
            .status
            .stable_revision
            .as_ref()
            .map_or(0, |stable| self.available(stable));
        let invalid = self.invalid.is_some();
        self.rollouts += plan
            .events
            .iter()
            .filter(|e| matches!(e.reason, "RolloutStarted" | "RolloutRestarted" | "Retried"))
            .count();
        // The shell calls the hooks the plan set calling once its status is stored.
        for record in gate::hooks_to_call(&self.status, &plan.status) {
            let key = gate::call_key("shop", "web", record);
            self.hooks_called.push(format!("{key}#{}", self.rollouts));
            self.in_flight.insert(key);
        }
        let serving_before = serving(&self.status);
        let serving_after = serving(&plan.status);
        for revision in serving_before.difference(&serving_after) {
            self.left_use.insert(revision.clone(), self.now);
        }
        for action in &plan.actions {
            if let Action::Scale {
                revision,
                replicas: 0,
            } = action
                && self.replicas(revision) > 0
            {
                self.assert_drained_after_delay(revision, &serving_after);
            }
            if let Action::ScaleAdopted { replicas } = action {
                self.assert_adopted_scaled_down(*replicas, covered, invalid);
            }
            self.apply(action);
        }
        self.status = plan.status.clone();
        self.last_wait = plan.requeue_after;
        plan
    }

    /// What the shell learns of the gates this reconcile: the checks due asked, the
    /// hooks under way for a second answered, and a hook found calling that this
    /// process did not call (it restarted) lost.
    fn gate_answers(&mut self) -> Vec<GateAnswer> {
        if self.quiet {
            return Vec::new();
        }
        let answer = |record: &GateStatus, outcome| GateAnswer {
            name: record.name.clone(),
            revision: record.revision.clone(),
            step: record.step,
            outcome,
        };
        let mut answers: Vec<GateAnswer> = gate::checks_due(&self.spec, &self.status, self.now)
            .into_iter()
            .map(|record| {
                let outcome = match self.check_reply {
                    Some(true) => GateOutcome::Passed("answered 200 OK".into()),
                    Some(false) => GateOutcome::Refused("answered 503".into()),
                    None => GateOutcome::Refused("no answer within 10s".into()),
                };
                answer(record, outcome)
            })
            .collect();
        for record in self
            .status
            .gates
            .iter()
            .filter(|r| r.state == GateState::Calling)
        {
            let key = gate::call_key("shop", "web", record);
            if !self.in_flight.contains(&key) {
                answers.push(answer(record, GateOutcome::Lost));
            } else if self.now > record.since.0 {
                self.in_flight.remove(&key);
                let outcome = if self.hook_reply {
                    GateOutcome::Passed("answered 200 OK".into())
                } else {
                    GateOutcome::Refused("answered 500".into())
                };
                answers.push(answer(record, outcome));
            }
        }
        answers
    }

    /// Reconciles until the plan asks to wait, as the controller's requeues would.
    fn settle(&mut self) {
        for _ in 0..20 {
            self.reconcile();
            if self.last_wait > Duration::ZERO {
                return;
            }
        }
        panic!("the state machine did not settle");
    }

    /// Applies an action as the reconciler does: what it changes on a ReplicaSet
    /// comes from `Action::apply_to`, the one definition both use. Pods follow the
    /// replica count at once only while `instant_pods` holds.
    fn apply(&mut self, action: &Action) {
        match action {
            Action::Scale { revision, replicas } => {
                match self
                    .replica_sets
                    .iter_mut()
                    .find(|rs| &rs.revision == revision)
                {
                    Some(rs) => {
                        action.apply_to(rs);
                        rs.available = if self.instant_pods {
                            rs.replicas
                        } else {
                            rs.available.min(rs.replicas)
                        };
                    }
                    None => {
                        assert_eq!(
                            revision, &self.revision,
                            "only the spec's revision can be created"
                        );
                        self.replica_sets.push(ObservedReplicaSet {
                            revision: revision.clone(),
                            replicas: *replicas,
                            available: if self.instant_pods { *replicas } else { 0 },
                            created: self.now,
                            scale_down_at: None,
                            pods_failing: None,
                        });
                    }
                }
            }
            Action::Route(routing) => {
                // The weight is a step's, exactly, when a router carries it (a
                // fraction of a percent included); pods carry whole percents.
                let carried = if self.spec.traffic.is_some() {
                    self.spec.steps.contains(&routing.weight)
                } else {
                    routing.weight.whole_percent().is_some()
                };
                assert!(
                    routing.weight.is_zero() || carried,
                    "weight {}% is not what the router can carry for steps {:?}",
                    routing.weight,
                    self.spec.steps
                );
                if !routing.weight.is_zero() {
                    let canary = routing
                        .canary
                        .as_deref()
                        .unwrap_or_else(|| panic!("weight without a canary"));
                    assert!(
                        self.available(canary) > 0,
                        "weight {}% on {canary} with no available pod",
                        routing.weight
                    );
                }
                if let Some(exposure) = routing.exposure {
                    // Mirrored or matching requests go to an available canary, and
                    // never beside a weight.
                    let canary = routing
                        .canary
                        .as_deref()
                        .unwrap_or_else(|| panic!("{exposure:?} without a canary"));
                    assert!(
                        self.available(canary) > 0,
                        "{exposure:?} on {canary} with no available pod"
                    );
                    assert!(routing.weight.is_zero(), "{exposure:?} beside a weight");
                    let asked = match exposure {
                        Exposure::Mirror => self.spec.mirror.is_some(),
                        Exposure::Experiment => self.spec.experiment.is_some(),
                    };
                    assert!(asked, "{exposure:?} the spec does not ask for");
                }
                assert!(
                    self.available(&routing.stable) > 0
                        || self.routes.is_empty()
                        || !self.instant_pods,
                    "traffic on stable {} with no available pod",
                    routing.stable
                );
                self.routes.push(routing.clone());
            }
            Action::ScaleDownAt { .. } => self
                .replica_sets
                .iter_mut()
                .for_each(|rs| action.apply_to(rs)),
            Action::Delete { revision } => self.replica_sets.retain(|rs| &rs.revision != revision),
            Action::ScaleAdopted { replicas } => {
                if let Some(adopted) = &mut self.adopted {
                    adopted.replicas = *replicas;
                    adopted.available = adopted.available.min(*replicas);
                }
            }
        }
    }

    /// A ReplicaSet that stopped serving keeps its pods for `scaleDownDelay`, so
    /// requests in flight through lagging proxies and gateways still find them.
    fn assert_drained_after_delay(
        &self,
        revision: &str,
        serving: &std::collections::BTreeSet<String>,
    ) {
        assert!(
            !serving.contains(revision),
            "{revision} scaled to zero while it serves"
        );
        let left = self
            .left_use
            .get(revision)
            .unwrap_or_else(|| panic!("{revision} scaled to zero but never served"));
        let delay = SignedDuration::try_from(Duration::from(self.spec.scale_down_delay))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            self.now >= *left + delay,
            "{revision} scaled to zero at {} though it stopped serving at {left}, within scaleDownDelay",
            self.now
        );
    }

    /// An adopted Deployment is only ever scaled down, never below what Serin's
    /// stable pods cover (`Progressively`), to zero only once they cover the
    /// replicas (`OnSuccess`), never at all (`Never`), and not behind an invalid spec.
    fn assert_adopted_scaled_down(&self, replicas: i32, covered: i32, invalid: bool) {
        let adopted = self
            .adopted
            .unwrap_or_else(|| panic!("scaled a Deployment the Canary did not adopt"));
        assert!(!invalid, "scaled the Deployment behind an invalid spec");
        assert!(
            replicas < adopted.replicas,
            "scaled the Deployment from {} up to {replicas}",
            adopted.replicas
        );
        let wanted = self.spec.replicas;
        match adopted.scale_down {
            ScaleDown::Never => panic!("scaled a Deployment with scaleDown: Never"),
            ScaleDown::Progressively => assert!(
                replicas >= wanted - covered,
                "the Deployment down to {replicas} with {covered} of {wanted} stable pods available"
            ),
            ScaleDown::OnSuccess => assert!(
                replicas == 0 && covered >= wanted,
                "the Deployment down to {replicas} with {covered} of {wanted} stable pods available"
            ),
        }
    }

    fn available(&self, revision: &str) -> i32 {
        self.replica_sets
            .iter()
            .find(|rs| rs.revision == revision)
            .map_or(0, |rs| rs.available)
    }

    fn replicas(&self, revision: &str) -> i32 {
        self.replica_sets
            .iter()
            .find(|rs| rs.revision == revision)
            .map_or(0, |rs| rs.replicas)
    }

    fn make_available(&mut self, revision: &str) {
        for rs in self
            .replica_sets
            .iter_mut()
            .filter(|rs| rs.revision == revision)
        {
            rs.available = rs.replicas;
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += SignedDuration::try_from(by).unwrap_or_else(|e| panic!("{e}"));
    }

    fn new_template(&mut self, revision: &str) {
        self.revision = revision.into();
        self.generation += 1;
    }

    fn phase(&self) -> Phase {
        self.status.phase.unwrap_or_else(|| panic!("no phase"))
    }

    fn weight(&self) -> Weight {
        self.routes
            .last()
            .map_or(Weight::ZERO, |route| route.weight)
    }

    fn reason(&self, kind: &str) -> String {
        self.status
            .conditions
            .iter()
            .find(|c| c.type_ == kind)
            .map(|c| c.reason.clone())
            .unwrap_or_default()
    }

    fn message(&self, kind: &str) -> String {
        self.status
            .conditions
            .iter()
            .find(|c| c.type_ == kind)
            .map(|c| c.message.clone())
            .unwrap_or_default()
    }

    fn events(&self) -> Vec<&'static str> {
        self.events.clone()
    }

    fn promoted(&self) -> bool {
        conditions::is_true(&self.status.conditions, conditions::PROMOTED)
    }
}

#[test]
fn first_apply_runs_one_replica_set_and_becomes_healthy_and_promoted() {
    let mut world = World::new(spec(""));
    world.instant_pods = false;
    world.reconcile();
    assert_eq!(world.phase(), Phase::Initializing);
    assert_eq!(world.replicas(STABLE), 4);
    assert!(!world.promoted());
    assert_eq!(world.status.stable_revision.as_deref(), Some(STABLE));

    world.make_available(STABLE);
    world.reconcile();
    assert_eq!(world.phase(), Phase::Healthy);
    assert!(world.promoted());
    assert_eq!(world.weight(), Weight::ZERO);
    assert!(world.events().contains(&"Healthy"));
    assert_eq!(world.status.observed_generation, Some(1));
    assert_eq!(world.status.selector.as_deref(), Some("app=web"));
}

#[test]
fn a_new_revision_walks_every_step_then_is_promoted_and_the_old_one_retires() {
    let mut world = World::healthy(spec(""));
    world.new_template(CANARY);
    world.reconcile();
    assert_eq!(world.phase(), Phase::Progressing);
    assert_eq!(world.status.step, 1);
    assert_eq!(world.status.canary_revision.as_deref(), Some(CANARY));
    assert!(!world.promoted());
    // No router: the pods carry the weight, 25% of 4 is one canary pod.
    assert_eq!((world.replicas(STABLE), world.replicas(CANARY)), (3, 1));
    assert_eq!(world.weight(), pct(25));

    world.advance(Duration::from_secs(59));
    world.reconcile();
    assert_eq!(world.status.step, 1, "a step lasts stepDuration");

    world.advance(Duration::from_secs(1));
    world.settle();
    assert_eq!(world.status.step, 2);
    assert_eq!((world.replicas(STABLE), world.replicas(CANARY)), (2, 2));
    assert_eq!(world.weight(), pct(50));

    world.advance(Duration::from_secs(60));
    world.settle();
    assert_eq!(world.phase(), Phase::Healthy);
    assert!(world.promoted());
    assert_eq!(world.status.stable_revision.as_deref(), Some(CANARY));
    assert_eq!(world.status.canary_revision, None);
    assert_eq!(world.replicas(CANARY), 4);
    assert_eq!(world.routes.last().map(|r| r.stable.as_str()), Some(CANARY));

    // The old revision keeps its pods for scaleDownDelay, then scales to zero.
    assert!(world.replicas(STABLE) > 0);
    world.advance(Duration::from_secs(30));
    world.reconcile();
    assert_eq!(world.replicas(STABLE), 0);
}

fn gate(world: &World, name: &str) -> Option<(i32, GateState, String)> {
    world
        .status
        .gates
        .iter()
        .rev()
        .find(|r| r.name == name)
        .map(|r| (r.step, r.state, r.message.clone().unwrap_or_default()))
}

#[test]
fn checks_hold_each_step_until_they_pass_and_a_person_approves_the_promotion() {
    let mut world = World::healthy(spec(
        "  gates:
  - {name: pre, type: PreRollout, url: 'http://gates/pre'}
  - {name: smoke, type: BeforeStep, url: 'http://gates/smoke', steps: [2]}
  - {name: approval, type: ConfirmPromotion}
  - {name: load, type: LoadTest, url: 'http://load/start'}
  - {name: deployed, type: PostRollout, url: 'http://chat/deployed'}
",
    ));
    world.check_reply = Some(false);
    world.new_template(CANARY);
    world.reconcile();
    // The canary's pods run, but no traffic before the PreRollout check passes.
    assert_eq!((world.status.step, world.weight()), (1, Weight::ZERO));
    assert_eq!(world.reason(conditions::PROGRESSING), "GateWaiting");
    assert!(world.events().contains(&"GateWaiting"));
    world.advance(Duration::from_secs(1));
    world.reconcile();
    assert_eq!(
        gate(&world, "pre"),
        Some((1, GateState::Waiting, "answered 503".into()))
    );
    assert_eq!(
        world.message(conditions::PROGRESSING),
        "step 1: gate pre waiting: answered 503"
    );
    assert_eq!(world.weight(), Weight::ZERO);
    assert_eq!(
        world.last_wait,
        Duration::from_secs(10),
        "asked again in 10 s"
    );

    world.check_reply = Some(true);
    world.advance(Duration::from_secs(10));
    world.reconcile();
    assert_eq!(gate(&world, "pre").map(|g| g.1), Some(GateState::Passed));
    assert_eq!(
        world.weight(),
        pct(25),
        "the step's weight once the check passed"
    );
    assert!(world.events().contains(&"GatePassed"));
    // The load generator is called as the step's traffic begins, once.
    assert_eq!(gate(&world, "load").map(|g| g.1), Some(GateState::Calling));
    assert_eq!(world.hooks_called.len(), 1);

    // Step 2 waits for its smoke check at step 1, whose weight is still judged.
    world.check_reply = None;
    world.advance(Duration::from_secs(60));
    world.settle();
    assert_eq!((world.status.step, world.weight()), (1, pct(25)));
    assert!(world.status.analysis_started_at.is_some());
    world.analysis = Some(StepVerdict::Fail("errors 3x stable".into()));
    let mut failing = world.clone();
    failing.reconcile();
    assert_eq!(
        failing.phase(),
        Phase::Aborted,
        "a bad canary held at a gate is rolled back"
    );
    world.analysis = None;
    assert_eq!(gate(&world, "load").map(|g| g.1), Some(GateState::Called));
    world.advance(Duration::from_secs(1));
    world.reconcile();
    assert_eq!(
        gate(&world, "smoke").map(|g| g.2),
        Some("no answer within 10s".into())
    );
    world.check_reply = Some(true);
    world.advance(Duration::from_secs(10));
    world.settle();
    assert_eq!(world.weight(), pct(50));

    // After the last step, a person confirms: it waits however long.
    world.advance(Duration::from_secs(3600));
    world.settle();
    assert_eq!(world.phase(), Phase::Progressing);
    assert_eq!(
        world.message(conditions::PROGRESSING),
        "step 2: gate approval waiting for kubectl serin approve"
    );
    world.command = Some("approve/1".into());
    world.settle();
    assert!(world.promoted());
    assert_eq!(
        gate(&world, "approval").map(|g| g.2),
        Some("approved by a person".into())
    );
    // Promoted: the PostRollout hook is called, once.
    assert_eq!(
        gate(&world, "deployed").map(|g| g.1),
        Some(GateState::Calling)
    );
    world.advance(Duration::from_secs(1));
    world.settle();
    assert_eq!(
        gate(&world, "deployed").map(|g| g.1),
        Some(GateState::Called)
    );
    assert!(world.events().contains(&"HookCalled"));
    assert_eq!(
        world.hooks_called.len(),
        3,
        "load at steps 1 and 2, deployed once: {:?}",
        world.hooks_called
    );
}

#[test]
fn a_check_that_refuses_with_on_failure_abort_rolls_back_and_calls_the_rollback_hook_once() {
    let mut world = World::healthy(spec(
        "  gates:
  - {name: smoke, type: BeforeStep, url: 'http://gates/smoke', onFailure: Abort}
  - {name: rolled-back, type: OnRollback, url: 'http://chat/rollback'}
",
    ));
    world.check_reply = Some(false);
    world.new_template(CANARY);
    world.reconcile();
    world.advance(Duration::from_secs(1));
    world.reconcile();
    assert_eq!(world.phase(), Phase::Aborted);
    assert_eq!(world.reason(conditions::PROGRESSING), "GateFailed");
    assert!(
        world
            .message(conditions::PROGRESSING)
            .contains("aborted at step 1: gate smoke (BeforeStep, step 1) refused: answered 503")
    );
    assert_eq!(
        gate(&world, "rolled-back").map(|g| g.1),
        Some(GateState::Calling)
    );
    // The controller restarts while the hook is being called: it is not called
    // again, and said so.
    world.in_flight.clear();
    world.advance(Duration::from_secs(1));
    world.reconcile();
    assert_eq!(
        gate(&world, "rolled-back").map(|g| g.1),
        Some(GateState::Unconfirmed)
    );
    assert!(world.events().contains(&"HookFailed"));
    world.advance(Duration::from_secs(60));
    world.settle();
    assert_eq!(world.hooks_called.len(), 1);
}

#[test]
fn a_check_that_never_passes_rolls_back_at_the_progress_deadline() {
    let mut world = World::healthy(spec(
        "  gates: [{name: pre, type: PreRollout, url: 'http://gates/pre'}]\n",
    ));
    world.check_reply = None;
    world.new_template(CANARY);
    world.reconcile();
    for _ in 0..31 {
        world.advance(Duration::from_secs(10));
        world.reconcile();
    }
    assert_eq!(world.phase(), Phase::Aborted);
    assert_eq!(world.reason(conditions::PROGRESSING), "GateFailed");
    assert!(
        world
            .message(conditions::PROGRESSING)
            .contains("gate pre waiting: no answer within 10s, until the progress deadline")
    );
    assert_eq!(world.weight(), Weight::ZERO);
}

#[test]
fn with_a_router_stable_stays_full_and_the_canary_runs_its_share() {
    let mut world = World::healthy(spec(
        "  service: {port: 80}\n  traffic: {gatewayAPI: {httpRoutes: [web]}}\n",
    ));
    world.new_template(CANARY);
    world.reconcile();
    assert_eq!((world.replicas(STABLE), world.replicas(CANARY)), (4, 1));
    assert_eq!(world.weight(), pct(25));
    world.advance(Duration::from_secs(60));
    world.settle();
    assert_eq!((world.replicas(STABLE), world.replicas(CANARY)), (4, 2));
    assert_eq!(world.weight(), pct(50));
}

#[test]
fn a_split_by_weight_follows_the_replicas_an_hpa_sets_and_stable_shrinks_after_the_weight() {
    let mut world = World::healthy(spec(
        "  service: {port: 80}\n  traffic: {gatewayAPI: {httpRoutes: [web]}}\n  stableScale: Weighted\n",
    ));
    world.spec.replicas = 10;
    world.settle();
    world.new_template(CANARY);
    let first = world.reconcile();
    // Stable keeps its pods while the canary's start: no weight has moved yet.
    assert!(
        first
            .actions
            .iter()
            .any(|a| matches!(a, Action::Scale { revision, replicas: 10 } if revision == STABLE))
    );
    world.settle();
    assert_eq!(world.weight(), pct(25));
    assert_eq!((world.replicas(STABLE), world.replicas(CANARY)), (8, 3));
    // An HPA doubles the total: both sides grow with their share.
    world.spec.replicas = 20;
    world.generation += 1;
    world.settle();
    assert_eq!((world.replicas(STABLE), world.replicas(CANARY)), (15, 5));
    world.advance(Duration::from_secs(60));
    world.settle();
    assert_eq!(world.weight(), pct(50));
    assert_eq!((world.replicas(STABLE), world.replicas(CANARY)), (10, 10));
    // A rollback takes the traffic back at once and stable grows back to the total.
    world.command = Some("abort/1".into());
    world.reconcile();
    assert_eq!(world.weight(), Weight::ZERO);
    assert_eq!(world.replicas(STABLE), 20);
}

/// The exposure and weight of the last Route action.
fn traffic(world: &World) -> (Option<Exposure>, Weight) {
    world
        .routes
        .last()
        .map_or((None, Weight::ZERO), |r| (r.exposure, r.weight))
}

#[test]
fn mirroring_then_an_experiment_until_promoted_then_the_weights() {
    let mut world = World::healthy(spec(
        "  service: {port: 80}
  traffic: {gatewayAPI: {httpRoutes: [web]}}
  mirror: {percent: 50, duration: 30s}
  experiment: {match: [{headers: [{name: x-canary, value: 'yes'}]}]}
",
    ));
    world.new_template(CANARY);
    world.settle();
    // Step 1 mirrors half of stable's requests to a canary sized for that share.
    assert_eq!(world.status.step, 1);
    assert_eq!(traffic(&world), (Some(Exposure::Mirror), Weight::ZERO));
    assert_eq!((world.replicas(STABLE), world.replicas(CANARY)), (4, 2));
    assert!(
        world
            .message(conditions::PROGRESSING)
            .contains("step 1 of 4 mirroring 50% of stable's requests"),
        "{}",
        world.message(conditions::PROGRESSING)
    );
    // After mirror.duration, the experiment, with pods as for the first weighted step.
    world.advance(Duration::from_secs(30));
    world.settle();
    assert_eq!(world.status.step, 2);
    assert_eq!(traffic(&world), (Some(Exposure::Experiment), Weight::ZERO));
    assert_eq!(world.replicas(CANARY), 1);
    // With no duration it runs until promoted, past the progress deadline.
    world.advance(Duration::from_secs(3600));
    world.settle();
    assert_eq!((world.status.step, world.phase()), (2, Phase::Progressing));
    assert!(
        world
            .message(conditions::PROGRESSING)
            .contains("until promoted"),
        "{}",
        world.message(conditions::PROGRESSING)
    );
    world.command = Some("promote/1".into());
    world.settle();
    assert_eq!(world.status.step, 3);
    assert_eq!(traffic(&world), (None, pct(25)));
    // A rollback of a rollout that mirrored and matched leaves neither.
    world.command = Some("abort/2".into());
    world.settle();
    assert_eq!(world.phase(), Phase::Aborted);
    assert_eq!(traffic(&world), (None, Weight::ZERO));
    assert_eq!(world.status.exposure, None);
}

#[test]
fn an_abort_while_mirroring_stops_the_mirror() {
    let mut world = World::healthy(spec(
        "  service: {port: 80}
  traffic: {istio: {virtualService: web}}
  mirror: {percent: 10}
",
    ));
    world.new_template(CANARY);
    world.settle();
    assert_eq!(traffic(&world), (Some(Exposure::Mirror), Weight::ZERO));
    world.analysis = Some(StepVerdict::Fail("errors".into()));
    world.settle();
    assert_eq!(world.phase(), Phase::Aborted);
    assert_eq!(traffic(&world), (None, Weight::ZERO));
    assert!(
        world
            .message(conditions::PROMOTED)
            .contains("aborted at step 1")
    );
}

#[test]
fn no_weight_goes_to_the_canary_before_its_pods_are_available() {
    let mut world = World::healthy(spec(
        "  service: {port: 80}\n  traffic: {gatewayAPI: {httpRoutes: [web]}}\n",
    ));
    world.instant_pods = false;
    world.new_template(CANARY);
    world.reconcile();
    assert_eq!(world.weight(), Weight::ZERO);
    assert_eq!(world.reason(conditions::PROGRESSING), "WaitingForPods");
    world.advance(Duration::from_secs(120));
    world.reconcile();
    assert_eq!(
        world.weight(),
        Weight::ZERO,
        "waiting does not count as step time"
    );

    world.make_available(CANARY);
    world.reconcile();
    assert_eq!(world.weight(), pct(25));
    assert_eq!(world.status.step, 1);
    world.advance(Duration::from_secs(59));
    world.reconcile();
    assert_eq!(
        world.status.step, 1,
        "step time counts from the weight, not the step's start"
    );
}

#[test]
fn pods_that_never_become_available_abort_at_the_progress_deadline() {
    let mut world = World::healthy(spec(""));
    world.instant_pods = false;
    world.new_template(CANARY);
    world.reconcile();
    world.advance(Duration::from_secs(299));
    world.reconcile();
    assert_eq!(world.phase(), Phase::Progressing);
    world.advance(Duration::from_secs(1));
    world.reconcile();
    assert_eq!(world.phase(), Phase::Aborted);
    assert_eq!(
        world.reason(conditions::PROGRESSING),
        "ProgressDeadlineExceeded"
    );
    assert!(world.events().contains(&"ProgressDeadlineExceeded"));
    assert_eq!(world.weight(), Weight::ZERO);
}

#[test]
fn canary_pods_that_fail_say_why_once_and_roll_back_at_the_deadline() {
    let mut world = World::healthy(spec(""));
    world.instant_pods = false;
    world.new_template(CANARY);
    world.reconcile();
    assert_eq!(world.reason(conditions::PROGRESSING), "WaitingForPods");
    assert!(
        world.last_wait <= serin_core::machine::PODS_RECHECK,
        "pods are looked at again while the canary waits for them"
    );
    let why = "pod web-2-x: container app: CrashLoopBackOff (back-off 10s)";
    world.pods_failing = Some(why.into());
    world.advance(Duration::from_secs(10));
    world.reconcile();
    assert_eq!(world.reason(conditions::PROGRESSING), "CanaryPodsFailing");
    assert!(world.message(conditions::PROGRESSING).contains(why));
    assert_eq!(world.events(), ["CanaryPodsFailing"]);
    assert_eq!(
        world.weight(),
        Weight::ZERO,
        "no traffic to pods that are not available"
    );
    world.advance(Duration::from_secs(10));
    world.reconcile();
    assert!(world.events().is_empty(), "said once, not at every look");
    world.advance(Duration::from_secs(280));
    world.reconcile();
    assert_eq!(world.phase(), Phase::Aborted);
    assert_eq!(
        world.reason(conditions::PROGRESSING),
        "ProgressDeadlineExceeded"
    );
    assert!(
        world
            .message(conditions::PROGRESSING)
            .contains("CrashLoopBackOff"),
        "the rollback says why: {}",
        world.message(conditions::PROGRESSING)
    );
}

#[test]
fn a_failing_analysis_aborts_with_all_traffic_on_stable_before_the_canary_scales_down() {
    let mut world = World::healthy(spec(""));
    world.new_template(CANARY);
    world.reconcile();
    world.analysis = Some(StepVerdict::Fail(
        "errors: canary 4.1% vs stable 1.0%".into(),
    ));
    world.advance(Duration::from_secs(15));
    let plan = world.reconcile();
    assert_eq!(world.phase(), Phase::Aborted);
    let message = world
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::PROGRESSING)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(message.contains("canary 4.1%"), "{message}");
    assert!(
        plan.events
            .iter()
            .any(|e| e.kind == EventType::Warning && e.reason == "AnalysisFailed")
    );

    // Traffic goes back first; stable is full; the canary keeps its pods until the delay.
    let route = plan
        .actions
        .iter()
        .position(|a| matches!(a, Action::Route(r) if r.weight.is_zero() && r.canary.is_none()));
    let stable_full = plan
        .actions
        .iter()
        .position(|a| matches!(a, Action::Scale { revision, replicas: 4 } if revision == STABLE));
    assert!(stable_full.is_some() && route.is_some());
    assert!(world.replicas(CANARY) > 0);
    world.advance(Duration::from_secs(30));
    world.reconcile();
    assert_eq!(world.replicas(CANARY), 0);
    assert_eq!(world.phase(), Phase::Aborted, "aborted stays aborted");
}

/// Which of kstatus' three summary conditions are True, in the order Ready,
/// Reconciling, Stalled, with the reason they share.
fn summary(world: &World) -> ([bool; 3], String) {
    let truth = |kind| conditions::is_true(&world.status.conditions, kind);
    (
        [
            truth(conditions::READY),
            truth(conditions::RECONCILING),
            truth(conditions::STALLED),
        ],
        world.reason(conditions::READY),
    )
}

#[test]
fn kstatus_reads_reconciling_during_a_rollout_ready_after_promotion_stalled_after_a_rollback() {
    let mut world = World::new(spec(""));
    world.instant_pods = false;
    world.reconcile();
    assert_eq!(
        summary(&world),
        ([false, true, false], "WaitingForPods".into())
    );
    world.make_available(STABLE);
    world.instant_pods = true;
    world.reconcile();
    assert_eq!(summary(&world), ([true, false, false], "Healthy".into()));

    world.new_template(CANARY);
    world.reconcile();
    assert_eq!(
        world.reason(conditions::READY),
        world.reason(conditions::PROGRESSING)
    );
    assert_eq!(
        summary(&world).0,
        [false, true, false],
        "a rollout is work under way"
    );
    world.spec.paused = true;
    world.reconcile();
    assert_eq!(summary(&world), ([false, true, false], "Paused".into()));
    world.spec.paused = false;
    world.analysis = Some(StepVerdict::Fail(
        "errors: canary 4.1% vs stable 1.0%".into(),
    ));
    world.advance(Duration::from_secs(15));
    world.reconcile();
    assert_eq!(
        summary(&world),
        ([false, false, true], "AnalysisFailed".into())
    );
    assert!(world.message(conditions::STALLED).contains("canary 4.1%"));

    world.command = Some("retry/1".into());
    world.analysis = Some(StepVerdict::Pass);
    world.reconcile();
    assert_eq!(
        summary(&world).0,
        [false, true, false],
        "a retry is under way again"
    );
    for _ in 0..3 {
        world.advance(Duration::from_secs(60));
        world.settle();
    }
    assert_eq!(summary(&world), ([true, false, false], "Healthy".into()));
    for kind in [
        conditions::READY,
        conditions::RECONCILING,
        conditions::STALLED,
    ] {
        let condition = world.status.conditions.iter().find(|c| c.type_ == kind);
        assert_eq!(
            condition.and_then(|c| c.observed_generation),
            Some(world.generation)
        );
    }

    world.invalid = Some("HTTPRoute web not found".into());
    world.reconcile();
    assert_eq!(
        summary(&world),
        ([false, false, true], "InvalidSpec".into())
    );
    assert_eq!(
        world.message(conditions::STALLED),
        "HTTPRoute web not found"
    );
}

#[test]
fn inconclusive_analysis_holds_the_step_until_the_deadline() {
    let mut world = World::healthy(spec(""));
    world.new_template(CANARY);
    world.analysis = Some(StepVerdict::Inconclusive("no canary traffic".into()));
    world.reconcile();
    world.advance(Duration::from_secs(120));
    world.reconcile();
    assert_eq!(world.status.step, 1, "inconclusive is not a pass");
    assert_eq!(world.reason(conditions::PROGRESSING), "Inconclusive");
    world.advance(Duration::from_secs(180));
    world.reconcile();
    assert_eq!(world.phase(), Phase::Aborted);
    assert_eq!(
        world.reason(conditions::PROGRESSING),
        "ProgressDeadlineExceeded"
    );
}

#[test]
fn a_step_waits_for_its_first_analysis_however_long_its_time() {
    let mut world = World::healthy(spec(""));
    world.new_template(CANARY);
    world.analysis = Some(StepVerdict::Pending("first analysis in 5s".into()));
    world.reconcile();
    world.advance(Duration::from_secs(90));
    world.reconcile();
    assert_eq!(world.status.step, 1, "no analysis is not a pass");
    assert_eq!(world.reason(conditions::PROGRESSING), "StepInProgress");
    world.analysis = Some(StepVerdict::Pass);
    world.reconcile();
    assert_eq!(world.status.step, 2);
}

#[test]
fn analysis_survives_a_new_step_and_is_cleared_by_a_new_rollout_or_a_retry() {
    let mut world = World::healthy(spec(""));
    world.new_template(CANARY);
    world.analysis = Some(StepVerdict::Pass);
    world.reconcile();
    let metric = MetricStatus {
        name: "errors".into(),
        canary: Some(0.01),
        stable: Some(0.01),
        counts: None,
        evidence: Some(0.5),
        carried: vec![-0.1, -0.2],
        earlier: Vec::new(),
        ratio: None,
        failures: None,
        verdict: Verdict::Pass,
        since: world.status.analysis_started_at.clone(),
        at: None,
        message: None,
        dry_run: false,
    };
    world.status.analysis = vec![metric];
    world.advance(Duration::from_secs(60));
    world.reconcile();
    assert_eq!(world.status.step, 2);
    assert_eq!(
        world.status.analysis.len(),
        1,
        "evidence carries into step 2"
    );

    world.analysis = Some(StepVerdict::Fail("errors: worse".into()));
    world.reconcile();
    assert_eq!(world.phase(), Phase::Aborted);
    assert_eq!(
        world.status.analysis.len(),
        1,
        "the evidence of the abort stays"
    );
    world.command = Some("retry/1".into());
    world.analysis = Some(StepVerdict::Pending("first analysis in 15s".into()));
    world.reconcile();
    assert!(world.status.analysis.is_empty(), "a retry judges afresh");

    world.status.analysis = vec![MetricStatus {
        name: "errors".into(),
        canary: None,
        stable: None,
        counts: None,
        evidence: None,
        carried: Vec::new(),
        earlier: Vec::new(),
        ratio: None,
        failures: None,
        verdict: Verdict::Pass,
        since: None,
        at: None,
        message: None,
        dry_run: false,
    }];
    world.new_template(THIRD);
    world.reconcile();
    assert!(
        world.status.analysis.is_empty(),
        "a new revision judges afresh"
    );
}

#[test]
fn pause_holds_the_step_and_resume_continues_it() {
    let mut world = World::healthy(spec(""));
    world.new_template(CANARY);
    world.reconcile();
    world.spec.paused = true;
    world.advance(Duration::from_secs(600));
    world.reconcile();
    assert_eq!(world.phase(), Phase::Paused);
    assert_eq!(world.status.step, 1);
    assert_eq!(world.weight(), pct(25), "a paused step keeps its weight");
    assert_eq!(world.reason(conditions::PROGRESSING), "Paused");

    world.spec.paused = false;
    world.reconcile();
    assert_eq!(world.phase(), Phase::Progressing);
    assert!(world.events().contains(&"Resumed"));
    world.advance(Duration::from_secs(60));
    world.settle();
    assert_eq!(world.status.step, 2);
}

#[test]
fn commands_run_once_per_nonce_and_are_acknowledged() {
    let mut world = World::healthy(spec(""));
    world.new_template(CANARY);
    world.reconcile();

    world.command = Some("promote/1".into());
    world.settle();
    assert_eq!(world.status.step, 2, "promote finishes the current step");
    let ack = world
        .status
        .last_command
        .clone()
        .unwrap_or_else(|| panic!("no acknowledgement"));
    assert_eq!((ack.command.as_str(), ack.nonce.as_str()), ("promote", "1"));
    world.reconcile();
    assert_eq!(world.status.step, 2, "the same nonce does not run again");

    world.command = Some("abort/2".into());
    world.reconcile();
    assert_eq!(world.phase(), Phase::Aborted);
    assert_eq!(world.reason(conditions::PROGRESSING), "AbortedByUser");

    world.command = Some("retry/3".into());
    world.reconcile();
    assert_eq!(world.phase(), Phase::Progressing);
    assert_eq!(world.status.step, 1);

    world.command = Some("promote-full/4".into());
    world.settle();
    assert_eq!(world.phase(), Phase::Healthy);
    assert_eq!(world.status.stable_revision.as_deref(), Some(CANARY));
}

/// Makes `count` more of the stable revision's pods available.
fn start_stable_pods(world: &mut World, count: i32) {
    let stable = world.status.stable_revision.clone().unwrap_or_default();
    if let Some(rs) = world
        .replica_sets
        .iter_mut()
        .find(|rs| rs.revision == stable)
    {
        rs.available = (rs.available + count).min(rs.replicas);
    }
}

#[test]
fn an_adopted_deployment_goes_pod_for_pod_as_stable_takes_over_and_never_comes_back() {
    let mut world = World::new(spec(""));
    world.adopted = Some(AdoptedWorkload {
        replicas: 4,
        available: 4,
        scale_down: ScaleDown::Progressively,
    });
    world.instant_pods = false;
    world.reconcile();
    assert_eq!(world.replicas(STABLE), 4);
    let deployment = |world: &World| world.adopted.map(|a| a.replicas);
    assert_eq!(
        deployment(&world),
        Some(4),
        "nothing of it goes before a pod of stable"
    );
    for (started, left) in [(1, 3), (2, 1), (1, 0)] {
        start_stable_pods(&mut world, started);
        world.reconcile();
        assert_eq!(deployment(&world), Some(left));
    }
    assert_eq!(world.phase(), Phase::Healthy);
    // A rollout splits stable's pods: the Deployment stays at zero.
    world.new_template(CANARY);
    world.instant_pods = true;
    world.settle();
    assert_eq!(deployment(&world), Some(0));
}

#[test]
fn an_adopted_deployment_on_success_goes_at_once_when_stable_is_whole_and_never_is_left_alone() {
    for (scale_down, after) in [
        (ScaleDown::OnSuccess, [4, 4, 0]),
        (ScaleDown::Never, [4, 4, 4]),
    ] {
        let mut world = World::new(spec(""));
        world.adopted = Some(AdoptedWorkload {
            replicas: 4,
            available: 4,
            scale_down,
        });
        world.instant_pods = false;
        world.reconcile();
        let mut seen = Vec::new();
        for started in [1, 2, 1] {
            start_stable_pods(&mut world, started);
            world.reconcile();
            seen.push(world.adopted.map_or(-1, |a| a.replicas));
        }
        assert_eq!(seen, after, "{scale_down:?}");
    }
}

#[test]
fn a_promote_does_not_finish_a_step_whose_analysis_fails() {
    let mut world = World::healthy(spec(""));
    world.new_template(CANARY);
    world.reconcile();
    world.analysis = Some(StepVerdict::Fail("errors 4x stable".into()));
    world.command = Some("promote/1".into());
    world.reconcile();
    assert_eq!(world.phase(), Phase::Aborted);
    assert_eq!(world.reason(conditions::PROGRESSING), "AnalysisFailed");
    assert_eq!(
        world.status.last_command.and_then(|c| c.outcome),
        Some("not applicable while Aborted".into())
    );
}

#[test]
fn a_new_revision_mid_rollout_does_not_inherit_the_old_canarys_weight() {
    let mut world = World::healthy(spec(
        "  gates: [{name: pre, type: PreRollout, url: 'http://gates/pre'}]\n",
    ));
    world.check_reply = Some(true);
    world.new_template(CANARY);
    world.settle();
    world.advance(Duration::from_secs(1));
    world.settle();
    assert_eq!(world.weight(), pct(25));
    world.new_template(THIRD);
    world.settle();
    world.advance(Duration::from_secs(1));
    world.settle();
    assert_eq!(world.weight(), pct(25));
    // Back to a revision whose pods still run: its PreRollout check holds, and the
    // canary before it had 25%.
    world.check_reply = None;
    world.new_template(CANARY);
    world.reconcile();
    assert_eq!(world.reason(conditions::PROGRESSING), "GateWaiting");
    assert_eq!(
        world.weight(),
        Weight::ZERO,
        "no traffic before its check passed"
    );
}

#[test]
fn a_command_that_does_not_apply_is_acknowledged_without_effect() {
    let mut world = World::healthy(spec(""));
    world.command = Some("abort/9".into());
    world.reconcile();
    assert_eq!(world.phase(), Phase::Healthy);
    let ack = world
        .status
        .last_command
        .clone()
        .unwrap_or_else(|| panic!("no acknowledgement"));
    assert_eq!(ack.nonce, "9");
    assert!(ack.outcome.unwrap_or_default().contains("nothing to do"));
}

#[test]
fn an_invalid_command_is_reported_once() {
    let mut world = World::healthy(spec(""));
    world.command = Some("rollback/1".into());
    world.reconcile();
    assert!(world.events().contains(&"InvalidCommand"));
    world.reconcile();
    assert!(!world.events().contains(&"InvalidCommand"));
    assert_eq!(world.phase(), Phase::Healthy);
}

#[test]
fn a_new_revision_mid_rollout_starts_over_without_the_old_canary() {
    let mut world = World::healthy(spec(""));
    world.new_template(CANARY);
    world.reconcile();
    world.advance(Duration::from_secs(60));
    world.settle();
    assert_eq!(world.status.step, 2);

    world.new_template(THIRD);
    world.reconcile();
    assert_eq!(world.status.step, 1);
    assert_eq!(world.status.canary_revision.as_deref(), Some(THIRD));
    assert!(world.events().contains(&"RolloutRestarted"));
    assert_eq!(
        world.routes.last().and_then(|r| r.canary.as_deref()),
        Some(THIRD)
    );
    world.advance(Duration::from_secs(30));
    world.reconcile();
    assert_eq!(
        world.replicas(CANARY),
        0,
        "the dropped canary scales down after the delay"
    );
}

#[test]
fn restoring_the_stable_template_returns_to_healthy_at_once() {
    for abort_first in [false, true] {
        let mut world = World::healthy(spec(""));
        world.new_template(CANARY);
        world.reconcile();
        if abort_first {
            world.command = Some("abort/1".into());
            world.reconcile();
        }
        world.new_template(STABLE);
        world.reconcile();
        assert_eq!(world.phase(), Phase::Healthy);
        assert!(world.promoted());
        assert_eq!(world.status.canary_revision, None);
        assert_eq!(world.replicas(STABLE), 4);
        assert_eq!(world.weight(), Weight::ZERO);
    }
}

#[test]
fn a_restarted_controller_continues_the_same_rollout() {
    let mut world = World::healthy(spec(""));
    world.new_template(CANARY);
    world.reconcile();
    world.advance(Duration::from_secs(30));
    let before = world.reconcile();
    // A new controller has no memory: only the status and the cluster. Planning again
    // from them changes nothing and creates no second canary.
    let again = world.reconcile();
    assert_eq!(before.actions, again.actions);
    assert_eq!(world.replica_sets.len(), 2);
    world.advance(Duration::from_secs(30));
    world.settle();
    assert_eq!(world.status.step, 2);
}

#[test]
fn a_promotion_asked_for_behind_an_invalid_spec_runs_once_the_spec_is_valid() {
    let mut world = World::healthy(spec(""));
    world.new_template(CANARY);
    world.reconcile();
    world.invalid = Some("spec.analysis.metrics[0].query: unknown variable {{pod}}".into());
    world.analysis = Some(StepVerdict::Fail("errors".into()));
    world.command = Some("promote-full/1".into());
    world.reconcile();
    assert!(
        world.status.last_command.is_none(),
        "nothing runs on an invalid spec"
    );
    assert_eq!(world.phase(), Phase::Progressing);

    world.invalid = None;
    world.reconcile();
    assert_eq!(
        world.status.last_command.as_ref().map(|c| c.nonce.as_str()),
        Some("1")
    );
    assert!(
        world.promoted(),
        "a person's promote-full outranks the analysis"
    );
}

#[test]
fn an_invalid_spec_changes_nothing() {
    let mut world = World::healthy(spec(""));
    world.new_template(CANARY);
    world.invalid = Some("HTTPRoute web not found".into());
    let plan = world.reconcile();
    assert!(plan.actions.is_empty());
    assert!(conditions::is_true(
        &world.status.conditions,
        conditions::INVALID_SPEC
    ));
    assert_eq!(world.phase(), Phase::Healthy);
    assert_eq!(world.replicas(CANARY), 0);
    assert!(world.events().contains(&"InvalidSpec"));
    world.reconcile();
    assert!(
        !world.events().contains(&"InvalidSpec"),
        "the same problem is reported once"
    );

    world.invalid = None;
    world.reconcile();
    assert!(!conditions::is_true(
        &world.status.conditions,
        conditions::INVALID_SPEC
    ));
    assert_eq!(world.phase(), Phase::Progressing);
}

#[test]
fn old_replica_sets_are_pruned_to_the_history_limit() {
    let mut world = World::healthy(spec("  revisionHistoryLimit: 1\n"));
    for revision in [CANARY, THIRD, "dddddddddd"] {
        world.new_template(revision);
        world.command = Some(format!("promote-full/{revision}"));
        world.settle();
        world.advance(Duration::from_secs(31));
        world.reconcile();
        world.advance(Duration::from_secs(1));
        world.reconcile();
    }
    let idle: Vec<_> = world
        .replica_sets
        .iter()
        .filter(|rs| rs.replicas == 0)
        .collect();
    assert_eq!(idle.len(), 1, "{:?}", world.replica_sets);
    assert_eq!(world.replica_sets.len(), 2);
}

#[test]
fn scaling_the_canary_resource_resizes_the_stable_revision() {
    let mut world = World::healthy(spec(""));
    world.spec.replicas = 6;
    world.generation += 1;
    world.reconcile();
    assert_eq!(world.replicas(STABLE), 6);
    assert_eq!(world.status.observed_generation, Some(2));
}

#[test]
fn transition_times_change_only_with_the_condition() {
    let mut world = World::healthy(spec(""));
    let since = |world: &World| {
        world
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == conditions::PROMOTED)
            .map(|c| c.last_transition_time.clone())
    };
    let first = since(&world);
    world.advance(Duration::from_secs(10));
    world.reconcile();
    assert_eq!(since(&world), first);
    world.new_template(CANARY);
    world.reconcile();
    assert_ne!(since(&world), first);
}

/// The revisions that serve traffic by the status: stable, and the canary while a
/// rollout is active.
fn serving(status: &CanaryStatus) -> std::collections::BTreeSet<String> {
    let active = matches!(
        status.phase,
        Some(Phase::Progressing | Phase::Paused | Phase::Promoting)
    );
    status
        .stable_revision
        .iter()
        .chain(status.canary_revision.iter().filter(|_| active))
        .cloned()
        .collect()
}

#[test]
fn every_promotion_keeps_the_previous_stable_for_the_delay() {
    let mut world = World::healthy(spec(""));
    let revisions = [CANARY, THIRD, "dddddddddd", STABLE, CANARY];
    let mut previous = STABLE;
    for revision in revisions {
        world.new_template(revision);
        world.command = Some(format!("promote-full/{revision}-{}", world.generation));
        world.settle();
        assert!(world.promoted(), "{revision} promoted");
        assert!(
            world
                .replica_sets
                .iter()
                .filter(|rs| rs.revision == revision)
                .all(|rs| rs.scale_down_at.is_none()),
            "the new stable {revision} carries no scale-down mark"
        );
        // assert_drained_after_delay checks every reconcile; this checks the pods are
        // still there just before the delay ends, and gone after it.
        world.advance(Duration::from_secs(29));
        world.reconcile();
        assert_eq!(
            world.replicas(previous),
            4,
            "{previous} drains only after 30s"
        );
        world.advance(Duration::from_secs(1));
        world.reconcile();
        assert_eq!(world.replicas(previous), 0, "{previous} drained after 30s");
        world.advance(Duration::from_secs(600));
        world.reconcile();
        previous = revision;
    }
}

#[test]
fn a_revision_that_serves_again_loses_its_old_mark() {
    let mut world = World::healthy(spec(""));
    world.new_template(CANARY);
    world.reconcile();
    world.command = Some("abort/1".into());
    world.reconcile();
    assert!(
        world
            .replica_sets
            .iter()
            .any(|rs| rs.revision == CANARY && rs.scale_down_at.is_some())
    );
    world.command = Some("retry/2".into());
    world.reconcile();
    assert!(
        world
            .replica_sets
            .iter()
            .all(|rs| rs.scale_down_at.is_none()),
        "the retried canary serves again: {:?}",
        world.replica_sets
    );
    // Long after the old mark, a second abort still keeps the canary for the delay.
    world.advance(Duration::from_secs(600));
    world.reconcile();
    world.command = Some("abort/3".into());
    world.reconcile();
    assert!(
        world.replicas(CANARY) > 0,
        "the canary keeps its pods for the delay"
    );
}

mod random_walks {
    //! Every phase meets every event: random sequences of what can happen to a
    //! Canary, with the invariants checked after each reconcile.

    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Happening {
        Wait(u64),
        NewTemplate(usize),
        /// A new template whose first reconcile the shell puts off for some
        /// seconds (every start slot taken by a wave).
        StartPutOff(usize, u64),
        PodsStall,
        PodsFail(bool),
        PodsReady,
        Pause(bool),
        Command(&'static str),
        Analysis(Option<StepVerdict>),
        /// The analysis asks to look again this many seconds from now (None: at
        /// its interval).
        NextLook(Option<u64>),
        Invalid(bool),
        /// What a check with a URL answers from now on.
        CheckReply(Option<bool>),
        /// Whether hooks answer 2xx from now on.
        HookReply(bool),
        /// The controller restarts: the hook calls under way are forgotten.
        Restart,
        /// An HPA sets the Canary's replicas (the scale subresource).
        Resize(i32),
    }

    fn happening() -> impl Strategy<Value = Happening> {
        prop_oneof![
            (1..120u64).prop_map(Happening::Wait),
            (0..3usize).prop_map(Happening::NewTemplate),
            (0..3usize, 1..5u64)
                .prop_map(|(which, seconds)| Happening::StartPutOff(which, seconds)),
            Just(Happening::PodsStall),
            any::<bool>().prop_map(Happening::PodsFail),
            Just(Happening::PodsReady),
            any::<bool>().prop_map(Happening::Pause),
            prop_oneof![
                Just("promote"),
                Just("promote-full"),
                Just("abort"),
                Just("retry"),
                Just("approve"),
                Just("bogus")
            ]
            .prop_map(Happening::Command),
            prop_oneof![
                Just(None),
                Just(Some(StepVerdict::Pass)),
                Just(Some(StepVerdict::Fail("errors".into()))),
                Just(Some(StepVerdict::Inconclusive("no data".into()))),
                Just(Some(StepVerdict::Pending("first analysis in 5s".into()))),
            ]
            .prop_map(Happening::Analysis),
            prop::option::of(1..20u64).prop_map(Happening::NextLook),
            any::<bool>().prop_map(Happening::Invalid),
            prop::option::of(any::<bool>()).prop_map(Happening::CheckReply),
            any::<bool>().prop_map(Happening::HookReply),
            Just(Happening::Restart),
            (1..12i32).prop_map(Happening::Resize),
        ]
    }

    /// Every kind of gate: checks by URL (one that rolls back when refused) and by
    /// hand, and each hook.
    const GATES: &str = "  gates:
  - {name: pre, type: PreRollout, url: 'http://gates/pre'}
  - {name: smoke, type: BeforeStep, url: 'http://gates/smoke', steps: [2], onFailure: Abort}
  - {name: approval, type: ConfirmPromotion}
  - {name: load, type: LoadTest, url: 'http://load/start'}
  - {name: deployed, type: PostRollout, url: 'http://chat/deployed'}
  - {name: rolled-back, type: OnRollback, url: 'http://chat/rollback'}
";

    fn passed(world: &World, name: &str, step: i32, revision: &str) -> bool {
        world.status.gates.iter().any(|r| {
            r.name == name
                && r.step == step
                && r.revision == revision
                && r.state == GateState::Passed
        })
    }

    /// The gates' invariants after one reconcile.
    fn check_gates(
        world: &World,
        before: &(i32, Option<Phase>, Option<String>),
        gates_before: &[GateStatus],
        stable_before: Option<&str>,
        acknowledged: Option<&serin_api::AcknowledgedCommand>,
    ) -> Result<(), TestCaseError> {
        let status = &world.status;
        // A hook is called at most once, whatever restarts.
        let mut called = world.hooks_called.clone();
        called.sort();
        called.dedup();
        prop_assert_eq!(
            called.len(),
            world.hooks_called.len(),
            "a hook called twice: {:?}",
            world.hooks_called
        );
        let command = status
            .last_command
            .as_ref()
            .filter(|c| Some(*c) != acknowledged)
            .map(|c| c.command.as_str());
        // A step's own traffic goes to the canary only once its checks passed.
        if let (Some(canary), Some(_), Some(Phase::Progressing | Phase::Paused)) = (
            &status.canary_revision,
            &status.analysis_started_at,
            status.phase,
        ) && world.invalid.is_none()
        {
            let step = status.step;
            for gate in world.spec.gates.iter().filter(|g| {
                (g.r#type == GateType::BeforeStep && g.at_step(step))
                    || (g.r#type == GateType::PreRollout && step == 1)
            }) {
                prop_assert!(
                    passed(world, &gate.name, step, canary),
                    "step {step} traffic before gate {} passed: {:?}",
                    gate.name,
                    status.gates
                );
            }
        }
        // Promotion only once the ConfirmPromotion checks passed, unless a person
        // skipped to it (promote-full).
        let promoting = (status.phase == Some(Phase::Promoting)
            && before.1 != Some(Phase::Promoting))
            || (stable_before.is_some()
                && status.stable_revision.as_deref() != stable_before
                && before.1 != Some(Phase::Promoting));
        if promoting && command != Some("promote-full") {
            let target = before.2.clone().unwrap_or_default();
            let last = i32::try_from(world.spec.stages().count()).unwrap_or_default();
            for gate in world
                .spec
                .gates
                .iter()
                .filter(|g| g.r#type == GateType::ConfirmPromotion)
            {
                prop_assert!(
                    passed(world, &gate.name, last, &target),
                    "promoted before {} passed: {:?}",
                    gate.name,
                    status.gates
                );
            }
        }
        // A manual check passes only when a person approves it.
        let manual_passed = |gates: &[GateStatus]| {
            gates
                .iter()
                .filter(|r| {
                    r.state == GateState::Passed
                        && world
                            .spec
                            .gates
                            .iter()
                            .any(|g| g.name == r.name && g.is_manual())
                })
                .count()
        };
        if manual_passed(&status.gates) > manual_passed(gates_before) {
            prop_assert_eq!(
                command,
                Some("approve"),
                "a manual gate passed without approve"
            );
        }
        // A rollback calls the OnRollback hooks.
        if status.phase == Some(Phase::Aborted)
            && before.1 != Some(Phase::Aborted)
            && world.invalid.is_none()
        {
            let canary = status.canary_revision.clone().unwrap_or_default();
            for gate in world
                .spec
                .gates
                .iter()
                .filter(|g| g.r#type == GateType::OnRollback)
            {
                prop_assert!(
                    status
                        .gates
                        .iter()
                        .any(|r| r.name == gate.name && r.revision == canary),
                    "rolled back without calling {}",
                    gate.name
                );
            }
        }
        // A hook being called is looked at again within a second.
        if status.gates.iter().any(|r| r.state == GateState::Calling) && world.invalid.is_none() {
            prop_assert!(
                world.last_wait <= Duration::from_secs(1),
                "a hook's answer slept on for {:?}",
                world.last_wait
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        #[test]
        fn invariants_hold_whatever_happens(routed in any::<bool>(), staged in prop::option::of(any::<bool>()), gated in any::<bool>(), weighted in any::<bool>(), adopting in prop::option::of(prop_oneof![Just(ScaleDown::Progressively), Just(ScaleDown::OnSuccess), Just(ScaleDown::Never)]), happenings in prop::collection::vec(happening(), 1..40)) {
            let mut extra = match (routed, staged) {
                (false, _) => String::new(),
                (true, None) => "  service: {port: 80}\n  traffic: {gatewayAPI: {httpRoutes: [web]}}\n".to_owned(),
                // Mirroring, then an experiment for a time or until promoted.
                (true, Some(timed)) => format!(
                    "  service: {{port: 80}}\n  traffic: {{gatewayAPI: {{httpRoutes: [web]}}}}\n  mirror: {{percent: 20, duration: 45s}}\n  experiment: {{match: [{{headers: [{{name: x-canary, value: 'yes'}}]}}]{}}}\n",
                    if timed { ", duration: 90s" } else { "" }
                ),
            };
            if gated {
                extra.push_str(GATES);
            }
            if weighted {
                extra.push_str("  stableScale: Weighted\n");
            }
            // An adopting Canary starts beside its Deployment's 4 running pods, and
            // takes them over as the happenings let its own pods come.
            let mut world = match adopting {
                None => World::healthy(spec(&extra)),
                Some(scale_down) => {
                    let mut world = World::new(spec(&extra));
                    world.adopted = Some(AdoptedWorkload { replicas: 4, available: 4, scale_down });
                    world.instant_pods = false;
                    world.reconcile();
                    world
                }
            };
            if routed {
                // A router carries fractions of a percent: a careful first step.
                world.spec.steps = vec![Weight::from_millionths(1_000), Weight::from_millionths(125_000), pct(50)];
            }
            let templates = [STABLE, CANARY, THIRD];
            for (index, happened) in happenings.into_iter().enumerate() {
                let before = (world.status.step, world.status.phase, world.status.canary_revision.clone());
                let untimed_experiment = matches!(
                    world.spec.stages().nth(usize::try_from(before.0 - 1).unwrap_or(usize::MAX)),
                    Some(Stage::Experiment(experiment)) if experiment.duration.is_none()
                );
                let reported_before = world.reason(conditions::PROGRESSING) == "CanaryPodsFailing";
                let acknowledged = world.status.last_command.clone();
                let stable_before = world.status.stable_revision.clone();
                let gates_before = world.status.gates.clone();
                let mut started_at_once = None;
                match happened {
                    Happening::Wait(seconds) => world.advance(Duration::from_secs(seconds)),
                    Happening::NewTemplate(which) => world.new_template(templates[which]),
                    Happening::StartPutOff(which, seconds) => {
                        let new = !world.replica_sets.iter().any(|rs| rs.revision == templates[which]);
                        if new {
                            let mut at_once = world.clone();
                            at_once.new_template(templates[which]);
                            at_once.reconcile();
                            started_at_once = Some(at_once);
                        }
                        world.new_template(templates[which]);
                        if new {
                            world.advance(Duration::from_secs(seconds));
                        }
                    }
                    Happening::PodsStall => world.instant_pods = false,
                    Happening::PodsFail(failing) => {
                        world.pods_failing = failing.then(|| "pod web-x: CrashLoopBackOff".to_owned());
                    }
                    Happening::PodsReady => {
                        world.instant_pods = true;
                        let revisions: Vec<String> = world.replica_sets.iter().map(|rs| rs.revision.clone()).collect();
                        revisions.iter().for_each(|revision| world.make_available(revision));
                    }
                    Happening::Pause(paused) => world.spec.paused = paused,
                    Happening::Command(command) => world.command = Some(format!("{command}/{index}")),
                    Happening::Analysis(verdict) => world.analysis = verdict,
                    Happening::NextLook(seconds) => world.next_look = seconds.map(Duration::from_secs),
                    Happening::Invalid(invalid) => world.invalid = invalid.then(|| "route missing".to_owned()),
                    Happening::CheckReply(reply) => world.check_reply = reply,
                    Happening::HookReply(reply) => world.hook_reply = reply,
                    Happening::Restart => world.in_flight.clear(),
                    Happening::Resize(replicas) => world.spec.replicas = replicas,
                }
                // World::apply asserts that no weight lands on a canary without an
                // available pod, and that only the spec's revision is ever created.
                let first = world.reconcile();
                // A new revision put off starts, when it is reconciled, as it would
                // have at once: the same canary, step, phase and weight.
                if let Some(at_once) = started_at_once {
                    prop_assert_eq!(
                        (&world.status.canary_revision, world.status.step, world.status.phase, world.weight()),
                        (&at_once.status.canary_revision, at_once.status.step, at_once.status.phase, at_once.weight())
                    );
                }
                // A plan that asks to wait is a fixed point: planning again at the same
                // moment changes no status and records no Event, so the shell can skip
                // writing an unchanged status.
                if world.last_wait > Duration::ZERO {
                    let settled = world.status.clone();
                    world.quiet = true;
                    let again = world.reconcile_once();
                    world.quiet = false;
                    prop_assert_eq!(&again.status, &settled, "status changed with nothing new");
                    prop_assert!(again.events.is_empty(), "events with nothing new: {:?}", again.events);
                }
                // A step being judged wakes no later than the analysis' next look, so a
                // quicker look (evidence building against the canary) is not slept through.
                let progressing = world.status.phase == Some(Phase::Progressing) && world.invalid.is_none();
                let held_at_gate = progressing && world.reason(conditions::PROGRESSING) == "GateWaiting";
                // Canary traffic held at a gate is still judged: a step that finished
                // waits for the next one's checks at its own weight, in its window.
                if held_at_gate && (world.status.weight > Weight::ZERO || world.status.exposure.is_some()) {
                    prop_assert!(
                        world.status.analysis_started_at.is_some(),
                        "step {} holds {} on the canary at a gate, unjudged", world.status.step, world.status.weight
                    );
                }
                let judging = progressing
                    && (matches!(world.reason(conditions::PROGRESSING).as_str(), "StepInProgress" | "Inconclusive")
                        || (held_at_gate && world.status.analysis_started_at.is_some()));
                if let (true, Some(look)) = (judging, world.next_look) {
                    prop_assert!(
                        world.last_wait <= look,
                        "slept {:?} past the next look in {look:?}", world.last_wait
                    );
                }
                let status = &world.status;
                check_gates(&world, &before, &gates_before, stable_before.as_deref(), acknowledged.as_ref())?;
                // Every transition is reported as an Event (and so notified): a new
                // canary, a step moved on, a rollback, a promotion, a pause. Each
                // reason is one a notification sink may ask for, and each sink's
                // body names it.
                let said = world.events();
                let stable_before = stable_before.as_deref();
                if status.canary_revision.is_some() && status.canary_revision != before.2 {
                    prop_assert!(said.iter().any(|e| matches!(*e, "RolloutStarted" | "RolloutRestarted")), "new canary without an Event: {said:?}");
                    // A new canary gets no traffic but its first step's, judged: the old
                    // canary's weight is not its own.
                    let untouched = first.status.weight.is_zero() && first.status.exposure.is_none();
                    // (A promote in the same plan may move its first step on at once.)
                    let promoted = first.status.last_command != acknowledged
                        && first.status.last_command.as_ref().is_some_and(|c| c.command == "promote");
                    if world.invalid.is_none() && first.status.canary_revision == status.canary_revision && !untouched && !promoted {
                        prop_assert!(first.status.analysis_started_at.is_some() && first.status.step == 1, "a new canary took the old one's traffic: {}", first.status.weight);
                    }
                }
                if status.canary_revision == before.2 && status.canary_revision.is_some() && status.step > before.0 {
                    prop_assert!(said.contains(&"StepAdvanced"), "step {} -> {} without StepAdvanced: {said:?}", before.0, status.step);
                }
                if status.phase == Some(Phase::Aborted) && before.1 != Some(Phase::Aborted) {
                    prop_assert!(said.iter().any(|e| matches!(*e, "AnalysisFailed" | "ProgressDeadlineExceeded" | "AbortedByUser" | "GateFailed")), "rolled back without an Event: {said:?}");
                }
                // (The first revision, of an adopting Canary, is Initializing.)
                if stable_before.is_some() && status.stable_revision.as_deref() != stable_before {
                    prop_assert!(said.contains(&"Promoted"), "new stable without Promoted: {said:?}");
                }
                if status.phase == Some(Phase::Paused) && before.1 != Some(Phase::Paused) {
                    prop_assert!(said.contains(&"Paused"), "paused without an Event: {said:?}");
                }
                for reason in &said {
                    prop_assert!(serin_api::reason::TRANSITIONS.contains(reason), "{reason} is not a transition a sink can ask for");
                }
                for event in &world.last_events {
                    let notice = Notice::new("shop", "web", event, status, world.now);
                    for format in [NotificationFormat::CloudEvents, NotificationFormat::Slack, NotificationFormat::Teams] {
                        let shown = notification::body(format, &notice).to_string();
                        prop_assert!(shown.contains(event.reason) && shown.contains("shop/web"), "{format:?}: {shown}");
                    }
                }
                // A promote runs when it is acknowledged, which may be later than it was
                // set (behind an InvalidSpec, say).
                let promoted_by_hand = status.last_command != acknowledged
                    && status.last_command.as_ref().is_some_and(|c| c.command.starts_with("promote"));
                let moved_on = status.canary_revision == before.2
                    && before.1 == Some(Phase::Progressing)
                    && (status.step > before.0 || status.phase == Some(Phase::Promoting) || status.phase == Some(Phase::Healthy));
                // A step that finished and waited at the next one's checks moves on when
                // they pass, whatever the verdict since (a failing one rolls back first).
                let finished_before = gates_before.iter().any(|r| {
                    r.state == GateState::Waiting
                        && before.2.as_deref() == Some(r.revision.as_str())
                        && world.spec.gates.iter().any(|g| g.name == r.name && match g.r#type {
                            GateType::BeforeStep => r.step == before.0 + 1,
                            GateType::ConfirmPromotion => r.step == before.0,
                            _ => false,
                        })
                });
                if moved_on && !promoted_by_hand && !finished_before {
                    prop_assert!(
                        matches!(world.analysis, None | Some(StepVerdict::Pass)),
                        "a step moved on with the verdict {:?}", world.analysis
                    );
                    // An experiment with no duration runs until a person promotes it.
                    prop_assert!(!untimed_experiment, "an untimed experiment moved on by itself");
                }
                // The step being judged has its own traffic in effect: its weight and
                // nothing else, the mirror while mirroring, the experiment's rule
                // during the experiment. Nothing but stable's weight outside a rollout.
                let stage_now = world.spec.stages().nth(usize::try_from(status.step - 1).unwrap_or(usize::MAX));
                if world.reason(conditions::PROGRESSING) == "StepInProgress" && world.invalid.is_none()
                    && let Some(stage) = stage_now
                {
                    let (weight, exposure) = match stage {
                        // Without a router, the pods' share of the replicas.
                        Stage::Weight(weight) if !routed => (serin_core::replicas::by_pod_count(world.spec.replicas, weight).weight, None),
                        Stage::Weight(weight) => (weight, None),
                        Stage::Mirror(_) => (Weight::ZERO, Some(Exposure::Mirror)),
                        Stage::Experiment(_) => (Weight::ZERO, Some(Exposure::Experiment)),
                    };
                    prop_assert_eq!((status.weight, status.exposure), (weight, exposure), "at step {}", status.step);
                }
                if matches!(status.phase, Some(Phase::Healthy | Phase::Aborted)) && world.invalid.is_none() {
                    prop_assert_eq!(status.exposure, None);
                    prop_assert_eq!(world.routes.last().and_then(|r| r.exposure), None, "a mirror or an experiment left after the rollout");
                }
                // Canary pods that say why they fail are reported with their words,
                // and the Event is recorded when that starts, not at every look.
                // (An invalid spec freezes the status as it was.)
                let progressing = world.reason(conditions::PROGRESSING);
                if progressing == "CanaryPodsFailing" && world.invalid.is_none() {
                    let why = world.pods_failing.clone().unwrap_or_default();
                    prop_assert!(!why.is_empty() && world.message(conditions::PROGRESSING).contains(&why));
                }
                if progressing == "WaitingForPods" && status.phase == Some(Phase::Progressing) && world.invalid.is_none() {
                    let canary = status.canary_revision.clone().unwrap_or_default();
                    let short = world.available(&canary) < world.replicas(&canary);
                    prop_assert!(!(short && world.pods_failing.is_some()), "failing canary pods not reported");
                }
                let said = world.events().iter().filter(|e| **e == "CanaryPodsFailing").count();
                prop_assert!(said <= 1);
                if reported_before && said > 0 && status.canary_revision == before.2 {
                    prop_assert!(false, "CanaryPodsFailing said again for the same canary while still reported");
                }
                // kstatus' summary: exactly one of Ready, Reconciling, Stalled holds.
                // Ready only when the spec's template fully serves on available pods;
                // Stalled exactly after a rollback or while the spec is invalid.
                let (truth, _) = summary(&world);
                prop_assert_eq!(truth.iter().filter(|t| **t).count(), 1, "{:?}", status.conditions);
                let invalid = conditions::is_true(&status.conditions, conditions::INVALID_SPEC);
                prop_assert_eq!(truth[2], invalid || status.phase == Some(Phase::Aborted));
                prop_assert_eq!(
                    truth[0],
                    !invalid && status.phase == Some(Phase::Healthy) && world.promoted()
                        && conditions::is_true(&status.conditions, conditions::AVAILABLE)
                );
                prop_assert!(status.weight <= Weight::FULL);
                prop_assert!(status.stable_revision.is_some());
                prop_assert_ne!(status.canary_revision.as_ref(), status.stable_revision.as_ref());
                if world.promoted() {
                    prop_assert_eq!(status.stable_revision.as_deref(), Some(world.revision.as_str()));
                    prop_assert_eq!(status.phase, Some(Phase::Healthy));
                    prop_assert_eq!(world.weight(), Weight::ZERO);
                }
                if status.phase == Some(Phase::Aborted) {
                    prop_assert_eq!(world.weight(), Weight::ZERO);
                }
                // With a router the canary runs enough pods for its share of the
                // replicas, whatever an HPA sets them to; with the total split by
                // weight, stable has enough for its share and never more than the total.
                let rolling = matches!(status.phase, Some(Phase::Progressing | Phase::Paused | Phase::Promoting));
                if routed && rolling && world.invalid.is_none() {
                    let replicas = world.spec.replicas;
                    let share = |weight: Weight| (u64::from(weight.millionths()) * u64::from(replicas.unsigned_abs())).div_ceil(1_000_000);
                    let canary = status.canary_revision.clone().unwrap_or_default();
                    let stable = status.stable_revision.clone().unwrap_or_default();
                    prop_assert!(u64::from(world.replicas(&canary).unsigned_abs()) >= share(status.weight), "canary {} pods for {} of {replicas}", world.replicas(&canary), status.weight);
                    if weighted {
                        prop_assert!(u64::from(world.replicas(&stable).unsigned_abs()) >= share(status.weight.rest()), "stable {} pods for {} of {replicas}", world.replicas(&stable), status.weight.rest());
                        prop_assert!(world.replicas(&stable) <= replicas.max(1), "stable inflated to {} of {replicas}", world.replicas(&stable));
                    } else {
                        prop_assert_eq!(world.replicas(&stable), replicas, "stable kept full");
                    }
                }
                // The scale subresource reports the pods that make up the total, as an
                // HPA compares them with its target: never a retiring ReplicaSet's, nor
                // the canary's on top of a full stable.
                if world.invalid.is_none() {
                    let replicas = world.spec.replicas;
                    let shared = (weighted || !routed) && status.exposure.is_none();
                    let of = |revision: &Option<String>| revision.as_ref().map_or(0, |r| world.replicas(r));
                    let (stable, canary) = (of(&status.stable_revision), of(&status.canary_revision));
                    prop_assert!(status.replicas <= stable + canary, "status.replicas {} counts a retiring ReplicaSet", status.replicas);
                    let bound = match (status.phase, world.reason(conditions::PROGRESSING).as_str()) {
                        (Some(Phase::Healthy | Phase::Aborted), _) => Some(stable),
                        (Some(Phase::Progressing | Phase::Paused), _) if !shared => Some(stable),
                        // A step in effect runs its split of the total, each side rounded up.
                        (Some(Phase::Progressing), "StepInProgress") => Some(replicas.max(2) + 1),
                        _ => None,
                    };
                    if let Some(bound) = bound {
                        prop_assert!(status.replicas <= bound, "status.replicas {} for {replicas} ({:?})", status.replicas, status.phase);
                    }
                }
                let live = world.replica_sets.iter().filter(|rs| rs.replicas > 0).count();
                prop_assert!(live <= 3, "at most stable, canary and one retiring: {:?}", world.replica_sets);
                let distinct: std::collections::BTreeSet<_> = world.replica_sets.iter().map(|rs| &rs.revision).collect();
                prop_assert_eq!(distinct.len(), world.replica_sets.len(), "one ReplicaSet per revision");
            }
        }
    }
}

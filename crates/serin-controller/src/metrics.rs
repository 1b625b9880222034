//! The controller's own figures, served at `/metrics` in the OpenMetrics format.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serin_api::{CanaryStatus, Phase, Verdict, reason};

/// Labels of per-Canary series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CanaryLabels {
    /// Namespace of the Canary.
    pub namespace: String,
    /// Name of the Canary.
    pub canary: String,
}

/// Labels of the error count: the layer of the reconcile that failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// observe, apply or report.
    pub layer: &'static str,
}

/// Labels of the phase series: one per Canary and phase, 1 for the current phase.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// Namespace of the Canary.
    pub namespace: String,
    /// Name of the Canary.
    pub canary: String,
    /// The phase.
    pub phase: String,
}

/// Labels of per-metric analysis series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MetricLabels {
    /// Namespace of the Canary.
    pub namespace: String,
    /// Name of the Canary.
    pub canary: String,
    /// The metric's name in spec.
    pub metric: String,
}

/// Labels of an arm's value of one metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ArmLabels {
    /// Namespace of the Canary.
    pub namespace: String,
    /// Name of the Canary.
    pub canary: String,
    /// The metric's name in spec.
    pub metric: String,
    /// `canary` or `stable`.
    pub arm: &'static str,
}

/// Labels of a metric's verdict: one series per metric, the current verdict.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    /// Namespace of the Canary.
    pub namespace: String,
    /// Name of the Canary.
    pub canary: String,
    /// The metric's name in spec.
    pub metric: String,
    /// Pass, Fail or Inconclusive.
    pub verdict: &'static str,
}

/// Labels of the fleet's transition count: the Event reason, a fixed set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    /// The reason of the transition's Event.
    pub reason: &'static str,
}

/// Labels of the notification count: the sink's format and what became of it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotificationLabels {
    /// CloudEvents, Slack or Teams.
    pub format: &'static str,
    /// sent, failed, rate_limited or queue_full.
    pub result: &'static str,
}

/// Labels of the API request count: what the controller asked the API server.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiRequestLabels {
    /// get, list, watch, create, patch, update or delete.
    pub verb: &'static str,
    /// The resource, such as `replicasets` or `canaries/status`.
    pub resource: String,
}

/// The verb and resource of a request to the API server, from its method and
/// path (`/api/v1/namespaces/shop/services/web` is a `get` of `services`); None
/// for what is not a resource (`/version`).
pub fn api_request(method: &str, path: &str, query: &str) -> Option<ApiRequestLabels> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match segments.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => return None,
    };
    let rest = match rest {
        ["namespaces", _namespace, more @ ..] if !more.is_empty() => more,
        rest => rest,
    };
    let (resource, named) = match rest {
        [] => return None,
        [resource] => ((*resource).to_owned(), false),
        [resource, _name] => ((*resource).to_owned(), true),
        [resource, _name, sub, ..] => (format!("{resource}/{sub}"), true),
    };
    let watching = query
        .split('&')
        .any(|pair| pair == "watch=true" || pair == "watch=1");
    let verb = match method {
        "GET" if watching => "watch",
        "GET" if named => "get",
        "GET" => "list",
        "POST" => "create",
        "PATCH" => "patch",
        "PUT" => "update",
        "DELETE" => "delete",
        _ => "other",
    };
    Some(ApiRequestLabels { verb, resource })
}

/// The transitions the fleet view counts: rollouts started, promotions, rollbacks.
/// Counted by reason without the Canary's name, so the series stay few whatever
/// the fleet's size.
pub const COUNTED_TRANSITIONS: [&str; 8] = [
    reason::ROLLOUT_STARTED,
    reason::ROLLOUT_RESTARTED,
    reason::RETRIED,
    reason::PROMOTED,
    reason::ANALYSIS_FAILED,
    reason::PROGRESS_DEADLINE_EXCEEDED,
    reason::ABORTED_BY_USER,
    reason::GATE_FAILED,
];

const VERDICTS: [Verdict; 3] = [Verdict::Pass, Verdict::Fail, Verdict::Inconclusive];

fn verdict_name(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Pass => "Pass",
        Verdict::Fail => "Fail",
        Verdict::Inconclusive => "Inconclusive",
    }
}

/// The labels of every series of one analysed metric: its evidence, each arm's
/// value (canary, then stable) and each verdict (in the order of [`VERDICTS`]).
struct MetricSeries {
    evidence: MetricLabels,
    arms: [ArmLabels; 2],
    verdicts: [VerdictLabels; 3],
}

impl MetricSeries {
    fn of(namespace: &str, canary: &str, metric: &str) -> Self {
        let evidence = MetricLabels {
            namespace: namespace.to_owned(),
            canary: canary.to_owned(),
            metric: metric.to_owned(),
        };
        let arms = ["canary", "stable"].map(|arm| ArmLabels {
            namespace: namespace.to_owned(),
            canary: canary.to_owned(),
            metric: metric.to_owned(),
            arm,
        });
        let verdicts = VERDICTS.map(|verdict| VerdictLabels {
            namespace: namespace.to_owned(),
            canary: canary.to_owned(),
            metric: metric.to_owned(),
            verdict: verdict_name(verdict),
        });
        Self {
            evidence,
            arms,
            verdicts,
        }
    }
}

/// Sets a gauge to `value`, or removes its series when there is none, so a figure
/// Serin no longer has is absent from `/metrics` rather than stale.
fn set_or_remove<L>(family: &Family<L, Gauge<f64, AtomicU64>>, labels: &L, value: Option<f64>)
where
    L: Clone + std::hash::Hash + Eq,
{
    match value {
        Some(value) => {
            family.get_or_create(labels).set(value);
        }
        None => {
            family.remove(labels);
        }
    }
}

const PHASES: [Phase; 6] = [
    Phase::Initializing,
    Phase::Healthy,
    Phase::Progressing,
    Phase::Paused,
    Phase::Promoting,
    Phase::Aborted,
];

/// Every metric the controller exports.
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    starts_deferred: Counter,
    stale_reads: Counter,
    failures: Family<ErrorLabels, Counter>,
    duration: Histogram,
    weight: Family<CanaryLabels, Gauge<f64, AtomicU64>>,
    step: Family<CanaryLabels, Gauge<i64, AtomicI64>>,
    phase: Family<PhaseLabels, Gauge<i64, AtomicI64>>,
    evidence: Family<MetricLabels, Gauge<f64, AtomicU64>>,
    evidence_limit: Family<CanaryLabels, Gauge<f64, AtomicU64>>,
    value: Family<ArmLabels, Gauge<f64, AtomicU64>>,
    verdict: Family<VerdictLabels, Gauge<i64, AtomicI64>>,
    transitions: Family<TransitionLabels, Counter>,
    api_requests: Family<ApiRequestLabels, Counter>,
    notifications: Family<NotificationLabels, Counter>,
    analysed: Mutex<BTreeMap<(String, String), BTreeSet<String>>>,
    leader: Gauge<i64, AtomicI64>,
    undecodable: Gauge<i64, AtomicI64>,
    undecodable_canaries: Mutex<BTreeSet<(String, String)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("serin");
        let reconciles = Counter::<u64, AtomicU64>::default();
        let starts_deferred = Counter::<u64, AtomicU64>::default();
        let stale_reads = Counter::<u64, AtomicU64>::default();
        let failures = Family::<ErrorLabels, Counter<u64, AtomicU64>>::default();
        let duration = Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]);
        let weight = Family::default();
        let step = Family::default();
        let phase = Family::default();
        let evidence = Family::default();
        let evidence_limit = Family::default();
        let value = Family::default();
        let verdict = Family::default();
        let transitions = Family::<TransitionLabels, Counter>::default();
        // Every reason's series exists from the start at 0, so `increase()` sees the
        // first rollback instead of a series that appears already at 1.
        for reason in COUNTED_TRANSITIONS {
            transitions
                .get_or_create(&TransitionLabels { reason })
                .inc_by(0);
        }
        let api_requests = Family::<ApiRequestLabels, Counter>::default();
        let notifications = Family::<NotificationLabels, Counter>::default();
        let leader = Gauge::default();
        let undecodable = Gauge::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "revision_starts_deferred",
            "Reconciles starting a revision (until its first weight) put off for a second because half the reconciles in flight already were",
            starts_deferred.clone(),
        );
        registry.register(
            "stale_reads",
            "Reconciles put off because the watch had not yet shown the Canary's last status write: judging or acting on the status before it would analyse and record Events twice",
            stale_reads.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed and will be retried, by the layer that failed",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            duration.clone(),
        );
        registry.register(
            "canary_weight_percent",
            "Percent of traffic on each Canary's canary revision",
            weight.clone(),
        );
        registry.register(
            "canary_step",
            "Each Canary's current step, counted from 1; 0 when no rollout runs",
            step.clone(),
        );
        registry.register(
            "canary_phase",
            "1 for each Canary's current phase, 0 for the others",
            phase.clone(),
        );
        registry.register(
            "analysis_evidence",
            "Evidence against 'canary no worse' per error-rate metric, as an e-value over the rollout",
            evidence.clone(),
        );
        registry.register(
            "analysis_evidence_limit",
            "The e-value at which a Canary's canary fails: 1 / (1 - confidence)",
            evidence_limit.clone(),
        );
        registry.register(
            "analysis_value",
            "Each arm's latest value per metric: an error rate, or a threshold query's value",
            value.clone(),
        );
        registry.register(
            "analysis_verdict",
            "1 for each metric's current verdict (one series per metric)",
            verdict.clone(),
        );
        registry.register(
            "transitions",
            "Rollouts started, promoted and rolled back, by the reason of their Event",
            transitions.clone(),
        );
        registry.register(
            "api_requests",
            "Requests the controller sent to the Kubernetes API server, by verb and resource",
            api_requests.clone(),
        );
        registry.register(
            "notifications",
            "Notifications of transitions, by the sink's format and result: sent, or dropped as failed, rate_limited or queue_full",
            notifications.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        registry.register(
            "canaries_undecodable",
            "Canaries whose stored spec does not decode; each has InvalidSpec naming the field",
            undecodable.clone(),
        );
        Self {
            registry,
            reconciles,
            starts_deferred,
            stale_reads,
            failures,
            duration,
            weight,
            step,
            phase,
            evidence,
            evidence_limit,
            value,
            verdict,
            transitions,
            api_requests,
            notifications,
            analysed: Mutex::default(),
            leader,
            undecodable,
            undecodable_canaries: Mutex::default(),
        }
    }
}

impl Metrics {
    /// Counts one request to the API server.
    pub fn api_request(&self, labels: &ApiRequestLabels) {
        self.api_requests.get_or_create(labels).inc();
    }

    /// Counts one reconcile and its duration, and its failure by layer.
    pub fn reconciled(&self, took: Duration, failed_in: Option<&'static str>) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
        if let Some(layer) = failed_in {
            self.failures.get_or_create(&ErrorLabels { layer }).inc();
        }
    }

    /// Counts a reconcile starting a revision put off because the start slots
    /// were taken.
    pub fn start_deferred(&self) {
        self.starts_deferred.inc();
    }

    /// Counts one notification by what became of it.
    pub fn notification(&self, format: &'static str, result: &'static str) {
        self.notifications
            .get_or_create(&NotificationLabels { format, result })
            .inc();
    }

    /// Counts a reconcile put off because it read the Canary from before its own
    /// last status write.
    pub fn stale_read(&self) {
        self.stale_reads.inc();
    }

    /// Records a Canary's phase, weight, step and analysis after a reconcile. The
    /// series of a metric that left the status (a new rollout clears the analysis)
    /// are removed, so a Canary has at most 9 series plus 5 per analysed metric.
    pub fn canary(
        &self,
        namespace: &str,
        canary: &str,
        status: &CanaryStatus,
        evidence_limit: Option<f64>,
    ) {
        let labels = CanaryLabels {
            namespace: namespace.to_owned(),
            canary: canary.to_owned(),
        };
        self.weight
            .get_or_create(&labels)
            .set(status.weight.percent());
        self.step.get_or_create(&labels).set(i64::from(status.step));
        set_or_remove(&self.evidence_limit, &labels, evidence_limit);
        for each in PHASES {
            let labels = PhaseLabels {
                namespace: namespace.to_owned(),
                canary: canary.to_owned(),
                phase: format!("{each:?}"),
            };
            self.phase
                .get_or_create(&labels)
                .set(i64::from(status.phase == Some(each)));
        }
        let now: BTreeSet<String> = status.analysis.iter().map(|m| m.name.clone()).collect();
        let before = self.analysed.lock().ok().map(|mut analysed| {
            analysed
                .insert((namespace.to_owned(), canary.to_owned()), now.clone())
                .unwrap_or_default()
        });
        for gone in before.unwrap_or_default().difference(&now) {
            self.forget_metric(namespace, canary, gone);
        }
        for metric in &status.analysis {
            let series = MetricSeries::of(namespace, canary, &metric.name);
            set_or_remove(&self.evidence, &series.evidence, metric.evidence);
            for (labels, value) in series.arms.iter().zip([metric.canary, metric.stable]) {
                set_or_remove(&self.value, labels, value);
            }
            for (labels, verdict) in series.verdicts.iter().zip(VERDICTS) {
                if verdict == metric.verdict {
                    self.verdict.get_or_create(labels).set(1);
                } else {
                    self.verdict.remove(labels);
                }
            }
        }
    }

    /// Counts the transitions of the fleet view among a reconcile's Events.
    pub fn transitions<'a>(&self, reasons: impl IntoIterator<Item = &'a str>) {
        for reason in reasons {
            if let Some(reason) = COUNTED_TRANSITIONS.into_iter().find(|r| *r == reason) {
                self.transitions
                    .get_or_create(&TransitionLabels { reason })
                    .inc();
            }
        }
    }

    fn forget_metric(&self, namespace: &str, canary: &str, metric: &str) {
        let series = MetricSeries::of(namespace, canary, metric);
        self.evidence.remove(&series.evidence);
        for labels in &series.arms {
            self.value.remove(labels);
        }
        for labels in &series.verdicts {
            self.verdict.remove(labels);
        }
    }

    /// Records whether a Canary's stored spec decodes.
    pub fn undecodable(&self, namespace: &str, canary: &str, undecodable: bool) {
        if let Ok(mut set) = self.undecodable_canaries.lock() {
            let key = (namespace.to_owned(), canary.to_owned());
            if undecodable {
                set.insert(key);
            } else {
                set.remove(&key);
            }
            self.undecodable
                .set(i64::try_from(set.len()).unwrap_or(i64::MAX));
        }
    }

    /// Forgets a deleted Canary's series.
    pub fn forget(&self, namespace: &str, canary: &str) {
        self.undecodable(namespace, canary, false);
        let labels = CanaryLabels {
            namespace: namespace.to_owned(),
            canary: canary.to_owned(),
        };
        self.weight.remove(&labels);
        self.step.remove(&labels);
        self.evidence_limit.remove(&labels);
        let analysed =
            self.analysed.lock().ok().and_then(|mut analysed| {
                analysed.remove(&(namespace.to_owned(), canary.to_owned()))
            });
        for metric in analysed.unwrap_or_default() {
            self.forget_metric(namespace, canary, &metric);
        }
        for each in PHASES {
            self.phase.remove(&PhaseLabels {
                namespace: namespace.to_owned(),
                canary: canary.to_owned(),
                phase: format!("{each:?}"),
            });
        }
    }

    /// Records whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_request_is_counted_by_its_verb_and_resource() {
        let read = |method: &str, path: &str, query: &str| {
            api_request(method, path, query).map(|labels| (labels.verb, labels.resource))
        };
        let named = |verb: &'static str, resource: &str| Some((verb, resource.to_owned()));
        assert_eq!(
            read("GET", "/api/v1/namespaces/shop/services/web", ""),
            named("get", "services")
        );
        assert_eq!(
            read(
                "GET",
                "/apis/apps/v1/namespaces/shop/replicasets",
                "labelSelector=a"
            ),
            named("list", "replicasets")
        );
        assert_eq!(
            read(
                "GET",
                "/apis/apps/v1/replicasets",
                "watch=true&resourceVersion=5"
            ),
            named("watch", "replicasets")
        );
        assert_eq!(
            read(
                "PATCH",
                "/apis/serin.dev/v1alpha1/namespaces/shop/canaries/web/status",
                ""
            ),
            named("patch", "canaries/status")
        );
        assert_eq!(
            read("POST", "/apis/events.k8s.io/v1/namespaces/shop/events", ""),
            named("create", "events")
        );
        assert_eq!(
            read("GET", "/api/v1/namespaces/shop", ""),
            named("get", "namespaces")
        );
        assert_eq!(
            read(
                "PUT",
                "/apis/coordination.k8s.io/v1/namespaces/serin-system/leases/serin-controller",
                ""
            ),
            named("update", "leases")
        );
        assert_eq!(read("GET", "/version", ""), None);
    }

    /// A Canary at step 1 with one error-rate metric under analysis.
    fn analysed() -> CanaryStatus {
        let mut status = CanaryStatus {
            phase: Some(Phase::Progressing),
            weight: serin_api::Weight::from_percent(25),
            step: 1,
            ..CanaryStatus::default()
        };
        status.analysis.push(serin_api::MetricStatus {
            name: "errors".into(),
            canary: Some(0.02),
            stable: Some(0.01),
            counts: None,
            evidence: Some(3.5),
            carried: Vec::new(),
            earlier: Vec::new(),
            ratio: None,
            failures: None,
            verdict: Verdict::Inconclusive,
            since: None,
            at: None,
            message: None,
            dry_run: false,
        });
        status
    }

    #[test]
    fn exports_reconciles_per_canary_series_and_fleet_transitions() {
        let metrics = Metrics::default();
        metrics.reconciled(Duration::from_millis(3), None);
        metrics.reconciled(Duration::from_millis(3), Some("apply"));
        let mut status = analysed();
        metrics.canary("demo", "web", &status, Some(20.0));
        metrics.transitions(["RolloutStarted", "StepAdvanced", "AnalysisFailed"]);
        let text = metrics.encode();
        for line in [
            r#"serin_canary_step{namespace="demo",canary="web"} 1"#,
            r#"serin_analysis_evidence{namespace="demo",canary="web",metric="errors"} 3.5"#,
            r#"serin_analysis_evidence_limit{namespace="demo",canary="web"} 20.0"#,
            r#"serin_analysis_value{namespace="demo",canary="web",metric="errors",arm="stable"} 0.01"#,
            r#"serin_analysis_verdict{namespace="demo",canary="web",metric="errors",verdict="Inconclusive"} 1"#,
            r#"serin_transitions_total{reason="RolloutStarted"} 1"#,
            r#"serin_transitions_total{reason="AnalysisFailed"} 1"#,
            r#"serin_transitions_total{reason="Promoted"} 0"#,
        ] {
            assert!(text.contains(line), "no {line} in {text}");
        }
        assert!(
            !text.contains("StepAdvanced"),
            "only the fleet's transitions are counted"
        );

        // One verdict series per metric; a metric that leaves the status leaves /metrics.
        status.analysis[0].verdict = Verdict::Fail;
        metrics.canary("demo", "web", &status, Some(20.0));
        let text = metrics.encode();
        assert!(
            text.contains(r#"verdict="Fail"} 1"#) && !text.contains("Inconclusive"),
            "{text}"
        );
        status.analysis.clear();
        metrics.canary("demo", "web", &status, None);
        let text = metrics.encode();
        assert!(!text.contains(r#"metric="errors""#), "{text}");
        assert!(!text.contains("serin_analysis_evidence_limit{"), "{text}");
        assert!(text.contains("serin_reconciles_total 2"), "{text}");
        assert!(
            text.contains(r#"serin_reconcile_errors_total{layer="apply"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"serin_canary_weight_percent{namespace="demo",canary="web"} 25"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"serin_canary_phase{namespace="demo",canary="web",phase="Progressing"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"serin_canary_phase{namespace="demo",canary="web",phase="Healthy"} 0"#),
            "{text}"
        );
        metrics.undecodable("demo", "web", true);
        metrics.undecodable("demo", "api", true);
        metrics.undecodable("demo", "api", false);
        assert!(metrics.encode().contains("serin_canaries_undecodable 1"));
        metrics.forget("demo", "web");
        let text = metrics.encode();
        assert!(!text.contains(r#"canary="web""#), "{text}");
        assert!(text.contains("serin_canaries_undecodable 0"), "{text}");
    }

    #[test]
    fn every_metric_is_in_the_reference_page() {
        let reference = include_str!("../../../docs/reference.md");
        let metrics = Metrics::default();
        metrics.reconciled(Duration::from_millis(1), Some("observe"));
        metrics.canary("demo", "web", &analysed(), Some(20.0));
        let text = metrics.encode();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# HELP "))
            .filter_map(|line| line.split(' ').next())
            .collect();
        assert!(names.len() >= 13, "{names:?}");
        for name in names {
            assert!(
                reference.contains(&format!("`{name}")),
                "docs/reference.md does not name {name}"
            );
        }
    }
}

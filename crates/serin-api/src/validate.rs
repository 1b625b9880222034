//! The schema's promises, checked again by the controller. The API server enforces
//! them on every write, but a Canary stored before a CRD upgrade, or under a CRD
//! someone edited, may break them, and the state machine relies on them (a step
//! list to walk, a positive deadline). A broken one is an `InvalidSpec` naming the
//! field, never a panic or a guess.

use crate::{CanarySpec, Duration, GateType, NotificationSink, Weight};

/// Both `template` and `workloadRef`, or neither: the reconciler refuses both
/// before it fills an adopting Canary's template from its Deployment.
pub const EXACTLY_ONE_TEMPLATE: &str = "spec.template: set exactly one of spec.template (Serin runs this pod template) and spec.workloadRef (Serin adopts a Deployment and rolls out its template)";

impl CanarySpec {
    /// The first broken promise, as `<field>: <what it must be>`.
    pub fn problem(&self) -> Option<String> {
        let positive = |field: &str, value: Duration| {
            (!is_positive(value))
                .then(|| format!("{field}: must be a positive duration such as 30s or 2m"))
        };
        if self.replicas < 0 {
            return Some("spec.replicas: must be 0 or more".into());
        }
        if self.template.is_none() && self.workload_ref.is_none() {
            return Some(EXACTLY_ONE_TEMPLATE.into());
        }
        if self.steps.is_empty()
            || self
                .steps
                .iter()
                .any(|weight| weight.is_zero() || *weight == Weight::FULL)
            || self.steps.windows(2).any(|pair| pair[0] >= pair[1])
        {
            return Some(
                "spec.steps: must be strictly increasing canary weights from 0.0001 to 99.9999, for example [1, 5, 25, 50]".into(),
            );
        }
        let fraction = self.steps.iter().find(|w| w.whole_percent().is_none());
        if let (Some(fraction), Some(traffic)) = (fraction, &self.traffic)
            && traffic.istio.is_some()
        {
            return Some(format!(
                "spec.steps: {fraction}% is a fractional weight, and Istio's VirtualService weights are whole percents: use whole steps with spec.traffic.istio"
            ));
        }
        if self.traffic.is_none()
            && let Some(fraction) = fraction
        {
            let pods = self.replicas.max(2);
            return Some(format!(
                "spec.steps: {fraction}% is a fractional weight, which needs a router in spec.traffic; by replica counts a step is whole pods, and with {} replicas the finest step is about {}% (one pod of {pods})",
                self.replicas,
                100 / pods
            ));
        }
        if self.traffic.is_none() && (self.mirror.is_some() || self.experiment.is_some()) {
            return Some("spec.traffic: spec.mirror and spec.experiment need a router (gatewayAPI or istio); pods behind one Service can neither copy requests nor pick them by header".into());
        }
        let grpc = self
            .traffic
            .as_ref()
            .and_then(|traffic| traffic.gateway_api.as_ref())
            .is_some_and(|gateway| !gateway.grpc_routes.is_empty());
        if grpc
            && let Some(experiment) = &self.experiment
            && experiment.r#match.iter().any(|m| m.cookie.is_some())
        {
            return Some("spec.experiment.match: gRPC requests carry no cookies, so a GRPCRoute cannot match one; match gRPC requests on headers (metadata) instead".into());
        }
        if let Some(experiment) = &self.experiment
            && (experiment.r#match.is_empty()
                || experiment
                    .r#match
                    .iter()
                    .any(|m| m.headers.is_empty() && m.cookie.is_none()))
        {
            return Some(
                "spec.experiment.match: each match needs headers, a cookie or both".into(),
            );
        }
        if self
            .mirror
            .as_ref()
            .is_some_and(|m| !(1..=100).contains(&m.percent))
        {
            return Some("spec.mirror.percent: must be from 1 to 100".into());
        }
        if self.revision_history_limit < 0 {
            return Some("spec.revisionHistoryLimit: must be 0 or more".into());
        }
        positive("spec.stepDuration", self.step_duration)
            .or_else(|| positive("spec.progressDeadline", self.progress_deadline))
            .or_else(|| positive("spec.scaleDownDelay", self.scale_down_delay))
            .or_else(|| {
                let mirror = self.mirror.as_ref().and_then(|m| m.duration);
                mirror.and_then(|d| positive("spec.mirror.duration", d))
            })
            .or_else(|| {
                let experiment = self.experiment.as_ref().and_then(|e| e.duration);
                experiment.and_then(|d| positive("spec.experiment.duration", d))
            })
            .or_else(|| {
                (std::time::Duration::from(self.progress_deadline)
                    <= std::time::Duration::from(self.step_duration))
                .then(|| "spec.progressDeadline: must be longer than spec.stepDuration".into())
            })
            .or_else(|| self.analysis_problem())
            .or_else(|| self.notifications_problem())
            .or_else(|| self.gates_problem())
    }

    fn notifications_problem(&self) -> Option<String> {
        notification_sinks_problem(&self.notifications, "spec.notifications")
    }

    fn gates_problem(&self) -> Option<String> {
        let stages = i32::try_from(self.stages().count()).unwrap_or(i32::MAX);
        self.gates.iter().enumerate().find_map(|(index, gate)| {
            let field = format!("spec.gates[{index}]");
            let check = gate.r#type.is_check();
            if self.gates[..index].iter().any(|g| g.name == gate.name) {
                return Some(format!(
                    "{field}.name: {} names two gates; each needs a name of its own",
                    gate.name
                ));
            }
            match &gate.url {
                Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                    return Some(format!("{field}.url: must be an http:// or https:// URL"));
                }
                None if !check => {
                    return Some(format!(
                        "{field}.url: a {:?} hook is called, so it needs a url; only a check waits for kubectl serin approve",
                        gate.r#type
                    ));
                }
                _ => {}
            }
            if !is_positive(gate.timeout) {
                return Some(format!("{field}.timeout: must be a positive duration such as 10s"));
            }
            let stepped = matches!(gate.r#type, GateType::BeforeStep | GateType::LoadTest);
            if !gate.steps.is_empty() && !stepped {
                return Some(format!(
                    "{field}.steps: only a BeforeStep check or a LoadTest hook runs at steps"
                ));
            }
            if gate.on_failure.is_some() && !check {
                return Some(format!(
                    "{field}.onFailure: only a check holds or rolls back; a hook never does"
                ));
            }
            gate.steps
                .iter()
                .find(|step| !(1..=stages).contains(*step))
                .map(|step| {
                    format!("{field}.steps: step {step} is not a step of this Canary, which has steps 1 to {stages}")
                })
        })
    }

    fn analysis_problem(&self) -> Option<String> {
        let analysis = self.analysis.as_ref()?;
        if !is_positive(analysis.interval) {
            return Some("spec.analysis.interval: must be a positive duration such as 15s".into());
        }
        if analysis
            .scrape_interval
            .is_some_and(|scrape| !is_positive(scrape))
        {
            return Some(
                "spec.analysis.scrapeInterval: must be a positive duration such as 15s".into(),
            );
        }
        if !(analysis.confidence > 0.0 && analysis.confidence < 1.0) {
            return Some("spec.analysis.confidence: must be between 0 and 1, exclusive".into());
        }
        if analysis.metrics.is_empty() {
            return Some("spec.analysis.metrics: must hold at least one metric".into());
        }
        analysis
            .metrics
            .iter()
            .enumerate()
            .find_map(|(index, metric)| {
                let field = format!("spec.analysis.metrics[{index}]");
                let not_a_fraction = |max: Option<f64>| max.is_some_and(|max| !(max > 0.0 && max <= 1.0));
                match (&metric.query, &metric.error_rate, &metric.latency) {
                    (Some(_), None, None) if metric.min.is_none() && metric.max.is_none() => {
                        Some(format!("{field}.query: needs min, max or both"))
                    }
                    (Some(_), None, None) => None,
                    (None, Some(rate), None) if !(1.0..=1000.0).contains(&rate.max_ratio) => Some(
                        format!("{field}.errorRate.maxRatio: must be from 1 to 1000"),
                    ),
                    (None, Some(rate), None) if not_a_fraction(rate.max_rate) => Some(format!(
                        "{field}.errorRate.maxRate: must be above 0 and at most 1"
                    )),
                    (None, Some(rate), None) if rate.counting().is_none() => Some(format!(
                        "{field}.errorRate: set either counters, or both requests and errors"
                    )),
                    (None, Some(_), None) => None,
                    (None, None, Some(latency)) if latency.threshold.is_nan() || latency.threshold <= 0.0 => Some(format!(
                        "{field}.latency.threshold: must be above 0, a bucket bound (le) of the histogram"
                    )),
                    (None, None, Some(latency)) if !(1.0..=1000.0).contains(&latency.max_ratio) => {
                        Some(format!("{field}.latency.maxRatio: must be from 1 to 1000"))
                    }
                    (None, None, Some(latency)) if not_a_fraction(latency.max_slow_share) => {
                        Some(format!(
                            "{field}.latency.maxSlowShare: must be above 0 and at most 1"
                        ))
                    }
                    (None, None, Some(_)) => None,
                    _ => Some(format!(
                        "{field}: set exactly one of query, errorRate or latency"
                    )),
                }
            })
    }
}

/// What is wrong with a list of notification sinks, naming the field under
/// `list` (`spec.notifications`, or the key of the cluster's ConfigMap): what the
/// schema refuses in a Canary, for a list no schema checks.
pub fn notification_sinks_problem(sinks: &[NotificationSink], list: &str) -> Option<String> {
    sinks.iter().enumerate().find_map(|(index, sink)| {
        let field = format!("{list}[{index}]");
        let web = |url: &str| url.starts_with("http://") || url.starts_with("https://");
        match (&sink.url, &sink.url_from) {
            (Some(url), None) if !web(url) => {
                return Some(format!("{field}.url: must be an http:// or https:// URL"));
            }
            (Some(_), None) | (None, Some(_)) => {}
            _ => {
                return Some(format!(
                    "{field}: set exactly one of url and urlFrom (a Secret's key)"
                ));
            }
        }
        if sinks[..index].iter().any(|s| s.name == sink.name) {
            return Some(format!(
                "{field}.name: {} names two sinks; each needs a name of its own",
                sink.name
            ));
        }
        sink.reasons
            .iter()
            .find(|r| !crate::reason::TRANSITIONS.contains(&r.as_str()))
            .map(|r| {
                format!(
                    "{field}.reasons: {r} is not a transition Serin reports; pick from {}",
                    crate::reason::TRANSITIONS.join(", ")
                )
            })
    })
}

/// Above zero: not negative (`-5s` parses) and not zero.
fn is_positive(value: Duration) -> bool {
    !value.is_negative() && !std::time::Duration::from(value).is_zero()
}

#[cfg(test)]
mod tests {
    use crate::Canary;

    fn spec(extra: &str) -> crate::CanarySpec {
        let yaml = format!(
            "apiVersion: serin.dev/v1alpha1
kind: Canary
metadata: {{name: web}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec: {{containers: [{{name: web, image: 'web:1'}}]}}
{extra}"
        );
        let canary: Canary = serde_norway::from_str(&yaml).unwrap_or_else(|e| panic!("{e}"));
        canary.spec
    }

    #[test]
    fn a_spec_the_schema_accepts_has_no_problem() {
        assert_eq!(spec("").problem(), None);
        let routed_fractions = "  service: {port: 80}\n  traffic: {gatewayAPI: {httpRoutes: [web]}}\n  steps: [0.1, 1, 12.5, 50]\n";
        assert_eq!(spec(routed_fractions).problem(), None);
        let staged = "  service: {port: 80}\n  traffic: {gatewayAPI: {httpRoutes: [web], grpcRoutes: [web-grpc]}}\n  mirror: {percent: 20, duration: 2m}\n  experiment: {match: [{headers: [{name: x-canary, value: 'yes'}]}]}\n";
        assert_eq!(spec(staged).problem(), None);
        let notified = "  notifications:\n  - {name: hook, format: CloudEvents, url: 'https://hooks.example/serin'}\n  - {name: chat, format: Slack, urlFrom: {secretKeyRef: {name: hooks, key: slack}}, reasons: [AnalysisFailed, Promoted]}\n";
        assert_eq!(spec(notified).problem(), None);
        let gated = "  gates:\n  - {name: approval, type: ConfirmPromotion}\n  - {name: smoke, type: BeforeStep, url: 'http://tests/smoke', steps: [2, 3], onFailure: Abort}\n  - {name: load, type: LoadTest, url: 'http://loadtester/start'}\n  - {name: deployed, type: PostRollout, url: 'https://chatops/deployed', timeout: 3s, retries: 0}\n";
        assert_eq!(spec(gated).problem(), None);
    }

    /// The schema's CEL rule lists the reasons as a string; it must list exactly
    /// the transitions the controller reports.
    #[test]
    fn the_schema_accepts_exactly_the_transition_reasons() {
        let rule = crate::spec::TRANSITION_REASONS;
        let listed: Vec<&str> = rule.split('\'').skip(1).step_by(2).collect();
        assert_eq!(listed, crate::reason::TRANSITIONS);
    }

    #[test]
    fn a_fractional_step_by_replica_counts_says_what_pods_can_carry() {
        let problem = spec("  replicas: 4\n  steps: [0.1, 50]\n").problem();
        assert_eq!(
            problem.as_deref(),
            Some(
                "spec.steps: 0.1% is a fractional weight, which needs a router in spec.traffic; by replica counts a step is whole pods, and with 4 replicas the finest step is about 25% (one pod of 4)"
            )
        );
    }

    #[test]
    fn each_broken_promise_names_its_field() {
        for (extra, field) in [
            ("  steps: []\n", "spec.steps"),
            ("  steps: [50, 25]\n", "spec.steps"),
            ("  steps: [0]\n", "spec.steps"),
            ("  steps: [0.00001]\n", "spec.steps"),
            (
                "  steps: [0.5, 10]\n",
                "spec.steps: 0.5% is a fractional weight",
            ),
            (
                "  service: {port: 80}\n  traffic: {istio: {virtualService: web}}\n  steps: [0.5, 10]\n",
                "spec.steps: 0.5% is a fractional weight, and Istio",
            ),
            ("  mirror: {percent: 10}\n", "spec.traffic: spec.mirror"),
            (
                "  experiment: {match: [{cookie: {name: a, value: b}}]}\n",
                "spec.traffic: spec.mirror and spec.experiment",
            ),
            (
                "  service: {port: 80}\n  traffic: {gatewayAPI: {grpcRoutes: [g]}}\n  experiment: {match: [{cookie: {name: a, value: b}}]}\n",
                "spec.experiment.match: gRPC requests carry no cookies",
            ),
            (
                "  service: {port: 80}\n  traffic: {gatewayAPI: {httpRoutes: [g]}}\n  experiment: {match: [{}]}\n",
                "spec.experiment.match: each match needs",
            ),
            (
                "  service: {port: 80}\n  traffic: {gatewayAPI: {httpRoutes: [g]}}\n  mirror: {percent: 0}\n",
                "spec.mirror.percent",
            ),
            (
                "  service: {port: 80}\n  traffic: {gatewayAPI: {httpRoutes: [g]}}\n  mirror: {percent: 5, duration: 0s}\n",
                "spec.mirror.duration",
            ),
            ("  replicas: -1\n", "spec.replicas"),
            ("  stepDuration: 0s\n", "spec.stepDuration"),
            ("  scaleDownDelay: -5s\n", "spec.scaleDownDelay"),
            (
                "  stepDuration: 10m\n  progressDeadline: 5m\n",
                "spec.progressDeadline",
            ),
            ("  revisionHistoryLimit: -2\n", "spec.revisionHistoryLimit"),
            (
                "  analysis: {confidence: 1.0, metrics: [{name: x, query: up, max: 1}]}\n",
                "spec.analysis.confidence",
            ),
            ("  analysis: {metrics: []}\n", "spec.analysis.metrics"),
            (
                "  analysis: {scrapeInterval: 0s, metrics: [{name: x, query: up, max: 1}]}\n",
                "spec.analysis.scrapeInterval",
            ),
            (
                "  analysis: {metrics: [{name: x, query: up}]}\n",
                "spec.analysis.metrics[0].query",
            ),
            (
                "  analysis: {metrics: [{name: x, errorRate: {requests: a, errors: b, maxRatio: 0.5}}]}\n",
                "spec.analysis.metrics[0].errorRate.maxRatio",
            ),
            (
                "  analysis: {metrics: [{name: x, errorRate: {requests: a}}]}\n",
                "spec.analysis.metrics[0].errorRate: set either counters",
            ),
            (
                "  analysis: {metrics: [{name: x, errorRate: {requests: a, errors: b, counters: {requests: a, errors: b}}}]}\n",
                "spec.analysis.metrics[0].errorRate: set either counters",
            ),
            (
                "  analysis: {metrics: [{name: x, latency: {buckets: b, threshold: 0}}]}\n",
                "spec.analysis.metrics[0].latency.threshold",
            ),
            (
                "  analysis: {metrics: [{name: x, latency: {buckets: b, threshold: 0.25, maxRatio: 0.9}}]}\n",
                "spec.analysis.metrics[0].latency.maxRatio",
            ),
            (
                "  analysis: {metrics: [{name: x, latency: {buckets: b, threshold: 0.25, maxSlowShare: 2}}]}\n",
                "spec.analysis.metrics[0].latency.maxSlowShare",
            ),
            (
                "  analysis: {metrics: [{name: x, query: up, max: 1, latency: {buckets: b, threshold: 0.25}}]}\n",
                "spec.analysis.metrics[0]: set exactly one of query, errorRate or latency",
            ),
            (
                "  gates: [{name: g, type: PostRollout}]\n",
                "spec.gates[0].url: a PostRollout hook",
            ),
            (
                "  gates: [{name: g, type: BeforeStep, steps: [4]}]\n",
                "spec.gates[0].steps: step 4 is not a step of this Canary, which has steps 1 to 3",
            ),
            (
                "  gates: [{name: g, type: ConfirmPromotion, steps: [1]}]\n",
                "spec.gates[0].steps: only a BeforeStep",
            ),
            (
                "  gates: [{name: g, type: OnRollback, url: 'http://a', onFailure: Abort}]\n",
                "spec.gates[0].onFailure",
            ),
            (
                "  gates: [{name: g, type: BeforeStep, url: 'file:///x'}]\n",
                "spec.gates[0].url: must be an http",
            ),
            (
                "  gates: [{name: g, type: BeforeStep}, {name: g, type: PreRollout}]\n",
                "spec.gates[1].name",
            ),
            (
                "  notifications: [{name: hook, format: CloudEvents, url: 'ftp://x'}]\n",
                "spec.notifications[0].url: must be an http",
            ),
            (
                "  notifications: [{name: hook, format: Slack}]\n",
                "spec.notifications[0]: set exactly one of url and urlFrom",
            ),
            (
                "  notifications: [{name: a, format: Slack, url: 'http://a'}, {name: a, format: Teams, url: 'http://b'}]\n",
                "spec.notifications[1].name",
            ),
            (
                "  notifications: [{name: a, format: Slack, url: 'http://a', reasons: [Promoted, Exploded]}]\n",
                "spec.notifications[0].reasons: Exploded",
            ),
        ] {
            let problem = spec(extra).problem().unwrap_or_default();
            assert!(problem.starts_with(field), "{extra:?}: {problem:?}");
        }
    }
}

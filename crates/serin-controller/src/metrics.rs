//! The controller's own figures, served at `/metrics` in the OpenMetrics format.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serin_api::Phase;

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
    failures: Family<ErrorLabels, Counter>,
    duration: Histogram,
    weight: Family<CanaryLabels, Gauge<i64, AtomicI64>>,
    phase: Family<PhaseLabels, Gauge<i64, AtomicI64>>,
    leader: Gauge<i64, AtomicI64>,
    undecodable: Gauge<i64, AtomicI64>,
    undecodable_canaries: Mutex<BTreeSet<(String, String)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("serin");
        let reconciles = Counter::<u64, AtomicU64>::default();
        let failures = Family::<ErrorLabels, Counter<u64, AtomicU64>>::default();
        let duration = Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]);
        let weight = Family::default();
        let phase = Family::default();
        let leader = Gauge::default();
        let undecodable = Gauge::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
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
            "canary_phase",
            "1 for each Canary's current phase, 0 for the others",
            phase.clone(),
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
            failures,
            duration,
            weight,
            phase,
            leader,
            undecodable,
            undecodable_canaries: Mutex::default(),
        }
    }
}

impl Metrics {
    /// Counts one reconcile and its duration, and its failure by layer.
    pub fn reconciled(&self, took: Duration, failed_in: Option<&'static str>) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
        if let Some(layer) = failed_in {
            self.failures.get_or_create(&ErrorLabels { layer }).inc();
        }
    }

    /// Records a Canary's phase and weight after a reconcile.
    pub fn canary(&self, namespace: &str, canary: &str, phase: Option<Phase>, weight: i32) {
        let labels = CanaryLabels {
            namespace: namespace.to_owned(),
            canary: canary.to_owned(),
        };
        self.weight.get_or_create(&labels).set(i64::from(weight));
        for each in PHASES {
            let labels = PhaseLabels {
                namespace: namespace.to_owned(),
                canary: canary.to_owned(),
                phase: format!("{each:?}"),
            };
            self.phase
                .get_or_create(&labels)
                .set(i64::from(phase == Some(each)));
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
        self.weight.remove(&CanaryLabels {
            namespace: namespace.to_owned(),
            canary: canary.to_owned(),
        });
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
    fn exports_reconciles_and_per_canary_phase_and_weight() {
        let metrics = Metrics::default();
        metrics.reconciled(Duration::from_millis(3), None);
        metrics.reconciled(Duration::from_millis(3), Some("apply"));
        metrics.canary("demo", "web", Some(Phase::Progressing), 25);
        let text = metrics.encode();
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
}

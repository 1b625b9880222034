//! What `kubectl serin get` shows, as a pure function of what was read.

use std::fmt::Write as _;

use comfy_table::presets::UTF8_BORDERS_ONLY;
use comfy_table::{Cell, Table};
use k8s_openapi::api::apps::v1::ReplicaSet;
use serin_api::{Canary, Exposure, REVISION_LABEL, RequestMatch, Weight, condition};

/// One event line: when, type, reason, message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventLine {
    /// How long ago, already formatted (`12s`).
    pub age: String,
    /// Normal or Warning.
    pub kind: String,
    /// The reason.
    pub reason: String,
    /// The message.
    pub note: String,
}

/// A bar of `width` cells, filled in proportion to `weight`; a canary with any
/// traffic (0.1%, say) fills one cell at least, so it never reads as none.
pub fn bar(weight: Weight, width: usize) -> String {
    let filled = ((weight.share() * width as f64).round() as usize)
        .clamp(usize::from(!weight.is_zero()), width);
    format!("{}{}", "█".repeat(filled), "░".repeat(width - filled))
}

/// An experiment's matches for people: `x-canary: yes, or cookie canary=always`.
fn matches(matches: &[RequestMatch]) -> String {
    let each = matches.iter().map(|m| {
        let headers = m.headers.iter().map(|h| format!("{}: {}", h.name, h.value));
        let cookie = m
            .cookie
            .iter()
            .map(|c| format!("cookie {}={}", c.name, c.value));
        headers.chain(cookie).collect::<Vec<_>>().join(" and ")
    });
    each.collect::<Vec<_>>().join(", or ")
}

/// The whole view of one Canary.
pub fn render(canary: &Canary, replica_sets: &[ReplicaSet], events: &[EventLine]) -> String {
    let status = canary.status.clone().unwrap_or_default();
    let name = canary.metadata.name.clone().unwrap_or_default();
    let namespace = canary.metadata.namespace.clone().unwrap_or_default();
    let phase = status
        .phase
        .map(|p| format!("{p:?}"))
        .unwrap_or_else(|| "Pending".into());
    let steps = canary.spec.stages().count();
    let mut out = String::new();
    let _ = writeln!(out, "Canary {namespace}/{name}   {phase}");
    if let Some(reference) = &canary.spec.workload_ref {
        let _ = writeln!(
            out,
            "Adopts Deployment {} (scaleDown {:?}; deleting the Canary gives it back)",
            reference.name,
            reference.scale_down.unwrap_or_default()
        );
    }
    let step = if status.step > 0 {
        format!("{}/{steps}", status.step)
    } else {
        format!("-/{steps}")
    };
    let before = match (&canary.spec.mirror, &canary.spec.experiment) {
        (Some(mirror), Some(_)) => format!("mirror {}%, experiment, ", mirror.percent),
        (Some(mirror), None) => format!("mirror {}%, ", mirror.percent),
        (None, Some(_)) => "experiment, ".to_owned(),
        (None, None) => String::new(),
    };
    let weights: Vec<String> = canary.spec.steps.iter().map(Weight::to_string).collect();
    let _ = writeln!(
        out,
        "Step   {step}   {before}steps [{}]{}",
        weights.join(", "),
        if canary.spec.paused {
            "   (paused)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "Weight {} {:>3}% canary",
        bar(status.weight, 30),
        status.weight
    );
    match (
        status.exposure,
        &canary.spec.mirror,
        &canary.spec.experiment,
    ) {
        (Some(Exposure::Mirror), Some(mirror), _) => {
            let _ = writeln!(
                out,
                "Mirror {}% of stable's requests copied to the canary (answers discarded)",
                mirror.percent
            );
        }
        (Some(Exposure::Experiment), _, Some(experiment)) => {
            let _ = writeln!(
                out,
                "Experiment: requests with {} go to the canary",
                matches(&experiment.r#match)
            );
        }
        _ => {}
    }
    for condition in &status.conditions {
        if condition.type_ == condition::PROGRESSING
            || (condition.type_ == condition::INVALID_SPEC && condition.status == "True")
        {
            let _ = writeln!(
                out,
                "{}: {} {}",
                condition.type_, condition.reason, condition.message
            );
        }
    }
    if let Some(command) = &status.last_command {
        let _ = writeln!(
            out,
            "Last command: {} ({}) {}",
            command.command,
            command.nonce,
            command.outcome.clone().unwrap_or_default()
        );
    }

    let mut revisions = Table::new();
    revisions
        .load_style(UTF8_BORDERS_ONLY)
        .set_header(["ROLE", "REVISION", "PODS", "AVAILABLE"]);
    for (role, revision) in [
        ("stable", &status.stable_revision),
        ("canary", &status.canary_revision),
    ] {
        let Some(revision) = revision else { continue };
        let rs = replica_sets.iter().find(|rs| {
            rs.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(REVISION_LABEL))
                == Some(revision)
        });
        let desired = rs.and_then(|rs| rs.spec.as_ref()?.replicas).unwrap_or(0);
        let available = rs
            .and_then(|rs| rs.status.as_ref()?.available_replicas)
            .unwrap_or(0);
        revisions.add_row([
            Cell::new(role),
            Cell::new(revision),
            Cell::new(desired),
            Cell::new(available),
        ]);
    }
    let _ = writeln!(out, "{revisions}");

    if !status.analysis.is_empty() {
        let mut analysis = Table::new();
        analysis.load_style(UTF8_BORDERS_ONLY).set_header([
            "METRIC", "CANARY", "STABLE", "RATIO", "EVIDENCE", "VERDICT", "WHY",
        ]);
        let latency: Vec<&str> = canary
            .spec
            .analysis
            .iter()
            .flat_map(|analysis| &analysis.metrics)
            .filter(|metric| metric.latency.is_some())
            .map(|metric| metric.name.as_str())
            .collect();
        for metric in &status.analysis {
            let bad = if latency.contains(&metric.name.as_str()) {
                "slow"
            } else {
                "errors"
            };
            let (canary, stable) = match &metric.counts {
                Some(counts) => (
                    arm(
                        metric.canary,
                        counts.canary_errors,
                        counts.canary_requests,
                        bad,
                    ),
                    arm(
                        metric.stable,
                        counts.stable_errors,
                        counts.stable_requests,
                        bad,
                    ),
                ),
                None => (number(metric.canary), number(metric.stable)),
            };
            let ratio = metric.ratio.map_or("-".to_owned(), |r| {
                format!(
                    "{:.2}–{}",
                    r.lower,
                    r.upper.map_or("∞".to_owned(), |u| format!("{u:.2}"))
                )
            });
            analysis.add_row([
                metric.name.clone(),
                canary,
                stable,
                ratio,
                metric
                    .evidence
                    .map_or("-".to_owned(), |e| format!("{e:.3}")),
                if metric.dry_run {
                    format!("{:?} (dry run)", metric.verdict)
                } else {
                    format!("{:?}", metric.verdict)
                },
                metric.message.clone().unwrap_or_default(),
            ]);
        }
        let _ = writeln!(out, "{analysis}");
    }

    if !status.gates.is_empty() {
        let mut gates = Table::new();
        gates.load_style(UTF8_BORDERS_ONLY).set_header([
            "GATE",
            "TYPE",
            "STEP",
            "STATE",
            "LAST ANSWER",
        ]);
        for record in &status.gates {
            let gate = canary.spec.gates.iter().find(|g| g.name == record.name);
            let kind = gate.map_or("-".to_owned(), |g| format!("{:?}", g.r#type));
            let said = match (&record.message, gate) {
                (Some(said), _) => said.clone(),
                (None, Some(gate)) if gate.is_manual() => {
                    "waiting for kubectl serin approve".to_owned()
                }
                (None, _) => "-".to_owned(),
            };
            gates.add_row([
                record.name.clone(),
                kind,
                record.step.to_string(),
                format!("{:?}", record.state),
                said,
            ]);
        }
        let _ = writeln!(out, "{gates}");
    }

    if !events.is_empty() {
        let mut table = Table::new();
        table
            .load_style(UTF8_BORDERS_ONLY)
            .set_header(["AGE", "TYPE", "REASON", "MESSAGE"]);
        for event in events {
            table.add_row([&event.age, &event.kind, &event.reason, &event.note]);
        }
        let _ = writeln!(out, "{table}");
    }
    out
}

fn number(value: Option<f64>) -> String {
    value.map_or("-".to_owned(), |v| format!("{v:.4}"))
}

/// An arm's share of bad requests with the counts behind it, `2.10% (12/571
/// errors)`, or `slow` for a latency metric.
fn arm(rate: Option<f64>, bad: f64, requests: f64, what: &str) -> String {
    rate.map_or("-".to_owned(), |r| {
        format!("{:.2}% ({bad:.0}/{requests:.0} {what})", r * 100.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_fills_in_proportion() {
        let pct = Weight::from_percent;
        assert_eq!(bar(pct(0), 10), "░░░░░░░░░░");
        assert_eq!(bar(pct(25), 4), "█░░░");
        assert_eq!(bar(pct(100), 4), "████");
        assert_eq!(bar(Weight::from_millionths(1_000), 10), "█░░░░░░░░░");
    }

    /// Canary `demo/web` with `spec` (besides its selector and template) and `status`.
    fn canary(spec: serde_json::Value, status: serde_json::Value) -> Canary {
        let mut object = serde_json::json!({
            "apiVersion": "serin.dev/v1alpha1", "kind": "Canary",
            "metadata": {"name": "web", "namespace": "demo"},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "web:2"}]}}
            },
            "status": status
        });
        if let (Some(base), Some(extra)) = (object["spec"].as_object_mut(), spec.as_object()) {
            base.extend(extra.clone());
        }
        serde_json::from_value(object).unwrap()
    }

    #[test]
    fn an_adopting_canary_names_its_deployment() {
        let mut canary = canary(serde_json::json!({}), serde_json::json!({}));
        canary.spec.template = None;
        canary.spec.workload_ref = Some(serin_api::WorkloadRef {
            kind: serin_api::WorkloadKind::Deployment,
            name: "web".into(),
            scale_down: None,
        });
        let text = render(&canary, &[], &[]);
        assert!(
            text.contains("Adopts Deployment web (scaleDown Progressively;"),
            "{text}"
        );
    }

    #[test]
    fn renders_phase_step_weight_revisions_and_events() {
        let canary = canary(
            serde_json::json!({"steps": [25, 50]}),
            serde_json::json!( {"phase": "Progressing", "step": 1, "weight": 25,
                       "stableRevision": "aaaaaaaaaa", "canaryRevision": "bbbbbbbbbb",
                       "analysis": [{"name": "errors", "canary": 0.021, "stable": 0.01,
                                     "counts": {"canaryRequests": 571.0, "canaryErrors": 12.0,
                                                "stableRequests": 1700.0, "stableErrors": 17.0},
                                     "ratio": {"lower": 1.2}, "evidence": 3.5,
                                     "verdict": "Pass", "message": "canary 2.10% vs stable 1.00%"}]}),
        );
        let rs: ReplicaSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-bbbbbbbbbb", "labels": {"serin.dev/revision": "bbbbbbbbbb"}},
            "spec": {"replicas": 1, "selector": {}},
            "status": {"replicas": 1, "availableReplicas": 1}
        }))
        .unwrap();
        let events = [EventLine {
            age: "3s".into(),
            kind: "Normal".into(),
            reason: "RolloutStarted".into(),
            note: "rolling out revision bbbbbbbbbb".into(),
        }];
        let text = render(&canary, &[rs], &events);
        assert!(text.contains("Canary demo/web   Progressing"), "{text}");
        assert!(text.contains("Step   1/2   steps [25, 50]"), "{text}");
        assert!(text.contains(" 25% canary"), "{text}");
        assert!(text.contains("bbbbbbbbbb"), "{text}");
        assert!(text.contains("RolloutStarted"), "{text}");
        assert!(text.contains("2.10% (12/571 errors)"), "{text}");
        assert!(text.contains("1.20–∞"), "{text}");
        assert!(text.contains("3.500"), "{text}");
    }

    #[test]
    fn gates_show_where_each_stands_and_what_a_manual_one_waits_for() {
        let canary = canary(
            serde_json::json!({"gates": [
                {"name": "pre", "type": "PreRollout", "url": "http://gates/pre"},
                {"name": "approval", "type": "ConfirmPromotion"}
            ]}),
            serde_json::json!({"phase": "Progressing", "step": 2, "weight": 50,
            "gates": [
                {"name": "pre", "revision": "bbbb", "step": 1, "state": "Passed",
                 "message": "answered 200 OK", "since": "2026-12-04T09:00:00Z"},
                {"name": "approval", "revision": "bbbb", "step": 2, "state": "Waiting",
                 "since": "2026-12-04T09:01:00Z"}
            ]}),
        );
        let text = render(&canary, &[], &[]);
        let row = |gate: &str| {
            text.lines()
                .find(|line| line.contains(gate))
                .unwrap_or_default()
                .split_whitespace()
                .filter(|word| *word != "│")
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            row("PreRollout"),
            "pre PreRollout 1 Passed answered 200 OK",
            "{text}"
        );
        assert_eq!(
            row("ConfirmPromotion"),
            "approval ConfirmPromotion 2 Waiting waiting for kubectl serin approve",
            "{text}"
        );
    }

    #[test]
    fn a_latency_metric_counts_slow_requests() {
        let canary = canary(
            serde_json::json!({"analysis": {"metrics": [{"name": "latency", "latency": {"buckets": "b", "threshold": 0.25}}]}}),
            serde_json::json!({"phase": "Progressing", "step": 1, "weight": 10,
                       "analysis": [{"name": "latency", "canary": 0.08, "stable": 0.02,
                                     "counts": {"canaryRequests": 500.0, "canaryErrors": 40.0,
                                                "stableRequests": 4500.0, "stableErrors": 90.0},
                                     "verdict": "Fail", "message": "canary share slower than 0.25 8.00% vs stable 2.00%"}]}),
        );
        let text = render(&canary, &[], &[]);
        assert!(text.contains("8.00% (40/500 slow)"), "{text}");
        assert!(text.contains("2.00% (90/4500 slow)"), "{text}");
    }

    #[test]
    fn a_metric_in_dry_run_says_so_beside_its_verdict() {
        let canary = canary(
            serde_json::json!({"analysis": {"metrics": [{"name": "p99", "query": "q", "max": 0.25, "dryRun": true}]}}),
            serde_json::json!({"phase": "Progressing", "step": 1, "weight": 10,
                       "analysis": [{"name": "p99", "canary": 0.4, "stable": 0.1, "verdict": "Fail",
                                     "dryRun": true, "message": "canary 0.4 above max 0.25"}]}),
        );
        let text = render(&canary, &[], &[]);
        assert!(
            text.lines()
                .any(|line| line.contains("p99") && line.contains("Fail (dry run)")),
            "{text}"
        );
    }

    #[test]
    fn mirroring_and_an_experiment_say_what_the_canary_receives() {
        let spec = serde_json::json!({"steps": [50], "mirror": {"percent": 20},
            "experiment": {"match": [{"headers": [{"name": "x-canary", "value": "yes"}]},
                                     {"cookie": {"name": "canary", "value": "always"}}]}});
        let mirroring = canary(
            spec.clone(),
            serde_json::json!({"phase": "Progressing", "step": 1, "weight": 0, "exposure": "Mirror"}),
        );
        let text = render(&mirroring, &[], &[]);
        assert!(
            text.contains("Step   1/3   mirror 20%, experiment, steps [50]"),
            "{text}"
        );
        assert!(
            text.contains("Mirror 20% of stable's requests copied to the canary"),
            "{text}"
        );
        let experimenting = canary(
            spec,
            serde_json::json!({"phase": "Progressing", "step": 2, "weight": 0, "exposure": "Experiment"}),
        );
        let text = render(&experimenting, &[], &[]);
        assert!(
            text.contains(
                "Experiment: requests with x-canary: yes, or cookie canary=always go to the canary"
            ),
            "{text}"
        );
    }
}

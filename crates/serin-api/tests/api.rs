//! The Canary types against the documented examples and the generated CRD.

use std::time::Duration;

use serin_api::{Canary, CanaryStatus, Phase, Weight, canary_crd};

const MINIMAL: &str = include_str!("../../../docs/examples/minimal.yaml");
const PODINFO: &str = include_str!("../../../docs/examples/podinfo.yaml");

fn parse(yaml: &str) -> Canary {
    serde_norway::from_str(yaml).unwrap_or_else(|error| panic!("example does not parse: {error}"))
}

#[test]
fn minimal_example_gets_the_documented_defaults() {
    let canary = parse(MINIMAL);
    let spec = &canary.spec;
    assert_eq!(spec.replicas, 2);
    assert_eq!(spec.steps, [10, 25, 50].map(Weight::from_percent));
    assert_eq!(Duration::from(spec.step_duration), Duration::from_secs(60));
    assert_eq!(
        Duration::from(spec.progress_deadline),
        Duration::from_secs(600)
    );
    assert_eq!(
        Duration::from(spec.scale_down_delay),
        Duration::from_secs(30)
    );
    assert_eq!(spec.revision_history_limit, 2);
    assert!(!spec.paused);
    assert!(spec.traffic.is_none());
    assert!(spec.analysis.is_none());
}

#[test]
fn podinfo_example_reads_every_section() {
    let canary = parse(PODINFO);
    let spec = &canary.spec;
    assert_eq!(spec.steps, [1, 5, 25, 50].map(Weight::from_percent));
    let routes = spec
        .traffic
        .as_ref()
        .and_then(|traffic| traffic.gateway_api.as_ref())
        .map(|router| router.http_routes.clone());
    assert_eq!(routes, Some(vec!["podinfo".to_owned()]));
    let analysis = spec.analysis.as_ref().unwrap_or_else(|| panic!("analysis"));
    assert_eq!(Duration::from(analysis.interval), Duration::from_secs(30));
    assert_eq!(analysis.confidence, 0.95);
    let errors = &analysis.metrics[0];
    let error_rate = errors
        .error_rate
        .as_ref()
        .unwrap_or_else(|| panic!("errorRate"));
    assert_eq!(error_rate.max_ratio, 1.0);
    assert_eq!(error_rate.max_rate, Some(0.05));
    let Some(serin_api::Counting::Counters(counters)) = error_rate.counting() else {
        panic!("the example counts from counters");
    };
    assert!(counters.requests.contains("{{pods}}") && counters.errors.contains("5.."));
    let latency = analysis.metrics[1]
        .latency
        .as_ref()
        .unwrap_or_else(|| panic!("latency"));
    assert_eq!((latency.threshold, latency.max_ratio), (0.25, 1.5));
    assert!(
        latency
            .buckets
            .ends_with("_bucket{namespace=\"{{namespace}}\",pod=~\"{{pods}}\"}")
    );
    assert_eq!(
        analysis.scrape_interval.map(Duration::from),
        Some(Duration::from_secs(15))
    );
    let p99 = &analysis.metrics[2];
    assert_eq!(p99.max, Some(0.5));
    assert_eq!(p99.failure_limit(), 3);
}

#[test]
fn failure_limit_defaults_to_one() {
    let metric: serin_api::Metric =
        serde_json::from_value(serde_json::json!({"name": "p99", "query": "vector(1)", "max": 1}))
            .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(metric.failure_limit(), 1);
}

#[test]
fn status_round_trips_in_kubernetes_casing() {
    let status = CanaryStatus {
        phase: Some(Phase::Progressing),
        stable_revision: Some("5d8f7c9b6a".into()),
        weight: Weight::from_percent(25),
        step: 3,
        ..CanaryStatus::default()
    };
    let json = serde_json::to_value(&status).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(json["phase"], "Progressing");
    assert_eq!(json["stableRevision"], "5d8f7c9b6a");
    assert_eq!(json["weight"], 25);
    let back: CanaryStatus = serde_json::from_value(json).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(back, status);
}

#[test]
fn crd_has_names_subresources_and_columns_for_kubectl() {
    let crd = canary_crd();
    assert_eq!(crd.spec.names.short_names, Some(vec!["cn".to_owned()]));
    assert_eq!(crd.spec.names.categories, Some(vec!["serin".to_owned()]));
    let version = &crd.spec.versions[0];
    let subresources = version
        .subresources
        .as_ref()
        .unwrap_or_else(|| panic!("subresources"));
    assert!(subresources.status.is_some());
    let scale = subresources
        .scale
        .as_ref()
        .unwrap_or_else(|| panic!("scale"));
    assert_eq!(scale.spec_replicas_path, ".spec.replicas");
    assert_eq!(scale.status_replicas_path, ".status.replicas");
    assert_eq!(
        scale.label_selector_path.as_deref(),
        Some(".status.selector")
    );
    let columns: Vec<&str> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|column| column.name.as_str())
        .collect();
    assert_eq!(
        columns,
        ["Phase", "Weight", "Stable", "Canary", "Step", "Age"]
    );
}

#[test]
fn crd_descriptions_are_unwrapped_for_kubectl_explain() {
    let value = serde_json::to_value(canary_crd()).unwrap_or_else(|error| panic!("{error}"));
    let mut wrapped = Vec::new();
    collect_wrapped(&value, &mut wrapped);
    assert!(
        wrapped.is_empty(),
        "descriptions with line breaks: {wrapped:#?}"
    );
}

fn collect_wrapped(value: &serde_json::Value, found: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                if let (true, Some(text)) = (key == "description", child.as_str())
                    && text.replace("\n\n", "").contains('\n')
                {
                    found.push(text.to_owned());
                }
                collect_wrapped(child, found);
            }
        }
        serde_json::Value::Array(items) => {
            items.iter().for_each(|item| collect_wrapped(item, found))
        }
        _ => {}
    }
}

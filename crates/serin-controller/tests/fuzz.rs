//! Random Canary objects, valid and invalid against the schema, through everything
//! the controller does with one before it touches the cluster: decode, the
//! revision hash, the controller-side spec checks and the state machine. Nothing
//! panics or stalls, and every refusal names a field.

use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;
use serde_json::{Value, json};
use serin_api::{CanaryStatus, Phase};
use serin_controller::analysis::Analyst;
use serin_controller::watched::{Read, WatchedCanary};
use serin_core::machine::{ObservedReplicaSet, Snapshot, StepVerdict, plan};
use serin_core::revision::revision_of;

fn valid() -> Value {
    json!({
        "apiVersion": "serin.dev/v1alpha1",
        "kind": "Canary",
        "metadata": {"name": "web", "namespace": "shop", "generation": 3},
        "spec": {
            "replicas": 4,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "web:1",
                    "env": [{"name": "RATE", "value": "0.01"}],
                    "ports": [{"containerPort": 8080}]}]}
            },
            "service": {"port": 80, "targetPort": 8080},
            "traffic": {"gatewayAPI": {"httpRoutes": ["web"]}},
            "steps": [10, 25, 50],
            "stepDuration": "1m",
            "progressDeadline": "10m",
            "scaleDownDelay": "30s",
            "revisionHistoryLimit": 2,
            "paused": false,
            "analysis": {
                "interval": "15s",
                "prometheus": {"address": "http://prometheus:9090"},
                "confidence": 0.95,
                "metrics": [
                    {"name": "errors", "errorRate": {
                        "requests": "sum(increase(http_requests_total{pod=~\"{{pods}}\"}[{{elapsed}}]))",
                        "errors": "sum(increase(http_requests_total{pod=~\"{{pods}}\",code=~\"5..\"}[{{elapsed}}]))",
                        "maxRatio": 1.5}},
                    {"name": "errors-counted", "errorRate": {"counters": {
                        "requests": "http_requests_total{pod=~\"{{pods}}\"}",
                        "errors": "http_requests_total{pod=~\"{{pods}}\",code=~\"5..\"}"}}},
                    {"name": "latency", "query": "histogram_quantile(0.99, rate(x_bucket[{{interval}}]))", "max": 0.5}
                ]
            }
        },
        "status": {"phase": "Progressing", "stableRevision": "aaaaaaaaaa", "canaryRevision": "bbbbbbbbbb",
            "step": 2, "weight": 25, "stepStartedAt": "2027-01-15T07:59:00Z"}
    })
}

/// Values of every JSON kind, including ones no schema would allow.
fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        prop_oneof![
            Just("".to_owned()),
            Just("0".to_owned()),
            Just("-5s".to_owned()),
            Just("1h".to_owned()),
            Just("{{pods}".to_owned()),
            "[a-z0-9{}/.-]{0,12}",
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..3)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Every JSON pointer into `value`, so mutations reach each field equally often.
fn pointers(value: &Value, at: String, into: &mut Vec<String>) {
    match value {
        Value::Object(map) => map.iter().for_each(|(key, child)| {
            let here = format!("{at}/{key}");
            into.push(here.clone());
            pointers(child, here, into);
        }),
        Value::Array(items) => items.iter().enumerate().for_each(|(index, child)| {
            let here = format!("{at}/{index}");
            into.push(here.clone());
            pointers(child, here, into);
        }),
        _ => {}
    }
}

/// One change at a field: its value replaced, or the field removed.
#[derive(Clone, Debug)]
struct Mutation {
    field: prop::sample::Index,
    replacement: Option<Value>,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    (
        any::<prop::sample::Index>(),
        prop::option::weighted(0.8, any_value()),
    )
        .prop_map(|(field, replacement)| Mutation { field, replacement })
}

fn mutate(object: &mut Value, mutation: &Mutation) {
    let mut fields = Vec::new();
    pointers(object, String::new(), &mut fields);
    if fields.is_empty() {
        return;
    }
    let pointer = fields[mutation.field.index(fields.len())].clone();
    match &mutation.replacement {
        Some(value) => {
            if let Some(node) = object.pointer_mut(&pointer) {
                *node = value.clone();
            }
        }
        None => {
            let (parent, key) = pointer.rsplit_once('/').unwrap_or_default();
            match object.pointer_mut(parent) {
                Some(Value::Object(map)) => {
                    map.remove(key);
                }
                Some(Value::Array(items)) => {
                    if let Ok(index) = key.parse::<usize>() {
                        items.remove(index);
                    }
                }
                _ => {}
            }
        }
    }
}

fn replica_sets(status: &CanaryStatus, available: i32) -> Vec<ObservedReplicaSet> {
    [&status.stable_revision, &status.canary_revision]
        .into_iter()
        .flatten()
        .map(|revision| ObservedReplicaSet {
            revision: revision.clone(),
            replicas: 2,
            available,
            created: Timestamp::UNIX_EPOCH,
            scale_down_at: None,
            pods_failing: None,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn no_object_panics_and_every_refusal_names_a_field(mutations in prop::collection::vec(mutation(), 1..4)) {
        let mut object = valid();
        for each in &mutations {
            mutate(&mut object, each);
        }
        // The controller's watch takes it in decoded exactly when it decodes.
        let watched = WatchedCanary::from_stored(object.clone());
        let canary = match serin_api::decode(&object) {
            Err(error) => {
                prop_assert!(!error.field.is_empty());
                prop_assert!(error.to_string().starts_with(&error.field), "{error}");
                let decodes = matches!(watched, Ok(WatchedCanary::Decodes { .. }));
                prop_assert!(!decodes, "{:?}", watched);
                return Ok(());
            }
            Ok(canary) => {
                prop_assert!(
                    matches!(watched.as_ref().map(WatchedCanary::read), Ok(Read::Canary(read)) if *read == canary)
                );
                canary
            }
        };
        // Without a template (and no Deployment to adopt) the spec is refused
        // before anything is planned.
        let Some(template) = canary.spec.template.as_ref() else {
            let problem = canary.spec.problem().unwrap_or_default();
            prop_assert!(problem.starts_with("spec.template: set exactly one of"), "{}", problem);
            return Ok(());
        };
        let revision = revision_of(template);
        prop_assert_eq!(revision.len(), 10);
        if let Some(problem) = canary.spec.problem() {
            prop_assert!(problem.starts_with("spec."), "{}", problem);
        }
        if let Some(problem) = Analyst::new(None, 1).spec_problem(canary.spec.analysis.as_ref()) {
            prop_assert!(problem.starts_with("spec."), "{}", problem);
        }
        let now = Timestamp::from_second(1_800_000_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let stored = canary.status.clone().unwrap_or_default();
        for (status, available, verdict) in [
            (CanaryStatus::default(), 0, None),
            (stored.clone(), 0, Some(StepVerdict::Pass)),
            (stored.clone(), 2, Some(StepVerdict::Fail("errors".into()))),
            (CanaryStatus { phase: Some(Phase::Promoting), ..stored }, 2, Some(StepVerdict::Inconclusive("no data".into()))),
        ] {
            let snapshot = Snapshot {
                spec: &canary.spec,
                generation: canary.metadata.generation.unwrap_or_default(),
                replica_sets: replica_sets(&status, available),
                status,
                command: Some("promote/1".into()),
                revision: revision.clone(),
                invalid: None,
                analysis: verdict,
                next_look: None,
                gate_answers: Vec::new(),
                adopted: None,
                now,
            };
            let planned = plan(&snapshot);
            prop_assert!(planned.status.weight <= serin_api::Weight::FULL);
            prop_assert!(planned.requeue_after > std::time::Duration::ZERO || !planned.events.is_empty(),
                "a plan that neither waits nor reports would spin: {:?}", planned);
        }
    }
}

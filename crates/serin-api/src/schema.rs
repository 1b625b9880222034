//! Hand-written schema parts.

use schemars::{Schema, SchemaGenerator, json_schema};
use serde_json::{Value, json};

/// A label value as Kubernetes accepts it: at most 63 characters, alphanumeric at
/// both ends, `-`, `_` and `.` between; or empty.
pub const LABEL_VALUE_PATTERN: &str = "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";

/// Schema of one label value, for maps of labels.
pub fn label_value() -> Value {
    json!({"type": "string", "maxLength": 63, "pattern": LABEL_VALUE_PATTERN})
}

/// Schema of `spec.template`: the labels typed (the selector rule reads them), the pod
/// spec kept whole but not expanded.
///
/// The full PodSpec schema would make the CRD larger than the 256 KiB that a plain
/// `kubectl apply` can store in its last-applied annotation, and a schema cannot
/// check what the API server checks for pods anyway (unique container names, label
/// keys, references between fields). So the controller asks the API server: a
/// server-side dry run of the ReplicaSet before a revision's first ReplicaSet is
/// created, whose refusal becomes the Canary's `InvalidSpec` condition with the API
/// server's own message; and a pod spec that does not even decode (a number where a
/// string belongs) is reported the same way without stopping other Canaries.
pub fn pod_template(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "The pod template to run, as in a Deployment's spec.template. Editing it starts a rollout of a new revision.",
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "metadata": {
                "description": "Labels and annotations of the pods. The labels must include every label of spec.selector.matchLabels.",
                "type": "object",
                "required": ["labels"],
                "properties": {
                    "labels": {
                        "type": "object",
                        "maxProperties": 64,
                        "additionalProperties": label_value()
                    },
                    "annotations": {
                        "type": "object",
                        "additionalProperties": {"type": "string"}
                    }
                }
            },
            "spec": {
                "description": "A core/v1 PodSpec.",
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": true,
                "required": ["containers"],
                "properties": {
                    "containers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": true,
                            "required": ["name", "image"],
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "image": {"type": "string", "minLength": 1}
                            }
                        }
                    }
                }
            }
        }
    })
}

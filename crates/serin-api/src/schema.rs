//! Hand-written schema parts.

use schemars::{Schema, SchemaGenerator, json_schema};

/// Schema of `spec.template`: the labels typed (the selector rule reads them), the pod
/// spec kept whole but not expanded.
///
/// The full PodSpec schema would make the CRD larger than the 256 KiB that a plain
/// `kubectl apply` can store in its last-applied annotation; the API server checks
/// the pod spec anyway when Serin creates the ReplicaSet, and an error there is
/// reported in the Canary's `InvalidSpec` condition.
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
                        "additionalProperties": {"type": "string", "maxLength": 63}
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

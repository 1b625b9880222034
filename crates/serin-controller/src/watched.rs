//! A Canary as the controller's watch keeps it: decoded once, when it arrives,
//! and held typed, or held whole with the reason it does not decode.
//!
//! Typed, a Canary costs a fraction of its untyped JSON tree (a map of a handful
//! of keys is a B-tree node of its own) and is not decoded again on every
//! reconcile. Kept whole when it does not decode, one Canary whose stored pod
//! spec does not fit the types (the API server stores the pod spec without a
//! schema) is reported on its own and cannot stop the watch of the others.

use std::borrow::Cow;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::api::DynamicObject;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use serin_api::{Canary, DecodeError};

/// A Canary from the watch, decoded or not.
#[derive(Clone, Debug)]
pub enum WatchedCanary {
    /// It decodes: what the reconciler plans from.
    Decoded(Box<Canary>),
    /// It does not: the object as stored, and which field does not fit.
    Undecodable {
        /// The object, untyped.
        object: Box<DynamicObject>,
        /// The field and the problem, for the `InvalidSpec` condition.
        error: DecodeError,
    },
}

impl WatchedCanary {
    /// Decodes a stored Canary, dropping first what the reconciler never reads
    /// (managed fields, kubectl's copy of the whole last applied manifest).
    pub fn from_stored(mut object: Value) -> Result<Self, serde_json::Error> {
        if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            metadata.remove("managedFields");
            if let Some(annotations) = metadata
                .get_mut("annotations")
                .and_then(Value::as_object_mut)
            {
                annotations.remove(LAST_APPLIED);
            }
        }
        Ok(match serin_api::decode(&object) {
            Ok(canary) => Self::Decoded(Box::new(canary)),
            Err(error) => Self::Undecodable {
                object: Box::new(serde_json::from_value(object)?),
                error,
            },
        })
    }
}

/// The annotation `kubectl apply` (client-side) keeps the whole manifest in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

impl<'de> Deserialize<'de> for WatchedCanary {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let object = Value::deserialize(deserializer)?;
        Self::from_stored(object).map_err(serde::de::Error::custom)
    }
}

impl Resource for WatchedCanary {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        Canary::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        Canary::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        Canary::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        Canary::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        match self {
            Self::Decoded(canary) => &canary.metadata,
            Self::Undecodable { object, .. } => &object.metadata,
        }
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Self::Decoded(canary) => &mut canary.metadata,
            Self::Undecodable { object, .. } => &mut object.metadata,
        }
    }
}

#[cfg(test)]
mod tests {
    use kube::ResourceExt;
    use serde_json::json;

    use super::*;

    fn stored(env_value: Value) -> Value {
        json!({
            "apiVersion": "serin.dev/v1alpha1",
            "kind": "Canary",
            "metadata": {
                "name": "web",
                "namespace": "shop",
                "annotations": {
                    LAST_APPLIED: "{...the whole manifest...}",
                    serin_api::COMMAND_ANNOTATION: "promote/1",
                },
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
            },
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "web:1",
                        "env": [{"name": "RATE", "value": env_value}]}]}
                }
            }
        })
    }

    #[test]
    fn a_watched_canary_keeps_its_command_but_not_kubectls_copy_of_the_manifest() {
        for env_value in [json!("0.01"), json!(0.01)] {
            let watched: WatchedCanary = serde_json::from_value(stored(env_value)).unwrap();
            let annotations = watched.annotations();
            assert!(!annotations.contains_key(LAST_APPLIED));
            assert_eq!(
                annotations
                    .get(serin_api::COMMAND_ANNOTATION)
                    .map(String::as_str),
                Some("promote/1")
            );
            assert!(watched.meta().managed_fields.is_none());
        }
    }

    #[test]
    fn a_canary_that_does_not_decode_is_kept_whole_with_the_field_named() {
        let watched: WatchedCanary = serde_json::from_value(stored(json!(0.01))).unwrap();
        let WatchedCanary::Undecodable { object, error } = watched else {
            panic!("a number in an env value decoded");
        };
        assert_eq!(error.field, "spec.template.spec.containers[0].env[0].value");
        assert_eq!(object.data["spec"]["selector"]["matchLabels"]["app"], "web");
        assert_eq!(object.name_any(), "web");
    }

    #[test]
    fn a_canary_that_decodes_is_held_typed() {
        let watched: WatchedCanary = serde_json::from_value(stored(json!("0.01"))).unwrap();
        let WatchedCanary::Decoded(canary) = watched else {
            panic!("a string env value did not decode");
        };
        assert_eq!(canary.spec.selector.match_labels["app"], "web");
    }
}

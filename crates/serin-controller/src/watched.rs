//! A Canary as the controller's watch keeps it: checked once when it arrives,
//! then kept compact (see [`Compact`]) and decoded again at each reconcile.
//!
//! Compact, a Canary is a third of its typed heap and a tenth of its untyped JSON
//! tree (a map of a handful of keys is a B-tree node of its own); decoding it
//! again takes tens of microseconds, a reconcile's smallest part. Checked when it
//! arrives, one Canary whose stored pod spec does not fit the types (the API
//! server stores the pod spec without a schema) is reported on its own and
//! cannot stop the watch of the others.

use std::borrow::Cow;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::api::DynamicObject;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use serin_api::{Canary, DecodeError, RouteKind};

use crate::cache::{Cached, Compact};

/// A Canary from the watch, decodable or not.
#[derive(Clone, Debug)]
pub enum WatchedCanary {
    /// It decodes.
    Decodes {
        /// The Canary, compact.
        canary: Compact<Canary>,
        /// The routes it names, with their kinds: a route that changes wakes it.
        routes: Box<[(RouteKind, String)]>,
    },
    /// It does not: the object as stored, and which field does not fit.
    Undecodable {
        /// The object, untyped.
        object: Box<DynamicObject>,
        /// The field and the problem, for the `InvalidSpec` condition.
        error: DecodeError,
    },
}

/// What a reconcile reads from a [`WatchedCanary`].
pub enum Read {
    /// The Canary to plan from.
    Canary(Box<Canary>),
    /// An object that does not decode, and why.
    Undecodable(Box<DynamicObject>, DecodeError),
}

impl WatchedCanary {
    /// Checks a stored Canary and keeps it, without what the reconciler never
    /// reads (managed fields, kubectl's copy of the whole last applied manifest).
    /// Fails only for an object whose metadata is not an object's.
    pub fn from_stored(object: Value) -> Result<Self, serde_json::Error> {
        Ok(match serin_api::decode(&object) {
            Ok(canary) => Self::Decodes {
                routes: canary
                    .spec
                    .traffic
                    .as_ref()
                    .map(|traffic| {
                        traffic
                            .routes()
                            .into_iter()
                            .map(|(kind, name)| (kind, name.to_owned()))
                            .collect()
                    })
                    .unwrap_or_default(),
                canary: Compact::new(canary),
            },
            Err(error) => {
                let mut object: DynamicObject = serde_json::from_value(object)?;
                strip_metadata(&mut object.metadata);
                Self::Undecodable {
                    object: Box::new(object),
                    error,
                }
            }
        })
    }

    /// The Canary, decoded from what was kept, or the object and why it does
    /// not decode.
    pub fn read(&self) -> Read {
        match self {
            Self::Decodes { canary, .. } => match canary.object() {
                Some(decoded) => Read::Canary(Box::new(decoded)),
                // It decoded when it arrived, so this is not expected; the
                // metadata is enough to report it.
                None => Read::Undecodable(
                    Box::new(DynamicObject {
                        types: None,
                        metadata: canary.meta().clone(),
                        data: Value::Null,
                    }),
                    DecodeError {
                        field: "(the whole object)".into(),
                        problem: "it no longer decodes as it did when it arrived".into(),
                    },
                ),
            },
            Self::Undecodable { object, error } => Read::Undecodable(object.clone(), error.clone()),
        }
    }

    /// Whether its `spec.traffic` names `route`, of `kind`.
    pub fn names_route(&self, kind: RouteKind, route: &str) -> bool {
        match self {
            Self::Decodes { routes, .. } => routes
                .iter()
                .any(|(named_kind, name)| *named_kind == kind && name == route),
            Self::Undecodable { .. } => false,
        }
    }
}

impl Cached for Canary {
    fn strip(&mut self) {
        strip_metadata(&mut self.metadata);
    }
}

/// Drops what the reconciler never reads of a Canary's metadata.
fn strip_metadata(metadata: &mut ObjectMeta) {
    metadata.managed_fields = None;
    if let Some(annotations) = metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
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
            Self::Decodes { canary, .. } => canary.meta(),
            Self::Undecodable { object, .. } => &object.metadata,
        }
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Self::Decodes { canary, .. } => canary.meta_mut(),
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
            let object = match watched.read() {
                Read::Canary(canary) => serde_json::to_value(canary).unwrap(),
                Read::Undecodable(object, _) => serde_json::to_value(object).unwrap(),
            };
            for metadata in [
                serde_json::to_value(watched.meta()).unwrap(),
                object["metadata"].clone(),
            ] {
                assert_eq!(metadata["annotations"][LAST_APPLIED], Value::Null);
                assert_eq!(
                    metadata["annotations"][serin_api::COMMAND_ANNOTATION],
                    "promote/1"
                );
                assert_eq!(metadata["managedFields"], Value::Null);
            }
        }
    }

    #[test]
    fn a_canary_that_does_not_decode_is_kept_whole_with_the_field_named() {
        let watched: WatchedCanary = serde_json::from_value(stored(json!(0.01))).unwrap();
        let Read::Undecodable(object, error) = watched.read() else {
            panic!("a number in an env value decoded");
        };
        assert_eq!(error.field, "spec.template.spec.containers[0].env[0].value");
        assert_eq!(object.data["spec"]["selector"]["matchLabels"]["app"], "web");
        assert_eq!(object.name_any(), "web");
    }

    #[test]
    fn a_canary_that_decodes_reads_as_it_was_stored() {
        let watched: WatchedCanary = serde_json::from_value(stored(json!("0.01"))).unwrap();
        let Read::Canary(canary) = watched.read() else {
            panic!("a string env value did not decode");
        };
        let mut expected = stored(json!("0.01"));
        if let Some(metadata) = expected["metadata"].as_object_mut() {
            metadata.remove("managedFields");
            metadata["annotations"]
                .as_object_mut()
                .map(|annotations| annotations.remove(LAST_APPLIED));
        }
        assert_eq!(*canary, serin_api::decode(&expected).unwrap());
        assert_eq!(canary.spec.selector.match_labels["app"], "web");
    }
}

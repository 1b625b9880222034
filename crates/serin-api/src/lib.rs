//! The `Canary` custom resource (group `serin.dev`, version `v1alpha1`).
//!
//! This crate is the contract between operators and Serin: the Rust types, the
//! OpenAPI schema and CEL rules the API server enforces, and the defaults it
//! fills in. It does no I/O, so every other crate can depend on it.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;

mod contract;
mod decode;
mod schema;
mod spec;
mod status;
mod validate;
mod weight;

pub use contract::{
    ADOPTION_FINALIZER, CANARY_LABEL, COMMAND_ANNOTATION, CommandKind, EXPERIMENT_ANNOTATION,
    FIELD_MANAGER, REPORTING_CONTROLLER, REVISION_LABEL, SCALE_DOWN_AT_ANNOTATION, canary_service,
    condition, reason, replica_set_name, stable_service,
};
pub use decode::{DecodeError, decode};
/// A Go-style duration as written in the spec (`30s`, `2m`).
pub use kube::core::Duration;
pub use spec::{
    Analysis, Canary, CanarySpec, CookieMatch, Counting, ErrorCounters, ErrorRateMetric,
    Experiment, Gate, GateFailure, GateType, GatewayApiRouter, HeaderMatch, IstioRouter,
    LatencyMetric, Metric, Mirror, NotificationFormat, NotificationSink, PodTemplate,
    PrometheusSource, RequestMatch, RouteKind, ScaleDown, SecretKeyReference, SecretReference,
    ServicePorts, StableScale, Stage, Traffic, UrlSource, WorkloadKind, WorkloadRef,
    WorkloadSelector,
};
pub use status::{
    AcknowledgedCommand, CanaryStatus, ErrorCounts, Exposure, GateState, GateStatus, MetricStatus,
    Phase, RatioInterval, Verdict,
};
pub use validate::{EXACTLY_ONE_TEMPLATE, notification_sinks_problem};
pub use weight::{MILLION, Weight};

/// API group of every Serin resource.
pub const GROUP: &str = "serin.dev";

/// The variables a query template may use, as `{{name}}`.
pub const TEMPLATE_VARIABLES: [&str; 8] = [
    "namespace",
    "name",
    "revision",
    "replicaset",
    "pods",
    "service",
    "interval",
    "elapsed",
];

/// The Canary CustomResourceDefinition as it is installed.
///
/// Doc comments are wrapped at 90 columns in the source; the wrapping is removed
/// here so `kubectl explain` can reflow the descriptions to the reader's terminal.
pub fn canary_crd() -> CustomResourceDefinition {
    let mut crd = Canary::crd();
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|validation| validation.open_api_v3_schema.as_mut())
        {
            unwrap_descriptions(schema);
        }
    }
    crd
}

fn unwrap_descriptions(schema: &mut JSONSchemaProps) {
    if let Some(description) = schema.description.as_mut() {
        *description = description
            .split("\n\n")
            .map(|paragraph| paragraph.split('\n').collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n\n");
    }
    let children =
        schema
            .properties
            .iter_mut()
            .flat_map(|properties| properties.values_mut())
            .chain(schema.items.iter_mut().filter_map(|items| match items {
                JSONSchemaPropsOrArray::Schema(item) => Some(item.as_mut()),
                JSONSchemaPropsOrArray::Schemas(_) => None,
            }))
            .chain(schema.additional_properties.iter_mut().filter_map(
                |additional| match additional {
                    JSONSchemaPropsOrBool::Schema(item) => Some(item.as_mut()),
                    JSONSchemaPropsOrBool::Bool(_) => None,
                },
            ));
    children.for_each(unwrap_descriptions);
}

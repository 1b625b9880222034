//! The `Canary` custom resource (group `serin.dev`, version `v1alpha1`).
//!
//! This crate is the contract between operators and Serin: the Rust types, the
//! OpenAPI schema and CEL rules the API server enforces, and the defaults it
//! fills in. It does no I/O, so every other crate can depend on it.

mod schema;
mod spec;
mod status;

pub use spec::{
    Analysis, Canary, CanarySpec, ErrorRateMetric, GatewayApiRouter, Metric, PodTemplate,
    PrometheusSource, SecretReference, ServicePorts, Traffic, WorkloadSelector,
};
pub use status::{AcknowledgedCommand, CanaryStatus, MetricStatus, Phase, RatioInterval, Verdict};

/// API group of every Serin resource.
pub const GROUP: &str = "serin.dev";

/// Label on every ReplicaSet and pod Serin creates: the revision (template hash) it runs.
pub const REVISION_LABEL: &str = "serin.dev/revision";

/// Annotation a person sets to run a one-shot command: `<command>/<nonce>`, for
/// example `promote/7f3a`. Status acknowledges the nonce so it runs exactly once.
pub const COMMAND_ANNOTATION: &str = "serin.dev/command";

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

//! The desired state an operator writes: what to run, how to shift traffic, how to judge it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::Duration;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema;
use crate::status::CanaryStatus;
use crate::weight::Weight;

/// A positive Go-style duration such as `30s`, `2m` or `1h30m`. The regular
/// expression runs first so a malformed value gets this message, not a CEL error.
const POSITIVE_DURATION: &str =
    "self.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$') && duration(self) > duration('0s')";
const POSITIVE_DURATION_MESSAGE: &str =
    "must be a positive duration such as 30s, 2m or 1h30m (units ns, us, ms, s, m, h)";

/// Every `{{` in a query must be one of the known template variables, written
/// without spaces. Literal replacements keep the rule cheap enough for the API
/// server's cost budget, which a regular expression over the query is not.
const KNOWN_VARIABLES: &str = "!self.replace('{{namespace}}', '').replace('{{name}}', '').replace('{{revision}}', '').replace('{{replicaset}}', '').replace('{{pods}}', '').replace('{{service}}', '').replace('{{interval}}', '').replace('{{elapsed}}', '').contains('{{')";
const KNOWN_VARIABLES_MESSAGE: &str = "has an unknown template variable, or one written with spaces: the variables are {{namespace}}, {{name}}, {{revision}}, {{replicaset}}, {{pods}}, {{service}}, {{interval}} and {{elapsed}}";

/// A progressive rollout of one workload: Serin runs a new pod template beside the
/// stable one, shifts traffic to it step by step while judging it against stable,
/// and promotes it or rolls it back on its own.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "serin.dev",
    version = "v1alpha1",
    kind = "Canary",
    namespaced,
    status = "CanaryStatus",
    derive = "PartialEq",
    shortname = "cn",
    category = "serin",
    doc = "A progressive rollout: Serin runs a new pod template beside the stable one, shifts traffic to it step by step while judging it against stable from Prometheus metrics, and promotes it or rolls it back on its own.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase", description = "Where the rollout is"),
    printcolumn(name = "Weight", type_ = "number", json_path = ".status.weight", description = "Percent of traffic on the canary"),
    printcolumn(name = "Stable", type_ = "string", json_path = ".status.stableRevision", description = "Revision serving as stable"),
    printcolumn(name = "Canary", type_ = "string", json_path = ".status.canaryRevision", description = "Revision being rolled out"),
    printcolumn(name = "Step", type_ = "integer", json_path = ".status.step", description = "Current step, from 1; 0 before the first"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 52 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')")
        .message("metadata.name must be a DNS label of at most 52 characters that starts with a letter: Serin names Services <name>-stable and <name>-canary and ReplicaSets <name>-<revision>"),
)]
#[x_kube(
    validation = Rule::new("has(self.template) != has(self.workloadRef)")
        .message("set exactly one of spec.template (Serin runs this pod template) and spec.workloadRef (Serin adopts a Deployment and rolls out its template)"),
    validation = Rule::new("!has(self.template) || self.selector.matchLabels.all(k, has(self.template.metadata.labels) && k in self.template.metadata.labels && self.template.metadata.labels[k] == self.selector.matchLabels[k])")
        .message("spec.selector.matchLabels must all appear, with the same values, in spec.template.metadata.labels")
        .field_path(".selector"),
    validation = Rule::new("has(self.traffic) || self.steps.all(w, w == double(int(w)))")
        .message("spec.steps: a fractional weight needs a router in spec.traffic; by replica counts a step is whole pods, so with N replicas the finest step is 100/N% (one pod of N, about 25% with 4)")
        .field_path(".steps"),
    validation = Rule::new("!has(self.traffic) || !has(self.traffic.istio) || self.steps.all(w, w == double(int(w)))")
        .message("spec.steps: Istio's VirtualService weights are whole percents, so steps must be whole with spec.traffic.istio (Gateway API routes carry fractions)")
        .field_path(".steps"),
    validation = Rule::new("(!has(self.mirror) && !has(self.experiment)) || has(self.traffic)")
        .message("spec.mirror and spec.experiment need a router in spec.traffic (gatewayAPI or istio): pods behind one Service can neither copy requests nor pick them by header")
        .field_path(".traffic"),
    validation = Rule::new("!has(self.experiment) || !has(self.traffic) || !has(self.traffic.gatewayAPI) || !has(self.traffic.gatewayAPI.grpcRoutes) || self.experiment.match.all(m, !has(m.cookie))")
        .message("spec.experiment.match: gRPC requests carry no cookies, so a GRPCRoute cannot match one; match gRPC requests on headers (metadata) instead")
        .field_path(".experiment"),
    validation = Rule::new("!has(self.traffic) || has(self.service)")
        .message("a traffic router shifts weight between Services: set spec.service, or remove spec.traffic to weight by replica counts")
        .field_path(".traffic"),
    validation = Rule::new("!self.progressDeadline.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$') || !self.stepDuration.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$') || duration(self.progressDeadline) > duration(self.stepDuration)")
        .message("spec.progressDeadline must be longer than spec.stepDuration, or no step could ever finish in time")
        .field_path(".progressDeadline"),
)]
#[serde(rename_all = "camelCase")]
pub struct CanarySpec {
    /// Number of pods the workload runs when fully promoted. The scale subresource
    /// points here, so a HorizontalPodAutoscaler can target the Canary. Default 1.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,

    /// Labels that select the workload's pods. They must all appear in
    /// `template.metadata.labels`. Serin adds `serin.dev/revision` to tell the two
    /// revisions apart.
    pub selector: WorkloadSelector,

    /// The pod template to run. Editing it starts a rollout of a new revision; the
    /// revision is a hash of this template. Absent with `workloadRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::pod_template")]
    pub template: Option<PodTemplate>,

    /// A Deployment to adopt instead of `template`: Serin rolls out the
    /// Deployment's pod template (an edit of it starts a rollout) in ReplicaSets of
    /// its own and scales the Deployment down as its own pods take over; deleting
    /// the Canary gives the Deployment back at full size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_ref: Option<WorkloadRef>,

    /// The Services Serin owns: `<name>` selects both revisions, `<name>-stable` and
    /// `<name>-canary` one each. Absent: Serin creates no Services (for workloads that
    /// take no requests) and weights by replica counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServicePorts>,

    /// How a weight is applied to requests. Absent: by replica counts, the pods of
    /// each revision behind the `<name>` Service carry the weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<Traffic>,

    /// Canary weights in percent, strictly increasing, each above 0 and below 100.
    /// After the last step the canary is promoted to 100%. A router carries
    /// fractions down to 0.0001% (a first step of 0.1% is common on big services);
    /// by replica counts steps are whole. Default `[10, 25, 50]`.
    #[serde(default = "default_steps")]
    #[schemars(length(min = 1, max = 20))]
    #[x_kube(
        validation = Rule::new("self.all(w, w >= 0.0001 && w <= 99.9999)")
            .message("each step is a canary weight in percent from 0.0001 to 99.9999; promotion to 100 follows the last step"),
        validation = Rule::new("self.isSorted() && self.all(w, self.indexOf(w) == self.lastIndexOf(w))")
            .message("steps must be strictly increasing, for example [1, 5, 25, 50]"),
    )]
    pub steps: Vec<Weight>,

    /// Before the weighted steps: copy a share of stable's requests to the canary
    /// and discard its answers, so the canary is judged on real requests while no
    /// user sees it. Needs a router in `spec.traffic`. Absent: no mirroring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,

    /// After mirroring, before the weighted steps: send the requests that match to
    /// the canary and every other request to stable (an A/B experiment), judged like
    /// any step. Needs a router in `spec.traffic`. Absent: no experiment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<Experiment>,

    /// Least time spent at each step, analysing, before it may advance. Default `1m`.
    #[serde(default = "default_step_duration")]
    #[x_kube(validation = Rule::new(POSITIVE_DURATION).message(POSITIVE_DURATION_MESSAGE))]
    #[schemars(length(max = 32))]
    pub step_duration: Duration,

    /// A step that has not finished this long after it began (pods not available,
    /// analysis inconclusive) aborts the rollout. Must exceed `stepDuration`. Default `10m`.
    #[serde(default = "default_progress_deadline")]
    #[x_kube(validation = Rule::new(POSITIVE_DURATION).message(POSITIVE_DURATION_MESSAGE))]
    #[schemars(length(max = 32))]
    pub progress_deadline: Duration,

    /// How a router's rollout sizes stable. `Full` (default): stable keeps all
    /// `replicas` pods and the canary's are extra, so a rollback never lacks
    /// capacity. `Weighted`: `replicas` is the total (what an HPA targeting the
    /// Canary decides), split by the weight, each side with enough pods for its
    /// share, so stable is not kept full for traffic it no longer gets. Without a
    /// router the pods always carry the weight, so the total is always split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_scale: Option<StableScale>,

    /// Scale a ReplicaSet that no longer receives traffic down only after this long, so
    /// in-flight requests drain and a quick return is cheap. Default `30s`.
    #[serde(default = "default_scale_down_delay")]
    #[x_kube(validation = Rule::new(POSITIVE_DURATION).message(POSITIVE_DURATION_MESSAGE))]
    #[schemars(length(max = 32))]
    pub scale_down_delay: Duration,

    /// How many old, scaled-down ReplicaSets to keep for a quick rollback. Default 2.
    #[serde(default = "default_revision_history_limit")]
    #[schemars(range(min = 0, max = 50))]
    pub revision_history_limit: i32,

    /// While true, a rollout holds at its current step (traffic and analysis stay as
    /// they are) until set back to false. `kubectl patch` or `kubectl serin pause`.
    #[serde(default)]
    pub paused: bool,

    /// How the canary is judged against stable. Absent: no analysis, steps advance on
    /// `stepDuration` alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Analysis>,

    /// Where Serin tells people of this Canary's transitions (rollout started, step
    /// advanced, analysis failed, promoted, rolled back, ...), each as it happens:
    /// a generic webhook (CloudEvents), Slack or Microsoft Teams. A sink that is
    /// down or slow never holds a rollout: its notifications are dropped, counted in
    /// `serin_notifications_total` and reported as a Warning Event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub notifications: Vec<NotificationSink>,

    /// Checks that hold the rollout until they pass (`PreRollout`, `BeforeStep`,
    /// `ConfirmPromotion`: an HTTP call that answers 2xx, or a person's
    /// `kubectl serin approve`), and hooks called once at a point of it
    /// (`PostRollout`, `OnRollback`, `LoadTest`). Absent: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub gates: Vec<Gate>,
}

/// The pod template of the workload (`spec.template` of a Deployment).
pub type PodTemplate = PodTemplateSpec;

/// The workload's pod labels. Only `matchLabels`: a selector Serin can extend with its
/// revision label and check against the template without surprises.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Labels every pod of the workload carries, for example `{app: podinfo}`.
    #[x_kube(validation = Rule::new("size(self) > 0")
        .message("must hold at least one label, for example {app: podinfo}: an empty selector would select every pod in the namespace"))]
    #[schemars(extend("maxProperties" = 32, "additionalProperties" = schema::label_value()))]
    pub match_labels: BTreeMap<String, String>,
}

/// Ports of the Services Serin owns.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServicePorts {
    /// Port the Services expose.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Container port (number or name) the Services send to. Default: `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("type(self) == int ? (self >= 1 && self <= 65535) : (size(self) <= 15 && self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && self.matches('[a-z]') && !self.contains('--'))")
        .message("must be a port number from 1 to 65535, or a container port's name (at most 15 lowercase letters, digits and single hyphens, with at least one letter)"))]
    pub target_port: Option<IntOrString>,
}

/// Mirroring: copies of a share of stable's requests go to the canary as well,
/// and the canary's answers are discarded.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Mirror {
    /// Percent of stable's requests copied to the canary, 1 to 100. The canary runs
    /// pods for that share, as it would at a step of this weight.
    #[schemars(range(min = 1, max = 100))]
    pub percent: u32,

    /// How long to mirror, judging the canary, before the next step. Default:
    /// `spec.stepDuration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(POSITIVE_DURATION).message(POSITIVE_DURATION_MESSAGE))]
    #[schemars(length(max = 32))]
    pub duration: Option<Duration>,
}

/// An A/B experiment: the requests that match go to the canary, all others to
/// stable.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Experiment {
    /// A request that matches any one of these goes to the canary.
    #[schemars(length(min = 1, max = 8))]
    pub r#match: Vec<RequestMatch>,

    /// How long the experiment runs, judging the canary, before the weighted steps.
    /// Absent: until a person promotes it (`kubectl serin promote`), as long as the
    /// analysis passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(POSITIVE_DURATION).message(POSITIVE_DURATION_MESSAGE))]
    #[schemars(length(max = 32))]
    pub duration: Option<Duration>,
}

/// Conditions on a request, all of which must hold.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.headers) || has(self.cookie)")
    .message("a match needs headers, a cookie or both, for example headers: [{name: x-canary, value: \"yes\"}]"))]
pub struct RequestMatch {
    /// Headers the request carries with exactly these values (names are not case
    /// sensitive; for gRPC, metadata).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1, max = 8), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub headers: Vec<HeaderMatch>,

    /// A cookie the request carries with exactly this value (HTTP routes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<CookieMatch>,
}

/// A header and its exact value.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct HeaderMatch {
    /// The header's name, an HTTP token such as `x-canary`.
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
    )]
    pub name: String,
    /// Its exact value.
    #[schemars(length(min = 1, max = 4096))]
    pub value: String,
}

/// A cookie and its exact value.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CookieMatch {
    /// The cookie's name, an HTTP token such as `canary`.
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
    )]
    pub name: String,
    /// Its exact value: cookie characters, with no space, quote, comma, semicolon or
    /// backslash.
    #[schemars(
        length(min = 1, max = 1024),
        regex(pattern = r"^[A-Za-z0-9!#$%&'()*+\-./:<=>?@\[\]^_`{|}~]+$")
    )]
    pub value: String,
}

/// The router that applies weights. Exactly one may be named.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("(has(self.gatewayAPI) ? 1 : 0) + (has(self.istio) ? 1 : 0) == 1")
    .message("spec.traffic must name exactly one router, for example gatewayAPI: {httpRoutes: [podinfo]} or istio: {virtualService: podinfo}; remove spec.traffic to weight by replica counts"))]
pub struct Traffic {
    /// Weights set on Gateway API HTTPRoutes and GRPCRoutes.
    #[serde(
        rename = "gatewayAPI",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub gateway_api: Option<GatewayApiRouter>,
    /// Weights set on an Istio VirtualService.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub istio: Option<IstioRouter>,
}

/// Istio: Serin sets the weights of the HTTP route destinations whose host is the
/// Service `<name>-stable` or `<name>-canary` (short or fully qualified) in the
/// VirtualService, and leaves every other field as the user wrote it. Istio
/// weights are whole percents, so steps are whole with this router.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IstioRouter {
    /// Name of an existing VirtualService in the Canary's namespace.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub virtual_service: String,
    /// Names of the VirtualService's HTTP routes (`http[].name`) whose weights Serin
    /// sets. Absent: every HTTP route with a destination to the Canary's Services.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(min = 1, max = 16),
        inner(length(min = 1, max = 253)),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub routes: Vec<String>,
    /// Name of an existing DestinationRule for the Service `<name>`, for a
    /// VirtualService whose destinations are the subsets `stable` and `canary` of
    /// host `<name>` rather than the Services `<name>-stable` and `<name>-canary`:
    /// Serin keeps those two subsets selecting the stable and canary revisions (by
    /// their `serin.dev/revision` label) and leaves the rule's other subsets and
    /// fields as they are. Absent: destinations name the two Services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub destination_rule: Option<String>,
}

/// Gateway API: Serin sets the weights of the backendRefs to `<name>-stable` and
/// `<name>-canary` in each route and leaves every other field as the user wrote it.
/// A service that speaks HTTP and gRPC names routes of both kinds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.httpRoutes) || has(self.grpcRoutes)")
    .message("spec.traffic.gatewayAPI must name at least one route: httpRoutes: [web] or grpcRoutes: [web]"))]
pub struct GatewayApiRouter {
    /// Names of existing HTTPRoutes in the Canary's namespace, each named once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(min = 1, max = 8),
        inner(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub http_routes: Vec<String>,
    /// Names of existing GRPCRoutes in the Canary's namespace, each named once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(min = 1, max = 8),
        inner(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub grpc_routes: Vec<String>,
}

/// The kinds of route resource Serin writes traffic to: the routes whose weights
/// it sets, and the Istio DestinationRule whose subsets select the revisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    /// Gateway API `HTTPRoute`.
    Http,
    /// Gateway API `GRPCRoute`.
    Grpc,
    /// Istio `VirtualService`.
    IstioVirtualService,
    /// Istio `DestinationRule`, with the subsets `stable` and `canary`.
    IstioDestinationRule,
}

impl RouteKind {
    /// Every kind, in the order they are written: a DestinationRule's subsets
    /// select the revisions before a VirtualService sends to them.
    pub const ALL: [RouteKind; 4] = [
        RouteKind::Http,
        RouteKind::Grpc,
        RouteKind::IstioDestinationRule,
        RouteKind::IstioVirtualService,
    ];

    /// The kind as its API spells it.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Http => "HTTPRoute",
            Self::Grpc => "GRPCRoute",
            Self::IstioVirtualService => "VirtualService",
            Self::IstioDestinationRule => "DestinationRule",
        }
    }

    /// The resource's API group and version.
    pub fn api_version(self) -> (&'static str, &'static str) {
        match self {
            Self::Http | Self::Grpc => ("gateway.networking.k8s.io", "v1"),
            Self::IstioVirtualService | Self::IstioDestinationRule => ("networking.istio.io", "v1"),
        }
    }

    /// The resource's plural, as the API server serves it.
    pub fn plural(self) -> &'static str {
        match self {
            Self::Http => "httproutes",
            Self::Grpc => "grpcroutes",
            Self::IstioVirtualService => "virtualservices",
            Self::IstioDestinationRule => "destinationrules",
        }
    }

    /// The spec field that names routes of this kind, for messages a person acts on.
    pub fn field(self) -> &'static str {
        match self {
            Self::Http => "spec.traffic.gatewayAPI.httpRoutes",
            Self::Grpc => "spec.traffic.gatewayAPI.grpcRoutes",
            Self::IstioVirtualService => "spec.traffic.istio.virtualService",
            Self::IstioDestinationRule => "spec.traffic.istio.destinationRule",
        }
    }

    /// The list under `spec` Serin writes: Gateway API's rules and Istio's HTTP
    /// routes (which carry the weights), a DestinationRule's subsets. Each is an
    /// atomic list, written whole.
    pub fn weighted_list(self) -> &'static str {
        match self {
            Self::Http | Self::Grpc => "rules",
            Self::IstioVirtualService => "http",
            Self::IstioDestinationRule => "subsets",
        }
    }
}

/// One step of a rollout, as the state machine walks them: mirroring first, then
/// the experiment, then the weights of `spec.steps`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stage<'a> {
    /// `spec.mirror`: the canary gets copies of `percent` of stable's requests.
    Mirror(&'a Mirror),
    /// `spec.experiment`: the canary gets the requests that match.
    Experiment(&'a Experiment),
    /// A weighted step: the canary gets this share of the requests.
    Weight(Weight),
}

impl CanarySpec {
    /// The rollout's steps in order, counted from 1 in `status.step` (no
    /// allocation: the state machine walks them at every reconcile).
    pub fn stages(&self) -> impl Iterator<Item = Stage<'_>> {
        let mirror = self.mirror.as_ref().map(Stage::Mirror);
        let experiment = self.experiment.as_ref().map(Stage::Experiment);
        let weights = self.steps.iter().copied().map(Stage::Weight);
        mirror.into_iter().chain(experiment).chain(weights)
    }
}

impl Traffic {
    /// Every route resource the Canary names, with its kind.
    pub fn routes(&self) -> Vec<(RouteKind, &str)> {
        let gateway = self.gateway_api.iter().flat_map(GatewayApiRouter::routes);
        let istio = self.istio.iter().flat_map(|istio| {
            let rule = istio
                .destination_rule
                .as_deref()
                .map(|rule| (RouteKind::IstioDestinationRule, rule));
            rule.into_iter().chain([(
                RouteKind::IstioVirtualService,
                istio.virtual_service.as_str(),
            )])
        });
        gateway.chain(istio).collect()
    }
}

impl GatewayApiRouter {
    /// Every route the Canary names, with its kind: HTTPRoutes first.
    pub fn routes(&self) -> impl Iterator<Item = (RouteKind, &str)> {
        self.http_routes
            .iter()
            .map(|name| (RouteKind::Http, name.as_str()))
            .chain(
                self.grpc_routes
                    .iter()
                    .map(|name| (RouteKind::Grpc, name.as_str())),
            )
    }
}

/// How the canary is judged against stable.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Analysis {
    /// Time between two analyses of a step. Default `15s`.
    #[serde(default = "default_interval")]
    #[x_kube(validation = Rule::new(POSITIVE_DURATION).message(POSITIVE_DURATION_MESSAGE))]
    #[schemars(length(max = 32))]
    pub interval: Duration,

    /// How often Prometheus scrapes the workload. While a metric compared with stable
    /// leans against the canary (and at a step's start, before anything is seen),
    /// Serin looks at it this often instead of every `interval`, so a clear
    /// regression is acted on within a scrape or two; a canary that looks healthy is
    /// looked at every `interval`. Default: `interval` (no quicker looks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(POSITIVE_DURATION).message(POSITIVE_DURATION_MESSAGE))]
    #[schemars(length(max = 32))]
    pub scrape_interval: Option<Duration>,

    /// Where the metrics are. Default: the controller's `--prometheus-address` flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusSource>,

    /// Chance that a healthy canary is not rolled back by an error-rate metric, even
    /// though the judge looks at every interval. Between 0 and 1, exclusive. Default 0.95.
    #[serde(default = "default_confidence")]
    #[x_kube(validation = Rule::new("self > 0.0 && self < 1.0")
        .message("must be between 0 and 1, exclusive, for example 0.95"))]
    pub confidence: f64,

    /// The metrics, each judged every interval; any failing metric rolls the canary back.
    #[schemars(length(min = 1, max = 16), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub metrics: Vec<Metric>,
}

/// A Prometheus server and how to reach it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusSource {
    /// Base URL of the Prometheus HTTP API, for example `http://prometheus.monitoring:9090`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && (self.startsWith('http://') || self.startsWith('https://'))")
        .message("must be an http:// or https:// URL, for example http://prometheus.monitoring:9090"))]
    pub address: Option<String>,

    /// A Secret in the Canary's namespace with credentials: `token` (a bearer token), or
    /// `username` and `password` (basic auth); and optionally `ca.crt` to trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretReference>,
}

/// A Secret in the Canary's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SecretReference {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// One metric: a threshold on a query (`query` with `min`/`max`), an error rate
/// judged canary against stable (`errorRate`), or latency judged canary against
/// stable (`latency`). Exactly one of the three.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("[has(self.query), has(self.errorRate), has(self.latency)].exists_one(set, set)")
        .message("set exactly one of query (a threshold metric, with min and/or max), errorRate (canary against stable error counts) or latency (canary against stable slow requests)"),
    validation = Rule::new("!has(self.query) || has(self.min) || has(self.max)")
        .message("a query metric needs min, max or both: the bounds each arm's value must stay within")
        .field_path(".query"),
    validation = Rule::new("!has(self.min) || !has(self.max) || self.min <= self.max")
        .message("min must not exceed max")
        .field_path(".min"),
    validation = Rule::new("!has(self.errorRate) || (!has(self.min) && !has(self.max) && !has(self.failureLimit))")
        .message("min, max and failureLimit belong to query metrics; an errorRate metric is bounded by errorRate.maxRatio and errorRate.maxRate")
        .field_path(".errorRate"),
    validation = Rule::new("!has(self.latency) || (!has(self.min) && !has(self.max) && !has(self.failureLimit))")
        .message("min, max and failureLimit belong to query metrics; a latency metric is bounded by latency.maxRatio and latency.maxSlowShare")
        .field_path(".latency"),
)]
pub struct Metric {
    /// Name of the metric, shown in status and events. Unique within the analysis.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,

    /// A PromQL query that returns one number, run once per arm (canary and stable)
    /// with `{{pods}}` and the other template variables filled in for that arm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    #[x_kube(validation = Rule::new(KNOWN_VARIABLES).message(KNOWN_VARIABLES_MESSAGE))]
    pub query: Option<String>,

    /// Lowest acceptable value of `query` for the canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,

    /// Highest acceptable value of `query` for the canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,

    /// Number of intervals out of bounds, in one rollout, that fail the metric. Query
    /// metrics only. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_limit: Option<i32>,

    /// Judge the canary's error rate against stable's from request and error counts,
    /// with a sequential test that stays valid however often it looks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<ErrorRateMetric>,

    /// Judge the canary's share of slow requests against stable's from a histogram,
    /// with the same sequential test as `errorRate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyMetric>,

    /// Judge and show the metric, but never hold or roll back a step on it: a new
    /// metric can be trusted before it is enforced. It is judged at the share of the
    /// confidence budget it would have once enforced, and takes none from the
    /// enforced metrics. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// Request and error counts of one arm, and the tolerances of the comparison.
/// The counts come from raw counters (`counters`, read at the window's two ends) or
/// from two queries (`requests` and `errors`); exactly one of the two.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.counters) != (has(self.requests) || has(self.errors))")
        .message("set either counters (request and error counters, read at the window's two ends) or requests and errors (queries), not both"),
    validation = Rule::new("has(self.counters) || (has(self.requests) && has(self.errors))")
        .message("set counters, or both requests and errors: the counts of requests and of the failed ones"),
)]
pub struct ErrorRateMetric {
    /// The request and error counters of an arm, as series selectors; Serin counts
    /// each series from its samples at the window's start and end. Recommended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<ErrorCounters>,

    /// PromQL for the number of requests an arm served since the step's analysis began,
    /// for example `sum(increase(http_requests_total{pod=~"{{pods}}"}[{{elapsed}}]))`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    #[x_kube(validation = Rule::new(KNOWN_VARIABLES).message(KNOWN_VARIABLES_MESSAGE))]
    pub requests: Option<String>,

    /// PromQL for the number of those requests that failed, in the same window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    #[x_kube(validation = Rule::new(KNOWN_VARIABLES).message(KNOWN_VARIABLES_MESSAGE))]
    pub errors: Option<String>,

    /// Tolerated ratio of the canary's error rate to stable's; at least 1. Default 1.0.
    #[serde(default = "default_max_ratio")]
    #[x_kube(validation = Rule::new("self >= 1.0 && self <= 1000.0")
        .message("must be from 1 to 1000: the canary's error rate may be at most this many times stable's"))]
    pub max_ratio: f64,

    /// Absolute guard rail: the canary fails once its error rate is clearly above this
    /// fraction, whatever stable does. Between 0 and 1. Default: no guard rail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 1.0")
        .message("is a fraction of requests, above 0 and at most 1, for example 0.05 for 5%"))]
    pub max_rate: Option<f64>,
}

/// Counters of requests and of failed requests, each a series selector with
/// template variables, for example
/// `http_requests_total{namespace="{{namespace}}",pod=~"{{pods}}"}`. Every series
/// counts what it gained between its last samples at the window's start and end; a
/// series that appears in the window (a new pod, a first error) counts from zero,
/// and one that restarted counts from its restart. Counts are whole numbers, read
/// the same way for both arms, with no extrapolation.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ErrorCounters {
    /// Selector of the request counters.
    #[schemars(length(min = 1, max = 4096))]
    #[x_kube(validation = Rule::new(KNOWN_VARIABLES).message(KNOWN_VARIABLES_MESSAGE))]
    pub requests: String,

    /// Selector of the failed-request counters; no series (no error yet) is zero.
    #[schemars(length(min = 1, max = 4096))]
    #[x_kube(validation = Rule::new(KNOWN_VARIABLES).message(KNOWN_VARIABLES_MESSAGE))]
    pub errors: String,
}

/// Latency as operators write their objectives: the share of requests slower than a
/// threshold. Each arm's requests and slow requests are counted from a Prometheus
/// histogram's bucket counters, read like `errorRate.counters` (each series' gain
/// between its samples at the window's two ends, no extrapolation), and judged by
/// the error-rate judge with a slow request in place of a failed one.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LatencyMetric {
    /// Selector of the histogram's bucket counters, with template variables, for
    /// example `http_request_duration_seconds_bucket{namespace="{{namespace}}",pod=~"{{pods}}"}`.
    #[schemars(length(min = 1, max = 4096))]
    #[x_kube(validation = Rule::new(KNOWN_VARIABLES).message(KNOWN_VARIABLES_MESSAGE))]
    pub buckets: String,

    /// A request slower than this is slow: one of the histogram's bucket bounds
    /// (`le`), in its unit, for example 0.25 for 250 ms in a `_seconds` histogram.
    #[x_kube(validation = Rule::new("self > 0.0")
        .message("must be above 0: a bucket bound (le) of the histogram, in its unit, for example 0.25"))]
    pub threshold: f64,

    /// Tolerated ratio of the canary's share of slow requests to stable's, at least
    /// one; default 1.5, since a new revision's pods start cold (caches, JIT,
    /// connection pools) and a tolerance of exactly stable's share would judge that.
    #[serde(default = "default_latency_max_ratio")]
    #[x_kube(validation = Rule::new("self >= 1.0 && self <= 1000.0")
        .message("must be from 1 to 1000: the canary's share of slow requests may be at most this many times stable's"))]
    pub max_ratio: f64,

    /// Absolute guard rail: the canary fails once its share of slow requests is
    /// clearly above this fraction, whatever stable does. Default: no guard rail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 1.0")
        .message("is a fraction of requests, above 0 and at most 1, for example 0.05 for 5%"))]
    pub max_slow_share: Option<f64>,
}

/// Where an error-rate metric's counts come from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Counting<'a> {
    /// Raw counters read at the window's two ends.
    Counters(&'a ErrorCounters),
    /// Two queries that each return a count.
    Queries {
        /// The requests query.
        requests: &'a str,
        /// The errors query.
        errors: &'a str,
    },
}

impl ErrorRateMetric {
    /// The one source of counts the spec names; None when it names neither or
    /// both (refused by the schema, and by [`crate::CanarySpec::problem`] for
    /// objects stored under an older one).
    pub fn counting(&self) -> Option<Counting<'_>> {
        match (&self.counters, &self.requests, &self.errors) {
            (Some(counters), None, None) => Some(Counting::Counters(counters)),
            (None, Some(requests), Some(errors)) => Some(Counting::Queries { requests, errors }),
            _ => None,
        }
    }
}

impl Metric {
    /// Failed intervals that fail a threshold metric, with its default applied.
    pub fn failure_limit(&self) -> i32 {
        self.failure_limit.unwrap_or(1)
    }
}

fn default_replicas() -> i32 {
    1
}

fn default_steps() -> Vec<Weight> {
    [10, 25, 50].map(Weight::from_percent).to_vec()
}

fn seconds(secs: u64) -> Duration {
    Duration::from(std::time::Duration::from_secs(secs))
}

fn default_step_duration() -> Duration {
    seconds(60)
}

fn default_progress_deadline() -> Duration {
    seconds(600)
}

fn default_scale_down_delay() -> Duration {
    seconds(30)
}

fn default_revision_history_limit() -> i32 {
    2
}

fn default_interval() -> Duration {
    seconds(15)
}

fn default_confidence() -> f64 {
    0.95
}

fn default_max_ratio() -> f64 {
    1.0
}

fn default_latency_max_ratio() -> f64 {
    1.5
}

/// The Event reasons a notification sink may ask for in `reasons`: every
/// transition the state machine reports. Kept equal to [`crate::reason::TRANSITIONS`]
/// by a test; written out because a CEL rule is a string.
pub(crate) const TRANSITION_REASONS: &str = "self.all(r, r in ['InvalidSpec', 'Initializing', 'Healthy', 'CanaryPodsFailing', 'RolloutStarted', 'RolloutRestarted', 'StableRestored', 'StepAdvanced', 'Paused', 'Resumed', 'Promoting', 'Promoted', 'AbortedByUser', 'AnalysisFailed', 'ProgressDeadlineExceeded', 'Retried', 'CommandAcknowledged', 'InvalidCommand', 'GateWaiting', 'GatePassed', 'GateFailed', 'HookCalled', 'HookFailed'])";

/// One place notifications go.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.url) != has(self.urlFrom)")
        .message("a sink needs exactly one of url (written in the Canary) and urlFrom (read from a Secret, for URLs that carry a credential, as Slack's and Teams' do)"),
)]
pub struct NotificationSink {
    /// The sink's name, unique in the Canary: Events and logs name the sink by it,
    /// never by its URL.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,

    /// The body's shape: `CloudEvents` (a CloudEvents 1.0 JSON event, for any
    /// webhook), `Slack` (an incoming webhook's message) or `Teams` (an Adaptive
    /// Card, as a Teams Workflows webhook takes it).
    pub format: NotificationFormat,

    /// The URL to POST to, `http://` or `https://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')")
        .message("must be an http:// or https:// URL"))]
    #[schemars(length(min = 8, max = 2048))]
    pub url: Option<String>,

    /// The URL, from a key of a Secret in the Canary's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_from: Option<UrlSource>,

    /// Only the transitions with these Event reasons, for example
    /// `[AnalysisFailed, ProgressDeadlineExceeded, AbortedByUser, Promoted]`.
    /// Absent: every transition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new(TRANSITION_REASONS)
        .message("each reason must be a transition Serin reports: InvalidSpec, Initializing, Healthy, CanaryPodsFailing, RolloutStarted, RolloutRestarted, StableRestored, StepAdvanced, Paused, Resumed, Promoting, Promoted, AbortedByUser, AnalysisFailed, ProgressDeadlineExceeded, Retried, CommandAcknowledged, InvalidCommand, GateWaiting, GatePassed, GateFailed, HookCalled or HookFailed"))]
    #[schemars(length(min = 1, max = 23), inner(length(max = 32)), extend("x-kubernetes-list-type" = "set"))]
    pub reasons: Vec<String>,
}

/// How a notification's body is shaped.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum NotificationFormat {
    /// A CloudEvents 1.0 event in structured JSON mode
    /// (`application/cloudevents+json`), for any webhook.
    CloudEvents,
    /// A Slack incoming webhook's message: `text` and `blocks`.
    Slack,
    /// A Microsoft Teams Workflows webhook's message: an Adaptive Card attachment.
    Teams,
}

/// Where a value that is a credential is read from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UrlSource {
    /// A key of a Secret in the Canary's namespace.
    pub secret_key_ref: SecretKeyReference,
}

/// One key of a Secret in the Canary's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SecretKeyReference {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key whose value is used.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A check the rollout waits for, or a hook it calls, at one point of it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.url) || self.type in ['PreRollout', 'BeforeStep', 'ConfirmPromotion']")
        .message("a gate without url waits for a person (kubectl serin approve), which only a check can: PreRollout, BeforeStep or ConfirmPromotion; give PostRollout, OnRollback and LoadTest hooks a url"),
    validation = Rule::new("!has(self.steps) || self.type in ['BeforeStep', 'LoadTest']")
        .message("steps selects the steps of a BeforeStep check or a LoadTest hook; the other gates run once per rollout"),
    validation = Rule::new("!has(self.onFailure) || self.type in ['PreRollout', 'BeforeStep', 'ConfirmPromotion']")
        .message("onFailure says what a check's refusal does; a hook never holds a rollout"),
)]
pub struct Gate {
    /// The gate's name, unique in the Canary; status and Events name it.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,

    /// Where it runs: `PreRollout` (before the canary's first traffic, its pods
    /// ready), `BeforeStep` (before each step's traffic, or those in `steps`),
    /// `ConfirmPromotion` (after the last step passed, before promotion): checks
    /// that hold until they pass. `PostRollout` (once the canary is promoted),
    /// `OnRollback` (once it is rolled back), `LoadTest` (as each step, or those in
    /// `steps`, begins, to start a load generator): hooks called once.
    pub r#type: GateType,

    /// The steps (from 1) a `BeforeStep` check or a `LoadTest` hook runs before.
    /// Absent: every step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1, max = 32), inner(range(min = 1, max = 64)), extend("x-kubernetes-list-type" = "set"))]
    pub steps: Vec<i32>,

    /// The URL POSTed with the rollout's state as JSON, `http://` or `https://`.
    /// Absent (checks only): the gate waits for `kubectl serin approve`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')")
        .message("must be an http:// or https:// URL"))]
    #[schemars(length(min = 8, max = 2048))]
    pub url: Option<String>,

    /// Longest one call may take. Default `10s`.
    #[serde(default = "default_gate_timeout")]
    #[x_kube(validation = Rule::new(POSITIVE_DURATION).message(POSITIVE_DURATION_MESSAGE))]
    #[schemars(length(max = 32))]
    pub timeout: Duration,

    /// Calls more after one that could not connect, or (checks only) got no
    /// answer in time or a 429, 502, 503 or 504, 1 s, 2 s, 4 s ... apart. Default 2.
    #[serde(default = "default_gate_retries")]
    #[schemars(range(min = 0, max = 10))]
    pub retries: u32,

    /// What a check's refusal (any answer but 2xx, or none) does: `Hold` (ask again
    /// every 10 s; the progress deadline rolls the rollout back) or `Abort` (roll
    /// back at once). Default `Hold`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<GateFailure>,
}

impl Gate {
    /// Whether it runs at `step` (for the gates that run at steps).
    pub fn at_step(&self, step: i32) -> bool {
        self.steps.is_empty() || self.steps.contains(&step)
    }

    /// A check that waits for a person rather than an answer.
    pub fn is_manual(&self) -> bool {
        self.url.is_none()
    }
}

/// Where a gate runs, and whether it holds the rollout.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum GateType {
    /// Before the canary's first traffic (its pods ready); holds until it passes.
    PreRollout,
    /// Before a step's traffic; holds until it passes.
    BeforeStep,
    /// After the last step passed, before promotion; holds until it passes.
    ConfirmPromotion,
    /// Called once when the canary is promoted.
    PostRollout,
    /// Called once when the canary is rolled back.
    OnRollback,
    /// Called once as a step begins, before its traffic: starts a load generator.
    LoadTest,
}

impl GateType {
    /// A check holds the rollout until it passes; a hook is called once and never holds.
    pub fn is_check(self) -> bool {
        matches!(
            self,
            Self::PreRollout | Self::BeforeStep | Self::ConfirmPromotion
        )
    }
}

/// The Deployment a Canary adopts.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRef {
    /// The kind of workload: `Deployment` (apps/v1).
    pub kind: WorkloadKind,
    /// The Deployment's name, in the Canary's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// When the Deployment's own pods go. `Progressively` (default): the Deployment
    /// is scaled down pod for pod as Serin's stable pods become available, so the
    /// two together never serve with fewer pods than `replicas`. `OnSuccess`: to
    /// zero at once when Serin's stable is fully available. `Never`: left as it is
    /// (both run; scale it yourself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down: Option<ScaleDown>,
}

/// Workload kinds a Canary adopts.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum WorkloadKind {
    /// An apps/v1 Deployment.
    Deployment,
}

/// When an adopted Deployment's own pods go.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum ScaleDown {
    /// Pod for pod, as Serin's stable pods become available.
    #[default]
    Progressively,
    /// To zero once Serin's stable pods are all available.
    OnSuccess,
    /// Never: the Deployment keeps its pods.
    Never,
}

/// How a router's rollout sizes stable against `spec.replicas`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum StableScale {
    /// Stable keeps every pod; the canary's pods come on top.
    Full,
    /// The replicas are the total, split between stable and canary by the weight.
    Weighted,
}

/// What a check's refusal does.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum GateFailure {
    /// Ask again every 10 s, until the progress deadline.
    Hold,
    /// Roll the canary back at once.
    Abort,
}

fn default_gate_timeout() -> Duration {
    Duration::from(std::time::Duration::from_secs(10))
}

fn default_gate_retries() -> u32 {
    2
}

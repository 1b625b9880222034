//! Delivers notifications of transitions to the sinks of `spec.notifications`
//! and to the cluster's sinks (a ConfigMap the controller is pointed at), never in
//! the way of a rollout.
//!
//! A reconcile hands its transitions over and goes on: each sink has a worker
//! that posts them in order, within a rate (a token bucket), with a timeout and a
//! few retries. What cannot be delivered (the sink is down, answers an error, is
//! over its rate, or its queue is full) is dropped, counted in
//! `serin_notifications_total`, and reported as a Warning Event on the Canary.
//! A notification is sent at most once per recorded transition: one lost in a
//! controller crash between the status write and the post is not sent again,
//! since a transition is never planned twice.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use serin_api::{CanaryStatus, NotificationFormat, NotificationSink, reason};
use serin_core::machine::{self, EventType};
use serin_core::notification::{self, Notice};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::reconciler::transition_event;

/// Notifications a sink may be sent in a burst; then one more every
/// [`REFILL_EVERY`]. A rollout's transitions come a few at a time, so only a storm
/// (a Canary flapping between templates) is cut, as chat webhooks would cut it.
pub const BURST: u32 = 20;

/// How often a sink earns one more notification past its burst: 20 a minute.
pub const REFILL_EVERY: Duration = Duration::from_secs(3);

/// Longest one POST may take.
const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits before the second and third attempt at a sink that answered nothing, a
/// 429 or a 5xx.
const RETRY_AFTER: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(2)];

/// Notifications waiting across all sinks; past it new ones are dropped.
const QUEUE: usize = 4096;

/// Notifications waiting for one sink; past it new ones are dropped.
const SINK_QUEUE: usize = 64;

/// POSTs in flight across all sinks.
const IN_FLIGHT: usize = 32;

/// A sink's worker ends after this long with nothing to send.
const IDLE: Duration = Duration::from_secs(60);

/// A sink with its URL read (from the spec, or from its Secret), ready to post to.
/// Its `Debug` leaves the URL out: Slack's and Teams' URLs are credentials.
#[derive(Clone, PartialEq)]
pub struct Sink {
    spec: NotificationSink,
    url: String,
}

impl fmt::Debug for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sink")
            .field("name", &self.spec.name)
            .field("format", &self.spec.format)
            .finish_non_exhaustive()
    }
}

/// Why a Canary's sinks could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The spec names something that is not there: an `InvalidSpec`.
    #[error("{0}")]
    Spec(String),
    /// The API server could not be asked; try again.
    #[error("reading Secret {namespace}/{name}: {source}")]
    Kube {
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
        /// What the client said.
        source: kube::Error,
    },
}

/// The Canary's sinks with their URLs, each Secret read once. A missing Secret or
/// key, a Secret the controller may not read, or a value that is not an http(s)
/// URL is a spec problem naming the field; the value itself is never shown.
pub async fn sinks(
    client: &Client,
    namespace: &str,
    spec: &[NotificationSink],
) -> Result<Vec<Sink>, SinkError> {
    read_sinks(client, namespace, spec, "spec.notifications").await
}

/// As [`sinks`], the fields named under `field` (`spec.notifications`, or the
/// cluster ConfigMap's key).
async fn read_sinks(
    client: &Client,
    namespace: &str,
    spec: &[NotificationSink],
    list: &str,
) -> Result<Vec<Sink>, SinkError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut read: HashMap<&str, Secret> = HashMap::new();
    let mut resolved = Vec::with_capacity(spec.len());
    for (index, sink) in spec.iter().enumerate() {
        let url = match (&sink.url, &sink.url_from) {
            (Some(url), _) => url.clone(),
            (None, Some(from)) => {
                let reference = &from.secret_key_ref;
                let field = format!("{list}[{index}].urlFrom.secretKeyRef");
                let secret = match read.get(reference.name.as_str()) {
                    Some(secret) => secret,
                    None => {
                        let secret = secrets.get(&reference.name).await.map_err(|source| {
                            secret_error(source, &field, namespace, &reference.name)
                        })?;
                        read.entry(reference.name.as_str()).or_insert(secret)
                    }
                };
                url_in(secret, &field, namespace, &reference.name, &reference.key)?
            }
            (None, None) => {
                return Err(SinkError::Spec(format!(
                    "{list}[{index}]: set exactly one of url and urlFrom"
                )));
            }
        };
        resolved.push(Sink {
            spec: sink.clone(),
            url,
        });
    }
    Ok(resolved)
}

/// The URL under `key` of `secret`, checked without showing it.
fn url_in(
    secret: &Secret,
    field: &str,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<String, SinkError> {
    let data = secret.data.as_ref();
    let Some(value) = data.and_then(|data| data.get(key)) else {
        let mut keys: Vec<&str> = data
            .into_iter()
            .flat_map(|data| data.keys().map(String::as_str))
            .collect();
        keys.sort_unstable();
        return Err(SinkError::Spec(format!(
            "{field}.key: Secret {namespace}/{name} has no key {key:?} (its keys: [{}]); add the key to the Secret or name one it has",
            keys.join(", ")
        )));
    };
    let url = String::from_utf8(value.0.clone()).unwrap_or_default();
    let url = url.trim();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(SinkError::Spec(format!(
            "{field}.key: the value of key {key:?} in Secret {namespace}/{name} is not an http:// or https:// URL"
        )));
    }
    Ok(url.to_owned())
}

fn secret_error(source: kube::Error, field: &str, namespace: &str, name: &str) -> SinkError {
    match &source {
        kube::Error::Api(status) if status.code == 404 => SinkError::Spec(format!(
            "{field}.name: Secret {namespace}/{name} does not exist; create it or name another"
        )),
        kube::Error::Api(status) if status.code == 403 => SinkError::Spec(format!(
            "{field}.name: the controller may not read Secrets in {namespace}; allow it with `kubectl -n {namespace} create rolebinding serin-notification-credentials --clusterrole=serin-notification-credentials --serviceaccount=serin-system:serin`"
        )),
        _ => SinkError::Kube {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source,
        },
    }
}

/// A sink's allowance: [`BURST`] notifications at once, then one per
/// [`REFILL_EVERY`]. Pure but for the instants it is given.
#[derive(Clone, Copy, Debug)]
pub struct Allowance {
    tokens: u32,
    since: Instant,
    /// The sink was told of a drop since it last had room: one Warning Event per
    /// run of drops, not one per notification.
    warned: bool,
}

impl Allowance {
    /// A full allowance at `now`.
    pub fn full(now: Instant) -> Self {
        Self {
            tokens: BURST,
            since: now,
            warned: false,
        }
    }

    /// Takes one notification's room at `now`; false when there is none.
    pub fn take(&mut self, now: Instant) -> bool {
        let earned =
            now.saturating_duration_since(self.since).as_millis() / REFILL_EVERY.as_millis().max(1);
        let earned = u32::try_from(earned).unwrap_or(u32::MAX);
        if earned > 0 {
            self.tokens = self.tokens.saturating_add(earned).min(BURST);
            self.since += REFILL_EVERY * earned;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        self.warned = false;
        true
    }

    /// Whether a drop now is the first of a run (and so worth a Warning Event).
    fn first_drop(&mut self) -> bool {
        !std::mem::replace(&mut self.warned, true)
    }
}

/// One notification for one sink.
struct Delivery {
    sink: Sink,
    notice: Notice,
    regarding: ObjectReference,
    /// The worker it goes through: one per sink of each Canary, and one per
    /// cluster sink (whose rate is the whole cluster's), so one slow sink delays
    /// only itself.
    worker: String,
}

/// One reconcile's transitions, with the Canary's sinks.
struct Batch {
    notices: Vec<Notice>,
    sinks: Vec<Sink>,
    regarding: ObjectReference,
}

/// The ConfigMap whose key [`CLUSTER_SINKS_KEY`] lists sinks told of every
/// Canary's transitions, in the form of `spec.notifications`; the Secrets its
/// sinks name are in its namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSinks {
    /// The ConfigMap's namespace (the controller's, as the chart installs it).
    pub namespace: String,
    /// The ConfigMap's name.
    pub name: String,
}

/// The key of the cluster's ConfigMap that holds its sinks, as YAML.
pub const CLUSTER_SINKS_KEY: &str = "sinks.yaml";

/// How long the cluster's sinks are used as read before they are read again: an
/// edit of the ConfigMap or its Secrets takes effect within this.
const CLUSTER_SINKS_FOR: Duration = Duration::from_secs(10);

impl ClusterSinks {
    /// Reads `namespace/name` from the flag's value.
    pub fn parse(value: &str) -> Result<Self, String> {
        match value.split_once('/') {
            Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() => Ok(Self {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            }),
            _ => Err(format!(
                "{value:?} is not <namespace>/<name> of a ConfigMap"
            )),
        }
    }

    /// The sinks, their URLs read; a problem names the ConfigMap and the field.
    async fn read(&self, client: &Client) -> Result<Vec<Sink>, String> {
        let where_ = format!("ConfigMap {}/{}", self.namespace, self.name);
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &self.namespace);
        let config_map = config_maps
            .get(&self.name)
            .await
            .map_err(|e| format!("reading {where_}: {e}"))?;
        let text = config_map
            .data
            .as_ref()
            .and_then(|data| data.get(CLUSTER_SINKS_KEY))
            .ok_or_else(|| format!("{where_} has no key {CLUSTER_SINKS_KEY}"))?;
        let list: Vec<NotificationSink> = serde_norway::from_str(text)
            .map_err(|e| format!("{where_}, {CLUSTER_SINKS_KEY}: {e}"))?;
        let field = CLUSTER_SINKS_KEY;
        if let Some(problem) = serin_api::notification_sinks_problem(&list, field) {
            return Err(format!("{where_}: {problem}"));
        }
        read_sinks(client, &self.namespace, &list, field)
            .await
            .map_err(|e| format!("{where_}: {e}"))
    }
}

/// What the workers share.
struct Shared {
    client: Client,
    http: reqwest::Client,
    instance: String,
    metrics: Arc<Metrics>,
    in_flight: Semaphore,
    cluster: Option<ClusterSinks>,
}

/// Hands transitions to the sinks' workers; cheap to call from a reconcile.
pub struct Notifier {
    queue: mpsc::Sender<Batch>,
    /// The dispatcher's end, until the first notification starts it (inside the
    /// runtime, wherever the context was made).
    start: Mutex<Option<(mpsc::Receiver<Batch>, Arc<Shared>)>>,
    metrics: Arc<Metrics>,
    /// Whether there are cluster sinks, which hear of every Canary.
    cluster: bool,
}

impl Notifier {
    /// A notifier whose failures are Events recorded as `instance`, telling the
    /// sinks of `cluster` (if any) of every Canary's transitions.
    pub fn new(
        client: Client,
        instance: String,
        metrics: Arc<Metrics>,
        cluster: Option<ClusterSinks>,
    ) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let http = reqwest::Client::builder()
            .timeout(POST_TIMEOUT)
            .build()
            .unwrap_or_default();
        let has_cluster = cluster.is_some();
        let shared = Arc::new(Shared {
            client,
            http,
            instance,
            metrics: Arc::clone(&metrics),
            in_flight: Semaphore::new(IN_FLIGHT),
            cluster,
        });
        Self {
            queue,
            start: Mutex::new(Some((receiver, shared))),
            metrics,
            cluster: has_cluster,
        }
    }

    /// Queues `events` for the Canary's sinks and the cluster's; never waits.
    pub fn notify(
        &self,
        sinks: &[Sink],
        namespace: &str,
        name: &str,
        events: &[machine::Event],
        status: &CanaryStatus,
        regarding: &ObjectReference,
    ) {
        if (sinks.is_empty() && !self.cluster) || events.is_empty() {
            return;
        }
        if let Some((receiver, shared)) = self.start.lock().ok().and_then(|mut s| s.take()) {
            tokio::spawn(dispatch(receiver, shared));
        }
        let at = Timestamp::now();
        let batch = Batch {
            notices: events
                .iter()
                .map(|event| Notice::new(namespace, name, event, status, at))
                .collect(),
            sinks: sinks.to_vec(),
            regarding: regarding.clone(),
        };
        if let Err(mpsc::error::TrySendError::Full(batch)) = self.queue.try_send(batch) {
            for _ in &batch.notices {
                self.metrics.notification("any", "queue_full");
            }
        }
    }
}

/// Turns each batch into deliveries (reading the cluster's sinks when they are
/// due) and passes each to its sink's worker, starting one when there is none.
async fn dispatch(mut queue: mpsc::Receiver<Batch>, shared: Arc<Shared>) {
    let mut workers: HashMap<String, mpsc::Sender<Delivery>> = HashMap::new();
    let mut cluster: Option<(Instant, Result<Vec<Sink>, String>)> = None;
    while let Some(batch) = queue.recv().await {
        let cluster_sinks = match &shared.cluster {
            None => Ok(Vec::new()),
            Some(config) => {
                let stale = cluster
                    .as_ref()
                    .is_none_or(|(read, _)| read.elapsed() >= CLUSTER_SINKS_FOR);
                if stale {
                    cluster = Some((Instant::now(), config.read(&shared.client).await));
                }
                cluster
                    .as_ref()
                    .map_or_else(|| Ok(Vec::new()), |(_, sinks)| sinks.clone())
            }
        };
        let cluster_sinks = match cluster_sinks {
            Ok(sinks) => sinks,
            Err(problem) => {
                shared.metrics.notification("any", "failed");
                let event = machine::Event {
                    kind: EventType::Warning,
                    reason: reason::NOTIFICATION_FAILED,
                    note: format!("the cluster's notification sinks cannot be used: {problem}"),
                };
                if let Some(notice) = batch.notices.first() {
                    record(&shared, notice, &batch.regarding, &event).await;
                }
                Vec::new()
            }
        };
        for notice in &batch.notices {
            let own = batch.sinks.iter().map(|sink| {
                let worker = format!("{}/{}/{}", notice.namespace, notice.name, sink.spec.name);
                (sink, worker)
            });
            let cluster = cluster_sinks
                .iter()
                .map(|sink| (sink, format!("cluster/{}", sink.spec.name)));
            for (sink, worker) in own.chain(cluster) {
                if !notification::wanted(&sink.spec, notice.reason) {
                    continue;
                }
                let delivery = Delivery {
                    sink: sink.clone(),
                    notice: notice.clone(),
                    regarding: batch.regarding.clone(),
                    worker,
                };
                hand_over(&mut workers, delivery, &shared);
            }
        }
        if workers.len() > 1024 {
            workers.retain(|_, worker| !worker.is_closed());
        }
    }
}

/// Passes `delivery` to its worker, starting one when there is none (or the
/// one there was ended, idle); dropped when the worker's queue is full.
fn hand_over(
    workers: &mut HashMap<String, mpsc::Sender<Delivery>>,
    mut delivery: Delivery,
    shared: &Arc<Shared>,
) {
    loop {
        let worker = workers.entry(delivery.worker.clone()).or_insert_with(|| {
            let (sender, receiver) = mpsc::channel(SINK_QUEUE);
            tokio::spawn(work(receiver, Arc::clone(shared)));
            sender
        });
        match worker.try_send(delivery) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(dropped)) => {
                let format = format_name(dropped.sink.spec.format);
                shared.metrics.notification(format, "queue_full");
                return;
            }
            Err(mpsc::error::TrySendError::Closed(returned)) => {
                workers.remove(&returned.worker);
                delivery = returned;
            }
        }
    }
}

/// One sink's worker: its deliveries in order, within its allowance, until it is
/// idle. Before it ends it closes its queue and still sends what is in it.
async fn work(mut queue: mpsc::Receiver<Delivery>, shared: Arc<Shared>) {
    let mut allowance = Allowance::full(Instant::now());
    loop {
        match tokio::time::timeout(IDLE, queue.recv()).await {
            Ok(Some(delivery)) => deliver(delivery, &mut allowance, &shared).await,
            Ok(None) => return,
            Err(_) => {
                queue.close();
                while let Ok(delivery) = queue.try_recv() {
                    deliver(delivery, &mut allowance, &shared).await;
                }
                return;
            }
        }
    }
}

async fn deliver(delivery: Delivery, allowance: &mut Allowance, shared: &Shared) {
    let format = delivery.sink.spec.format;
    if !allowance.take(Instant::now()) {
        shared
            .metrics
            .notification(format_name(format), "rate_limited");
        if allowance.first_drop() {
            let why = format!(
                "more than {BURST} notifications at once (then one per {}s); dropping until it has room",
                REFILL_EVERY.as_secs()
            );
            warn_dropped(&delivery, &why, shared).await;
        }
        return;
    }
    let body = notification::body(format, &delivery.notice).to_string();
    let _turn = shared.in_flight.acquire().await;
    match post(&shared.http, &delivery.sink, body).await {
        Ok(()) => {
            info!(sink = %delivery.sink.spec.name, reason = delivery.notice.reason, "notified");
            shared.metrics.notification(format_name(format), "sent");
        }
        Err(why) => {
            shared.metrics.notification(format_name(format), "failed");
            warn_dropped(&delivery, &why, shared).await;
        }
    }
}

/// POSTs `body`, trying again after a while when the sink answered nothing, a 429
/// or a 5xx; what went wrong, without the URL.
async fn post(http: &reqwest::Client, sink: &Sink, body: String) -> Result<(), String> {
    let mut waits = RETRY_AFTER.iter();
    loop {
        let sent = http
            .post(&sink.url)
            .header(
                reqwest::header::CONTENT_TYPE,
                notification::content_type(sink.spec.format),
            )
            .body(body.clone())
            .send()
            .await;
        let why = match sent {
            Ok(answer) if answer.status().is_success() => return Ok(()),
            Ok(answer) => {
                let status = answer.status();
                let why = format!("the sink answered {status}");
                if !(status.is_server_error() || status.as_u16() == 429) {
                    return Err(why);
                }
                why
            }
            Err(error) if error.is_timeout() => {
                format!("the sink did not answer within {}s", POST_TIMEOUT.as_secs())
            }
            Err(error) if error.is_connect() => "the sink could not be reached".to_owned(),
            Err(error) => format!("posting failed: {}", error.without_url()),
        };
        match waits.next() {
            Some(wait) => tokio::time::sleep(*wait).await,
            None => return Err(format!("{why} ({} tries)", RETRY_AFTER.len() + 1)),
        }
    }
}

/// A Warning Event on the Canary: a notification to a sink was dropped, and why.
async fn warn_dropped(delivery: &Delivery, why: &str, shared: &Shared) {
    let notice = &delivery.notice;
    let note = format!(
        "notification of {} to sink {} ({:?}) dropped: {why}; the rollout goes on",
        notice.reason, delivery.sink.spec.name, delivery.sink.spec.format
    );
    let event = machine::Event {
        kind: EventType::Warning,
        reason: reason::NOTIFICATION_FAILED,
        note,
    };
    record(shared, notice, &delivery.regarding, &event).await;
}

/// Records `event` on the Canary of `notice`; a failure to record is logged.
async fn record(
    shared: &Shared,
    notice: &Notice,
    regarding: &ObjectReference,
    event: &machine::Event,
) {
    warn!(canary = %format!("{}/{}", notice.namespace, notice.name), note = %event.note, "notification dropped");
    let record = transition_event(
        &notice.name,
        &notice.namespace,
        regarding.clone(),
        event,
        &shared.instance,
    );
    let events: Api<Event> = Api::namespaced(shared.client.clone(), &notice.namespace);
    if let Err(error) = events.create(&PostParams::default(), &record).await {
        warn!(%error, "recording the dropped notification's Event");
    }
}

/// The format as the metric's label says it.
fn format_name(format: NotificationFormat) -> &'static str {
    match format {
        NotificationFormat::CloudEvents => "CloudEvents",
        NotificationFormat::Slack => "Slack",
        NotificationFormat::Teams => "Teams",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sink_gets_its_burst_then_one_per_refill() {
        let start = Instant::now();
        let mut allowance = Allowance::full(start);
        let taken = (0..BURST + 5).filter(|_| allowance.take(start)).count();
        assert_eq!(taken, usize::try_from(BURST).unwrap_or_default());
        assert!(
            allowance.first_drop(),
            "the first drop of a run is reported"
        );
        assert!(!allowance.first_drop(), "and only the first");
        let later = start + REFILL_EVERY * 2;
        assert!(allowance.take(later) && allowance.take(later));
        assert!(!allowance.take(later), "two refills, two notifications");
        assert!(
            allowance.first_drop(),
            "a new run of drops is reported again"
        );
        let much_later = later + REFILL_EVERY * 1000;
        let taken = (0..BURST + 5)
            .filter(|_| allowance.take(much_later))
            .count();
        assert_eq!(
            taken,
            usize::try_from(BURST).unwrap_or_default(),
            "never more than the burst"
        );
    }

    #[test]
    fn the_cluster_config_is_a_namespace_and_a_name() {
        let config = ClusterSinks::parse("serin-system/serin-notifications");
        assert_eq!(
            config,
            Ok(ClusterSinks {
                namespace: "serin-system".into(),
                name: "serin-notifications".into()
            })
        );
        for wrong in ["serin-notifications", "/x", "x/", ""] {
            assert!(ClusterSinks::parse(wrong).is_err(), "{wrong:?}");
        }
    }

    fn secret(data: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                data.iter()
                    .map(|(k, v)| {
                        (
                            (*k).to_owned(),
                            k8s_openapi::ByteString(v.as_bytes().to_vec()),
                        )
                    })
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    #[test]
    fn a_missing_key_names_the_field_and_the_keys_there_are_never_a_value() {
        let field = "spec.notifications[1].urlFrom.secretKeyRef";
        let found = url_in(
            &secret(&[("slack", "https://hooks/x")]),
            field,
            "shop",
            "hooks",
            "slack",
        );
        assert_eq!(found.ok().as_deref(), Some("https://hooks/x"));
        let missing = url_in(
            &secret(&[("slack", "https://hooks/x"), ("a", "b")]),
            field,
            "shop",
            "hooks",
            "teams",
        );
        let said = missing.err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(
            said,
            "spec.notifications[1].urlFrom.secretKeyRef.key: Secret shop/hooks has no key \"teams\" (its keys: [a, slack]); add the key to the Secret or name one it has"
        );
        let not_a_url = url_in(
            &secret(&[("slack", "xoxb-secret-token")]),
            field,
            "shop",
            "hooks",
            "slack",
        );
        let said = not_a_url.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            said.contains("is not an http:// or https:// URL") && !said.contains("xoxb"),
            "{said}"
        );
    }
}

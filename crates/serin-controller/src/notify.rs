//! Delivers notifications of transitions to the sinks of `spec.notifications`,
//! never in the way of a rollout.
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

use k8s_openapi::api::core::v1::{ObjectReference, Secret};
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
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut read: HashMap<&str, Secret> = HashMap::new();
    let mut resolved = Vec::with_capacity(spec.len());
    for (index, sink) in spec.iter().enumerate() {
        let url = match (&sink.url, &sink.url_from) {
            (Some(url), _) => url.clone(),
            (None, Some(from)) => {
                let reference = &from.secret_key_ref;
                let field = format!("spec.notifications[{index}].urlFrom.secretKeyRef");
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
                    "spec.notifications[{index}]: set exactly one of url and urlFrom"
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
}

impl Delivery {
    /// The worker a delivery goes through: one per sink of each Canary, so one
    /// slow sink delays only itself.
    fn key(&self) -> String {
        format!(
            "{}/{}/{}",
            self.notice.namespace, self.notice.name, self.sink.spec.name
        )
    }
}

/// What the workers share.
struct Shared {
    client: Client,
    http: reqwest::Client,
    instance: String,
    metrics: Arc<Metrics>,
    in_flight: Semaphore,
}

/// Hands transitions to the sinks' workers; cheap to call from a reconcile.
pub struct Notifier {
    queue: mpsc::Sender<Delivery>,
    /// The dispatcher's end, until the first notification starts it (inside the
    /// runtime, wherever the context was made).
    start: Mutex<Option<(mpsc::Receiver<Delivery>, Arc<Shared>)>>,
    metrics: Arc<Metrics>,
}

impl Notifier {
    /// A notifier whose failures are Events recorded as `instance`.
    pub fn new(client: Client, instance: String, metrics: Arc<Metrics>) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let http = reqwest::Client::builder()
            .timeout(POST_TIMEOUT)
            .build()
            .unwrap_or_default();
        let shared = Arc::new(Shared {
            client,
            http,
            instance,
            metrics: Arc::clone(&metrics),
            in_flight: Semaphore::new(IN_FLIGHT),
        });
        Self {
            queue,
            start: Mutex::new(Some((receiver, shared))),
            metrics,
        }
    }

    /// Queues each of `events` for each sink that wants it; never waits.
    pub fn notify(
        &self,
        sinks: &[Sink],
        namespace: &str,
        name: &str,
        events: &[machine::Event],
        status: &CanaryStatus,
        regarding: &ObjectReference,
    ) {
        if sinks.is_empty() || events.is_empty() {
            return;
        }
        if let Some((receiver, shared)) = self.start.lock().ok().and_then(|mut s| s.take()) {
            tokio::spawn(dispatch(receiver, shared));
        }
        let at = Timestamp::now();
        for event in events {
            let notice = Notice::new(namespace, name, event, status, at);
            for sink in sinks
                .iter()
                .filter(|s| notification::wanted(&s.spec, event.reason))
            {
                let delivery = Delivery {
                    sink: sink.clone(),
                    notice: notice.clone(),
                    regarding: regarding.clone(),
                };
                if self.queue.try_send(delivery).is_err() {
                    self.metrics
                        .notification(format_name(sink.spec.format), "queue_full");
                }
            }
        }
    }
}

/// Passes each delivery to its sink's worker, starting one when there is none.
async fn dispatch(mut queue: mpsc::Receiver<Delivery>, shared: Arc<Shared>) {
    let mut workers: HashMap<String, mpsc::Sender<Delivery>> = HashMap::new();
    while let Some(mut delivery) = queue.recv().await {
        let key = delivery.key();
        loop {
            let worker = workers.entry(key.clone()).or_insert_with(|| {
                let (sender, receiver) = mpsc::channel(SINK_QUEUE);
                tokio::spawn(work(receiver, Arc::clone(&shared)));
                sender
            });
            match worker.try_send(delivery) {
                Ok(()) => break,
                Err(mpsc::error::TrySendError::Full(dropped)) => {
                    let format = format_name(dropped.sink.spec.format);
                    shared.metrics.notification(format, "queue_full");
                    break;
                }
                // The worker ended, idle: start another for this one.
                Err(mpsc::error::TrySendError::Closed(returned)) => {
                    workers.remove(&key);
                    delivery = returned;
                }
            }
        }
        if workers.len() > 1024 {
            workers.retain(|_, worker| !worker.is_closed());
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
    warn!(canary = %format!("{}/{}", notice.namespace, notice.name), %note, "notification dropped");
    let event = machine::Event {
        kind: EventType::Warning,
        reason: reason::NOTIFICATION_FAILED,
        note,
    };
    let record = transition_event(
        &notice.name,
        &notice.namespace,
        delivery.regarding.clone(),
        &event,
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

//! The shell of the analysis: when a step's analysis is due, fill in the queries for
//! both arms, read Prometheus, and hand the readings to the judges. Whatever goes
//! wrong on the way is no data (the step holds), never a pass.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::future::join_all;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::{Api, Client};
use serin_analysis::{NoData, Reading, Window};
use serin_api::{
    Analysis, Canary, CanaryStatus, Counting, ErrorCounts, Metric, MetricStatus, Phase, Verdict,
};
use serin_prometheus::{
    Credentials, Prometheus, QueryError, TemplateError, Variables, counted, counted_buckets, render,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use serin_core::machine::StepVerdict;

/// The quickest cadence of looks, whatever `scrapeInterval` says: never a spin.
const LOOK_AT_MOST_EVERY: Duration = Duration::from_secs(1);

/// Longest a query may take; shorter when the interval is.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// How a template is checked before anything is sent: as a query, or as a
/// counter's series selector.
type Check = fn(&str) -> Result<(), TemplateError>;

/// What makes two Canaries share a client: a rotated Secret gets a new one.
type ClientKey = (String, Option<Credentials>, Duration);

/// What one analysis is about: the Canary, its analysis spec, where it lives, and
/// the revision judged as the canary arm.
#[derive(Clone, Copy)]
struct Subject<'a> {
    client: &'a Client,
    canary: &'a Canary,
    analysis: &'a Analysis,
    namespace: &'a str,
    revision: &'a str,
}

/// Queries in flight per Prometheus address, at most: a wave of analyses (a
/// thousand Canaries changing image at once) queues here instead of hitting one
/// Prometheus with thousands of queries at once.
pub struct QueryLimits {
    per_address: usize,
    by_address: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl QueryLimits {
    /// At most `per_address` queries at once to each address (at least one).
    pub fn new(per_address: usize) -> Self {
        Self {
            per_address: per_address.max(1),
            by_address: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for a turn to query `address`; the turn ends when the permit drops.
    pub async fn turn(&self, address: &str) -> Option<OwnedSemaphorePermit> {
        let semaphore = {
            let mut by_address = self.by_address.lock().ok()?;
            Arc::clone(
                by_address
                    .entry(address.to_owned())
                    .or_insert_with(|| Arc::new(Semaphore::new(self.per_address))),
            )
        };
        semaphore.acquire_owned().await.ok()
    }
}

/// The analysis' word on the current step, and how soon it looks again.
#[derive(Clone, Debug, PartialEq)]
pub struct StepAnalysis {
    /// The verdict over every metric.
    pub verdict: StepVerdict,
    /// How soon the next metric is due; None while the step's weight is not in effect.
    pub next_look: Option<Duration>,
}

/// Reads metrics for every Canary; keeps one client per Prometheus and credentials.
pub struct Analyst {
    default_address: Option<String>,
    clients: Mutex<HashMap<ClientKey, Prometheus>>,
    limits: QueryLimits,
}

impl Analyst {
    /// An analyst that uses `default_address` when a Canary names no Prometheus,
    /// with at most `queries_per_address` queries in flight to each Prometheus.
    pub fn new(default_address: Option<String>, queries_per_address: usize) -> Self {
        Self {
            default_address,
            clients: Mutex::new(HashMap::new()),
            limits: QueryLimits::new(queries_per_address),
        }
    }

    /// Spec errors in the analysis only the controller can see: templates that use an
    /// unknown variable or do not parse, and no Prometheus to ask. Checked before any
    /// query is sent.
    pub fn spec_problem(&self, analysis: Option<&Analysis>) -> Option<String> {
        let analysis = analysis?;
        for (index, metric) in analysis.metrics.iter().enumerate() {
            let mut templates: Vec<(&str, &str, Check)> = Vec::new();
            if let Some(query) = &metric.query {
                templates.push(("query", query, serin_prometheus::check));
            }
            match metric.error_rate.as_ref().and_then(|e| e.counting()) {
                Some(Counting::Queries { requests, errors }) => {
                    templates.push(("errorRate.requests", requests, serin_prometheus::check));
                    templates.push(("errorRate.errors", errors, serin_prometheus::check));
                }
                Some(Counting::Counters(counters)) => {
                    let selector = serin_prometheus::check_selector;
                    templates.push(("errorRate.counters.requests", &counters.requests, selector));
                    templates.push(("errorRate.counters.errors", &counters.errors, selector));
                }
                None => {}
            }
            if let Some(latency) = &metric.latency {
                templates.push((
                    "latency.buckets",
                    &latency.buckets,
                    serin_prometheus::check_selector,
                ));
            }
            for (field, template, check) in templates {
                if let Err(error) = check(template) {
                    return Some(format!(
                        "spec.analysis.metrics[{index}].{field} (metric {}): {error}",
                        metric.name
                    ));
                }
            }
        }
        if self.address(analysis).is_none() {
            return Some(
                "spec.analysis.prometheus.address is required: this controller runs without --prometheus-address".into(),
            );
        }
        None
    }

    fn address<'a>(&'a self, analysis: &'a Analysis) -> Option<&'a str> {
        analysis
            .prometheus
            .as_ref()
            .and_then(|p| p.address.as_deref())
            .or(self.default_address.as_deref())
    }

    /// The current step's verdict, analysing first the metrics that are due; new
    /// readings are written into `status.analysis`. None when the spec has no analysis.
    pub async fn step_verdict(
        &self,
        client: &Client,
        canary: &Canary,
        namespace: &str,
        revision: &str,
        status: &mut CanaryStatus,
        now: Timestamp,
    ) -> Option<StepAnalysis> {
        let analysis = canary.spec.analysis.as_ref()?;
        let running = matches!(status.phase, Some(Phase::Progressing))
            && status.canary_revision.as_deref() == Some(revision);
        let since = status.analysis_started_at.clone();
        let (Some(since), true) = (since, running) else {
            return Some(StepAnalysis {
                verdict: StepVerdict::Pending("the step's weight is not in effect yet".into()),
                next_look: None,
            });
        };
        let interval = std_duration(analysis.interval);
        let scrape = analysis.scrape_interval.map_or(interval, std_duration);
        let this_window = |m: &&MetricStatus| m.since.as_ref() == Some(&since);
        // When each metric is next due: from its last look in this window, or the
        // window's start, at its own cadence.
        let due = |status: &CanaryStatus| -> Vec<Timestamp> {
            analysis
                .metrics
                .iter()
                .map(|metric| {
                    let latest = status.analysis.iter().find(|m| m.name == metric.name);
                    let last = latest
                        .filter(this_window)
                        .and_then(|m| m.at.as_ref())
                        .map_or(since.0, |at| at.0);
                    last + serin_analysis::look_after(metric, latest, interval, scrape)
                })
                .collect()
        };
        let due_now: Vec<&Metric> = analysis
            .metrics
            .iter()
            .zip(due(status))
            .filter(|(_, due)| now >= *due)
            .map(|(metric, _)| metric)
            .collect();
        if !due_now.is_empty() {
            let subject = Subject {
                client,
                canary,
                analysis,
                namespace,
                revision,
            };
            // The analysis' time to the millisecond: its queries are evaluated at
            // this time with `{{elapsed}}` to the millisecond, so every analysis of
            // the window counts from exactly `since`.
            let at = Timestamp::from_millisecond(now.as_millisecond()).unwrap_or(now);
            let window = Window {
                since: since.clone(),
                at: Time(at),
            };
            let mut fresh = self.analyse(&subject, status, window, &due_now).await;
            // The spec's metrics in its order: each freshly judged, or as it was.
            status.analysis = analysis
                .metrics
                .iter()
                .filter_map(
                    |metric| match fresh.iter().position(|m| m.name == metric.name) {
                        Some(index) => Some(fresh.swap_remove(index)),
                        None => status
                            .analysis
                            .iter()
                            .find(|m| m.name == metric.name)
                            .cloned(),
                    },
                )
                .collect();
        }
        let next_due = due(status);
        let next_look = next_due.iter().min().map(|due| {
            Duration::try_from(*due - now)
                .unwrap_or_default()
                .max(LOOK_AT_MOST_EVERY)
        });
        let current: Vec<MetricStatus> = status
            .analysis
            .iter()
            .filter(this_window)
            .cloned()
            .collect();
        let overall = serin_analysis::overall(&current);
        let first_look = analysis
            .metrics
            .iter()
            .zip(&next_due)
            // A metric in dry run never holds the step, not even for its first look.
            .filter(|(metric, _)| !metric.dry_run && !current.iter().any(|m| m.name == metric.name))
            .map(|(metric, due)| (metric, (*due - now).get_seconds().max(0)))
            .min_by_key(|(_, seconds)| *seconds);
        let verdict = match (overall.verdict, first_look) {
            // A failing metric fails the step at once, whatever is still to come.
            (Verdict::Fail, _) => StepVerdict::Fail(overall.reason),
            (_, Some((metric, seconds))) => StepVerdict::Pending(format!(
                "first analysis of {} in this step in {seconds}s",
                metric.name
            )),
            (Verdict::Pass, None) => StepVerdict::Pass,
            (Verdict::Inconclusive, None) => StepVerdict::Inconclusive(overall.reason),
        };
        Some(StepAnalysis { verdict, next_look })
    }

    /// Reads every metric for both arms over `window` and judges each, carrying
    /// the evidence of `status`'s earlier windows.
    async fn analyse(
        &self,
        subject: &Subject<'_>,
        status: &CanaryStatus,
        window: Window,
        metrics: &[&Metric],
    ) -> Vec<MetricStatus> {
        let Subject {
            client,
            canary,
            analysis,
            namespace,
            revision,
        } = *subject;
        let (since, now) = (&window.since, window.at.0);
        let name = canary.metadata.name.clone().unwrap_or_default();
        let stable_revision = status.stable_revision.clone().unwrap_or_default();
        let interval = std_duration(analysis.interval);
        let elapsed = Duration::try_from(now - since.0).unwrap_or_default();
        let arm = |revision: &str, service: &str| Variables {
            namespace: namespace.to_owned(),
            name: name.clone(),
            revision: revision.to_owned(),
            replicaset: format!("{name}-{revision}"),
            service: format!("{name}-{service}"),
            interval,
            elapsed,
        };
        let canary_arm = arm(revision, "canary");
        let stable_arm = arm(&stable_revision, "stable");
        let prometheus = self.client(client, namespace, analysis, interval).await;
        let address = self.address(analysis).unwrap_or_default();
        let limits = &self.limits;
        let readings = join_all(metrics.iter().map(|metric| {
            let prometheus = &prometheus;
            let (canary_arm, stable_arm) = (&canary_arm, &stable_arm);
            async move {
                let value = |query: Result<String, TemplateError>, what: String| async move {
                    ask(prometheus, limits, address, query, &what, async |p, q| {
                        p.value_at(q, Some(SystemTime::from(now))).await
                    })
                    .await
                };
                if let Some(spec) = &metric.error_rate {
                    let Some(counting) = spec.counting() else {
                        return Reading::Counts(Err(NoData(
                            "errorRate: set counters, or both requests and errors".into(),
                        )));
                    };
                    let count = |arm: &Variables, errors: bool| match counting {
                        Counting::Queries {
                            requests,
                            errors: failed,
                        } => render(if errors { failed } else { requests }, arm),
                        Counting::Counters(counters) => {
                            let selector = if errors {
                                &counters.errors
                            } else {
                                &counters.requests
                            };
                            counted(selector, arm, SystemTime::from(since.0), errors)
                        }
                    };
                    let (cr, ce, sr, se) = futures::join!(
                        value(count(canary_arm, false), "requests (canary)".into()),
                        value(count(canary_arm, true), "errors (canary)".into()),
                        value(count(stable_arm, false), "requests (stable)".into()),
                        value(count(stable_arm, true), "errors (stable)".into()),
                    );
                    Reading::Counts((|| {
                        Ok(ErrorCounts {
                            canary_requests: cr?,
                            canary_errors: ce?,
                            stable_requests: sr?,
                            stable_errors: se?,
                        })
                    })())
                } else if let Some(spec) = &metric.latency {
                    let slow = |arm: Variables, what: &'static str| async move {
                        let what = format!("buckets ({what})");
                        let query = counted_buckets(&spec.buckets, &arm, SystemTime::from(since.0));
                        let buckets =
                            ask(prometheus, limits, address, query, &what, async |p, q| {
                                p.values_by_at(q, "le", SystemTime::from(now)).await
                            })
                            .await?;
                        serin_analysis::latency::slow_requests(&buckets, spec.threshold)
                            .map_err(|NoData(why)| NoData(format!("{what}: {why}")))
                    };
                    let (canary, stable) = futures::join!(
                        slow(canary_arm.clone(), "canary"),
                        slow(stable_arm.clone(), "stable")
                    );
                    Reading::Counts((|| {
                        let ((canary_requests, canary_slow), (stable_requests, stable_slow)) =
                            (canary?, stable?);
                        Ok(ErrorCounts {
                            canary_requests,
                            canary_errors: canary_slow,
                            stable_requests,
                            stable_errors: stable_slow,
                        })
                    })())
                } else {
                    let query = metric.query.clone().unwrap_or_default();
                    let (canary, stable) = futures::join!(
                        value(render(&query, canary_arm), "canary".into()),
                        value(render(&query, stable_arm), "stable".into()),
                    );
                    Reading::Values { canary, stable }
                }
            }
        }))
        .await;
        metrics
            .iter()
            .zip(readings)
            .map(|(metric, reading)| {
                let previous = status.analysis.iter().find(|m| m.name == metric.name);
                serin_analysis::analyse(metric, analysis, previous, &window, reading)
            })
            .collect()
    }

    /// The client for the Canary's Prometheus, with the credentials of its Secret.
    async fn client(
        &self,
        client: &Client,
        namespace: &str,
        analysis: &Analysis,
        interval: Duration,
    ) -> Result<Prometheus, String> {
        let address = self
            .address(analysis)
            .ok_or("no Prometheus address")?
            .to_owned();
        let secret = analysis
            .prometheus
            .as_ref()
            .and_then(|p| p.secret_ref.as_ref());
        let credentials = match secret {
            Some(reference) => {
                let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
                let secret = secrets
                    .get(&reference.name)
                    .await
                    .map_err(|e| secret_error(&e, namespace, &reference.name))?;
                let data = secret
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(key, value)| (key, value.0))
                    .collect();
                Some(
                    Credentials::from_secret(&data)
                        .map_err(|e| format!("Secret {namespace}/{}: {e}", reference.name))?,
                )
            }
            None => None,
        };
        let timeout = interval.min(QUERY_TIMEOUT);
        let key = (address, credentials, timeout);

        if let Ok(clients) = self.clients.lock()
            && let Some(found) = clients.get(&key)
        {
            return Ok(found.clone());
        }
        let prometheus =
            Prometheus::new(&key.0, key.1.as_ref(), timeout).map_err(|e| e.to_string())?;
        if let Ok(mut clients) = self.clients.lock() {
            clients.insert(key, prometheus.clone());
        }
        Ok(prometheus)
    }
}

/// Why the credentials Secret could not be read, with the fix where it is ours to
/// give: the controller may read Secrets only where an operator allowed it.
fn secret_error(error: &kube::Error, namespace: &str, name: &str) -> String {
    let what = format!("reading Secret {namespace}/{name} (spec.analysis.prometheus.secretRef)");
    match error {
        kube::Error::Api(status) if status.code == 403 => format!(
            "{what}: the controller may not read Secrets in {namespace}; allow it with `kubectl -n {namespace} create rolebinding serin-prometheus-credentials --clusterrole=serin-prometheus-credentials --serviceaccount=serin-system:serin`"
        ),
        _ => format!("{what}: {error}"),
    }
}

/// Reads one query from the analysis' Prometheus in its turn (`read` says how);
/// no Prometheus, a template that did not fill in, and a failed query are each
/// no data naming `what`, never a number.
async fn ask<T>(
    prometheus: &Result<Prometheus, String>,
    limits: &QueryLimits,
    address: &str,
    query: Result<String, TemplateError>,
    what: &str,
    read: impl AsyncFnOnce(&Prometheus, &str) -> Result<T, QueryError>,
) -> Result<T, NoData> {
    let prometheus = prometheus.as_ref().map_err(|e| NoData(e.clone()))?;
    let query = query.map_err(|e| NoData(format!("{what}: {e}")))?;
    let _turn = limits.turn(address).await;
    read(prometheus, &query)
        .await
        .map_err(|e| NoData(format!("{what}: {}", explain(&e, what))))
}

/// The query error, with a hint where an empty result has a well-known cause.
fn explain(error: &QueryError, what: &str) -> String {
    match error {
        QueryError::Empty if what.starts_with("errors") => format!(
            "{error}; if no error has happened yet the series may not exist: end the errors query with `or vector(0)`"
        ),
        _ => error.to_string(),
    }
}

fn std_duration(duration: serin_api::Duration) -> Duration {
    Duration::from(duration)
}

#[cfg(test)]
mod tests {
    use serin_api::Canary;

    use super::*;

    #[tokio::test]
    async fn queries_to_one_prometheus_wait_their_turn_and_others_do_not() {
        let limits = QueryLimits::new(2);
        let first = limits.turn("http://a:9090").await;
        let second = limits.turn("http://a:9090").await;
        assert!(first.is_some() && second.is_some());
        let third = tokio::time::timeout(Duration::from_millis(50), limits.turn("http://a:9090"));
        assert!(third.await.is_err(), "a third query to a ran beside two");
        let elsewhere = tokio::time::timeout(Duration::from_secs(5), limits.turn("http://b:9090"));
        assert!(
            elsewhere.await.is_ok_and(|turn| turn.is_some()),
            "b waited for a"
        );
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(5), limits.turn("http://a:9090"));
        assert!(
            third.await.is_ok_and(|turn| turn.is_some()),
            "a's turn never came"
        );
    }

    fn analysis(metrics: &str, address: &str) -> Analysis {
        let yaml = format!(
            "apiVersion: serin.dev/v1alpha1
kind: Canary
metadata: {{name: web}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec: {{containers: [{{name: web, image: 'web:1'}}]}}
  analysis:
{address}    metrics: {metrics}
"
        );
        let canary: Canary = serde_norway::from_str(&yaml).unwrap_or_else(|e| panic!("{e}"));
        canary
            .spec
            .analysis
            .unwrap_or_else(|| panic!("no analysis"))
    }

    #[test]
    fn spec_problems_name_the_field_and_nothing_is_asked() {
        let with_address = "    prometheus: {address: 'http://prometheus:9090'}\n";
        let analyst = Analyst::new(None, 1);
        let fine = analysis(
            "[{name: up, query: 'up{pod=~\"{{pods}}\"}', max: 1}]",
            with_address,
        );
        assert_eq!(analyst.spec_problem(Some(&fine)), None);

        let unparsable = analysis("[{name: up, query: 'sum(up', max: 1}]", with_address);
        let problem = analyst.spec_problem(Some(&unparsable)).unwrap_or_default();
        assert!(
            problem.starts_with("spec.analysis.metrics[0].query (metric up)"),
            "{problem}"
        );

        let errors = analysis(
            "[{name: errors, errorRate: {requests: 'sum(x)', errors: 'sum(y{a=\"{{pods}}\"}[{{bogus}}])'}}]",
            with_address,
        );
        let problem = analyst.spec_problem(Some(&errors)).unwrap_or_default();
        assert!(
            problem.starts_with("spec.analysis.metrics[0].errorRate.errors"),
            "{problem}"
        );

        let counters = analysis(
            "[{name: errors, errorRate: {counters: {requests: 'r{pod=~\"{{pods}}\"}', errors: 'sum(e{pod=~\"{{pods}}\"})'}}}]",
            with_address,
        );
        let problem = analyst.spec_problem(Some(&counters)).unwrap_or_default();
        assert!(
            problem.starts_with("spec.analysis.metrics[0].errorRate.counters.errors")
                && problem.contains("series selector"),
            "{problem}"
        );

        let nowhere = analysis("[{name: up, query: up, max: 1}]", "");
        let problem = analyst.spec_problem(Some(&nowhere)).unwrap_or_default();
        assert!(
            problem.starts_with("spec.analysis.prometheus.address is required"),
            "{problem}"
        );
        assert_eq!(
            Analyst::new(Some("http://prometheus:9090".into()), 1).spec_problem(Some(&nowhere)),
            None,
            "the controller's default address serves"
        );
    }
}

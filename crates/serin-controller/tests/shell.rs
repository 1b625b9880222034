//! The reconciler in-process, against a scripted API server: a `tower-test` mock
//! that answers as the API server would (creates and patches echoed back),
//! records every request in order, and fails the one a test names; the cache
//! holds the cluster's ReplicaSets and Services as the watches would. No control
//! plane: these prove the shell's requests, their order and its error handling.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action as Requeue;
use serde_json::{Value, json};
use serin_api::{Canary, CanaryStatus, MetricStatus, Phase, Verdict};
use serin_controller::cache::Cache;
use serin_controller::metrics::Metrics;
use serin_controller::reconciler::{
    Context, Layer, ReconcileError, START_DEFERRED, Settings, reconcile_canary,
};
use serin_core::revision::revision_of;

/// One request as the API server saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    path: String,
    query: String,
    body: Value,
}

/// A request to fail: its method, a piece of its path, and the status to answer.
struct Failure {
    method: Method,
    path_contains: &'static str,
    status: StatusCode,
}

/// What the fake API server holds: the Canary, its ReplicaSets and Services (seen
/// through the cache) and an HTTPRoute.
struct Cluster {
    canary: Value,
    replica_sets: Vec<Value>,
    services: Vec<Value>,
    route: Option<Value>,
    failure: Option<Failure>,
}

impl Cluster {
    fn answer(&self, seen: &Seen) -> (StatusCode, Value) {
        if let Some(failure) = &self.failure
            && failure.method == seen.method
            && seen.path.contains(failure.path_contains)
        {
            let status = failure.status;
            return (
                status,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "message": "scripted failure", "reason": "Conflict", "code": status.as_u16()}),
            );
        }
        let path = seen.path.as_str();
        match seen.method {
            Method::GET if path.contains("/httproutes/") => match &self.route {
                Some(route) => (StatusCode::OK, route.clone()),
                None => (
                    StatusCode::NOT_FOUND,
                    json!({"kind": "Status", "code": 404, "reason": "NotFound"}),
                ),
            },
            Method::PATCH if path.ends_with("/status") => (StatusCode::OK, self.canary.clone()),
            _ => (StatusCode::OK, seen.body.clone()),
        }
    }
}

/// Runs one reconcile of `canary` against `cluster`; returns its result and every
/// request the API server received, in order.
async fn reconcile(canary: &Canary, cluster: Cluster) -> (Result<(), ReconcileError>, Vec<Seen>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cache = Cache::holding(decode(&cluster.replica_sets), decode(&cluster.services));
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some((request, respond)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap_or_default();
            let request = Seen {
                method: parts.method,
                path: parts.uri.path().to_owned(),
                query: parts.uri.query().unwrap_or_default().to_owned(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            let (status, answer) = cluster.answer(&request);
            seen.push(request);
            let response = Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&answer).unwrap_or_default()));
            match response {
                Ok(response) => respond.send_response(response),
                Err(error) => panic!("building a response: {error}"),
            }
        }
        seen
    });
    let context = context(service, cache, 1);
    let result = tokio::time::timeout(Duration::from_secs(20), reconcile_canary(canary, &context))
        .await
        .unwrap_or_else(|_| panic!("the reconcile did not finish"))
        .map(|_| ());
    drop(context);
    let seen = server
        .await
        .unwrap_or_else(|e| panic!("the scripted API server failed: {e}"));
    (result, seen)
}

/// The revision of the template the Canary's spec holds.
fn spec_revision(canary: &Canary) -> String {
    revision_of(
        canary
            .spec
            .template
            .as_ref()
            .unwrap_or_else(|| panic!("a Canary with a template")),
    )
}

/// A controller's context over the scripted API server `service`, reconciling
/// `concurrency` Canaries at once.
fn context(
    service: tower_test::mock::Mock<Request<Body>, Response<Body>>,
    cache: Cache,
    concurrency: u16,
) -> Context {
    let settings = Settings {
        namespace: None,
        shard_selector: None,
        concurrency,
        prometheus_address: None,
        prometheus_queries: 1,
        cluster_sinks: None,
    };
    Context::new(
        Client::new(service, "default"),
        &settings,
        Arc::new(Metrics::default()),
        cache,
    )
}

/// Objects as the API server returns them, typed as the cache holds them.
fn decode<K: k8s_openapi::serde::de::DeserializeOwned>(objects: &[Value]) -> Vec<K> {
    objects
        .iter()
        .map(|object| serde_json::from_value(object.clone()).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

fn canary(extra: &str, status: Option<CanaryStatus>) -> Canary {
    let yaml = format!(
        "apiVersion: serin.dev/v1alpha1
kind: Canary
metadata: {{name: web, namespace: shop, uid: 0f0e0d0c-0000-4000-8000-000000000001, generation: 2, resourceVersion: '41'}}
spec:
  replicas: 4
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec: {{containers: [{{name: web, image: 'web:2'}}]}}
  service: {{port: 80}}
  steps: [25, 50]
  stepDuration: 1m
{extra}"
    );
    let mut canary: Canary = serde_norway::from_str(&yaml).unwrap_or_else(|e| panic!("{e}"));
    canary.status = status;
    canary
}

fn replica_set(revision: &str, replicas: i64, available: i64) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": format!("web-{revision}"), "namespace": "shop", "generation": 1,
                     "labels": {"app": "web", "serin.dev/canary": "web", "serin.dev/revision": revision}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web", "serin.dev/revision": revision}}},
        "status": {"replicas": replicas, "availableReplicas": available, "observedGeneration": 1}
    })
}

fn cluster(canary: &Canary) -> Cluster {
    Cluster {
        canary: serde_json::to_value(canary).unwrap_or_default(),
        replica_sets: Vec::new(),
        services: Vec::new(),
        route: None,
        failure: None,
    }
}

/// The cluster of a rollout at step 1: stable `aaaaaaaaaa` with its four pods and
/// the canary `revision` with one, all available.
fn mid_rollout_cluster(canary: &Canary, revision: &str) -> Cluster {
    let mut cluster = cluster(canary);
    cluster.replica_sets = vec![replica_set("aaaaaaaaaa", 4, 4), replica_set(revision, 1, 1)];
    cluster
}

/// A rollout at step 1 (25%) of the spec's revision beside stable `aaaaaaaaaa`.
fn mid_rollout(canary_revision: &str, analysis_since: Timestamp) -> CanaryStatus {
    CanaryStatus {
        phase: Some(Phase::Progressing),
        stable_revision: Some("aaaaaaaaaa".into()),
        canary_revision: Some(canary_revision.into()),
        step: 1,
        weight: serin_api::Weight::from_percent(25),
        step_started_at: Some(Time(analysis_since)),
        analysis_started_at: Some(Time(analysis_since)),
        ..CanaryStatus::default()
    }
}

fn requests(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .map(|s| format!("{} {}", s.method, s.path))
        .collect()
}

#[tokio::test]
async fn first_apply_checks_the_template_then_creates_routes_and_reports_in_order() {
    let canary = canary("", None);
    let revision = spec_revision(&canary);
    let (result, seen) = reconcile(&canary, cluster(&canary)).await;
    assert!(result.is_ok(), "{result:?}");
    let rs = format!("/apis/apps/v1/namespaces/shop/replicasets/web-{revision}");
    assert_eq!(
        requests(&seen),
        [
            "POST /apis/apps/v1/namespaces/shop/replicasets".to_owned(),
            format!("PATCH {rs}"),
            "PATCH /api/v1/namespaces/shop/services/web".to_owned(),
            "PATCH /api/v1/namespaces/shop/services/web-stable".to_owned(),
            "PATCH /api/v1/namespaces/shop/services/web-canary".to_owned(),
            "PATCH /apis/serin.dev/v1alpha1/namespaces/shop/canaries/web/status".to_owned(),
            "POST /apis/events.k8s.io/v1/namespaces/shop/events".to_owned(),
        ]
    );
    assert!(
        seen[0].query.contains("dryRun=All"),
        "the template is checked by a dry run: {}",
        seen[0].query
    );
    assert!(seen[1].query.contains("fieldManager=serin") && seen[1].query.contains("force=true"));
    assert_eq!(seen[1].body["spec"]["replicas"], 4);
    assert_eq!(
        seen[1].body["spec"]["template"]["metadata"]["labels"]["serin.dev/revision"],
        revision.as_str()
    );
    assert_eq!(
        seen[1].body["metadata"]["ownerReferences"][0]["kind"],
        "Canary"
    );
    assert_eq!(
        seen[5].body["metadata"]["resourceVersion"], "41",
        "the status is written on the condition that the Canary is as read"
    );
    let status = &seen[5].body["status"];
    assert_eq!(status["stableRevision"], revision.as_str());
    assert_eq!(status["phase"], "Initializing");
    assert_eq!(status["observedGeneration"], 2);
    assert_eq!(seen[6].body["reason"], "Initializing");
}

#[tokio::test]
async fn an_older_revision_that_is_gone_is_never_recreated() {
    let canary = canary(
        "",
        Some(CanaryStatus {
            phase: Some(Phase::Healthy),
            stable_revision: Some("aaaaaaaaaa".into()),
            ..CanaryStatus::default()
        }),
    );
    let revision = spec_revision(&canary);
    let (result, seen) = reconcile(&canary, cluster(&canary)).await;
    assert!(result.is_ok(), "{result:?}");
    assert!(
        seen.iter().all(|s| !s.path.contains("web-aaaaaaaaaa")),
        "nothing asked of the missing stable: {:?}",
        requests(&seen)
    );
    assert!(requests(&seen).contains(&format!(
        "PATCH /apis/apps/v1/namespaces/shop/replicasets/web-{revision}"
    )));
    let status = seen
        .iter()
        .find(|s| s.path.ends_with("/status"))
        .map(|s| s.body["status"].clone());
    assert_eq!(
        status.as_ref().map(|s| s["canaryRevision"].clone()),
        Some(json!(revision))
    );
}

#[tokio::test]
async fn a_conflict_on_the_route_stops_before_the_status_and_is_retried_at_once() {
    let routed = "  traffic: {gatewayAPI: {httpRoutes: [web]}}\n";
    let revision = spec_revision(&canary(routed, None));
    let since = Timestamp::now() - SignedDuration::from_secs(10);
    let canary = canary(routed, Some(mid_rollout(&revision, since)));
    let mut cluster = mid_rollout_cluster(&canary, &revision);
    cluster.route = Some(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "7"},
        "spec": {"rules": [{"backendRefs": [{"name": "web-stable", "port": 80, "weight": 100},
                                            {"name": "web-canary", "port": 80, "weight": 0}]}]}
    }));
    cluster.failure = Some(Failure {
        method: Method::PATCH,
        path_contains: "/httproutes/web",
        status: StatusCode::CONFLICT,
    });
    let (result, seen) = reconcile(&canary, cluster).await;
    let error = result
        .err()
        .unwrap_or_else(|| panic!("a conflict is an error"));
    assert_eq!(error.layer(), Layer::Apply);
    assert!(error.is_conflict(), "{error}");
    assert!(error.retry_after() < Duration::from_secs(1));
    let apply = seen
        .iter()
        .position(|s| s.method == Method::PATCH && s.path.contains("/httproutes/web"))
        .unwrap_or_else(|| panic!("no apply of the route: {:?}", requests(&seen)));
    assert_eq!(
        seen[apply].body["metadata"]["resourceVersion"], "7",
        "written with the version it read"
    );
    assert_eq!(
        seen[apply].body["spec"].as_object().map(|spec| spec.len()),
        Some(1),
        "only the rules are applied: {}",
        seen[apply].body
    );
    assert!(
        seen[apply..]
            .iter()
            .all(|s| !s.path.ends_with("/status") && !s.path.ends_with("/events")),
        "nothing reported after the conflict: {:?}",
        requests(&seen)
    );
}

#[tokio::test]
async fn a_failed_status_write_is_a_report_error_and_records_no_event() {
    let canary = canary("", None);
    let mut cluster = cluster(&canary);
    cluster.failure = Some(Failure {
        method: Method::PATCH,
        path_contains: "/status",
        status: StatusCode::INTERNAL_SERVER_ERROR,
    });
    let (result, seen) = reconcile(&canary, cluster).await;
    let error = result
        .err()
        .unwrap_or_else(|| panic!("the status write failed"));
    assert_eq!(error.layer(), Layer::Report);
    assert!(!error.is_conflict());
    assert!(
        seen.last().is_some_and(|s| s.path.ends_with("/status")),
        "{:?}",
        requests(&seen)
    );
}

#[tokio::test]
async fn prometheus_unreachable_holds_the_step_as_inconclusive() {
    let analysis = "  analysis:
    interval: 5s
    prometheus: {address: 'http://127.0.0.1:1'}
    metrics: [{name: errors, errorRate: {requests: 'sum(r{pod=~\"{{pods}}\"})', errors: 'sum(e{pod=~\"{{pods}}\"})'}}]\n";
    let revision = spec_revision(&canary(analysis, None));
    let since = Timestamp::now() - SignedDuration::from_secs(30);
    let canary = canary(analysis, Some(mid_rollout(&revision, since)));
    let cluster = mid_rollout_cluster(&canary, &revision);
    let (result, seen) = reconcile(&canary, cluster).await;
    assert!(result.is_ok(), "{result:?}");
    let status = seen
        .iter()
        .find(|s| s.path.ends_with("/status"))
        .map(|s| s.body["status"].clone())
        .unwrap_or_else(|| panic!("no status written: {:?}", requests(&seen)));
    let metric = &status["analysis"][0];
    assert_eq!(metric["verdict"], "Inconclusive", "{metric:#}");
    assert!(
        metric["message"]
            .as_str()
            .is_some_and(|m| m.contains("Prometheus")),
        "{metric:#}"
    );
    assert_eq!(status["phase"], "Progressing");
    assert_eq!(status["step"], 1, "the step holds");
    let progressing = status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Progressing").cloned())
        .unwrap_or_default();
    assert_eq!(progressing["reason"], "Inconclusive", "{progressing:#}");
}

#[tokio::test]
async fn an_idle_canary_sends_no_request_at_all() {
    // Reconcile as the cluster answers: each written status is stored, each created
    // ReplicaSet exists with its pods available, each applied Service is stored and
    // seen by the cache, until a reconcile changes nothing.
    let mut canary = canary("", None);
    let revision = spec_revision(&canary);
    let mut replica_sets = Vec::new();
    let mut services: Vec<Value> = Vec::new();
    let mut last = Vec::new();
    for _ in 0..4 {
        let mut cluster = cluster(&canary);
        cluster.replica_sets = replica_sets.clone();
        cluster.services = services.clone();
        let (result, seen) = reconcile(&canary, cluster).await;
        assert!(result.is_ok(), "{result:?}");
        if let Some(written) = seen.iter().find(|s| s.path.ends_with("/status")) {
            canary.status = serde_json::from_value(written.body["status"].clone()).ok();
        }
        if seen
            .iter()
            .any(|s| s.method == Method::PATCH && s.path.contains("/replicasets/"))
        {
            replica_sets = vec![replica_set(&revision, 4, 4)];
        }
        for applied in seen
            .iter()
            .filter(|s| s.method == Method::PATCH && s.path.contains("/services/"))
        {
            services.retain(|s| s["metadata"]["name"] != applied.body["metadata"]["name"]);
            services.push(applied.body.clone());
        }
        last = seen;
    }
    assert_eq!(
        canary.status.as_ref().and_then(|s| s.phase),
        Some(Phase::Healthy)
    );
    assert_eq!(services.len(), 3);
    assert!(last.is_empty(), "an idle Canary sent {:?}", requests(&last));

    // A Service a person changed is put back, and only that one.
    if let Some(port) = services[1]["spec"]["ports"][0].as_object_mut() {
        port.insert("targetPort".into(), json!(9999));
    }
    let mut cluster = cluster(&canary);
    cluster.replica_sets = replica_sets;
    cluster.services = services.clone();
    let (result, seen) = reconcile(&canary, cluster).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(
        requests(&seen),
        [format!(
            "PATCH /api/v1/namespaces/shop/services/{}",
            services[1]["metadata"]["name"].as_str().unwrap_or_default()
        )]
    );
}

#[tokio::test]
async fn a_new_revision_waits_for_a_start_slot_and_a_running_one_never_does() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // "web" runs step 1 of its revision at 25%; "api" and "db" each start a new one.
    let mut running = canary("", None);
    let revision = spec_revision(&running);
    running.status = Some(mid_rollout(&revision, Timestamp::now()));
    let starting = |name: &str| {
        let mut canary = canary("", None);
        canary.metadata.name = Some(name.into());
        canary
    };
    let cache = Cache::holding(
        decode(&[
            replica_set("aaaaaaaaaa", 4, 4),
            replica_set(&revision, 1, 1),
        ]),
        Vec::new(),
    );
    // An API server that holds its first answer until told, answers every other
    // request with an error at once, and notes each request as it arrives.
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let arrived = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (release, held) = tokio::sync::oneshot::channel::<()>();
    let noted = Arc::clone(&arrived);
    tokio::spawn(async move {
        let mut held = Some(held);
        while let Some((request, respond)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap_or_default();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if let Ok(mut noted) = noted.lock() {
                noted.push(format!(
                    "{} {} {}",
                    parts.method,
                    parts.uri.path(),
                    body["metadata"]["name"].as_str().unwrap_or_default()
                ));
            }
            let hold = held.take();
            tokio::spawn(async move {
                if let Some(hold) = hold {
                    let _ = hold.await;
                }
                let answer = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                    "message": "scripted failure", "code": 500});
                if let Ok(response) = Response::builder()
                    .status(StatusCode::INTERNAL_SERVER_ERROR)
                    .body(Body::from(answer.to_string().into_bytes()))
                {
                    respond.send_response(response);
                }
            });
        }
    });
    let context = Arc::new(context(service, cache, 2));
    let arrived_count = || arrived.lock().map(|a| a.len()).unwrap_or_default();

    // "api" takes the one start slot (concurrency 2) and waits on its dry run.
    let first = {
        let (context, api) = (Arc::clone(&context), starting("api"));
        tokio::spawn(async move { reconcile_canary(&api, &context).await })
    };
    within(async {
        while arrived_count() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    // "db" is put off without a request, and so is "web" while its rollout
    // waits for its canary's pods; past its first weight, "web" goes on to the
    // API server.
    let deferred = within(reconcile_canary(&starting("db"), &context)).await;
    assert_eq!(deferred.ok(), Some(Requeue::requeue(START_DEFERRED)));
    let mut waiting = running.clone();
    if let Some(status) = waiting.status.as_mut() {
        status.weight = serin_api::Weight::ZERO;
    }
    let deferred = within(reconcile_canary(&waiting, &context)).await;
    assert_eq!(deferred.ok(), Some(Requeue::requeue(START_DEFERRED)));
    assert_eq!(arrived_count(), 1, "{arrived:?}");
    let on = within(reconcile_canary(&running, &context)).await;
    assert_ne!(on.ok(), Some(Requeue::requeue(START_DEFERRED)));
    assert!(
        arrived_count() > 1
            && arrived
                .lock()
                .map(|a| a.iter().skip(1).all(|r| !r.contains("db-")))
                .unwrap_or_default(),
        "{arrived:?}"
    );

    // Once "api" is done, "db" starts: its dry run goes out.
    let _ = release.send(());
    let _ = within(first).await;
    let _ = within(reconcile_canary(&starting("db"), &context)).await;
    assert!(
        arrived
            .lock()
            .map(|a| a
                .iter()
                .any(|r| r.starts_with("POST /apis/apps/v1/namespaces/shop/replicasets db-")))
            .unwrap_or_default(),
        "{arrived:?}"
    );
}

/// Awaits `future`, failing the test after 20 s.
async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), future)
        .await
        .unwrap_or_else(|_| panic!("not done within 20 s"))
}

/// A Prometheus for request shapes: answers every instant query with 10 and sends
/// each query's parameters to the test.
fn recording_prometheus() -> (String, std::sync::mpsc::Receiver<Vec<(String, String)>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|e| panic!("binding a loopback port: {e}"));
    let address = listener
        .local_addr()
        .map(|a| format!("http://{a}"))
        .unwrap_or_else(|e| panic!("{e}"));
    let (sender, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(64) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(&mut stream);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let mut header = String::new();
            while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                header.clear();
            }
            let target = line.split(' ').nth(1).unwrap_or_default();
            let query = target.split_once('?').map(|(_, q)| q).unwrap_or_default();
            let params = url::form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            let _ = sender.send(params);
            let body = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[0,"10"]}]}}"#;
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (address, received)
}

/// Milliseconds in a PromQL range as Serin writes it (`75s`, `75900ms`).
fn range_millis(query: &str) -> i64 {
    let range = query
        .rsplit_once('[')
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(range, _)| range)
        .unwrap_or_else(|| panic!("no range in {query}"));
    match range.strip_suffix("ms") {
        Some(millis) => millis.parse().unwrap_or_else(|e| panic!("{range}: {e}")),
        None => range
            .strip_suffix('s')
            .and_then(|s| s.parse::<i64>().ok())
            .map(|s| s * 1000)
            .unwrap_or_else(|| panic!("{range}")),
    }
}

#[tokio::test]
async fn every_analysis_of_a_window_counts_from_exactly_its_start() {
    let (address, queries) = recording_prometheus();
    let analysis = "  analysis:
    interval: 5s
    prometheus: {address: 'ADDRESS'}
    metrics: [{name: errors, errorRate: {requests: 'sum(increase(r{pod=~\"{{pods}}\"}[{{elapsed}}]))', errors: 'sum(increase(e{pod=~\"{{pods}}\"}[{{elapsed}}]))'}}]\n"
        .replace("ADDRESS", &address);
    let revision = spec_revision(&canary(&analysis, None));
    // A step's start as the status stores it: whole seconds.
    let since =
        Timestamp::from_second(Timestamp::now().as_second() - 30).unwrap_or_else(|e| panic!("{e}"));
    let canary = canary(&analysis, Some(mid_rollout(&revision, since)));
    let mut times = Vec::new();
    for _ in 0..2 {
        let cluster = mid_rollout_cluster(&canary, &revision);
        let (result, _) = reconcile(&canary, cluster).await;
        assert!(result.is_ok(), "{result:?}");
        for _ in 0..4 {
            let params = queries
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("four queries per analysis: {e}"));
            let param = |name: &str| {
                params
                    .iter()
                    .find(|(key, _)| key == name)
                    .map(|(_, value)| value.clone())
                    .unwrap_or_else(|| panic!("no {name} in {params:?}"))
            };
            let at: f64 = param("time").parse().unwrap_or_else(|e| panic!("{e}"));
            #[allow(clippy::cast_possible_truncation)]
            let at_millis = (at * 1000.0).round() as i64;
            assert_eq!(
                at_millis - range_millis(&param("query")),
                since.as_millisecond(),
                "the window starts where the step's weight took effect: {params:?}"
            );
            times.push(at_millis);
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert!(
        times.first() < times.last(),
        "two analyses at two times: {times:?}"
    );
}

#[tokio::test]
async fn a_metric_leaning_against_the_canary_is_looked_at_quickly_a_healthy_one_every_interval() {
    let (address, queries) = recording_prometheus();
    let analysis = "  analysis:
    interval: 30s
    scrapeInterval: 2s
    prometheus: {address: 'ADDRESS'}
    metrics: [{name: errors, errorRate: {requests: 'sum(r{pod=~\"{{pods}}\"})', errors: 'sum(e{pod=~\"{{pods}}\"})'}}]\n"
        .replace("ADDRESS", &address);
    let revision = spec_revision(&canary(&analysis, None));
    let now = Timestamp::now().as_second();
    let at = |seconds_ago: i64| {
        Timestamp::from_second(now - seconds_ago).unwrap_or_else(|e| panic!("{e}"))
    };
    // The step's weight took effect 5 s ago: one scrape interval has passed, the
    // interval has not.
    let since = at(5);
    let looked_at = |evidence: f64| MetricStatus {
        name: "errors".into(),
        canary: None,
        stable: None,
        counts: None,
        evidence: Some(evidence),
        carried: vec![0.0; 4],
        earlier: Vec::new(),
        ratio: None,
        failures: None,
        verdict: Verdict::Pass,
        since: Some(Time(since)),
        at: Some(Time(at(3))),
        message: None,
        dry_run: false,
    };
    let queries_sent = |expected: usize| {
        let mut sent = 0;
        while queries.recv_timeout(Duration::from_millis(1500)).is_ok() {
            sent += 1;
        }
        assert_eq!(sent, expected, "queries sent");
    };
    for (analysed, expected) in [
        // Nothing seen yet in the step: look after one scrape interval.
        (None, 4),
        // The last look, 3 s ago, leaned against the canary: look again.
        (Some(looked_at(3.0)), 4),
        // It leaned the canary's way (evidence under 0.1): wait for the interval.
        (Some(looked_at(0.05)), 0),
    ] {
        let mut status = mid_rollout(&revision, since);
        status.analysis = analysed.into_iter().collect();
        let canary = canary(&analysis, Some(status));
        let cluster = mid_rollout_cluster(&canary, &revision);
        let (result, _) = reconcile(&canary, cluster).await;
        assert!(result.is_ok(), "{result:?}");
        queries_sent(expected);
    }
}

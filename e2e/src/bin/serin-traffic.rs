//! `serin-traffic`: the traffic simulator of the end-to-end tests and the demo (see
//! `serin_e2e::traffic`). Follows one Canary's weights, simulates Poisson requests to
//! its ready pods and serves `http_requests_total` and
//! `http_request_duration_seconds` on `/metrics`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use hyper::StatusCode;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::{Api, Client};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Binomial, Distribution, Exp, Poisson};
use serin_api::Canary;
use serin_controller::http::{METRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE};
use serin_e2e::traffic::{Backend, ReadyPod, backends};

/// Simulated traffic for one Canary.
#[derive(Parser)]
struct Args {
    /// Namespace of the Canary.
    #[arg(long)]
    namespace: String,
    /// Name of the Canary.
    #[arg(long)]
    canary: String,
    /// Requests per second to the workload, both revisions.
    #[arg(long, default_value_t = 100.0)]
    rps: f64,
    /// Address of `/metrics`.
    #[arg(long, default_value = "127.0.0.1:9898")]
    address: SocketAddr,
    /// Seed of the request stream.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

const TICK: Duration = Duration::from_millis(200);
const REFRESH: Duration = Duration::from_secs(1);
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Latencies sampled per pod and tick; enough for the quantiles, bounded in CPU.
const MAX_SAMPLES: u64 = 200;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    namespace: String,
    pod: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PodLabels {
    namespace: String,
    pod: String,
}

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;
    let client = Client::try_default()
        .await
        .context("no cluster credentials: set KUBECONFIG")?;
    let requests: Family<RequestLabels, Counter> = Family::default();
    let latency: Family<PodLabels, Histogram> =
        Family::new_with_constructor(histogram as fn() -> Histogram);
    let mut registry = Registry::default();
    registry.register("http_requests", "Requests served", requests.clone());
    registry.register(
        "http_request_duration_seconds",
        "Time to serve a request",
        latency.clone(),
    );
    let registry = Arc::new(registry);
    let handler: serin_controller::http::Handler = Arc::new(move |path: &str| {
        if path != "/metrics" {
            return (StatusCode::NOT_FOUND, TEXT_CONTENT_TYPE, String::new());
        }
        let mut text = String::new();
        match prometheus_client::encoding::text::encode(&mut text, &registry) {
            Ok(()) => (StatusCode::OK, METRICS_CONTENT_TYPE, text),
            Err(error) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                TEXT_CONTENT_TYPE,
                error.to_string(),
            ),
        }
    });
    serin_controller::http::serve(args.address, handler).await?;

    let current: Arc<Mutex<Vec<Backend>>> = Arc::default();
    let watched = Arc::clone(&current);
    let (namespace, name) = (args.namespace.clone(), args.canary.clone());
    tokio::spawn(async move {
        loop {
            match observe(&client, &namespace, &name).await {
                Ok(found) => {
                    if let Ok(mut slot) = watched.lock() {
                        *slot = found;
                    }
                }
                Err(error) => eprintln!("observing {namespace}/{name}: {error:#}"),
            }
            tokio::time::sleep(REFRESH).await;
        }
    });

    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut ticker = tokio::time::interval(TICK);
    loop {
        ticker.tick().await;
        let backends = current.lock().map(|b| b.clone()).unwrap_or_default();
        for backend in backends {
            let labels = |code: &str| RequestLabels {
                namespace: args.namespace.clone(),
                pod: backend.pod.clone(),
                code: code.to_owned(),
            };
            let mean = args.rps * backend.share * TICK.as_secs_f64();
            let served = match Poisson::new(mean) {
                Ok(poisson) if mean > 0.0 => poisson.sample(&mut rng) as u64,
                _ => 0,
            };
            let failed = Binomial::new(served, backend.error_rate)
                .map(|b| b.sample(&mut rng))
                .unwrap_or(0);
            requests
                .get_or_create(&labels("200"))
                .inc_by(served - failed);
            requests.get_or_create(&labels("500")).inc_by(failed);
            let histogram = latency.get_or_create(&PodLabels {
                namespace: args.namespace.clone(),
                pod: backend.pod.clone(),
            });
            if let Ok(exp) = Exp::new(1.0 / backend.latency.max(1e-6)) {
                for _ in 0..served.min(MAX_SAMPLES) {
                    histogram.observe(exp.sample(&mut rng));
                }
            }
        }
    }
}

/// Where the Canary's traffic goes now.
async fn observe(client: &Client, namespace: &str, name: &str) -> Result<Vec<Backend>> {
    let canaries: Api<Canary> = Api::namespaced(client.clone(), namespace);
    let Some(canary) = canaries.get_opt(name).await? else {
        return Ok(Vec::new());
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = canary
        .spec
        .selector
        .match_labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let ready: Vec<ReadyPod> = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .filter(is_ready)
        .map(|pod| ReadyPod {
            name: pod.metadata.name.clone().unwrap_or_default(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            env: pod
                .spec
                .as_ref()
                .and_then(|spec| spec.containers.first())
                .and_then(|container| container.env.clone())
                .unwrap_or_default()
                .into_iter()
                .filter_map(|var| Some((var.name, var.value?)))
                .collect(),
        })
        .collect();
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let selector_of = |service: Option<Service>| -> BTreeMap<String, String> {
        service
            .and_then(|s| s.spec)
            .and_then(|spec| spec.selector)
            .unwrap_or_default()
    };
    let weighted = match canary
        .spec
        .traffic
        .as_ref()
        .and_then(|t| t.gateway_api.as_ref())
        .and_then(|g| g.http_routes.first())
    {
        Some(route_name) => {
            let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
            let routes: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), namespace, &ApiResource::from_gvk(&gvk));
            let route = routes.get(route_name).await?;
            let mut weighted = Vec::new();
            let refs = route.data["spec"]["rules"][0]["backendRefs"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for backend in refs {
                let service = backend["name"].as_str().unwrap_or_default().to_owned();
                let weight = backend["weight"].as_f64().unwrap_or(1.0);
                if weight > 0.0 {
                    weighted.push((weight, selector_of(services.get_opt(&service).await?)));
                }
            }
            weighted
        }
        None => vec![(1.0, selector_of(services.get_opt(name).await?))],
    };
    // A Service without a selector selects no pods (never every pod).
    let weighted: Vec<_> = weighted
        .into_iter()
        .filter(|(_, s)| !s.is_empty())
        .collect();
    Ok(backends(&weighted, &ready))
}

fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|conditions| {
                conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
}

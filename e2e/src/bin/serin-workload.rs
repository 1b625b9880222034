//! `serin-workload`: the demo and test workload that runs in real pods. An HTTP
//! server whose error rate and latency come from its environment, so a test makes
//! a bad release by changing an env var in the Canary's template:
//!
//! - `ERROR_RATE`: fraction of requests answered 500 (default 0);
//! - `LATENCY_MS`: mean latency in milliseconds, exponentially distributed (default 5);
//! - `VERSION`: named in every answer (body and `x-version` header), so a client can
//!   count which revision served it;
//! - `PORT`: where it listens (default 8080).
//!
//! `/` is the service; `/metrics` serves `http_requests_total{code}` and the
//! histogram `http_request_duration_seconds`; `/healthz` answers 200; anything else
//! 404. On SIGTERM it keeps
//! serving for `DRAIN_SECONDS` (default 3) while endpoints are withdrawn, then exits,
//! as a well-behaved service does.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Exp};
use serin_controller::http::{METRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: String,
}

/// What the environment asks this server to be.
struct Behaviour {
    error_rate: f64,
    latency: Option<Exp<f64>>,
    version: String,
    pod: String,
}

struct Server {
    behaviour: Behaviour,
    rng: Mutex<StdRng>,
    requests: Family<CodeLabel, Counter>,
    duration: Histogram,
    registry: Registry,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={text:?} is not a valid value")),
        Err(_) => Ok(default),
    }
}

impl Server {
    fn from_env() -> Result<Self> {
        let error_rate: f64 = env_or("ERROR_RATE", 0.0)?;
        if !(0.0..=1.0).contains(&error_rate) {
            anyhow::bail!("ERROR_RATE={error_rate} must be between 0 and 1");
        }
        let latency_ms: f64 = env_or("LATENCY_MS", 5.0)?;
        let behaviour = Behaviour {
            error_rate,
            latency: (latency_ms > 0.0)
                .then(|| Exp::new(1000.0 / latency_ms))
                .transpose()
                .context("LATENCY_MS must be a positive number")?,
            version: env_or("VERSION", "unknown".to_owned())?,
            pod: env_or("HOSTNAME", "unknown".to_owned())?,
        };
        let requests: Family<CodeLabel, Counter> = Family::default();
        let duration = Histogram::new(BUCKETS);
        let mut registry = Registry::default();
        registry.register("http_requests", "Requests served", requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "Time to serve a request",
            duration.clone(),
        );
        Ok(Self {
            behaviour,
            rng: Mutex::new(StdRng::from_rng(&mut rand::rng())),
            requests,
            duration,
            registry,
        })
    }

    async fn answer(&self, path: &str) -> (StatusCode, &'static str, String) {
        match path {
            "/metrics" => {
                let mut text = String::new();
                match prometheus_client::encoding::text::encode(&mut text, &self.registry) {
                    Ok(()) => (StatusCode::OK, METRICS_CONTENT_TYPE, text),
                    Err(error) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        TEXT_CONTENT_TYPE,
                        error.to_string(),
                    ),
                }
            }
            "/healthz" => (StatusCode::OK, TEXT_CONTENT_TYPE, "ok\n".into()),
            "/" => {
                let (status, body) = self.serve_request().await;
                (status, TEXT_CONTENT_TYPE, body)
            }
            _ => (
                StatusCode::NOT_FOUND,
                TEXT_CONTENT_TYPE,
                "not found\n".into(),
            ),
        }
    }

    async fn serve_request(&self) -> (StatusCode, String) {
        let started = Instant::now();
        let (delay, fails) = {
            let mut rng = self.rng.lock().unwrap_or_else(|poison| poison.into_inner());
            let delay = self
                .behaviour
                .latency
                .map(|exp| Duration::from_secs_f64(exp.sample(&mut *rng).min(10.0)));
            (delay, rng.random_bool(self.behaviour.error_rate))
        };
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let status = if fails {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        };
        self.requests
            .get_or_create(&CodeLabel {
                code: status.as_u16().to_string(),
            })
            .inc();
        self.duration.observe(started.elapsed().as_secs_f64());
        let body = format!("{} {}\n", self.behaviour.version, self.behaviour.pod);
        (status, body)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let server = Arc::new(Server::from_env()?);
    let port: u16 = env_or("PORT", 8080)?;
    let drain = Duration::from_secs(env_or("DRAIN_SECONDS", 3)?);
    let listener = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port)))
        .await
        .with_context(|| format!("binding port {port}"))?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut stopping: Option<tokio::time::Instant> = None;
    loop {
        let deadline = stopping.map(|at| at + drain);
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let server = Arc::clone(&server);
                let version = server.behaviour.version.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let server = Arc::clone(&server);
                        let version = version.clone();
                        async move {
                            let (status, content_type, body) =
                                server.answer(request.uri().path()).await;
                            let mut response = Response::new(Full::new(Bytes::from(body)));
                            *response.status_mut() = status;
                            response.headers_mut().insert(
                                hyper::header::CONTENT_TYPE,
                                hyper::header::HeaderValue::from_static(content_type),
                            );
                            if let Ok(value) = version.parse() {
                                response.headers_mut().insert("x-version", value);
                            }
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            _ = terminate.recv(), if stopping.is_none() => stopping = Some(tokio::time::Instant::now()),
            _ = interrupt.recv(), if stopping.is_none() => stopping = Some(tokio::time::Instant::now()),
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => return Ok(()),
        }
    }
}

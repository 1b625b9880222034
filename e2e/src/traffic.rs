//! The traffic simulator: it closes the loop of the end-to-end tests. It reads where
//! the cluster sends a Canary's traffic (the HTTPRoute's weights to `<name>-stable`
//! and `<name>-canary`, or the pods behind `<name>`), sends Poisson requests to each
//! ready pod with the error rate and latency of that pod's `SIM_ERROR_RATE` and
//! `SIM_LATENCY_MS` env vars, and serves the counters and histograms Prometheus
//! scrapes. The pods themselves are kwok's fakes; the requests exist only here.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::process::{Supervised, free_port, wait_until};
use crate::prometheus::{Prometheus, ScrapeJob};

/// Env var of a pod's container: fraction of requests that fail (default 0).
pub const ERROR_RATE_ENV: &str = "SIM_ERROR_RATE";
/// Env var of a pod's container: mean latency in milliseconds (default 10).
pub const LATENCY_ENV: &str = "SIM_LATENCY_MS";

/// A ready pod that receives a share of the Canary's traffic.
#[derive(Clone, Debug, PartialEq)]
pub struct Backend {
    /// Pod name, the `pod` label of its series.
    pub pod: String,
    /// Fraction of all requests it receives.
    pub share: f64,
    /// Fraction of its requests that fail.
    pub error_rate: f64,
    /// Mean latency, seconds.
    pub latency: f64,
}

/// A pod as the simulator needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadyPod {
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Env of its first container.
    pub env: BTreeMap<String, String>,
}

/// Splits traffic over pods: each weighted Service's share spread evenly over the ready
/// pods its selector matches. A Service without pods drops its share, as a real one
/// would answer nothing.
pub fn backends(services: &[(f64, BTreeMap<String, String>)], pods: &[ReadyPod]) -> Vec<Backend> {
    let total: f64 = services.iter().map(|(weight, _)| weight.max(0.0)).sum();
    let mut out = Vec::new();
    if total <= 0.0 {
        return out;
    }
    for (weight, selector) in services {
        let matching: Vec<&ReadyPod> = pods
            .iter()
            .filter(|pod| selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v)))
            .collect();
        for pod in &matching {
            let number = |key: &str, default: f64| {
                pod.env
                    .get(key)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(default)
            };
            out.push(Backend {
                pod: pod.name.clone(),
                share: weight.max(0.0) / total / matching.len() as f64,
                error_rate: number(ERROR_RATE_ENV, 0.0).clamp(0.0, 1.0),
                latency: number(LATENCY_ENV, 10.0).max(0.0) / 1000.0,
            });
        }
    }
    out
}

/// A running simulator process (`serin-traffic`), stopped when dropped.
pub struct Traffic {
    process: Supervised,
    port: u16,
    _logs: tempfile::TempDir,
}

impl Traffic {
    /// Starts sending `rps` requests per second to the Canary `name` in `namespace`,
    /// with the cluster credentials of `kubeconfig`; returns once `/metrics` answers.
    pub fn start(kubeconfig: &Path, namespace: &str, name: &str, rps: f64) -> Result<Self> {
        let binary = crate::controller::binary_dir()?.join("serin-traffic");
        let logs = tempfile::Builder::new()
            .prefix("serin-e2e-traffic-")
            .tempdir()?;
        let port = free_port()?;
        let mut process = Supervised::spawn_with_env(
            "serin-traffic",
            &binary,
            &[
                format!("--namespace={namespace}"),
                format!("--canary={name}"),
                format!("--rps={rps}"),
                format!("--address=127.0.0.1:{port}"),
            ],
            &[("KUBECONFIG", kubeconfig.as_os_str())],
            logs.path(),
        )?;
        wait_until(
            "the traffic simulator",
            Duration::from_secs(30),
            || process.ensure_running(),
            || crate::http::get(port, "/metrics").is_some_and(|(code, _)| code == 200),
        )?;
        Ok(Self {
            process,
            port,
            _logs: logs,
        })
    }

    /// `host:port` for a Prometheus scrape job.
    pub fn target(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A real Prometheus scraping the simulator every second.
    pub fn scraped(&self) -> Result<Prometheus> {
        Prometheus::start(
            &[ScrapeJob {
                name: "traffic".into(),
                targets: vec![self.target()],
            }],
            Duration::from_secs(1),
        )
    }

    /// The simulator's log, for a failing test's message.
    pub fn log(&self) -> String {
        self.process.log_tail(40)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, revision: &str, error_rate: &str) -> ReadyPod {
        ReadyPod {
            name: name.into(),
            labels: [("app", "web"), ("serin.dev/revision", revision)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            env: [(ERROR_RATE_ENV.to_owned(), error_rate.to_owned())].into(),
        }
    }

    fn selector(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn route_weights_split_between_the_services_pods() {
        let pods = [
            pod("a", "s", "0.01"),
            pod("b", "s", "0.01"),
            pod("c", "c", "0.2"),
        ];
        let split = backends(
            &[
                (75.0, selector(&[("serin.dev/revision", "s")])),
                (25.0, selector(&[("serin.dev/revision", "c")])),
            ],
            &pods,
        );
        let share = |name: &str| split.iter().find(|b| b.pod == name).map(|b| b.share);
        assert_eq!(share("a"), Some(0.375));
        assert_eq!(share("c"), Some(0.25));
        assert_eq!(
            split.iter().find(|b| b.pod == "c").map(|b| b.error_rate),
            Some(0.2)
        );
    }

    #[test]
    fn without_a_route_every_pod_behind_the_service_gets_an_equal_share() {
        let pods = [pod("a", "s", "0"), pod("b", "s", "0"), pod("c", "c", "x")];
        let split = backends(&[(1.0, selector(&[("app", "web")]))], &pods);
        assert_eq!(split.len(), 3);
        assert!(split.iter().all(|b| (b.share - 1.0 / 3.0).abs() < 1e-12));
        assert_eq!(split[2].error_rate, 0.0, "an unreadable rate is 0");
    }
}

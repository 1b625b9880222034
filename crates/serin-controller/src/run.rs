//! The controller process: endpoints, leader election, and the reconcile loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::StatusCode;
use kube::Client;
use kube::api::ListParams;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::health::WatchHealth;
use crate::http::{self, Handler, METRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE};
use crate::metrics::{Metrics, api_request};
use crate::reconciler::{self, Settings};

/// Name of the Lease the replicas compete for, without a shard selector.
pub const LEASE_NAME: &str = "serin-controller";

/// The Lease of the replicas that own the Canaries `shard_selector` selects: one
/// per selector, so every shard has its own leader, and two installs given the same
/// selector share one (only one of them acts). Readable in `kubectl get leases`,
/// with a hash of the exact selector so that two selectors never share a name.
pub fn lease_name(shard_selector: Option<&str>) -> String {
    let Some(selector) = shard_selector else {
        return LEASE_NAME.to_owned();
    };
    let mut readable = String::new();
    for c in selector.chars().map(|c| c.to_ascii_lowercase()).take(200) {
        match c {
            'a'..='z' | '0'..='9' => readable.push(c),
            _ if !readable.is_empty() && !readable.ends_with('-') => readable.push('-'),
            _ => {}
        }
    }
    let hash = selector.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    });
    let readable = readable.trim_end_matches('-');
    match readable {
        "" => format!("{LEASE_NAME}-{:06x}", hash & 0xff_ffff),
        _ => format!("{LEASE_NAME}-{readable}-{:06x}", hash & 0xff_ffff),
    }
}

/// Longest the process keeps going after SIGTERM: in-flight reconciles finish and
/// the Lease is released within it, or the process exits anyway (the Lease then
/// expires for the standby). Below Kubernetes' default 30 s grace period.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How the controller process runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// What to reconcile, and how many at once.
    pub settings: Settings,
    /// Where `/metrics` is served.
    pub metrics_address: SocketAddr,
    /// Where `/healthz` and `/readyz` are served.
    pub health_address: SocketAddr,
    /// Compete for a Lease so that only one replica acts.
    pub leader_election: bool,
    /// Namespace of the Lease (its name follows the shard, see [`lease_name`]).
    pub lease_namespace: String,
    /// This replica's name in the Lease.
    pub identity: String,
}

/// Why the controller could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// An endpoint's address could not be bound.
    #[error("binding {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The API server did not answer.
    #[error("reaching the Kubernetes API: {0}")]
    Api(#[source] kube::Error),
    /// The shard selector is not a label selector the API server accepts.
    #[error(
        "--shard-selector {selector:?} is refused by the API server: {message}; give a label selector such as serin.dev/shard=a"
    )]
    ShardSelector {
        /// The selector given.
        selector: String,
        /// The API server's words.
        message: String,
    },
    /// Leader election failed.
    #[error("leader election on Lease {lease}: {source}")]
    Lease {
        /// The Lease's name.
        lease: String,
        /// Why.
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },
}

/// Runs until SIGTERM or Ctrl-C: serves the endpoints, and reconciles while this
/// replica leads (always, without leader election). Returns at most
/// [`SHUTDOWN_GRACE`] after the signal, whatever state the reconciler is in.
pub async fn run(config: kube::Config, options: Options) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::default());
    let client = counted_client(config, &metrics)?;
    let health = Arc::new(WatchHealth::default());
    let ready = Arc::new(AtomicBool::new(false));
    serve_endpoints(&options, &metrics, &health, &ready).await?;
    client.apiserver_version().await.map_err(RunError::Api)?;
    check_shard_selector(&client, &options.settings).await?;
    ready.store(true, Ordering::Relaxed);

    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutting down");
        let _ = stop_tx.send(true);
    });
    let grace_over = {
        let stop = stop.clone();
        async move {
            stopped(stop).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        }
    };
    tokio::select! {
        result = reconcile_while_leading(client, options, metrics, health, stop) => result,
        () = grace_over => {
            warn!(grace = ?SHUTDOWN_GRACE, "still busy after the stop signal: exiting anyway");
            Ok(())
        }
    }
}

/// A client that counts every request it sends in `serin_api_requests_total`, so
/// what the controller costs the API server is measured, not guessed.
fn counted_client(config: kube::Config, metrics: &Arc<Metrics>) -> Result<Client, RunError> {
    let metrics = Arc::clone(metrics);
    let count =
        tower::util::MapRequestLayer::new(move |request: ::http::Request<kube::client::Body>| {
            let uri = request.uri();
            if let Some(labels) = api_request(
                request.method().as_str(),
                uri.path(),
                uri.query().unwrap_or_default(),
            ) {
                metrics.api_request(&labels);
            }
            request
        });
    Ok(kube::client::ClientBuilder::try_from(config)
        .map_err(RunError::Api)?
        .with_layer(&count)
        .build())
}

/// `/metrics` on one address; `/healthz`, and `/readyz` that fails until the API
/// answers and while a watch cannot list, on the other.
async fn serve_endpoints(
    options: &Options,
    metrics: &Arc<Metrics>,
    health: &Arc<WatchHealth>,
    ready: &Arc<AtomicBool>,
) -> Result<(), RunError> {
    let metrics_handler: Handler = {
        let metrics = Arc::clone(metrics);
        Arc::new(move |path| match path {
            "/metrics" => (StatusCode::OK, METRICS_CONTENT_TYPE, metrics.encode()),
            _ => (
                StatusCode::NOT_FOUND,
                TEXT_CONTENT_TYPE,
                "not found\n".into(),
            ),
        })
    };
    let health_handler: Handler = {
        let ready = Arc::clone(ready);
        let health = Arc::clone(health);
        Arc::new(move |path| match path {
            "/healthz" => (StatusCode::OK, TEXT_CONTENT_TYPE, "ok\n".into()),
            "/readyz" if !ready.load(Ordering::Relaxed) => (
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT_CONTENT_TYPE,
                "starting\n".into(),
            ),
            "/readyz" => match health.problem() {
                None => (StatusCode::OK, TEXT_CONTENT_TYPE, "ok\n".into()),
                Some(problem) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT_CONTENT_TYPE,
                    format!("{problem}\n"),
                ),
            },
            _ => (
                StatusCode::NOT_FOUND,
                TEXT_CONTENT_TYPE,
                "not found\n".into(),
            ),
        })
    };
    for (address, handler) in [
        (options.metrics_address, metrics_handler),
        (options.health_address, health_handler),
    ] {
        let bound = http::serve(address, handler)
            .await
            .map_err(|source| RunError::Bind { address, source })?;
        info!(%bound, "serving");
    }
    Ok(())
}

/// Reconciles while this replica holds the Lease (always, without leader
/// election), until a stop is requested; then releases the Lease.
async fn reconcile_while_leading(
    client: Client,
    options: Options,
    metrics: Arc<Metrics>,
    health: Arc<WatchHealth>,
    stop: watch::Receiver<bool>,
) -> Result<(), RunError> {
    if !options.leader_election {
        metrics.set_leader(true);
        reconciler::run(client, options.settings, metrics, health, stopped(stop)).await;
        return Ok(());
    }

    let lease = lease_name(options.settings.shard_selector.as_deref());
    let manager = LeaseManagerBuilder::new(client.clone(), &lease)
        .with_namespace(&options.lease_namespace)
        .with_identity(&options.identity)
        .with_duration(15)
        .with_grace(5)
        .build()
        .await
        .map_err(|source| RunError::Lease {
            lease: lease.clone(),
            source,
        })?;
    let (mut leading, lease_task) = manager.watch().await;
    loop {
        let mut stop_waiting = stop.clone();
        tokio::select! {
            _ = wait_for(&mut leading, true) => {}
            _ = stopped(stop_waiting.clone()) => break,
        }
        if *stop_waiting.borrow_and_update() {
            break;
        }
        info!(identity = %options.identity, %lease, "leading: reconciling");
        metrics.set_leader(true);
        let mut lost = leading.clone();
        let lost = async move { wait_for(&mut lost, false).await };
        let stop_or_lost = {
            let stop = stop.clone();
            async move {
                tokio::select! {
                    _ = stopped(stop) => {}
                    _ = lost => warn!("lost the Lease: standing by"),
                }
            }
        };
        reconciler::run(
            client.clone(),
            options.settings.clone(),
            Arc::clone(&metrics),
            Arc::clone(&health),
            stop_or_lost,
        )
        .await;
        metrics.set_leader(false);
        if *stop.borrow() {
            break;
        }
    }
    drop(leading);
    match lease_task.await {
        Ok(Ok(_)) => info!("released the Lease"),
        Ok(Err(error)) => warn!(%error, "releasing the Lease"),
        Err(error) => warn!(%error, "the Lease task ended abnormally"),
    }
    Ok(())
}

/// Lists one Canary with the shard selector, so that a selector the API server
/// refuses stops the process at start with its reason instead of a watch that
/// retries forever.
async fn check_shard_selector(client: &Client, settings: &Settings) -> Result<(), RunError> {
    let Some(selector) = &settings.shard_selector else {
        return Ok(());
    };
    let canaries = reconciler::canaries(client, settings);
    match canaries
        .list_metadata(&ListParams::default().labels(selector).limit(1))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 400 => Err(RunError::ShardSelector {
            selector: selector.clone(),
            message: status.message,
        }),
        Err(error) => Err(RunError::Api(error)),
    }
}

/// Resolves once `receiver` holds `value` (or its sender is gone).
async fn wait_for(receiver: &mut watch::Receiver<bool>, value: bool) {
    while *receiver.borrow_and_update() != value {
        if receiver.changed().await.is_err() {
            return;
        }
    }
}

/// Resolves once a stop is requested.
async fn stopped(mut stop: watch::Receiver<bool>) {
    wait_for(&mut stop, true).await;
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_shard_has_its_own_lease_named_after_its_selector() {
        assert_eq!(lease_name(None), "serin-controller");
        let a = lease_name(Some("serin.dev/shard=a"));
        assert!(a.starts_with("serin-controller-serin-dev-shard-a-"), "{a}");
        let names: std::collections::BTreeSet<String> = [
            "serin.dev/shard=a",
            "serin.dev/shard=b",
            "serin.dev/shard!=a",
            "serin.dev/shard==a",
            "serin.dev/shard in (a)",
            "Serin.dev/shard=a",
        ]
        .map(|selector| lease_name(Some(selector)))
        .into();
        assert_eq!(names.len(), 6, "{names:?}");
        let odd = [lease_name(Some(&"x=".repeat(300))), lease_name(Some("!="))];
        for name in names.iter().chain(&odd) {
            assert!(name.len() <= 253, "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{name}"
            );
            assert!(!name.ends_with('-') && !name.contains("--"), "{name}");
        }
    }
}

//! The Serin binary: `serin controller` runs the controller, `serin crds` prints
//! the CustomResourceDefinitions to apply.

use std::net::SocketAddr;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serin_controller::notify::ClusterSinks;
use serin_controller::reconciler::Settings;
use serin_controller::run::{self, Options};

/// Serin: progressive delivery for Kubernetes, judged by statistics.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller with the credentials of the current kubeconfig or ServiceAccount.
    Controller(Box<ControllerArgs>),
    /// Print the CustomResourceDefinition YAML (`serin crds | kubectl apply -f -`).
    Crds,
}

#[derive(clap::Args)]
struct ControllerArgs {
    /// Namespace to watch; every namespace when absent.
    #[arg(long, env = "SERIN_NAMESPACE")]
    namespace: Option<String>,
    /// Own only the Canaries this label selector selects (for example
    /// serin.dev/shard=a), so several controllers split a fleet; each shard has its
    /// own leader Lease.
    #[arg(long, env = "SERIN_SHARD_SELECTOR")]
    shard_selector: Option<String>,
    /// Canaries reconciled at once; at most half of them start a revision (until
    /// its first weight).
    #[arg(long, default_value_t = 4)]
    concurrency: u16,
    /// Address of `/metrics`.
    #[arg(long, default_value = "0.0.0.0:9090")]
    metrics_address: SocketAddr,
    /// Address of `/healthz` and `/readyz`.
    #[arg(long, default_value = "0.0.0.0:8081")]
    health_address: SocketAddr,
    /// Compete for a Lease so that of several replicas only one acts.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the leader Lease.
    #[arg(long, env = "SERIN_LEASE_NAMESPACE", default_value = "serin-system")]
    lease_namespace: String,
    /// This replica's identity in the Lease (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Prometheus for Canaries whose spec.analysis.prometheus names no address,
    /// for example http://prometheus.monitoring:9090.
    #[arg(long, env = "SERIN_PROMETHEUS_ADDRESS")]
    prometheus_address: Option<String>,
    /// Queries in flight to one Prometheus at most; a wave of analyses waits its
    /// turn instead of flooding it.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    prometheus_queries: u16,
    /// `<namespace>/<name>` of a ConfigMap whose key `sinks.yaml` lists
    /// notification sinks (as in a Canary's spec.notifications, Secrets in the
    /// ConfigMap's namespace) told of every Canary's transitions.
    #[arg(long, env = "SERIN_NOTIFICATIONS_CONFIG", value_parser = ClusterSinks::parse)]
    notifications_config: Option<ClusterSinks>,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crds => print!("{}", crds_yaml()?),
        Command::Controller(args) => controller(*args)?,
    }
    Ok(())
}

fn controller(args: ControllerArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // kube and the Prometheus client both use rustls; one provider for the process.
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        anyhow::bail!("a rustls crypto provider was already installed");
    }
    let identity = args
        .identity
        .unwrap_or_else(|| format!("serin-{}", std::process::id()));
    let options = Options {
        settings: Settings {
            namespace: args.namespace,
            shard_selector: args.shard_selector.filter(|selector| !selector.is_empty()),
            concurrency: args.concurrency,
            prometheus_address: args.prometheus_address,
            prometheus_queries: usize::from(args.prometheus_queries),
            cluster_sinks: args.notifications_config,
        },
        metrics_address: args.metrics_address,
        health_address: args.health_address,
        leader_election: args.leader_election,
        lease_namespace: args.lease_namespace,
        identity,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(async {
        let config = kube::Config::infer()
            .await
            .context("no Kubernetes credentials: set KUBECONFIG or run in a pod")?;
        run::run(config, options).await?;
        anyhow::Ok(())
    });
    // Tasks still running (a reconcile past the grace period) are dropped, not awaited.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

/// The CRDs as one YAML stream, the content of `crds/`.
fn crds_yaml() -> anyhow::Result<String> {
    Ok(serde_norway::to_string(&serin_api::canary_crd())?)
}

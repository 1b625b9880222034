//! The Serin binary: `serin controller` runs the controller, `serin crds` prints
//! the CustomResourceDefinitions to apply.

use anyhow::Context;
use clap::{Parser, Subcommand};
use serin_controller::reconciler::{self, Settings};

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
    Controller {
        /// Namespace to watch; every namespace when absent.
        #[arg(long, env = "SERIN_NAMESPACE")]
        namespace: Option<String>,
        /// Canaries reconciled at once.
        #[arg(long, default_value_t = 4)]
        concurrency: u16,
    },
    /// Print the CustomResourceDefinition YAML (`serin crds | kubectl apply -f -`).
    Crds,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crds => print!("{}", crds_yaml()?),
        Command::Controller {
            namespace,
            concurrency,
        } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .init();
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let client = kube::Client::try_default()
                    .await
                    .context("no Kubernetes credentials: set KUBECONFIG or run in a pod")?;
                reconciler::run(
                    client,
                    Settings {
                        namespace,
                        concurrency,
                    },
                )
                .await;
                anyhow::Ok(())
            })?;
        }
    }
    Ok(())
}

/// The CRDs as one YAML stream, the content of `crds/`.
fn crds_yaml() -> anyhow::Result<String> {
    Ok(serde_norway::to_string(&serin_api::canary_crd())?)
}

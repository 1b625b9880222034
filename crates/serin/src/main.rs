//! The Serin binary. `serin crds` prints the CustomResourceDefinitions to apply.

use clap::{Parser, Subcommand};

/// Serin: progressive delivery for Kubernetes, judged by statistics.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinition YAML (`serin crds | kubectl apply -f -`).
    Crds,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crds => print!("{}", crds_yaml()?),
    }
    Ok(())
}

/// The CRDs as one YAML stream, the content of `crds/`.
fn crds_yaml() -> anyhow::Result<String> {
    Ok(serde_norway::to_string(&serin_api::canary_crd())?)
}

//! `kubectl serin`: watch a Canary and steer it.
//!
//! Every command is a plain change a person could make with kubectl (an annotation
//! carrying a nonce, or `spec.paused`); the plugin adds the view, waits for the
//! controller's acknowledgement, and reports it.

mod simulate;
mod view;

use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::config::KubeConfigOptions;
use kube::{Api, Client, Config};
use serin_api::{CANARY_LABEL, COMMAND_ANNOTATION, Canary, CommandKind, Phase, condition};

use crate::view::EventLine;

/// Watch and steer Serin canaries.
#[derive(Parser)]
#[command(name = "kubectl serin", version, about)]
struct Cli {
    /// Namespace of the Canary; the kubeconfig context's namespace by default.
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    /// kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Cluster(ClusterCommand),
    /// Simulate a manifest's analysis on Poisson traffic: how fast each regression is
    /// rolled back, and how often a healthy canary is, beside a threshold rule. No
    /// cluster needed.
    Simulate(simulate::SimulateArgs),
}

/// Commands that read or steer a Canary in the cluster.
#[derive(Subcommand)]
enum ClusterCommand {
    /// Show a Canary (or list them): phase, step, weight, revisions, pods, events.
    Get {
        /// The Canary; all Canaries in the namespace when absent.
        name: Option<String>,
        /// Redraw every second until interrupted.
        #[arg(short, long)]
        watch: bool,
    },
    /// Finish the current step now (`--full`: skip every remaining step).
    Promote {
        /// The Canary.
        name: String,
        /// Promote to 100% now, skipping the remaining steps.
        #[arg(long)]
        full: bool,
    },
    /// Roll the canary back now: all traffic to stable, then scale it down.
    Abort {
        /// The Canary.
        name: String,
    },
    /// Run an aborted rollout again from its first step.
    Retry {
        /// The Canary.
        name: String,
    },
    /// Pass the check gate without a URL (a person's approval) that the rollout
    /// waits at.
    Approve {
        /// The Canary.
        name: String,
    },
    /// Hold the rollout at its current step.
    Pause {
        /// The Canary.
        name: String,
    },
    /// Continue a paused rollout.
    Resume {
        /// The Canary.
        name: String,
    },
    /// Wait until the spec's template is promoted (exit 0) or the rollout is
    /// aborted (exit 1, with the reason).
    Wait {
        /// The Canary.
        name: String,
        /// Give up after this many seconds (exit 2).
        #[arg(long, default_value_t = 1800)]
        timeout: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        Command::Simulate(args) => {
            return match simulate::run(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: {error:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Cluster(command) => command,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.namespace, cli.context, command)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    namespace: Option<String>,
    context: Option<String>,
    command: ClusterCommand,
) -> Result<ExitCode> {
    let options = KubeConfigOptions {
        context,
        ..KubeConfigOptions::default()
    };
    let config = Config::from_kubeconfig(&options)
        .await
        .context("reading the kubeconfig")?;
    let namespace = namespace.unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config)?;
    let canaries: Api<Canary> = Api::namespaced(client.clone(), &namespace);
    match command {
        ClusterCommand::Get { name, watch } => {
            get(&client, &canaries, &namespace, name.as_deref(), watch).await
        }
        ClusterCommand::Promote { name, full } => {
            let command = if full {
                CommandKind::PromoteFull
            } else {
                CommandKind::Promote
            };
            send(&canaries, &name, command).await
        }
        ClusterCommand::Abort { name } => send(&canaries, &name, CommandKind::Abort).await,
        ClusterCommand::Retry { name } => send(&canaries, &name, CommandKind::Retry).await,
        ClusterCommand::Approve { name } => send(&canaries, &name, CommandKind::Approve).await,
        ClusterCommand::Pause { name } => set_paused(&canaries, &name, true).await,
        ClusterCommand::Resume { name } => set_paused(&canaries, &name, false).await,
        ClusterCommand::Wait { name, timeout } => {
            wait(&canaries, &name, Duration::from_secs(timeout)).await
        }
    }
}

async fn get(
    client: &Client,
    canaries: &Api<Canary>,
    namespace: &str,
    name: Option<&str>,
    watch: bool,
) -> Result<ExitCode> {
    loop {
        let screen = match name {
            Some(name) => describe(client, canaries, namespace, name).await?,
            None => list(canaries).await?,
        };
        if !watch {
            print!("{screen}");
            return Ok(ExitCode::SUCCESS);
        }
        print!("\x1b[2J\x1b[H{screen}");
        std::io::stdout().flush()?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn list(canaries: &Api<Canary>) -> Result<String> {
    let mut table = comfy_table::Table::new();
    table
        .load_style(comfy_table::presets::NOTHING)
        .set_header(["NAME", "PHASE", "STEP", "WEIGHT", "STABLE", "CANARY"]);
    for canary in canaries.list(&ListParams::default()).await?.items {
        let status = canary.status.clone().unwrap_or_default();
        table.add_row([
            canary.metadata.name.clone().unwrap_or_default(),
            status.phase.map(|p| format!("{p:?}")).unwrap_or_default(),
            format!("{}/{}", status.step, canary.spec.steps.len()),
            format!("{} {}%", view::bar(status.weight, 10), status.weight),
            status.stable_revision.unwrap_or_default(),
            status.canary_revision.unwrap_or_default(),
        ]);
    }
    Ok(format!("{table}\n"))
}

async fn describe(
    client: &Client,
    canaries: &Api<Canary>,
    namespace: &str,
    name: &str,
) -> Result<String> {
    let canary = canaries
        .get_opt(name)
        .await?
        .with_context(|| format!("canary {name} not found in namespace {namespace}"))?;
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), namespace);
    let owned = replica_sets
        .list(&ListParams::default().labels(&format!("{CANARY_LABEL}={name}")))
        .await?
        .items;
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let selector = format!("regarding.kind=Canary,regarding.name={name}");
    let mut items = events
        .list(&ListParams::default().fields(&selector))
        .await?
        .items;
    items.sort_by_key(event_time);
    let now = Timestamp::now();
    let lines: Vec<EventLine> = items
        .iter()
        .rev()
        .take(6)
        .rev()
        .map(|event| EventLine {
            age: age(now, event_time(event)),
            kind: event.type_.clone().unwrap_or_default(),
            reason: event.reason.clone().unwrap_or_default(),
            note: event.note.clone().unwrap_or_default(),
        })
        .collect();
    Ok(view::render(&canary, &owned, &lines))
}

fn event_time(event: &Event) -> Timestamp {
    event
        .series
        .as_ref()
        .map(|series| series.last_observed_time.0)
        .or_else(|| event.event_time.as_ref().map(|time| time.0))
        .or_else(|| event.deprecated_last_timestamp.as_ref().map(|time| time.0))
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

fn age(now: Timestamp, then: Timestamp) -> String {
    let seconds = now.duration_since(then).as_secs().max(0);
    match seconds {
        0..120 => format!("{seconds}s"),
        120..7200 => format!("{}m", seconds / 60),
        _ => format!("{}h", seconds / 3600),
    }
}

/// Annotates the Canary with `<command>/<nonce>` and reports the acknowledgement.
async fn send(canaries: &Api<Canary>, name: &str, command: CommandKind) -> Result<ExitCode> {
    let nonce = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_millis().to_string())
        .unwrap_or_default();
    let patch = serde_json::json!({"metadata": {"annotations": {COMMAND_ANNOTATION: format!("{command}/{nonce}")}}});
    canaries
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .with_context(|| format!("annotating canary {name}"))?;
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        let canary = canaries.get(name).await?;
        if let Some(ack) = canary.status.and_then(|status| status.last_command)
            && ack.nonce == nonce
        {
            println!("{command}: {}", ack.outcome.unwrap_or_default());
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("{command} was not acknowledged within 30s: is the Serin controller running?")
}

async fn set_paused(canaries: &Api<Canary>, name: &str, paused: bool) -> Result<ExitCode> {
    let patch = serde_json::json!({"spec": {"paused": paused}});
    canaries
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .with_context(|| format!("patching canary {name}"))?;
    println!(
        "canary {name} {}",
        if paused { "paused" } else { "resumed" }
    );
    Ok(ExitCode::SUCCESS)
}

/// Exit 0 once the current spec is promoted, 1 when the rollout is aborted, 2 on timeout.
async fn wait(canaries: &Api<Canary>, name: &str, timeout: Duration) -> Result<ExitCode> {
    let until = Instant::now() + timeout;
    loop {
        let canary = canaries.get(name).await?;
        let generation = canary.metadata.generation;
        let status = canary.status.unwrap_or_default();
        let current = status.observed_generation == generation;
        let condition = |kind: &str| status.conditions.iter().find(|c| c.type_ == kind).cloned();
        if current {
            if condition(condition::PROMOTED).is_some_and(|c| c.status == "True") {
                println!(
                    "canary {name} promoted: {}",
                    status.stable_revision.unwrap_or_default()
                );
                return Ok(ExitCode::SUCCESS);
            }
            if status.phase == Some(Phase::Aborted) {
                let why = condition(condition::PROGRESSING)
                    .map(|c| format!("{}: {}", c.reason, c.message))
                    .unwrap_or_default();
                eprintln!("canary {name} aborted: {why}");
                return Ok(ExitCode::from(1));
            }
        }
        if Instant::now() > until {
            eprintln!("canary {name} not promoted within {}s", timeout.as_secs());
            return Ok(ExitCode::from(2));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

//! `make bench-e2e-judge`: the error-rate judge's promise measured through the real
//! pipeline (see `serin_e2e::judgement`), on the local control plane with kwok pods.
//!
//! For each configuration (by default: 1 s scrapes at 200 req/s; 15 s scrapes; low
//! traffic at 20 req/s), many Canaries roll out healthy revisions (canary as good
//! as stable) until the run has its rollouts, then revisions twice as bad. Printed
//! beside the simulator's figure for the same traffic and manifest, and written to
//! `target/bench/e2e-judge.json`: for each configuration `rollouts` and
//! `false_rollback_rate` with its exact 95% interval, and the regression's rollback
//! rate and median time to rollback.

use std::fs;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use serde_json::json;
use serin_e2e::cluster::{Binaries, ControlPlane, Options, default_bin_dir, repository_root};
use serin_e2e::harness::Cluster;
use serin_e2e::judgement::{Outcome, Plan, run};
use serin_e2e::kubectl::Kubectl;

/// What to measure.
#[derive(Parser)]
struct Args {
    /// Canaries rolling out at once.
    #[arg(long, default_value_t = 20)]
    canaries: usize,
    /// Healthy rollouts per configuration.
    #[arg(long, default_value_t = 200)]
    rollouts: usize,
    /// Regressed rollouts (canary twice as bad) per configuration; 0 for none.
    #[arg(long, default_value_t = 40)]
    regressions: usize,
    /// Only the first configuration (1 s scrapes at 200 req/s).
    #[arg(long)]
    quick: bool,
}

/// One configuration: its name, scrape interval, traffic and step time.
struct Configuration {
    name: &'static str,
    scrape: Duration,
    rps: f64,
    step_seconds: u64,
    interval_seconds: u64,
}

const CONFIGURATIONS: [Configuration; 3] = [
    Configuration {
        name: "1s scrape, 200 req/s",
        scrape: Duration::from_secs(1),
        rps: 200.0,
        step_seconds: 30,
        interval_seconds: 5,
    },
    Configuration {
        name: "15s scrape, 200 req/s",
        scrape: Duration::from_secs(15),
        rps: 200.0,
        step_seconds: 60,
        interval_seconds: 15,
    },
    Configuration {
        name: "1s scrape, 20 req/s",
        scrape: Duration::from_secs(1),
        rps: 20.0,
        step_seconds: 30,
        interval_seconds: 5,
    },
];

fn main() -> Result<()> {
    let args = Args::parse();
    let binaries = Binaries::locate(&default_bin_dir())?;
    let dir = tempfile::Builder::new()
        .prefix("serin-bench-judge-")
        .tempdir()?;
    let plane = ControlPlane::start(&Options {
        dir: dir.path().join("cluster"),
        binaries: binaries.clone(),
        nodes: 2,
        real_node: None,
        client_qps: None,
    })?;
    let cluster = Cluster::external(Kubectl::new(&binaries.kubectl, plane.kubeconfig()));
    let configurations = if args.quick {
        &CONFIGURATIONS[..1]
    } else {
        &CONFIGURATIONS[..]
    };
    let mut rows = Vec::new();
    println!(
        "{:<24} {:>9} {:>10} {:>17} {:>11} {:>12} {:>10} {:>10}",
        "configuration",
        "rollouts",
        "false rb",
        "95% interval",
        "simulated",
        "2x rolled",
        "2x median",
        "simulated"
    );
    for configuration in configurations {
        let plan = Plan {
            canaries: args.canaries,
            rollouts: args.rollouts,
            rps: configuration.rps,
            stable_error_rate: 0.02,
            ratio: 1.0,
            scrape: configuration.scrape,
            interval_seconds: configuration.interval_seconds,
            steps: vec![25, 50],
            step_seconds: configuration.step_seconds,
            confidence: 0.95,
            limit: Duration::from_secs(3600),
        };
        let healthy = run(&cluster, &plan)?;
        let (predicted_rate, _) = plan.predicted(400);
        let regressed_plan = Plan {
            ratio: 2.0,
            rollouts: args.regressions,
            ..plan.clone()
        };
        let regressed = if args.regressions > 0 {
            Some(run(&cluster, &regressed_plan)?)
        } else {
            None
        };
        let (_, predicted_median) = regressed_plan.predicted(400);
        let (lower, upper) = healthy.rollback_interval();
        let percent = |x: f64| format!("{:.1}%", 100.0 * x);
        let seconds = |x: Option<f64>| x.map_or("-".to_owned(), |s| format!("{s:.0}s"));
        println!(
            "{:<24} {:>9} {:>10} {:>17} {:>11} {:>12} {:>10} {:>10}",
            configuration.name,
            healthy.rollouts(),
            percent(healthy.rollback_rate()),
            format!("{}–{}", percent(lower), percent(upper)),
            percent(predicted_rate),
            regressed.as_ref().map_or("-".to_owned(), |r| format!(
                "{}/{}",
                r.rolled_back,
                r.rollouts()
            )),
            seconds(
                regressed
                    .as_ref()
                    .and_then(Outcome::median_rollback_seconds)
            ),
            seconds(predicted_median),
        );
        if !healthy.other.is_empty() {
            println!("  ended otherwise: {:?}", healthy.other);
        }
        println!(
            "  {} Events recorded twice; {} of {} analyses counted less than the one before in their window; healthy rollouts took {:.0}s",
            healthy.duplicate_events, healthy.shrunk_counts, healthy.analyses, healthy.seconds
        );
        rows.push(json!({
            "configuration": configuration.name,
            "scrape_seconds": configuration.scrape.as_secs(),
            "rps": configuration.rps,
            "canaries": args.canaries,
            "steps": plan.steps,
            "step_seconds": plan.step_seconds,
            "interval_seconds": plan.interval_seconds,
            "stable_error_rate": plan.stable_error_rate,
            "confidence": plan.confidence,
            "rollouts": healthy.rollouts(),
            "false_rollbacks": healthy.rolled_back,
            "false_rollback_rate": healthy.rollback_rate(),
            "false_rollback_interval_95": [lower, upper],
            "simulated_false_rollback_rate": predicted_rate,
            "ended_otherwise": healthy.other,
            "duplicate_events": healthy.duplicate_events,
            "analyses": healthy.analyses,
            "analyses_whose_counts_shrank": healthy.shrunk_counts,
            "seconds": healthy.seconds,
            "regression": regressed.as_ref().map(|r| json!({
                "ratio": regressed_plan.ratio,
                "rollouts": r.rollouts(),
                "rolled_back": r.rolled_back,
                "median_seconds_to_rollback": r.median_rollback_seconds(),
                "simulated_median_seconds": predicted_median,
                "ended_otherwise": r.other,
            })),
        }));
    }
    let out = repository_root().join("target/bench");
    fs::create_dir_all(&out)?;
    let path = out.join("e2e-judge.json");
    fs::write(
        &path,
        serde_json::to_string_pretty(&json!({ "runs": rows }))?,
    )?;
    println!("written to {}", path.display());
    drop(plane);
    Ok(())
}

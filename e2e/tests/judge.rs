//! The error-rate judge's promise through the real pipeline, shortened for `make
//! test` (`make bench-e2e-judge` is the long run): healthy rollouts of many
//! Canaries at once, traffic simulated per pod, a real Prometheus scraping it
//! every second, Serin's own queries. Fails when the false-rollback rate is clearly
//! above the 5% the manifests allow: a one-sided binomial test at 0.001, not a
//! tight bound. A test binary of its own: it loads the machine.

use std::time::Duration;

use anyhow::{Result, ensure};
use serin_e2e::harness::Cluster;
use serin_e2e::judgement::{Plan, at_least, run};

#[test]
fn healthy_canaries_are_rolled_back_no_more_often_than_the_confidence_allows() -> Result<()> {
    let cluster = Cluster::shared(env!("CARGO_BIN_EXE_serin-cluster"));
    let plan = Plan {
        canaries: 12,
        rollouts: 36,
        rps: 200.0,
        stable_error_rate: 0.02,
        ratio: 1.0,
        scrape: Duration::from_secs(1),
        interval_seconds: 5,
        steps: vec![25, 50],
        step_seconds: 20,
        confidence: 0.95,
        limit: Duration::from_secs(600),
    };
    let outcome = run(cluster, &plan)?;
    println!("{outcome:?}");
    ensure!(
        outcome.rollouts() >= plan.rollouts,
        "only {} of {} rollouts ended in {:?}: {outcome:?}",
        outcome.rollouts(),
        plan.rollouts,
        plan.limit
    );
    ensure!(
        outcome.other.is_empty(),
        "rollouts that neither promoted nor failed the analysis: {:?}",
        outcome.other
    );
    ensure!(
        outcome.duplicate_events == 0,
        "{} Events recorded twice for one transition",
        outcome.duplicate_events
    );
    ensure!(
        outcome.shrunk_counts == 0,
        "{} of {} analyses counted less than the one before in the same window",
        outcome.shrunk_counts,
        outcome.analyses
    );
    let p = at_least(
        outcome.rolled_back,
        outcome.rollouts(),
        1.0 - plan.confidence,
    );
    ensure!(
        p >= 0.001,
        "{} of {} healthy rollouts rolled back: clearly above {:.0}% (p = {p:.5})",
        outcome.rolled_back,
        outcome.rollouts(),
        100.0 * (1.0 - plan.confidence)
    );
    Ok(())
}

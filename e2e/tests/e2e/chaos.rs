//! Chaos: twenty consecutive rollouts through the real analysis (every fourth a bad
//! release), the controller killed with SIGKILL at a random moment of each, and the
//! cluster checked every 200 ms against what must always hold.

use std::collections::{BTreeMap, BTreeSet};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serin_api::{Canary, Phase, REVISION_LABEL};
use serin_core::revision::revision_of;
use serin_e2e::controller::{Controller, install};

use crate::analysis::{Behaviour, ERRORS_METRIC, Judged};
use crate::cluster;
use crate::rollout::{phase, revisions, status, weight};

const ROLLOUTS: usize = 20;
const SCALE_DOWN_DELAY: Duration = Duration::from_secs(3);
/// Fixed, so a failure can be replayed.
const SEED: u64 = 20_261_122;

/// What one look at the cluster saw, and when: `asked` before the first read,
/// `answered` after the last, so every time drawn from them errs on the safe side.
struct Look {
    asked: Instant,
    answered: Instant,
    canary: Canary,
    /// Revision → (replicas, available pods).
    replica_sets: BTreeMap<String, (i64, i64)>,
    /// The revision the main Service selects; None while it selects both.
    main_selects: Option<String>,
}

/// The invariants, with what they need to remember between looks.
#[derive(Default)]
struct Watchdog {
    checks: usize,
    bad_revisions: BTreeSet<String>,
    /// Revision → the last look (its `asked`) that saw it serving.
    last_serving: BTreeMap<String, Instant>,
    drained: BTreeSet<String>,
}

impl Watchdog {
    fn check(&mut self, look: &Look) -> Result<()> {
        self.checks += 1;
        let (stable, canary) = revisions(&look.canary);
        let available = |revision: &str| look.replica_sets.get(revision).map_or(0, |rs| rs.1);
        let weight = weight(&look.canary);
        ensure!(
            stable.is_empty() || available(&stable) > 0,
            "stable {stable} has no available pod: {:?}",
            look.replica_sets
        );
        ensure!(
            weight.is_zero() || available(&canary) > 0,
            "weight {weight}% on canary {canary} with no available pod"
        );
        let selected: i64 = match &look.main_selects {
            Some(revision) => available(revision),
            None => look.replica_sets.values().map(|rs| rs.1).sum(),
        };
        ensure!(
            selected > 0,
            "the main Service selects {:?}, which has no available pod",
            look.main_selects
        );
        ensure!(
            !self.bad_revisions.contains(&stable),
            "bad revision {stable} was promoted"
        );

        let active = matches!(
            phase(&look.canary),
            Some(Phase::Progressing | Phase::Paused | Phase::Promoting)
        );
        // Serving: named by the status and behind the main Service, which carries
        // the requests. A controller killed between a promotion's writes and its
        // status leaves the status naming the old stable after the Service moved
        // on; the old stable's delay runs from when its requests stopped.
        let behind_main = |revision: &str| {
            look.main_selects
                .as_deref()
                .is_none_or(|selected| selected == revision)
        };
        for serving in [Some(&stable), active.then_some(&canary)]
            .into_iter()
            .flatten()
        {
            if !serving.is_empty() && behind_main(serving) {
                self.last_serving.insert(serving.clone(), look.asked);
                self.drained.remove(serving);
            }
        }
        for (revision, &(replicas, _)) in &look.replica_sets {
            if replicas > 0 || self.drained.contains(revision) {
                continue;
            }
            if let Some(served) = self.last_serving.get(revision) {
                let kept = look.answered.duration_since(*served);
                ensure!(
                    kept + Duration::from_millis(500) >= SCALE_DOWN_DELAY,
                    "{revision} drained {kept:?} after it last served, before scaleDownDelay"
                );
            }
            self.drained.insert(revision.clone());
        }
        Ok(())
    }
}

/// One `kubectl get` of everything in the test's namespace.
fn look(judged: &Judged) -> Result<Look> {
    let rollout = &judged.rollout;
    let asked = Instant::now();
    let all =
        rollout
            .kubectl
            .get_json(&["canaries,replicasets,services", "-n", &rollout.namespace])?;
    let items = all["items"].as_array().cloned().unwrap_or_default();
    let of_kind = |kind: &'static str| items.iter().filter(move |item| item["kind"] == kind);
    let canary = of_kind("Canary")
        .find(|c| c["metadata"]["name"] == "web")
        .cloned()
        .context("no Canary web")?;
    let canary = serin_api::decode(&canary)?;
    let replica_sets = of_kind("ReplicaSet")
        .map(|rs| {
            (
                rs["metadata"]["labels"][REVISION_LABEL]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                (
                    rs["spec"]["replicas"].as_i64().unwrap_or(0),
                    rs["status"]["availableReplicas"].as_i64().unwrap_or(0),
                ),
            )
        })
        .collect();
    let main = of_kind("Service")
        .find(|svc| svc["metadata"]["name"] == "web")
        .context("no Service web")?;
    Ok(Look {
        asked,
        answered: Instant::now(),
        canary,
        replica_sets,
        main_selects: main["spec"]["selector"][REVISION_LABEL]
            .as_str()
            .map(str::to_owned),
    })
}

/// The revision of the template the Canary's spec holds now.
fn spec_revision(canary: &Canary) -> String {
    canary
        .spec
        .template
        .as_ref()
        .map(revision_of)
        .unwrap_or_default()
}

#[test]
fn twenty_rollouts_with_the_controller_killed_at_random_keep_every_invariant() -> Result<()> {
    let good = || Behaviour {
        error_rate: 0.02,
        latency_ms: 20,
    };
    let mut judged = Judged::start(
        "chaos",
        200.0,
        &format!(
            "  steps: [50]\n  stepDuration: 4s\n  progressDeadline: 90s\n  scaleDownDelay: {}s",
            SCALE_DOWN_DELAY.as_secs()
        ),
        &format!("    confidence: 0.999\n    metrics:\n{ERRORS_METRIC}"),
        good(),
    )?;
    let kubeconfig = install(cluster())?;
    let mut rng = StdRng::seed_from_u64(SEED);
    let mut watchdog = Watchdog::default();
    let (mut kills, mut promoted, mut rolled_back) = (0, 0, 0);
    for round in 1..=ROLLOUTS {
        let bad = round % 4 == 0;
        let pods = if bad {
            Behaviour {
                error_rate: 0.4,
                latency_ms: 20,
            }
        } else {
            good()
        };
        judged.apply(&format!("v{}", round + 1), &pods)?;
        let revision = spec_revision(&judged.rollout.canary()?);
        if bad {
            watchdog.bad_revisions.insert(revision.clone());
        }
        // A moment within the rollout's first seconds; a round that ends sooner
        // gets its kill as it ends, between two rollouts.
        let kill_at = Instant::now() + Duration::from_millis(rng.random_range(0..7_000));
        let mut killed = false;
        let until = Instant::now() + Duration::from_secs(120);
        loop {
            let seen = look(&judged)?;
            let (stable, canary) = revisions(&seen.canary);
            let ended = (stable == revision && phase(&seen.canary) == Some(Phase::Healthy))
                || (canary == revision && phase(&seen.canary) == Some(Phase::Aborted));
            if !killed && (Instant::now() >= kill_at || ended) {
                if let Some(controller) = judged.rollout.controller.take() {
                    controller.kill();
                }
                let namespace = judged.rollout.namespace.clone();
                judged.rollout.controller = Some(Controller::spawn(&namespace, kubeconfig, &[])?);
                kills += 1;
                killed = true;
            }
            watchdog
                .check(&seen)
                .with_context(|| format!("round {round}; status {:#?}", status(&seen.canary)))?;
            if stable == revision && phase(&seen.canary) == Some(Phase::Healthy) {
                ensure!(!bad, "round {round}: the bad release was promoted");
                promoted += 1;
                break;
            }
            if canary == revision && phase(&seen.canary) == Some(Phase::Aborted) {
                ensure!(
                    bad,
                    "round {round}: a healthy release was rolled back: {:#?}",
                    status(&seen.canary)
                );
                rolled_back += 1;
                break;
            }
            if Instant::now() > until {
                bail!("round {round} did not end: {:#?}", status(&seen.canary));
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
    // The last retiring revision drains after the delay; then one ReplicaSet runs.
    let until = Instant::now() + SCALE_DOWN_DELAY * 5;
    loop {
        let seen = look(&judged)?;
        watchdog.check(&seen)?;
        let live = seen.replica_sets.values().filter(|rs| rs.0 > 0).count();
        if live == 1 {
            break;
        }
        ensure!(
            Instant::now() < until,
            "{live} ReplicaSets still have pods: {:?}",
            seen.replica_sets
        );
        thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "chaos: {ROLLOUTS} rollouts ({promoted} promoted, {rolled_back} rolled back), {kills} SIGKILLs, {} invariant checks",
        watchdog.checks
    );
    ensure!(kills == ROLLOUTS && promoted + rolled_back == ROLLOUTS);
    Ok(())
}

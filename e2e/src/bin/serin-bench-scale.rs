//! `make bench-scale`: what a fleet of Canaries costs one controller, on the local
//! control plane with kwok pods (one replica each, pod-count routing, the three
//! Services each Canary gets). For the control (one Canary alone) and each fleet
//! size, in one cluster and one controller (a release build):
//!
//! - the time from applying the fleet's new Canaries to every one Available;
//! - at steady state, over a minute: the controller's resident memory, CPU seconds
//!   per minute, and API requests per minute (its own `serin_api_requests_total`,
//!   watches and the leader Lease's renewals aside),
//!   with the API server's and etcd's memory beside it (on this machine they are
//!   the limit);
//! - a wave: 10% of the fleet changes image at once, and the time from each
//!   Canary's change to its first weight on the canary (median, p99), and the
//!   slowest of ten other Canaries changed just after the wave (are the others
//!   starved while a wave drains?);
//! - timed steps: ten Canaries mid-rollout whose 15 s step ends while the wave
//!   drains, and how late each moved on, against their step before the wave
//!   (do the others keep their cadence?).
//!
//! Printed, with each figure against the control's, and written to
//! `target/bench/scale.json`. A size that cannot be reached within the time limit
//! is reported as such with the largest size reached.

use std::collections::HashMap;
use std::fs;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use serin_api::Canary;
use serin_e2e::cluster::{Binaries, ControlPlane, Options, default_bin_dir, repository_root};
use serin_e2e::controller::Controller;
use serin_e2e::harness::Cluster;
use serin_e2e::kubectl::Kubectl;
use serin_e2e::manifest::CanaryManifest;
use serin_e2e::process::resident_kib;

const NAMESPACE: &str = "scale";
/// Canaries applied at once by the benchmark (server-side apply).
const APPLY_IN_FLIGHT: usize = 32;
/// The steady-state window.
const STEADY: Duration = Duration::from_secs(60);
/// Canaries changed just after a wave, outside it.
const BYSTANDERS: usize = 10;
/// Canaries mid-rollout whose timed step ends during a wave.
const TIMERS: usize = 10;
/// Their step duration.
const TIMER_STEP: Duration = Duration::from_secs(15);
/// The rollout of the fleet and of the wave: a first weight, then an hour.
const ROLLOUT: &str = "  steps: [10, 50]\n  stepDuration: 1h\n  progressDeadline: 2h\n";
/// The timed Canaries' rollout: three steps of `TIMER_STEP`.
const TIMED: &str = "  steps: [10, 50, 90]\n  stepDuration: 15s\n  progressDeadline: 2h\n";
/// Pods one kwok node holds (see `cluster::fake_nodes`).
const PODS_PER_NODE: usize = 1000;

/// The scale benchmark of record.
#[derive(Parser)]
struct Args {
    /// Fleet sizes, reached one after the other in one cluster.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    fleets: Vec<usize>,
    /// The controller's --concurrency.
    #[arg(long, default_value_t = 16)]
    concurrency: u16,
    /// Longest wait for a fleet to become Available, or a wave to get its weights.
    #[arg(long, default_value_t = 2400)]
    limit_seconds: u64,
}

/// What the benchmark saw of each Canary, from its own watch.
#[derive(Default)]
struct Seen {
    available: HashMap<String, Instant>,
    weighted: HashMap<String, Instant>,
    /// Each step a Canary's status was at, in order, and when it was seen.
    steps: HashMap<String, Vec<(i64, Instant)>>,
}

impl Seen {
    /// When `name` was first seen at `step` or later.
    fn at_step(&self, name: &str, step: i64) -> Option<Instant> {
        self.steps
            .get(name)?
            .iter()
            .find(|(seen, _)| *seen >= step)
            .map(|(_, at)| *at)
    }
}

/// One fleet size's figures.
struct Figures {
    canaries: usize,
    to_available: Option<Duration>,
    controller_rss_kib: u64,
    controller_cpu_per_minute: f64,
    requests_per_minute: f64,
    apiserver_rss_kib: u64,
    etcd_rss_kib: u64,
    wave: usize,
    wave_median: Option<Duration>,
    wave_p99: Option<Duration>,
    /// The slowest of the Canaries changed just after the wave.
    bystanders_max: Option<Duration>,
    /// How late the timed Canaries left their step before the wave, at most.
    timer_late_quiet: Option<f64>,
    /// And the step that ended while the wave drained.
    timer_late_wave: Option<f64>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let largest = args.fleets.iter().copied().max().unwrap_or(1);
    let binaries = Binaries::locate(&default_bin_dir())?;
    let dir = tempfile::Builder::new()
        .prefix("serin-bench-scale-")
        .tempdir()?;
    let plane = ControlPlane::start(&Options {
        dir: dir.path().join("cluster"),
        binaries: binaries.clone(),
        nodes: (largest + largest / 10) / PODS_PER_NODE + 1,
        real_node: None,
        client_qps: Some(200),
    })?;
    let cluster = Cluster::external(Kubectl::new(&binaries.kubectl, plane.kubeconfig()));
    cluster.kubectl.run(&["create", "namespace", NAMESPACE])?;
    let controller = Controller::start_with(
        &cluster,
        NAMESPACE,
        &[format!("--concurrency={}", args.concurrency)],
    )?;
    let runtime = tokio::runtime::Runtime::new()?;
    let client = runtime.block_on(cluster.kubectl.client())?;
    let canaries: Api<DynamicObject> =
        Api::namespaced_with(client, NAMESPACE, &ApiResource::erase::<Canary>(&()));
    let seen = Arc::new(Mutex::new(Seen::default()));
    runtime.spawn(track(canaries.clone(), Arc::clone(&seen)));

    let limit = Duration::from_secs(args.limit_seconds);
    let bench = Bench {
        runtime: &runtime,
        canaries: &canaries,
        seen: &seen,
        controller: &controller,
        plane: &plane,
        limit,
    };
    let control = bench.fleet("control", 0, 1)?;
    let mut results = vec![control];
    let mut reached = 0;
    for &size in &args.fleets {
        let figures = bench.fleet("app", reached, size)?;
        let complete = figures.to_available.is_some();
        results.push(figures);
        if !complete {
            println!("stopped at {size}: not every Canary was Available within {limit:?}");
            break;
        }
        reached = size;
    }
    report(&results, args.concurrency)?;
    drop(controller);
    drop(plane);
    Ok(())
}

struct Bench<'a> {
    runtime: &'a tokio::runtime::Runtime,
    canaries: &'a Api<DynamicObject>,
    seen: &'a Arc<Mutex<Seen>>,
    controller: &'a Controller,
    plane: &'a ControlPlane,
    limit: Duration,
}

impl Bench<'_> {
    /// Grows the fleet `prefix-*` from `from` to `to` Canaries and measures it.
    fn fleet(&self, prefix: &str, from: usize, to: usize) -> Result<Figures> {
        let names: Vec<String> = (0..to).map(|i| format!("{prefix}-{i:05}")).collect();
        println!("{to} Canaries: applying {} ...", to - from);
        let started = Instant::now();
        self.runtime
            .block_on(apply(self.canaries, &names[from..], "app:1", ROLLOUT))?;
        let to_available = self.wait("Available", &names, |seen, name| {
            seen.available.get(name).copied()
        });
        let Some(to_available) = to_available.map(|at| at.duration_since(started)) else {
            return Ok(self.figures(to, None, 0, None));
        };
        println!(
            "  every Canary Available after {to_available:.1?}; steady state for {STEADY:?} ..."
        );
        thread::sleep(Duration::from_secs(10));
        let pid = self.controller.pid();
        let (cpu_before, requests_before) = (cpu_seconds(pid)?, requests(self.controller)?);
        thread::sleep(STEADY);
        let (cpu_after, requests_after) = (cpu_seconds(pid)?, requests(self.controller)?);
        let minutes = STEADY.as_secs_f64() / 60.0;
        // A tenth of the fleet, and at least the one Canary of the control.
        let wave_start = to - (to / 10).max(1);
        let mut figures = self.figures(
            to,
            Some(to_available),
            to - wave_start,
            Some((
                (cpu_after - cpu_before) / minutes,
                (requests_after - requests_before) / minutes,
            )),
        );

        let wave = &names[wave_start..];
        // Canaries outside the wave that change just after it: how long the
        // others wait behind a wave.
        let bystanders = &names[wave_start.saturating_sub(BYSTANDERS)..wave_start];
        // Canaries mid-rollout whose step ends while the wave drains: whether the
        // others keep their cadence.
        let timers = &names
            [wave_start.saturating_sub(BYSTANDERS + TIMERS)..wave_start.saturating_sub(BYSTANDERS)];
        if !timers.is_empty() {
            self.start_timers(timers)?;
        }
        println!(
            "  wave: {} Canaries change image at once, then {} others ...",
            wave.len(),
            bystanders.len()
        );
        let mut changed_at = self
            .runtime
            .block_on(apply(self.canaries, wave, "app:2", ROLLOUT))?;
        changed_at.extend(self.runtime.block_on(apply(
            self.canaries,
            bystanders,
            "app:2",
            ROLLOUT,
        ))?);
        let all: Vec<String> = wave.iter().chain(bystanders).cloned().collect();
        let weighted = self.wait("weighted", &all, |seen, name| {
            seen.weighted.get(name).copied()
        });
        let timed = timers.is_empty()
            || self
                .wait("past their timed step", timers, |seen, name| {
                    seen.at_step(name, 3)
                })
                .is_some();
        if weighted.is_some()
            && timed
            && let Ok(seen) = self.seen.lock()
        {
            let late = |from: i64, to: i64| {
                timers
                    .iter()
                    .filter_map(|name| {
                        let step = seen.at_step(name, to)? - seen.at_step(name, from)?;
                        Some(step.as_secs_f64() - TIMER_STEP.as_secs_f64())
                    })
                    .reduce(f64::max)
            };
            figures.timer_late_quiet = late(1, 2);
            figures.timer_late_wave = late(2, 3);
            let delays = |names: &[String]| {
                let mut delays: Vec<Duration> = names
                    .iter()
                    .filter_map(|name| {
                        Some(
                            seen.weighted
                                .get(name)?
                                .duration_since(*changed_at.get(name)?),
                        )
                    })
                    .collect();
                delays.sort();
                delays
            };
            let (wave, bystanders) = (delays(wave), delays(bystanders));
            figures.wave_median = percentile(&wave, 0.5);
            figures.wave_p99 = percentile(&wave, 0.99);
            figures.bystanders_max = bystanders.last().copied();
        }
        Ok(figures)
    }

    fn figures(
        &self,
        canaries: usize,
        to_available: Option<Duration>,
        wave: usize,
        steady: Option<(f64, f64)>,
    ) -> Figures {
        let (cpu, requests) = steady.unwrap_or((f64::NAN, f64::NAN));
        Figures {
            canaries,
            to_available,
            controller_rss_kib: rss(Some(self.controller.pid())),
            controller_cpu_per_minute: cpu,
            requests_per_minute: requests,
            apiserver_rss_kib: rss(self.plane.pid("kube-apiserver")),
            etcd_rss_kib: rss(self.plane.pid("etcd")),
            wave,
            wave_median: None,
            wave_p99: None,
            bystanders_max: None,
            timer_late_quiet: None,
            timer_late_wave: None,
        }
    }

    /// Starts the timed Canaries' rollout and returns when their second step's
    /// end is a few seconds away, so that it falls while the wave that follows
    /// drains.
    fn start_timers(&self, timers: &[String]) -> Result<()> {
        println!(
            "  timed steps: {} Canaries roll out in steps of {TIMER_STEP:?} ...",
            timers.len()
        );
        self.runtime
            .block_on(apply(self.canaries, timers, "app:2", TIMED))?;
        self.wait("at their second step", timers, |seen, name| {
            seen.at_step(name, 2)
        })
        .context("the timed Canaries did not reach their second step")?;
        let first = self
            .seen
            .lock()
            .ok()
            .and_then(|seen| timers.iter().filter_map(|n| seen.at_step(n, 2)).min())
            .context("no timed Canary seen at its second step")?;
        let wave_at = first + TIMER_STEP - Duration::from_secs(3);
        thread::sleep(wave_at.saturating_duration_since(Instant::now()));
        Ok(())
    }

    /// Waits until every one of `names` is in the `map` of what was seen; the time
    /// the last one got there, or None after the limit.
    fn wait(
        &self,
        what: &str,
        names: &[String],
        at: impl Fn(&Seen, &str) -> Option<Instant>,
    ) -> Option<Instant> {
        let until = Instant::now() + self.limit;
        let mut reported = Instant::now();
        loop {
            let (done, last) = match self.seen.lock() {
                Ok(seen) => {
                    let times: Vec<Instant> =
                        names.iter().filter_map(|name| at(&seen, name)).collect();
                    (times.len(), times.into_iter().max())
                }
                Err(_) => return None,
            };
            if done == names.len() {
                return last;
            }
            if Instant::now() > until {
                println!(
                    "  only {done} of {} {what} within {:?}",
                    names.len(),
                    self.limit
                );
                return None;
            }
            if reported.elapsed() > Duration::from_secs(30) {
                println!("  {done} of {} {what} ...", names.len());
                reported = Instant::now();
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Applies each named Canary at `image`, `APPLY_IN_FLIGHT` at once; when each was
/// accepted.
async fn apply(
    canaries: &Api<DynamicObject>,
    names: &[String],
    image: &str,
    rollout: &str,
) -> Result<HashMap<String, Instant>> {
    let params = PatchParams::apply("serin-bench").force();
    futures::stream::iter(names)
        .map(|name| {
            let params = &params;
            async move {
                let yaml = CanaryManifest::new(name)
                    .image(image)
                    .replicas(1)
                    .service(Some("{port: 80}"))
                    .spec(rollout)
                    .yaml();
                let object: DynamicObject = serde_norway::from_str(&yaml)?;
                canaries
                    .patch(name, params, &Patch::Apply(&object))
                    .await
                    .with_context(|| format!("applying Canary {name}"))?;
                anyhow::Ok((name.clone(), Instant::now()))
            }
        })
        .buffer_unordered(APPLY_IN_FLIGHT)
        .try_collect()
        .await
}

/// Watches the Canaries and notes when each was first Available, first had a
/// weight on its canary, and reached each step.
async fn track(canaries: Api<DynamicObject>, seen: Arc<Mutex<Seen>>) {
    watcher(canaries, watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .for_each(|canary| {
            if let (Ok(canary), Ok(mut seen)) = (canary, seen.lock()) {
                let name = canary.name_any();
                let status = &canary.data["status"];
                let available = status["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Available" && c["status"] == "True");
                if available {
                    seen.available
                        .entry(name.clone())
                        .or_insert_with(Instant::now);
                }
                if status["weight"].as_i64().is_some_and(|weight| weight > 0) {
                    seen.weighted
                        .entry(name.clone())
                        .or_insert_with(Instant::now);
                }
                let step = status["step"].as_i64().unwrap_or_default();
                let steps = seen.steps.entry(name).or_default();
                if steps.last().is_none_or(|(last, _)| *last != step) {
                    steps.push((step, Instant::now()));
                }
            }
            futures::future::ready(())
        })
        .await;
}

/// User and system CPU seconds the process has used.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |index: usize| -> Result<f64> {
        Ok(fields
            .get(index)
            .context("a short /proc/<pid>/stat")?
            .parse::<f64>()?)
    };
    // SAFETY: sysconf only reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // utime and stime are the 14th and 15th fields, the 12th and 13th after ")".
    Ok((ticks(11)? + ticks(12)?) / per_second)
}

/// The controller's API requests so far, watches and the leader Lease's renewals
/// aside (a Lease renewal every few seconds is the price of a standby, whatever
/// the fleet).
fn requests(controller: &Controller) -> Result<f64> {
    Ok(controller
        .work()?
        .requests
        .iter()
        .filter(|((verb, resource), _)| verb != "watch" && resource != "leases")
        .map(|(_, count)| count)
        .sum())
}

/// The RSS of `pid` in KiB, 0 for a process that is not there.
fn rss(pid: Option<u32>) -> u64 {
    pid.and_then(|pid| resident_kib(pid).ok()).unwrap_or(0)
}

fn percentile(sorted: &[Duration], at: f64) -> Option<Duration> {
    let last = sorted.len().checked_sub(1)?;
    sorted.get(((last as f64) * at).round() as usize).copied()
}

fn seconds(duration: Option<Duration>) -> Value {
    duration.map_or(Value::Null, |d| json!(d.as_secs_f64()))
}

fn report(results: &[Figures], concurrency: u16) -> Result<()> {
    let Some(control) = results.first() else {
        bail!("nothing measured");
    };
    let mib = |kib: u64| kib as f64 / 1024.0;
    let ratio = |value: f64, base: f64| {
        if base > 0.0 {
            format!("{:.1}×", value / base)
        } else {
            "-".to_owned()
        }
    };
    println!();
    println!(
        "scale on the local control plane (kwok pods, 1 replica, pod-count routing, 3 Services each; controller --concurrency={concurrency}, release build)"
    );
    println!(
        "{:>9} {:>14} {:>16} {:>14} {:>12} {:>12} {:>10} {:>14} {:>14} {:>12} {:>12} {:>12}",
        "canaries",
        "to Available",
        "controller RSS",
        "CPU s/min",
        "API req/min",
        "apiserver",
        "etcd",
        "wave median",
        "wave p99",
        "others max",
        "step late",
        "… in wave"
    );
    for figures in results {
        let secs =
            |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{:.1}s", d.as_secs_f64()));
        let late = |s: Option<f64>| s.map_or("-".to_owned(), |s| format!("{s:+.1}s"));
        println!(
            "{:>9} {:>14} {:>9.1} MiB {:>5} {:>7.2} {:>5} {:>12.1} {:>8.0} MiB {:>6.0} MiB {:>14} {:>14} {:>12} {:>12} {:>12}",
            figures.canaries,
            secs(figures.to_available),
            mib(figures.controller_rss_kib),
            ratio(
                figures.controller_rss_kib as f64,
                control.controller_rss_kib as f64
            ),
            figures.controller_cpu_per_minute,
            ratio(
                figures.controller_cpu_per_minute,
                control.controller_cpu_per_minute
            ),
            figures.requests_per_minute,
            mib(figures.apiserver_rss_kib),
            mib(figures.etcd_rss_kib),
            secs(figures.wave_median),
            secs(figures.wave_p99),
            secs(figures.bystanders_max),
            late(figures.timer_late_quiet),
            late(figures.timer_late_wave),
        );
    }
    let measured: Vec<&Figures> = results
        .iter()
        .filter(|f| f.to_available.is_some() && f.canaries > 1)
        .collect();
    let slope = match measured.as_slice() {
        [.., a, b] => Some(
            (b.controller_rss_kib as f64 - a.controller_rss_kib as f64)
                / (b.canaries - a.canaries) as f64,
        ),
        [a] => Some(
            (a.controller_rss_kib as f64 - control.controller_rss_kib as f64)
                / (a.canaries - 1) as f64,
        ),
        [] => None,
    };
    if let Some(slope) = slope {
        println!(
            "controller memory slope {slope:.1} KiB per Canary: 10,000 Canaries ≈ {:.0} MiB",
            mib(control.controller_rss_kib) + slope * 10_000.0 / 1024.0
        );
    }
    let rows: Vec<Value> = results
        .iter()
        .map(|f| {
            json!({
                "canaries": f.canaries,
                "apply_to_every_available_seconds": seconds(f.to_available),
                "controller_rss_mib": mib(f.controller_rss_kib),
                "controller_cpu_seconds_per_minute": f.controller_cpu_per_minute,
                "api_requests_per_minute": f.requests_per_minute,
                "apiserver_rss_mib": mib(f.apiserver_rss_kib),
                "etcd_rss_mib": mib(f.etcd_rss_kib),
                "wave_canaries": f.wave,
                "wave_first_weight_median_seconds": seconds(f.wave_median),
                "wave_first_weight_p99_seconds": seconds(f.wave_p99),
                "after_the_wave_first_weight_max_seconds": seconds(f.bystanders_max),
                "timed_step_late_max_seconds_before_the_wave": f.timer_late_quiet,
                "timed_step_late_max_seconds_during_the_wave": f.timer_late_wave,
            })
        })
        .collect();
    let out = repository_root().join("target/bench");
    fs::create_dir_all(&out)?;
    let path = out.join("scale.json");
    fs::write(
        &path,
        serde_json::to_string_pretty(&json!({
            "concurrency": concurrency,
            "control": rows.first(),
            "fleets": rows.get(1..),
            "controller_kib_per_canary": slope,
        }))?,
    )?;
    println!("written to {}", path.display());
    Ok(())
}

//! `kubectl serin simulate`: for a manifest's steps, interval and analysis, on the
//! operator's own traffic, how fast Serin rolls back a regression of each size and
//! how often it rolls back a healthy canary, beside a Flagger-style threshold rule
//! and Wald's bound. Needs no cluster. `--grid` runs the benchmark of record.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use comfy_table::Table;
use comfy_table::presets::UTF8_BORDERS_ONLY;
use serde_json::json;
use serin_analysis::detection::{
    Cell, DEFAULT_BUCKETS, LatencyModel, Method, Report, Requests, Scenario,
};
use serin_analysis::{Tolerance, alpha_for};
use serin_api::Canary;

/// Requests per second of the benchmark grid.
pub const GRID_TRAFFIC: [f64; 4] = [1.0, 10.0, 100.0, 1000.0];
/// Requests per second of the wide grid.
pub const WIDE_TRAFFIC: [f64; 5] = [1.0, 10.0, 100.0, 1000.0, 10_000.0];
/// The canary's shares of the wide grid: a careful first step of 1%, and 10%.
pub const WIDE_SHARES: [f64; 2] = [0.01, 0.1];
/// Stable's error rates of the wide grid.
pub const WIDE_STABLE_ERROR_RATES: [f64; 3] = [0.001, 0.01, 0.05];
/// Regressions (canary/stable error-rate ratios) of the benchmark grid.
pub const GRID_RATIOS: [f64; 3] = [1.5, 2.0, 5.0];
/// Wald's bound under which the grid expects Serin within 1.5 × the bound.
const WALD_GOAL_LIMIT: f64 = 1800.0;
/// The latency threshold of the grid, seconds.
const GRID_THRESHOLD: f64 = 0.25;

/// Which regression to simulate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// More errors; `--regression` multiplies stable's error rate.
    Errors,
    /// Slower requests; `--regression` multiplies every latency, judged by a
    /// latency metric against a p99 threshold rule.
    Latency,
}

/// What to simulate.
#[derive(Clone, Debug, clap::Args)]
pub struct SimulateArgs {
    /// A Canary manifest: its steps, stepDuration, analysis interval, confidence and
    /// first errorRate metric are simulated.
    #[arg(short = 'f', long = "filename", required_unless_present = "grid")]
    pub manifest: Option<PathBuf>,
    /// Requests per second to the workload, both revisions together.
    #[arg(long, default_value_t = 100.0)]
    pub rps: f64,
    /// Regressions in errors (the manifest's first errorRate metric) or in latency
    /// (its first latency metric).
    #[arg(long, value_enum, default_value_t = Kind::Errors)]
    pub kind: Kind,
    /// Stable's error rate, a fraction (0.01 = 1%).
    #[arg(long = "error-rate", default_value_t = 0.01)]
    pub error_rate: f64,
    /// Latency: stable's median latency, seconds; latencies are lognormal.
    #[arg(long, default_value_t = 0.05)]
    pub p50: f64,
    /// Latency: the spread, the standard deviation of the latency's logarithm
    /// (0.8 puts stable's p99 at 6.4 times its median).
    #[arg(long, default_value_t = 0.8)]
    pub spread: f64,
    /// Regressions to simulate: the canary's error rate, or its latency, as a
    /// multiple of stable's.
    #[arg(long, value_delimiter = ',', default_values_t = GRID_RATIOS)]
    pub regression: Vec<f64>,
    /// Simulated rollouts per regression size.
    #[arg(long, default_value_t = 1000)]
    pub runs: usize,
    /// Seed of the first rollout's traffic.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Run the benchmark grid instead: 1, 10, 100 and 1000 req/s, the canary at 10%
    /// for an hour, stable at 1% errors (or, with `--kind latency`, latency as
    /// `--p50` and `--spread` say against a 250 ms threshold), the regressions
    /// given, confidence 0.95.
    #[arg(long, conflicts_with = "manifest")]
    pub grid: bool,
    /// With `--grid`: also shares of 1% as well as 10%, stable error rates of 0.1%,
    /// 1% and 5% (errors; latency keeps `--p50` and `--spread`), and 10,000 req/s.
    #[arg(long, requires = "grid")]
    pub wide: bool,
    /// Analysis interval of the grid, in seconds (a manifest brings its own).
    #[arg(long, default_value_t = 15, requires = "grid")]
    pub interval: u64,
    /// Scrape interval of the grid, in seconds: the judge looks this often while
    /// its evidence leans against the canary (a manifest brings its own
    /// `analysis.scrapeInterval`). Default: the interval.
    #[arg(long = "scrape-interval", requires = "grid")]
    pub scrape_interval: Option<u64>,
    /// Also write the figures as JSON, one object per cell, to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Runs the simulation and prints the tables.
pub fn run(args: &SimulateArgs) -> Result<()> {
    check(args)?;
    let scenarios: Vec<Scenario> = if args.grid && args.wide {
        let stable_error_rates = match args.kind {
            Kind::Errors => WIDE_STABLE_ERROR_RATES.to_vec(),
            Kind::Latency => vec![args.error_rate],
        };
        let mut scenarios = Vec::new();
        for rps in WIDE_TRAFFIC {
            for share in WIDE_SHARES {
                for stable_error_rate in &stable_error_rates {
                    scenarios.push(grid_scenario(rps, share, *stable_error_rate, args));
                }
            }
        }
        scenarios
    } else if args.grid {
        GRID_TRAFFIC
            .iter()
            .map(|rps| grid_scenario(*rps, 0.1, args.error_rate, args))
            .collect()
    } else {
        let path = args.manifest.as_deref().unwrap_or(Path::new("-"));
        let (scenario, unmodelled) = scenario_from_manifest(path, args)?;
        if let Some(unmodelled) = unmodelled {
            println!("{unmodelled}");
        }
        vec![scenario]
    };
    let reports: Vec<Report> = std::thread::scope(|scope| {
        let handles: Vec<_> = scenarios
            .iter()
            .map(|scenario| {
                scope.spawn(|| scenario.evaluate(&args.regression, args.runs, args.seed))
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let mut out = String::new();
    let mut cells = Vec::new();
    for (scenario, report) in scenarios.iter().zip(&reports) {
        let _ = writeln!(out, "{}", table(scenario, report, args.runs));
        for cell in &report.cells {
            cells.push(json!({
                "kind": scenario.requests.kind(),
                "traffic": scenario.total_rps,
                "share": scenario.shares.first(),
                "stable_bad_share": scenario.requests.stable_bad_share(),
                "stable_error_rate": match scenario.requests {
                    Requests::Errors { stable_error_rate } => Some(stable_error_rate),
                    Requests::Latency(_) => None,
                },
                "bad_share_ratio": scenario.requests.bad_share_ratio(cell.ratio),
                "ratio": cell.ratio,
                "method": cell.method.as_str(),
                "median_s": cell.median,
                "p90_s": cell.p90,
                "rollback_rate": cell.rollback_rate,
                "false_rollback_rate": cell.false_rollback_rate,
                "wald_bound_s": cell.wald_bound,
                "looks_per_minute": cell.looks_per_minute,
                "threshold": (cell.method == Method::Threshold).then_some(report.rule_threshold),
            }));
        }
    }
    if args.grid {
        out.push_str(&goals(&scenarios, &reports));
    }
    print!("{out}");
    if let Some(path) = &args.json {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&cells)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("figures written to {}", path.display());
    }
    Ok(())
}

fn check(args: &SimulateArgs) -> Result<()> {
    if !(args.rps > 0.0 && args.rps.is_finite()) {
        bail!("--rps must be a positive number of requests per second, for example --rps 100");
    }
    if !(args.error_rate > 0.0 && args.error_rate < 1.0) {
        bail!(
            "--error-rate is stable's error rate, a fraction between 0 and 1 exclusive, for example --error-rate 0.01"
        );
    }
    if let Some(bad) = args
        .regression
        .iter()
        .find(|r| !(**r >= 1.0 && r.is_finite()))
    {
        bail!(
            "--regression {bad}: each regression is a ratio of at least 1, for example --regression 1.5,2,5"
        );
    }
    if args.kind == Kind::Errors && args.regression.iter().any(|r| r * args.error_rate > 1.0) {
        bail!(
            "--regression × --error-rate must stay at most 1 (a canary cannot fail more than every request)"
        );
    }
    if args.kind == Kind::Latency && !(args.p50 > 0.0 && args.p50.is_finite()) {
        bail!("--p50 is stable's median latency in seconds, above 0, for example --p50 0.05");
    }
    if args.kind == Kind::Latency && !(args.spread > 0.0 && args.spread.is_finite()) {
        bail!(
            "--spread is the standard deviation of log latency, above 0, for example --spread 0.8"
        );
    }
    if args.runs < 20 {
        bail!("--runs must be at least 20 for the quantiles to mean anything");
    }
    Ok(())
}

/// The requests of `args`' kind: stable's error rate for errors, a latency
/// metric's `threshold` for latency.
fn requests(args: &SimulateArgs, stable_error_rate: f64, threshold: f64) -> Requests {
    match args.kind {
        Kind::Errors => Requests::Errors { stable_error_rate },
        Kind::Latency => {
            let mut bounds = DEFAULT_BUCKETS.to_vec();
            if !bounds.contains(&threshold) {
                bounds.push(threshold);
                bounds.sort_by(f64::total_cmp);
            }
            Requests::Latency(LatencyModel {
                median_seconds: args.p50,
                sigma: args.spread,
                bounds,
                threshold,
            })
        }
    }
}

/// The benchmark of record: one step at `share` for an hour.
fn grid_scenario(
    total_rps: f64,
    share: f64,
    stable_error_rate: f64,
    args: &SimulateArgs,
) -> Scenario {
    Scenario {
        total_rps,
        swing: 0.0,
        requests: requests(args, stable_error_rate, GRID_THRESHOLD),
        shares: vec![share],
        step_seconds: 3600,
        interval_seconds: args.interval.max(1),
        scrape_seconds: args.scrape_interval.unwrap_or(args.interval).max(1),
        // Each kind's default tolerance: no worse than stable for errors, 1.5 times
        // stable's share of slow requests for latency.
        tolerance: Tolerance {
            max_ratio: match args.kind {
                Kind::Errors => 1.0,
                Kind::Latency => 1.5,
            },
            max_rate: None,
        },
        alpha: 0.05,
    }
}

/// The manifest's rollout: its steps, times and first metric of the kind simulated,
/// and what of the rollout the simulation leaves out, when anything.
fn scenario_from_manifest(path: &Path, args: &SimulateArgs) -> Result<(Scenario, Option<String>)> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("reading the manifest from stdin")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    let canary: Canary = serde_norway::from_str(&text)
        .with_context(|| format!("{} is not a Canary manifest", path.display()))?;
    let spec = &canary.spec;
    let Some(analysis) = &spec.analysis else {
        bail!(
            "{}: spec.analysis is missing; simulate judges an errorRate or latency metric, add one under spec.analysis.metrics",
            path.display()
        );
    };
    let (tolerance, threshold, simulated) = match args.kind {
        Kind::Errors => {
            let Some((simulated, metric)) = analysis
                .metrics
                .iter()
                .find_map(|m| Some((m, m.error_rate.as_ref()?)))
            else {
                bail!(
                    "{}: spec.analysis.metrics has no errorRate metric to simulate; add one (see docs/analysis.md), or simulate a latency metric with --kind latency",
                    path.display()
                );
            };
            (Tolerance::from(metric), GRID_THRESHOLD, simulated)
        }
        Kind::Latency => {
            let Some((simulated, metric)) = analysis
                .metrics
                .iter()
                .find_map(|m| Some((m, m.latency.as_ref()?)))
            else {
                bail!(
                    "{}: spec.analysis.metrics has no latency metric to simulate with --kind latency; add one (see docs/analysis.md)",
                    path.display()
                );
            };
            (Tolerance::from(metric), metric.threshold, simulated)
        }
    };
    if spec.steps.is_empty() || spec.steps.iter().any(|w| w.is_zero()) {
        bail!(
            "{}: spec.steps must be weights above 0 and up to 100, for example [10, 25, 50]",
            path.display()
        );
    }
    let seconds = |d: serin_api::Duration| std::time::Duration::from(d).as_secs();
    let interval = seconds(analysis.interval).max(1);
    let scrape = analysis.scrape_interval.map_or(interval, seconds).max(1);
    let step = seconds(spec.step_duration).max(interval);
    let before = match (&spec.mirror, &spec.experiment) {
        (Some(mirror), Some(_)) => Some(format!(
            "mirroring ({}%) and the experiment",
            mirror.percent
        )),
        (Some(mirror), None) => Some(format!("mirroring ({}%)", mirror.percent)),
        (None, Some(_)) => Some("the experiment".to_owned()),
        (None, None) => None,
    };
    let unmodelled = before.map(|before| {
        format!(
            "{}: the simulation starts at the first weighted step; before it the canary is judged during {before} as well, so a regression may be rolled back before the steps simulated here",
            path.display()
        )
    });
    let scenario = Scenario {
        total_rps: args.rps,
        swing: 0.0,
        requests: requests(args, args.error_rate, threshold),
        shares: spec.steps.iter().map(|w| w.share()).collect(),
        step_seconds: step.div_ceil(interval) * interval,
        interval_seconds: interval,
        scrape_seconds: scrape,
        tolerance,
        alpha: alpha_for(analysis, simulated),
    };
    Ok((scenario, unmodelled))
}

fn table(scenario: &Scenario, report: &Report, runs: usize) -> String {
    let shares: Vec<String> = scenario
        .shares
        .iter()
        .map(|s| format!("{}%", s * 100.0))
        .collect();
    let written = match &scenario.requests {
        Requests::Errors { .. } => {
            "Flagger request-success-rate min 99 over 1m, 5 failed checks; Argo result[0] >= 0.95 over 5m, failureLimit 3"
        }
        Requests::Latency(_) => {
            "Flagger request-duration max 500ms (p99) over 1m, 5 failed checks; Argo p99 <= 0.5s over 5m, failureLimit 3"
        }
    };
    let (stable, rule) = match &scenario.requests {
        Requests::Errors { stable_error_rate } => (
            format!("stable errors {:.2}%", stable_error_rate * 100.0),
            format!(
                "canary error rate over 1m windows above {:.3}%",
                report.rule_threshold * 100.0
            ),
        ),
        Requests::Latency(model) => (
            format!(
                "stable latency lognormal (median {}ms, spread {}), {:.2}% slower than {}; regressions multiply the canary's latency",
                model.median_seconds * 1000.0,
                model.sigma,
                model.slow_share(1.0) * 100.0,
                model.threshold
            ),
            format!(
                "canary p99 over 1m windows above {:.0}ms",
                report.rule_threshold * 1000.0
            ),
        ),
    };
    let mut out = format!(
        "{} req/s, {stable}, canary at {} for {} each, analysis every {}s (every {}s while \
         the evidence leans against the canary), false-rollback budget {:.1}%, {runs} \
         rollouts per row; threshold rule: {rule}, rollback at the 5th failed check; \
         as written: {written}\n",
        scenario.total_rps,
        shares.join(" → "),
        seconds(Some(scenario.step_seconds as f64)),
        scenario.interval_seconds,
        scenario.scrape_seconds.min(scenario.interval_seconds),
        scenario.alpha * 100.0,
    );
    let mut table = Table::new();
    table.load_style(UTF8_BORDERS_ONLY).set_header([
        match scenario.requests {
            Requests::Errors { .. } => "RATIO",
            Requests::Latency(_) => "SLOWER ×",
        },
        "SERIN MEDIAN",
        "SERIN P90",
        "SERIN ROLLED BACK",
        "RULE MEDIAN",
        "RULE P90",
        "RULE ROLLED BACK",
        "FLAGGER AS WRITTEN",
        "ARGO AS WRITTEN",
        "WALD BOUND",
        "SERIN ÷ WALD",
        "RULE ÷ SERIN",
        "LOOKS/MIN",
    ]);
    // A written rule's median time and share rolled back, `5.0m (100%)`.
    let written_cell = |cell: &Cell| {
        format!(
            "{} ({:.0}%)",
            seconds(cell.median),
            cell.rollback_rate * 100.0
        )
    };
    for cells in report.cells.chunks(Method::ALL.len()) {
        let [serin, rule, flagger, argo] = cells else {
            continue;
        };
        table.add_row([
            if serin.ratio == 1.0 {
                "1 (healthy)".to_owned()
            } else {
                format!("{}", serin.ratio)
            },
            seconds(serin.median),
            seconds(serin.p90),
            format!("{:.1}%", serin.rollback_rate * 100.0),
            seconds(rule.median),
            seconds(rule.p90),
            format!("{:.1}%", rule.rollback_rate * 100.0),
            written_cell(flagger),
            written_cell(argo),
            seconds(serin.wald_bound),
            factor(serin.median, serin.wald_bound),
            factor(rule.median, serin.median),
            format!("{:.1}", serin.looks_per_minute),
        ]);
    }
    let _ = writeln!(out, "{table}");
    out
}

/// The grid's goals, cell by cell: met or not, as measured.
fn goals(scenarios: &[Scenario], reports: &[Report]) -> String {
    let mut out = String::from("Goals:\n");
    let mut line = |ok: bool, text: String| {
        let _ = writeln!(out, "  [{}] {text}", if ok { "met" } else { "NOT met" });
    };
    for (scenario, report) in scenarios.iter().zip(reports) {
        let rps = format!(
            "{} req/s at {}%, stable {:.2}%",
            scenario.total_rps,
            scenario.shares.first().copied().unwrap_or_default() * 100.0,
            scenario.requests.stable_bad_share() * 100.0
        );
        let rps = rps.as_str();
        let serin: Vec<&Cell> = report
            .cells
            .iter()
            .filter(|c| c.method == Method::Serin)
            .collect();
        let rule = |ratio: f64| {
            report
                .cells
                .iter()
                .find(|c| c.method == Method::Threshold && c.ratio == ratio)
        };
        if let Some(healthy) = serin.iter().find(|c| c.ratio == 1.0) {
            line(
                healthy.rollback_rate <= 0.05,
                format!(
                    "{rps}: false rollbacks {:.1}% ≤ 5%",
                    healthy.rollback_rate * 100.0
                ),
            );
        }
        for cell in serin.iter().filter(|c| c.ratio > 1.0) {
            if let Some(bound) = cell.wald_bound.filter(|b| *b < WALD_GOAL_LIMIT) {
                let scrape = scenario.scrape_seconds.min(scenario.interval_seconds) as f64;
                line(
                    cell.median.is_some_and(|m| m <= 1.5 * bound + scrape),
                    format!(
                        "{rps}, ratio {}: median {} ≤ 1.5 × Wald's {} + one scrape ({}s) ({})",
                        cell.ratio,
                        seconds(cell.median),
                        seconds(Some(bound)),
                        scrape,
                        factor(cell.median, Some(bound))
                    ),
                );
            }
            // ≥ 4× faster than the calibrated rule wherever the rule is itself ≥ 6×
            // slower than the bound (elsewhere the rule is near the limit too).
            if let (Some(rule), Some(bound)) = (rule(cell.ratio), cell.wald_bound) {
                let rule_slow = rule.median.is_none_or(|r| r >= 6.0 * bound);
                let faster = match (cell.median, rule.median) {
                    (Some(serin), Some(rule)) => rule >= 4.0 * serin,
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                if rule_slow && (cell.median.is_some() || rule.median.is_some()) {
                    line(
                        faster,
                        format!(
                            "{rps}, ratio {}: rule median {} ≥ 4 × Serin's {} ({})",
                            cell.ratio,
                            seconds(rule.median),
                            seconds(cell.median),
                            factor(rule.median, cell.median)
                        ),
                    );
                }
            }
        }
    }
    out
}

fn seconds(value: Option<f64>) -> String {
    match value {
        None => "never".to_owned(),
        Some(s) if s >= 3600.0 => format!("{:.1}h", s / 3600.0),
        Some(s) if s >= 120.0 => format!("{:.1}m", s / 60.0),
        Some(s) => format!("{s:.0}s"),
    }
}

fn factor(numerator: Option<f64>, denominator: Option<f64>) -> String {
    match (numerator, denominator) {
        (Some(n), Some(d)) if d > 0.0 => format!("{:.2}×", n / d),
        (None, Some(_)) => "∞".to_owned(),
        _ => "-".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` in a manifest file of a fresh directory (kept while the TempDir lives).
    fn manifest(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("canary.yaml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn a_manifest_gives_its_steps_interval_and_tolerances() {
        let (_dir, path) = manifest(
            r#"apiVersion: serin.dev/v1alpha1
kind: Canary
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template: {metadata: {labels: {app: web}}, spec: {containers: [{name: web, image: web}]}}
  steps: [5, 50]
  stepDuration: 2m
  analysis:
    interval: 10s
    confidence: 0.99
    metrics:
    - name: errors
      errorRate: {requests: "a", errors: "b", maxRatio: 1.5, maxRate: 0.1}
"#,
        );
        let (scenario, _) = scenario_from_manifest(&path, &args(Kind::Errors)).unwrap();
        assert_eq!(scenario.shares, vec![0.05, 0.5]);
        assert_eq!(scenario.step_seconds, 120);
        assert_eq!(scenario.interval_seconds, 10);
        assert!((scenario.alpha - 0.01).abs() < 1e-12);
        assert_eq!(scenario.tolerance.max_ratio, 1.5);
        assert_eq!(scenario.tolerance.max_rate, Some(0.1));
    }

    #[test]
    fn a_manifest_without_an_error_rate_metric_is_refused_by_name() {
        let (_dir, path) = manifest(
            "apiVersion: serin.dev/v1alpha1\nkind: Canary\nmetadata: {name: web}\nspec:\n  selector: {matchLabels: {app: web}}\n  template: {metadata: {labels: {app: web}}, spec: {containers: [{name: web, image: web}]}}\n",
        );
        let error = scenario_from_manifest(&path, &args(Kind::Errors)).unwrap_err();
        assert!(error.to_string().contains("spec.analysis"), "{error}");
    }

    #[test]
    fn a_manifests_latency_metric_gives_the_threshold_and_tolerances() {
        let (_dir, path) = manifest(
            r#"apiVersion: serin.dev/v1alpha1
kind: Canary
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template: {metadata: {labels: {app: web}}, spec: {containers: [{name: web, image: web}]}}
  analysis:
    metrics:
    - name: errors
      errorRate: {requests: "a", errors: "b"}
    - name: latency
      latency: {buckets: "b", threshold: 0.3, maxSlowShare: 0.1}
"#,
        );
        let (scenario, _) = scenario_from_manifest(&path, &args(Kind::Latency)).unwrap();
        let Requests::Latency(model) = &scenario.requests else {
            panic!("not latency: {scenario:?}");
        };
        assert_eq!(model.threshold, 0.3);
        assert!(model.bounds.contains(&0.3) && model.bounds.is_sorted());
        assert_eq!(scenario.tolerance.max_ratio, 1.5);
        assert_eq!(scenario.tolerance.max_rate, Some(0.1));
        assert!(
            (scenario.alpha - 0.025).abs() < 1e-12,
            "two metrics share 5%"
        );
        let no_latency = std::fs::read_to_string(&path)
            .unwrap()
            .replace("    - name: latency\n      latency: {buckets: \"b\", threshold: 0.3, maxSlowShare: 0.1}\n", "");
        std::fs::write(&path, no_latency).unwrap();
        let error = scenario_from_manifest(&path, &args(Kind::Latency)).unwrap_err();
        assert!(error.to_string().contains("no latency metric"), "{error}");
    }

    fn args(kind: Kind) -> SimulateArgs {
        SimulateArgs {
            manifest: None,
            rps: 50.0,
            kind,
            error_rate: 0.02,
            p50: 0.05,
            spread: 0.8,
            regression: vec![2.0],
            runs: 100,
            seed: 1,
            grid: true,
            wide: false,
            interval: 15,
            scrape_interval: None,
            json: None,
        }
    }

    #[test]
    fn bad_flags_are_refused_with_the_fix() {
        let mut args = args(Kind::Errors);
        assert!(check(&args).is_ok());
        args.regression = vec![0.5];
        assert!(
            check(&args)
                .unwrap_err()
                .to_string()
                .contains("--regression")
        );
        args.regression = vec![2.0];
        args.error_rate = 1.5;
        assert!(
            check(&args)
                .unwrap_err()
                .to_string()
                .contains("--error-rate")
        );
        args.error_rate = 0.01;
        args.kind = Kind::Latency;
        args.p50 = 0.0;
        assert!(check(&args).unwrap_err().to_string().contains("--p50"));
    }
}

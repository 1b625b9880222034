//! The detection simulator: how fast a regression of a given size is rolled back, and
//! how often a healthy canary is, on Poisson traffic with fixed seeds.
//!
//! Every method sees the same streams: Serin's judge (looking as the controller
//! does, evidence carried across steps); a Flagger-style threshold rule (the
//! canary's error rate, or its p99 latency from the histogram's buckets, over
//! 1-minute windows against an absolute threshold, rollback at the 5th failed
//! check) whose threshold is set so that its false-rollback rate matches the one
//! the user allows, which no operator can do since it needs stable's rate in
//! advance; and the rules operators actually write, copied from Flagger's and Argo
//! Rollouts' documentation. Wald's bound, on the rollout's own schedule of shares,
//! is the least expected time any test with the same error probabilities can take.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Binomial, Distribution, Poisson};
use serin_api::ErrorCounts;
use statrs::distribution::{ContinuousCDF, Normal};

use crate::error_rate::{Tolerance, error_share};
use crate::judge::cadence;

/// Window of the threshold rule, in seconds.
pub const RULE_WINDOW_SECONDS: u64 = 60;
/// Failed checks after which the threshold rule rolls back.
pub const RULE_FAILED_CHECKS: usize = 5;
/// Miss probability in Wald's bound.
pub const WALD_BETA: f64 = 0.1;
/// The quantile the latency rule watches, as Flagger's `request-duration` does.
pub const RULE_QUANTILE: f64 = 0.99;

/// Mixed into a run's seed for its scrape phase and thinning, so they are drawn
/// apart from its requests.
const SCRAPE_PHASE_SEED: u64 = 0x5C2A_9E11_D00D_F00D;

/// Prometheus client libraries' default histogram buckets, in seconds.
pub const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// What a regression does to the canary's requests.
#[derive(Clone, Debug, PartialEq)]
pub enum Requests {
    /// Some fail: stable fails this share of its requests, and a regression of
    /// ratio r fails r times as many of the canary's.
    Errors {
        /// Stable's error rate, a fraction.
        stable_error_rate: f64,
    },
    /// Some are slow: latencies are lognormal, and a regression of ratio r makes
    /// every canary request r times slower; a request over the threshold is slow.
    Latency(LatencyModel),
}

/// Lognormal latencies seen through a Prometheus histogram.
#[derive(Clone, Debug, PartialEq)]
pub struct LatencyModel {
    /// Stable's median latency, seconds.
    pub median_seconds: f64,
    /// Spread: the standard deviation of the latency's logarithm.
    pub sigma: f64,
    /// The histogram's finite bucket bounds, ascending, seconds.
    pub bounds: Vec<f64>,
    /// The latency metric's threshold, one of the bounds.
    pub threshold: f64,
}

impl LatencyModel {
    /// Share of requests at most `seconds` slow, for latencies `factor` times stable's.
    fn at_most(&self, seconds: f64, factor: f64) -> f64 {
        let normal = Normal::standard();
        normal.cdf((seconds / (self.median_seconds * factor)).ln() / self.sigma)
    }

    /// Share of requests slower than the threshold, at `factor` times stable's latency.
    pub fn slow_share(&self, factor: f64) -> f64 {
        1.0 - self.at_most(self.threshold, factor)
    }

    /// Share of requests in each bucket (the finite bounds, then `+Inf`), not
    /// cumulative, at `factor` times stable's latency.
    fn bucket_shares(&self, factor: f64) -> Vec<f64> {
        let mut below = 0.0;
        let mut shares: Vec<f64> = self
            .bounds
            .iter()
            .map(|bound| {
                let upto = self.at_most(*bound, factor);
                let share = upto - below;
                below = upto;
                share
            })
            .collect();
        shares.push(1.0 - below);
        shares
    }

    /// The `q` quantile of a window's bucket counts (the finite bounds, then `+Inf`),
    /// as Prometheus' `histogram_quantile` interpolates it; None without requests.
    fn quantile(&self, counts: &[f64], q: f64) -> Option<f64> {
        let total: f64 = counts.iter().sum();
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut below = 0.0;
        for (index, count) in counts.iter().enumerate() {
            if below + count >= rank && *count > 0.0 {
                let Some(upper) = self.bounds.get(index) else {
                    return self.bounds.last().copied();
                };
                let lower = if index == 0 {
                    0.0
                } else {
                    self.bounds[index - 1]
                };
                return Some(lower + (upper - lower) * (rank - below) / count);
            }
            below += count;
        }
        self.bounds.last().copied()
    }
}

impl Requests {
    /// Stable's share of bad requests: its error rate, or its share of slow ones.
    pub fn stable_bad_share(&self) -> f64 {
        match self {
            Self::Errors { stable_error_rate } => *stable_error_rate,
            Self::Latency(model) => model.slow_share(1.0),
        }
    }

    /// The canary/stable ratio of bad-request shares a regression of `ratio` gives:
    /// `ratio` itself for errors; for latency, how many times stable's share of
    /// slow requests the slower canary has.
    pub fn bad_share_ratio(&self, ratio: f64) -> f64 {
        match self {
            Self::Errors { .. } => ratio,
            Self::Latency(model) => model.slow_share(ratio) / model.slow_share(1.0),
        }
    }

    /// Name in tables and JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Errors { .. } => "errors",
            Self::Latency(_) => "latency",
        }
    }
}

/// One rollout to simulate.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// Requests per second to the workload, both revisions, on average.
    pub total_rps: f64,
    /// How far traffic swings around the average, a fraction: the rate follows
    /// `total_rps × (1 + swing × sin(2πt / 10 min))`. 0 for steady traffic.
    pub swing: f64,
    /// What goes wrong with the canary's requests, and how stable's look.
    pub requests: Requests,
    /// The canary's share of requests at each step, fractions.
    pub shares: Vec<f64>,
    /// Time at each step, seconds; the canary is promoted after the last.
    pub step_seconds: u64,
    /// Time between two analyses, seconds.
    pub interval_seconds: u64,
    /// Prometheus' scrape interval, seconds: the judge looks this often while its
    /// evidence leans against the canary (`analysis.scrapeInterval`); the
    /// interval when it equals it.
    pub scrape_seconds: u64,
    /// What the judge tolerates.
    pub tolerance: Tolerance,
    /// The false-rollback rate the user allows, 1 − confidence.
    pub alpha: f64,
}

/// A method of deciding on a rollback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Serin's sequential judge.
    Serin,
    /// The Flagger-style threshold rule, calibrated to the same false-rollback rate.
    Threshold,
    /// Flagger's rules as its documentation writes them: `request-success-rate`
    /// min 99 (or `request-duration` max 500 ms, a p99) over 1-minute checks,
    /// rollback at the 5th failed check (`threshold: 5`).
    Flagger,
    /// Argo Rollouts' AnalysisTemplate as its documentation writes it:
    /// `successCondition: result[0] >= 0.95` over 5-minute measurements,
    /// `failureLimit: 3`, so failing at the 4th failed measurement (for latency,
    /// a p99 of at most 500 ms the same way).
    Argo,
}

impl Method {
    /// Every method, in the order of the tables.
    pub const ALL: [Self; 4] = [Self::Serin, Self::Threshold, Self::Flagger, Self::Argo];

    /// Name in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Serin => "serin",
            Self::Threshold => "threshold",
            Self::Flagger => "flagger",
            Self::Argo => "argo",
        }
    }
}

/// A fixed rule as an operator copies it from a peer's documentation: knowing
/// nothing of stable, calibrated to nothing.
#[derive(Clone, Copy, Debug, PartialEq)]
struct WrittenRule {
    /// Each check's window, seconds.
    window_seconds: u64,
    /// The failed check that rolls back (the 5th for Flagger, the 4th for Argo).
    failed_checks: usize,
    /// A check fails above this canary error rate.
    max_error_rate: f64,
    /// A check fails above this canary p99 latency, seconds.
    max_p99_seconds: f64,
}

impl WrittenRule {
    fn of(method: Method) -> Option<Self> {
        match method {
            Method::Flagger => Some(Self {
                window_seconds: 60,
                failed_checks: 5,
                max_error_rate: 0.01,
                max_p99_seconds: 0.5,
            }),
            Method::Argo => Some(Self {
                window_seconds: 300,
                failed_checks: 4,
                max_error_rate: 0.05,
                max_p99_seconds: 0.5,
            }),
            Method::Serin | Method::Threshold => None,
        }
    }
}

/// Figures for one regression size and one method.
#[derive(Clone, Debug, PartialEq)]
pub struct Cell {
    /// The canary/stable error-rate ratio simulated.
    pub ratio: f64,
    /// The method.
    pub method: Method,
    /// Median time to rollback, seconds; None when fewer than half the runs rolled back.
    pub median: Option<f64>,
    /// 90th percentile; None when fewer than 90% rolled back.
    pub p90: Option<f64>,
    /// Fraction of runs rolled back before promotion.
    pub rollback_rate: f64,
    /// Fraction of runs rolled back at ratio 1, same method and traffic.
    pub false_rollback_rate: f64,
    /// Wald's lower bound on the expected time to rollback, on the rollout's schedule.
    pub wald_bound: Option<f64>,
    /// Looks per minute of rollout, on average: Serin's analyses (each one query per
    /// arm and count), a rule's checks.
    pub looks_per_minute: f64,
}

/// Figures for a scenario at each ratio, every method.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// One cell per ratio and method (in [`Method::ALL`]'s order), ratio 1 first.
    pub cells: Vec<Cell>,
    /// The threshold rule's absolute error-rate threshold after calibration.
    pub rule_threshold: f64,
}

/// Counts of one tick: requests and bad requests of each arm, and for latency the
/// canary's requests per bucket (the finite bounds, then `+Inf`), which the rule reads.
#[derive(Clone, Debug, Default)]
struct Tick {
    counts: ErrorCounts,
    canary_buckets: Vec<f64>,
}

impl Scenario {
    /// Seconds simulated: every step, then promotion.
    pub fn horizon_seconds(&self) -> u64 {
        self.step_seconds * self.shares.len() as u64
    }

    /// Resolution of the streams: every analysis, rule check and step starts on a tick.
    fn tick_seconds(&self) -> u64 {
        gcd(
            gcd(
                gcd(self.interval_seconds.max(1), RULE_WINDOW_SECONDS),
                self.step_seconds.max(1),
            ),
            self.scrape_seconds.max(1),
        )
    }

    /// One stream of Poisson counts per tick, from a seed.
    fn stream(&self, ratio: f64, seed: u64) -> Vec<Tick> {
        let tick = self.tick_seconds() as f64;
        let mut rng = StdRng::seed_from_u64(seed);
        let stable_bad = self.requests.stable_bad_share();
        let (canary_bad, canary_buckets) = match &self.requests {
            Requests::Errors { stable_error_rate } => ((stable_error_rate * ratio).min(1.0), None),
            Requests::Latency(model) => {
                let buckets = model.bucket_shares(ratio);
                let slow_from = model
                    .bounds
                    .iter()
                    .take_while(|b| **b <= model.threshold)
                    .count();
                (model.slow_share(ratio), Some((buckets, slow_from)))
            }
        };
        let ticks_per_step = self.step_seconds / self.tick_seconds();
        let mut draw = |mean: f64| poisson(mean).map_or(0.0, |d| d.sample(&mut rng));
        let mut stream = Vec::new();
        for share in &self.shares {
            for _ in 0..ticks_per_step {
                let t = stream.len() as f64 * tick;
                let rps = self.total_rps
                    * (1.0 + self.swing * (std::f64::consts::TAU * t / 600.0).sin()).max(0.0);
                let canary = rps * share * tick;
                let stable = rps * (1.0 - share) * tick;
                let (canary_requests, canary_errors, buckets) = match &canary_buckets {
                    None => {
                        let ok = draw(canary * (1.0 - canary_bad));
                        let bad = draw(canary * canary_bad);
                        (ok + bad, bad, Vec::new())
                    }
                    Some((shares, slow_from)) => {
                        let buckets: Vec<f64> = shares.iter().map(|p| draw(canary * p)).collect();
                        let slow = buckets[*slow_from..].iter().sum();
                        (buckets.iter().sum(), slow, buckets)
                    }
                };
                let stable_ok = draw(stable * (1.0 - stable_bad));
                let stable_errors = draw(stable * stable_bad);
                stream.push(Tick {
                    counts: ErrorCounts {
                        canary_requests,
                        canary_errors,
                        stable_requests: stable_ok + stable_errors,
                        stable_errors,
                    },
                    canary_buckets: buckets,
                });
            }
        }
        stream
    }

    /// When Serin's judge rolls back on this stream, seconds after the first step
    /// began, and how many looks it took. It looks as the controller does, at the
    /// cadence [`crate::cadence`] gives, and counts what Prometheus has: requests
    /// up to its last scrape, at a phase drawn for the run from `seed`, so up to
    /// one scrape interval old (the tick a scrape falls in is thinned to the part
    /// scraped).
    fn judge(&self, stream: &[Tick], seed: u64) -> (Option<f64>, usize) {
        let tick = self.tick_seconds();
        let ticks_per_step = (self.step_seconds / tick) as usize;
        let mut rng = StdRng::seed_from_u64(seed ^ SCRAPE_PHASE_SEED);
        let scrape = self.scrape_seconds.max(1) as f64;
        let phase = rng.random_range(0.0..scrape);
        // The time of the last scrape at or before `t`.
        let scraped_by = |t: f64| t - (t - phase).rem_euclid(scrape);
        // The controller's cadence, in whole ticks (at least one).
        let next = |log_evidence: f64, seen: Option<(f64, f64)>| {
            let seconds = cadence(
                log_evidence.exp(),
                seen,
                self.scrape_seconds as f64,
                self.interval_seconds as f64,
            );
            ((seconds / tick as f64).round() as usize).max(1)
        };
        let bar = (1.0 / self.alpha).ln();
        let mut carried = vec![0.0; self.tolerance.components()];
        // The step's ticks Prometheus has scraped whole, and all of them.
        let mut window = ErrorCounts::default();
        let mut whole_step = ErrorCounts::default();
        let mut scraped_whole = 0;
        let mut next_look = next(0.0, None);
        let mut looks = 0;
        for (i, counts) in stream.iter().map(|t| &t.counts).enumerate() {
            let in_step = i % ticks_per_step + 1;
            let step_start = i + 1 - in_step;
            add(&mut whole_step, counts);
            let now = ((i + 1) as u64 * tick) as f64;
            let scraped = scraped_by(now).max(0.0) / tick as f64;
            while (scraped_whole + 1) as f64 <= scraped {
                if scraped_whole >= step_start {
                    add(&mut window, &stream[scraped_whole].counts);
                }
                scraped_whole += 1;
            }
            if in_step >= next_look {
                looks += 1;
                let mut seen_now = window;
                if scraped_whole >= step_start && scraped_whole <= i {
                    let part = scraped - scraped_whole as f64;
                    add(
                        &mut seen_now,
                        &thinned(&stream[scraped_whole].counts, part, &mut rng),
                    );
                }
                let mut total = carried.clone();
                for (sum, ratio) in total
                    .iter_mut()
                    .zip(self.tolerance.log_likelihood_ratios(&seen_now))
                {
                    *sum += ratio;
                }
                let log_evidence = self.tolerance.log_evidence(&total);
                if log_evidence >= bar {
                    return (Some(now), looks);
                }
                let seen = (seen_now.canary_errors, (in_step as u64 * tick) as f64);
                next_look = in_step + next(log_evidence, Some(seen));
            }
            if in_step == ticks_per_step {
                // What the last look had not seen yet, the controller counts in
                // the next step's first window; here it is carried with this step,
                // at this step's share, which is where it was sent.
                for (sum, ratio) in carried
                    .iter_mut()
                    .zip(self.tolerance.log_likelihood_ratios(&whole_step))
                {
                    *sum += ratio;
                }
                let seen = (whole_step.canary_errors, self.step_seconds as f64);
                window = ErrorCounts::default();
                whole_step = ErrorCounts::default();
                next_look = next(self.tolerance.log_evidence(&carried), Some(seen));
            }
        }
        (None, looks)
    }

    /// What a rule checks in each window of `window_seconds` of the stream: the
    /// canary's error rate, or its p99 latency (None: no requests).
    fn rule_windows(&self, stream: &[Tick], window_seconds: u64) -> Vec<Option<f64>> {
        let per_window = (window_seconds / self.tick_seconds()).max(1) as usize;
        stream
            .chunks(per_window)
            .filter(|chunk| chunk.len() == per_window)
            .map(|chunk| match &self.requests {
                Requests::Errors { .. } => {
                    let requests: f64 = chunk.iter().map(|c| c.counts.canary_requests).sum();
                    let errors: f64 = chunk.iter().map(|c| c.counts.canary_errors).sum();
                    (requests > 0.0).then(|| errors / requests)
                }
                Requests::Latency(model) => {
                    let mut buckets = vec![0.0; model.bounds.len() + 1];
                    for tick in chunk {
                        for (sum, count) in buckets.iter_mut().zip(&tick.canary_buckets) {
                            *sum += count;
                        }
                    }
                    model.quantile(&buckets, RULE_QUANTILE)
                }
            })
            .collect()
    }

    /// Simulates `runs` rollouts at each ratio (and at ratio 1) with seeds from `seed`.
    pub fn evaluate(&self, ratios: &[f64], runs: usize, seed: u64) -> Report {
        let seeds: Vec<u64> = (0..runs as u64)
            .map(|i| seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i))
            .collect();
        let null_streams: Vec<Vec<Tick>> = seeds.iter().map(|s| self.stream(1.0, *s)).collect();
        let rule_threshold = calibrate(
            null_streams
                .iter()
                .map(|s| self.rule_windows(s, RULE_WINDOW_SECONDS))
                .collect(),
            self.alpha,
        );
        let mut all_ratios = vec![1.0];
        all_ratios.extend(ratios.iter().copied().filter(|r| *r != 1.0));
        let mut cells = Vec::new();
        let mut false_rates = [0.0; Method::ALL.len()];
        for ratio in all_ratios {
            let streams: Vec<Vec<Tick>> = if ratio == 1.0 {
                null_streams.clone()
            } else {
                seeds.iter().map(|s| self.stream(ratio, *s)).collect()
            };
            let wald = self.wald_bound(ratio);
            for (index, method) in Method::ALL.into_iter().enumerate() {
                let judged: Vec<(Option<f64>, usize)> = streams
                    .iter()
                    .zip(&seeds)
                    .map(|(stream, seed)| match (method, WrittenRule::of(method)) {
                        (Method::Serin, _) => self.judge(stream, *seed),
                        (_, Some(rule)) => self.written_rule(stream, rule),
                        (_, None) => self.checked(
                            stream,
                            RULE_WINDOW_SECONDS,
                            rule_threshold,
                            RULE_FAILED_CHECKS,
                        ),
                    })
                    .collect();
                let times: Vec<Option<f64>> = judged.iter().map(|(time, _)| *time).collect();
                let looks: usize = judged.iter().map(|(_, looks)| looks).sum();
                let minutes: f64 = times
                    .iter()
                    .map(|time| time.unwrap_or(self.horizon_seconds() as f64) / 60.0)
                    .sum();
                let rollback_rate =
                    times.iter().filter(|t| t.is_some()).count() as f64 / runs.max(1) as f64;
                if ratio == 1.0 {
                    false_rates[index] = rollback_rate;
                }
                cells.push(Cell {
                    ratio,
                    method,
                    median: quantile(&times, 0.5),
                    p90: quantile(&times, 0.9),
                    rollback_rate,
                    false_rollback_rate: false_rates[index],
                    wald_bound: wald,
                    looks_per_minute: looks as f64 / minutes.max(f64::MIN_POSITIVE),
                });
            }
        }
        Report {
            cells,
            rule_threshold,
        }
    }

    /// When a written rule rolls back on this stream, and its checks.
    fn written_rule(&self, stream: &[Tick], rule: WrittenRule) -> (Option<f64>, usize) {
        let limit = match self.requests {
            Requests::Errors { .. } => rule.max_error_rate,
            Requests::Latency(_) => rule.max_p99_seconds,
        };
        self.checked(stream, rule.window_seconds, limit, rule.failed_checks)
    }

    /// When a rule checking windows of `window_seconds` against `limit` rolls back
    /// on this stream (at its `failed_checks`-th failure), and its checks. (Its
    /// queries see a window of the same length ending at the last scrape: the
    /// same counts in distribution, at the same time.)
    fn checked(
        &self,
        stream: &[Tick],
        window_seconds: u64,
        limit: f64,
        failed_checks: usize,
    ) -> (Option<f64>, usize) {
        (
            rule_rollback(
                &self.rule_windows(stream, window_seconds),
                limit,
                window_seconds,
                failed_checks,
            ),
            self.horizon_seconds().div_ceil(window_seconds) as usize,
        )
    }

    /// Wald's lower bound on the expected time to reject "no worse" at `ratio`, for any
    /// test with false-rollback rate α and miss rate β, on the rollout's own
    /// schedule: information accrues at each step's share for the step's time (at
    /// the last step's beyond the rollout, so the bound is finite). None when the
    /// canary is within tolerance.
    pub fn wald_bound(&self, ratio: f64) -> Option<f64> {
        let ratio = self.requests.bad_share_ratio(ratio);
        let (alpha, beta) = (self.alpha, WALD_BETA);
        let mut needed =
            (1.0 - beta) * ((1.0 - beta) / alpha).ln() + beta * (beta / (1.0 - alpha)).ln();
        let mut elapsed = 0.0;
        let step = self.step_seconds as f64;
        for (index, share) in self.shares.iter().enumerate() {
            let null = error_share(*share, self.tolerance.max_ratio);
            let alternative = error_share(*share, ratio);
            if alternative <= null {
                return None;
            }
            let divergence = alternative * (alternative / null).ln()
                + (1.0 - alternative) * ((1.0 - alternative) / (1.0 - null)).ln();
            let nats_per_second = divergence
                * self.total_rps
                * self.requests.stable_bad_share()
                * (share * ratio + 1.0 - share);
            let last = index + 1 == self.shares.len();
            if last || nats_per_second * step >= needed {
                return Some(elapsed + needed / nats_per_second);
            }
            needed -= nats_per_second * step;
            elapsed += step;
        }
        None
    }
}

/// The smallest threshold at which the rule rolls back at most a share `alpha` of the
/// healthy streams: the rule fails a stream when its 5th-highest window rate is above.
fn calibrate(windows: Vec<Vec<Option<f64>>>, alpha: f64) -> f64 {
    let mut fifth: Vec<f64> = windows
        .into_iter()
        .map(|mut rates| {
            rates.sort_by(|a, b| b.unwrap_or(0.0).total_cmp(&a.unwrap_or(0.0)));
            rates
                .get(RULE_FAILED_CHECKS - 1)
                .copied()
                .flatten()
                .unwrap_or(0.0)
        })
        .collect();
    fifth.sort_by(|a, b| b.total_cmp(a));
    let allowed = (alpha * fifth.len() as f64).floor() as usize;
    fifth.get(allowed).copied().unwrap_or(0.0)
}

/// When a rule rolls back: at the end of the window of its `failed_checks`-th check
/// above `threshold`.
fn rule_rollback(
    windows: &[Option<f64>],
    threshold: f64,
    window_seconds: u64,
    failed_checks: usize,
) -> Option<f64> {
    windows
        .iter()
        .enumerate()
        .filter(|(_, value)| value.is_some_and(|v| v > threshold))
        .nth(failed_checks - 1)
        .map(|(i, _)| ((i as u64 + 1) * window_seconds) as f64)
}

/// The `q` quantile of times where a missing time (never rolled back) counts as later
/// than any; None when the quantile falls on one.
fn quantile(times: &[Option<f64>], q: f64) -> Option<f64> {
    let mut sorted: Vec<f64> = times.iter().map(|t| t.unwrap_or(f64::INFINITY)).collect();
    sorted.sort_by(f64::total_cmp);
    let index = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(index).copied().filter(|t| t.is_finite())
}

fn poisson(mean: f64) -> Option<Poisson<f64>> {
    (mean > 0.0).then(|| Poisson::new(mean).ok()).flatten()
}

/// Of `counts`, the requests that arrived in the first `part` (0 to 1) of their
/// tick: each independently (Poisson arrivals, uniform within the tick).
fn thinned(counts: &ErrorCounts, part: f64, rng: &mut StdRng) -> ErrorCounts {
    let part = part.clamp(0.0, 1.0);
    let mut keep = |n: f64| {
        Binomial::new(n.max(0.0).round() as u64, part).map_or(0.0, |b| b.sample(rng) as f64)
    };
    let canary_errors = keep(counts.canary_errors);
    let stable_errors = keep(counts.stable_errors);
    ErrorCounts {
        canary_requests: canary_errors + keep(counts.canary_requests - counts.canary_errors),
        canary_errors,
        stable_requests: stable_errors + keep(counts.stable_requests - counts.stable_errors),
        stable_errors,
    }
}

fn add(sum: &mut ErrorCounts, counts: &ErrorCounts) {
    sum.canary_requests += counts.canary_requests;
    sum.canary_errors += counts.canary_errors;
    sum.stable_requests += counts.stable_requests;
    sum.stable_errors += counts.stable_errors;
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 100 req/s, stable at 1% errors, the canary at `shares` for `step_seconds` each.
    fn errors(shares: Vec<f64>, step_seconds: u64) -> Scenario {
        Scenario {
            total_rps: 100.0,
            swing: 0.0,
            requests: Requests::Errors {
                stable_error_rate: 0.01,
            },
            shares,
            step_seconds,
            interval_seconds: 15,
            scrape_seconds: 15,
            tolerance: Tolerance {
                max_ratio: 1.0,
                max_rate: None,
            },
            alpha: 0.05,
        }
    }

    #[test]
    fn wald_bound_matches_the_design_example() {
        let scenario = errors(vec![0.1], 3600);
        let bound = scenario.wald_bound(2.0).expect("a bound");
        assert!((65.0..75.0).contains(&bound), "{bound}");
        assert_eq!(scenario.wald_bound(1.0), None);
    }

    #[test]
    fn walds_bound_follows_the_schedule_not_only_the_first_step() {
        let scenario = |shares| errors(shares, 60);
        let first_only = scenario(vec![0.01]).wald_bound(2.0).expect("a bound");
        let stepped = scenario(vec![0.01, 0.1, 0.5])
            .wald_bound(2.0)
            .expect("a bound");
        let at_ten = scenario(vec![0.1]).wald_bound(2.0).expect("a bound");
        // A minute at 1% gathers little; the bound then runs at 10% and is reached
        // within the second step: past a minute, well under the 1% bound.
        assert!(
            stepped > 60.0 && stepped < first_only / 3.0,
            "{stepped} {first_only}"
        );
        assert!(stepped < 60.0 + at_ten, "{stepped} {at_ten}");
    }

    fn latency() -> LatencyModel {
        LatencyModel {
            median_seconds: 0.05,
            sigma: 0.8,
            bounds: DEFAULT_BUCKETS.to_vec(),
            threshold: 0.25,
        }
    }

    #[test]
    fn lognormal_latencies_give_the_slow_share_and_bucket_shares_they_should() {
        let model = latency();
        // ln(0.25 / 0.05) / 0.8 = 2.01 standard deviations: 2.2% are slower.
        assert!(
            (model.slow_share(1.0) - 0.0222).abs() < 0.001,
            "{}",
            model.slow_share(1.0)
        );
        // Twice as slow: ln(2.5) / 0.8 = 1.15: 12.6%.
        assert!(
            (model.slow_share(2.0) - 0.1255).abs() < 0.001,
            "{}",
            model.slow_share(2.0)
        );
        let shares = model.bucket_shares(1.0);
        assert_eq!(shares.len(), DEFAULT_BUCKETS.len() + 1);
        assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        let over: f64 = shares[6..].iter().sum();
        assert!((over - model.slow_share(1.0)).abs() < 1e-12);
    }

    #[test]
    fn the_rules_quantile_interpolates_within_a_bucket_as_prometheus_does() {
        let model = LatencyModel {
            bounds: vec![0.1, 0.2, 0.4],
            ..latency()
        };
        // 100 requests: 50 up to 0.1, 40 up to 0.2, 10 up to 0.4. Rank 99 lies 9/10
        // into the last finite bucket.
        let p99 = model.quantile(&[50.0, 40.0, 10.0, 0.0], 0.99);
        assert!(p99.is_some_and(|q| (q - 0.38).abs() < 1e-9), "{p99:?}");
        // In the +Inf bucket: the highest finite bound.
        assert_eq!(model.quantile(&[0.0, 0.0, 0.0, 5.0], 0.99), Some(0.4));
        assert_eq!(model.quantile(&[0.0; 4], 0.99), None);
    }

    #[test]
    fn quantiles_treat_misses_as_later_than_any_time() {
        let times = [Some(3.0), None, Some(1.0), Some(2.0)];
        assert_eq!(quantile(&times, 0.5), Some(2.0));
        assert_eq!(quantile(&times, 0.9), None);
    }

    #[test]
    fn the_rule_rolls_back_at_its_fifth_failed_window() {
        let windows = [
            Some(0.5),
            None,
            Some(0.5),
            Some(0.0),
            Some(0.5),
            Some(0.5),
            Some(0.5),
        ];
        assert_eq!(rule_rollback(&windows, 0.1, 60, 5), Some(420.0));
        assert_eq!(rule_rollback(&windows, 0.6, 60, 5), None);
        // Argo's failureLimit 3 over 5-minute measurements: the 4th failure.
        assert_eq!(rule_rollback(&windows, 0.1, 300, 4), Some(1800.0));
    }
}

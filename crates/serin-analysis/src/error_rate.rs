//! The sequential error-rate judge: canary against stable, valid however often it looks.
//!
//! With Poisson arrivals, given that an error happened, it came from the canary with
//! probability θ = ρr / (ρr + 1 − ρ), where ρ is the canary's share of requests and r
//! the canary/stable error-rate ratio. "No worse" is r ≤ maxRatio, that is θ ≤ θ₀.
//! For each alternative r₁ in a fixed grid the likelihood ratio of the errors' origins
//! is a test supermartingale under "no worse"; their equal-weight mixture is one too,
//! so by Ville's inequality a healthy canary's mixture reaches 1/α with probability at
//! most α, at any number of looks. The guard rail `maxRate` is a second e-process on
//! the canary's own error rate (p ≤ maxRate); when both are set the judge averages the
//! two, which is an e-process for "both hold".

use serin_api::{ErrorCounts, ErrorRateMetric, LatencyMetric, RatioInterval};
use statrs::distribution::{Beta, ContinuousCDF};

/// Multiples of `maxRatio` the judge weighs as alternatives: from a regression barely
/// worth a rollback to a broken release (larger ratios are caught by the 5× one at
/// once). Four cost ln(4) nats of evidence at most; a finer grid measured slower.
pub const RATIO_ALTERNATIVES: [f64; 4] = [1.5, 2.0, 3.0, 5.0];

/// Multiples of `maxRate` the guard rail weighs as alternatives.
pub const RATE_ALTERNATIVES: [f64; 3] = [1.5, 2.0, 4.0];

/// The tolerances of one error-rate metric, as the judge uses them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    /// Largest canary/stable error-rate ratio that counts as healthy.
    pub max_ratio: f64,
    /// Largest canary error rate that counts as healthy, if any.
    pub max_rate: Option<f64>,
}

impl From<&ErrorRateMetric> for Tolerance {
    fn from(spec: &ErrorRateMetric) -> Self {
        Self {
            max_ratio: spec.max_ratio,
            max_rate: spec.max_rate.filter(|rate| *rate < 1.0),
        }
    }
}

impl From<&LatencyMetric> for Tolerance {
    fn from(spec: &LatencyMetric) -> Self {
        Self {
            max_ratio: spec.max_ratio,
            max_rate: spec.max_slow_share.filter(|share| *share < 1.0),
        }
    }
}

impl Tolerance {
    /// Number of log-likelihood ratios the judge keeps: one per alternative.
    pub fn components(&self) -> usize {
        RATIO_ALTERNATIVES.len()
            + if self.max_rate.is_some() {
                RATE_ALTERNATIVES.len()
            } else {
                0
            }
    }

    /// Log-likelihood ratio of each alternative against "no worse", for the counts of
    /// one window (the canary's share of requests measured in that window).
    pub fn log_likelihood_ratios(&self, counts: &ErrorCounts) -> Vec<f64> {
        let counts = sanitize(counts);
        let mut out = Vec::with_capacity(self.components());
        let total = counts.canary_requests + counts.stable_requests;
        let informative = counts.canary_requests > 0.0 && counts.stable_requests > 0.0;
        let share = if informative {
            counts.canary_requests / total
        } else {
            0.0
        };
        let null = error_share(share, self.max_ratio);
        for multiple in RATIO_ALTERNATIVES {
            out.push(if informative {
                let alternative = error_share(share, self.max_ratio * multiple);
                counts.canary_errors * (alternative / null).ln()
                    + counts.stable_errors * ((1.0 - alternative) / (1.0 - null)).ln()
            } else {
                0.0
            });
        }
        if let Some(max_rate) = self.max_rate {
            let successes = counts.canary_requests - counts.canary_errors;
            for multiple in RATE_ALTERNATIVES {
                let alternative = (max_rate * multiple).min((1.0 + max_rate) / 2.0);
                out.push(
                    counts.canary_errors * (alternative / max_rate).ln()
                        + successes * ((1.0 - alternative) / (1.0 - max_rate)).ln(),
                );
            }
        }
        out
    }

    /// The log e-value of the mixture, from each alternative's summed log-likelihood
    /// ratio (earlier windows plus the current one).
    pub fn log_evidence(&self, log_ratios: &[f64]) -> f64 {
        let (ratio, rate) = log_ratios.split_at(RATIO_ALTERNATIVES.len().min(log_ratios.len()));
        let ratio = log_mean_exp(ratio);
        if self.max_rate.is_some() && !rate.is_empty() {
            log_mean_exp(&[ratio, log_mean_exp(rate)])
        } else {
            ratio
        }
    }

    /// Whether the guard rail, rather than the ratio, carries most of the evidence.
    pub fn guard_rail_dominates(&self, log_ratios: &[f64]) -> bool {
        let (ratio, rate) = log_ratios.split_at(RATIO_ALTERNATIVES.len().min(log_ratios.len()));
        self.max_rate.is_some() && !rate.is_empty() && log_mean_exp(rate) > log_mean_exp(ratio)
    }
}

/// Probability that an error came from the canary, at canary share `share` of the
/// requests and canary/stable error-rate ratio `ratio`.
pub fn error_share(share: f64, ratio: f64) -> f64 {
    share * ratio / (share * ratio + 1.0 - share)
}

/// Counts as the judge may use them: no negatives or NaN (`increase()` can produce
/// either around counter resets), and no more errors than requests.
pub fn sanitize(counts: &ErrorCounts) -> ErrorCounts {
    let clean = |value: f64| {
        if value.is_finite() {
            value.max(0.0)
        } else {
            0.0
        }
    };
    let canary_requests = clean(counts.canary_requests);
    let stable_requests = clean(counts.stable_requests);
    ErrorCounts {
        canary_requests,
        canary_errors: clean(counts.canary_errors).min(canary_requests),
        stable_requests,
        stable_errors: clean(counts.stable_errors).min(stable_requests),
    }
}

/// An anytime-valid interval for the canary/stable ratio (of error rates, or of
/// slow shares) from every window of the rollout so far, each with its own share
/// of requests: the ratios r₀ that the judge's own test cannot reject at level
/// `alpha`, from below (alternatives r₀ × [`RATIO_ALTERNATIVES`]) and from above
/// (r₀ ÷ the same). Every bound holds with probability 1 − α at all looks at once,
/// not only at a fixed sample size, and the lower bound is the decision's: without
/// a guard rail the canary fails when the lower bound passes maxRatio. None before
/// any error; the upper bound is absent while the data bound it from below only.
pub fn ratio_sequence(windows: &[ErrorCounts], alpha: f64) -> Option<RatioInterval> {
    let windows: Vec<(f64, f64, f64)> = windows
        .iter()
        .map(sanitize)
        .filter(|c| c.canary_requests > 0.0 && c.stable_requests > 0.0)
        .map(|c| {
            let share = c.canary_requests / (c.canary_requests + c.stable_requests);
            (share, c.canary_errors, c.stable_errors)
        })
        .collect();
    if windows.iter().all(|(_, ce, se)| ce + se <= 0.0) {
        return None;
    }
    let bar = (1.0 / alpha).ln();
    // Log e-value against "ratio = r₀" with alternatives r₀ × m (or r₀ ÷ m).
    let log_evidence = |null: f64, above: bool| {
        let ratios: Vec<f64> = RATIO_ALTERNATIVES
            .iter()
            .map(|m| {
                let alternative = if above { null * m } else { null / m };
                windows
                    .iter()
                    .map(|(share, ce, se)| {
                        let (h0, h1) =
                            (error_share(*share, null), error_share(*share, alternative));
                        ce * (h1 / h0).ln() + se * ((1.0 - h1) / (1.0 - h0)).ln()
                    })
                    .sum()
            })
            .collect();
        log_mean_exp(&ratios)
    };
    // Bisection on ln r₀ between these bounds (ratios of about 1/10,000 to 10,000).
    const RANGE: (f64, f64) = (-9.2, 9.2);
    let rejected = |ln_r: f64, above: bool| log_evidence(ln_r.exp(), above) >= bar;
    // From below, the rejected ratios are those under the bound; from above, those
    // over it. Each bound is the last ratio known to be rejected, so the interval
    // errs wide.
    let boundary = |above: bool| {
        let (mut rejected_at, mut kept_at) = if above { RANGE } else { (RANGE.1, RANGE.0) };
        if !rejected(rejected_at, above) {
            return None;
        }
        if rejected(kept_at, above) {
            return Some(kept_at.exp());
        }
        for _ in 0..50 {
            let middle = (rejected_at + kept_at) / 2.0;
            if rejected(middle, above) {
                rejected_at = middle;
            } else {
                kept_at = middle;
            }
        }
        Some(rejected_at.exp())
    };
    Some(RatioInterval {
        lower: boundary(true).unwrap_or(0.0),
        upper: boundary(false),
    })
}

/// The exact (Clopper–Pearson) two-sided interval at `confidence` of a
/// proportion seen `successes` times in `trials` (counts may be fractional, as
/// `increase()` makes them); None when the counts give no Beta distribution.
pub fn clopper_pearson(successes: f64, trials: f64, confidence: f64) -> Option<(f64, f64)> {
    let tail = (1.0 - confidence) / 2.0;
    let lower = if successes <= 0.0 {
        0.0
    } else {
        Beta::new(successes, trials - successes + 1.0)
            .ok()?
            .inverse_cdf(tail)
    };
    let upper = if successes >= trials {
        1.0
    } else {
        Beta::new(successes + 1.0, trials - successes)
            .ok()?
            .inverse_cdf(1.0 - tail)
    };
    Some((lower, upper))
}

/// ln(mean(exp(x))) without overflow.
fn log_mean_exp(values: &[f64]) -> f64 {
    let Some(max) = values.iter().copied().reduce(f64::max) else {
        return 0.0;
    };
    if !max.is_finite() {
        return max;
    }
    let sum: f64 = values.iter().map(|v| (v - max).exp()).sum();
    max + (sum / values.len() as f64).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(cr: f64, ce: f64, sr: f64, se: f64) -> ErrorCounts {
        ErrorCounts {
            canary_requests: cr,
            canary_errors: ce,
            stable_requests: sr,
            stable_errors: se,
        }
    }

    #[test]
    fn equal_rates_give_evidence_below_one() {
        let judge = Tolerance {
            max_ratio: 1.0,
            max_rate: None,
        };
        let ratios = judge.log_likelihood_ratios(&counts(1000.0, 10.0, 9000.0, 90.0));
        assert!(judge.log_evidence(&ratios) < 0.0);
    }

    #[test]
    fn doubled_rate_with_enough_errors_gives_strong_evidence() {
        let judge = Tolerance {
            max_ratio: 1.0,
            max_rate: None,
        };
        let ratios = judge.log_likelihood_ratios(&counts(10_000.0, 200.0, 90_000.0, 900.0));
        assert!(judge.log_evidence(&ratios) > (20.0f64).ln());
    }

    #[test]
    fn no_canary_traffic_is_no_evidence() {
        let judge = Tolerance {
            max_ratio: 1.0,
            max_rate: Some(0.05),
        };
        let ratios = judge.log_likelihood_ratios(&counts(0.0, 0.0, 900.0, 9.0));
        assert_eq!(judge.log_evidence(&ratios), 0.0);
    }

    #[test]
    fn guard_rail_catches_a_high_rate_even_when_stable_is_as_bad() {
        let judge = Tolerance {
            max_ratio: 1.0,
            max_rate: Some(0.05),
        };
        let ratios = judge.log_likelihood_ratios(&counts(100.0, 20.0, 900.0, 180.0));
        assert!(judge.log_evidence(&ratios) > (20.0f64).ln());
        assert!(judge.guard_rail_dominates(&ratios));
    }

    #[test]
    fn the_sequence_covers_the_true_ratio_narrows_with_windows_and_is_open_without_stable_errors() {
        let window = counts(10_000.0, 200.0, 90_000.0, 900.0);
        let one = ratio_sequence(&[window], 0.05).expect("an interval");
        let upper = one.upper.expect("bounded above");
        assert!(one.lower < 2.0 && upper > 2.0, "{one:?}");
        let three = ratio_sequence(&[window, window, window], 0.05).expect("an interval");
        let narrower = three.upper.expect("bounded above");
        assert!(
            three.lower > one.lower && narrower < upper,
            "{one:?} {three:?}"
        );
        let open = ratio_sequence(&[counts(100.0, 3.0, 900.0, 0.0)], 0.05).expect("an interval");
        assert!(open.upper.is_none() && open.lower > 0.0, "{open:?}");
        assert_eq!(
            ratio_sequence(&[counts(100.0, 0.0, 900.0, 0.0)], 0.05),
            None
        );
    }

    #[test]
    fn the_lower_bound_passes_max_ratio_exactly_when_the_judge_fails_the_canary() {
        let judge = Tolerance {
            max_ratio: 1.0,
            max_rate: None,
        };
        let bar = (1.0f64 / 0.05).ln();
        for canary_errors in (0..40).map(f64::from) {
            let windows = [
                counts(2_000.0, canary_errors / 2.0, 18_000.0, 180.0),
                counts(2_000.0, canary_errors, 18_000.0, 180.0),
            ];
            let mut sums = vec![0.0; judge.components()];
            for window in &windows {
                for (sum, ratio) in sums.iter_mut().zip(judge.log_likelihood_ratios(window)) {
                    *sum += ratio;
                }
            }
            let fails = judge.log_evidence(&sums) >= bar;
            let lower = ratio_sequence(&windows, 0.05).map_or(0.0, |r| r.lower);
            assert_eq!(
                fails,
                lower > 1.0,
                "{canary_errors} errors: lower bound {lower}"
            );
        }
    }

    #[test]
    fn garbage_counts_are_cleaned() {
        let clean = sanitize(&counts(f64::NAN, 3.0, -1.0, f64::INFINITY));
        assert_eq!(clean, counts(0.0, 0.0, 0.0, 0.0));
        assert_eq!(sanitize(&counts(5.0, 7.0, 1.0, 0.5)).canary_errors, 5.0);
    }
}

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

/// A two-sided interval for the canary/stable error-rate ratio at `confidence`, from
/// one window's counts: Clopper–Pearson on the errors' origin, mapped to a ratio. A
/// fixed-sample interval for people to read; the decision uses the e-process.
pub fn ratio_interval(counts: &ErrorCounts, confidence: f64) -> Option<RatioInterval> {
    let counts = sanitize(counts);
    if counts.canary_requests <= 0.0 || counts.stable_requests <= 0.0 {
        return None;
    }
    let errors = counts.canary_errors + counts.stable_errors;
    if errors <= 0.0 {
        return None;
    }
    let share = counts.canary_requests / (counts.canary_requests + counts.stable_requests);
    let (lower_share, upper_share) = clopper_pearson(counts.canary_errors, errors, confidence)?;
    let to_ratio = |theta: f64| theta * (1.0 - share) / (share * (1.0 - theta));
    Some(RatioInterval {
        lower: to_ratio(lower_share),
        upper: (upper_share < 1.0).then(|| to_ratio(upper_share)),
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
    fn interval_covers_the_true_ratio_and_is_open_without_stable_errors() {
        let interval =
            ratio_interval(&counts(10_000.0, 200.0, 90_000.0, 900.0), 0.95).expect("an interval");
        let upper = interval.upper.expect("bounded above");
        assert!(interval.lower < 2.0 && upper > 2.0, "{interval:?}");
        let open = ratio_interval(&counts(100.0, 3.0, 900.0, 0.0), 0.95).expect("an interval");
        assert!(open.upper.is_none() && open.lower > 0.0);
    }

    #[test]
    fn garbage_counts_are_cleaned() {
        let clean = sanitize(&counts(f64::NAN, 3.0, -1.0, f64::INFINITY));
        assert_eq!(clean, counts(0.0, 0.0, 0.0, 0.0));
        assert_eq!(sanitize(&counts(5.0, 7.0, 1.0, 0.5)).canary_errors, 5.0);
    }
}

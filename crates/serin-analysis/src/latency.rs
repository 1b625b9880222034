//! Latency judged against stable, as the share of requests slower than a threshold.
//!
//! A request slower than the threshold is counted where the error-rate judge counts
//! a failed one, and the same test decides: with Poisson arrivals, slow requests are
//! a thinned Poisson stream, so given that a slow request happened it came from the
//! canary with probability θ = ρr / (ρr + 1 − ρ), r being the ratio of the two arms'
//! slow shares. The guarantee, the alternatives and the evidence carried across steps
//! are the error-rate judge's. Why one threshold rather than every bucket at once: it
//! is the question operators ask (latency objectives are written as "99% under
//! 250 ms"), it is one-sided (a faster canary is never evidence against it, where a
//! test of the whole distribution would also flag a harmless change of shape), and
//! it costs one query per arm.

use crate::judge::NoData;

/// The bucket bounds a histogram's `le` labels carry, `+Inf` included.
fn bound(le: &str) -> Option<f64> {
    match le.trim() {
        "+Inf" | "Inf" | "inf" => Some(f64::INFINITY),
        other => other.parse().ok(),
    }
}

/// Whether bucket bound `le` is `threshold`, as written in YAML: Prometheus 3 writes
/// `le="1.0"` where Prometheus 2 wrote `le="1"`, and both read as 1.
fn same_bound(le: f64, threshold: f64) -> bool {
    (le - threshold).abs() <= 1e-9 * threshold.abs().max(1.0)
}

/// Requests and slow requests of one arm, from its histogram's cumulative bucket
/// counts in the window (`le` and the count of requests at most that slow): every
/// request is in `+Inf`, the fast ones in the threshold's bucket.
pub fn slow_requests(buckets: &[(String, f64)], threshold: f64) -> Result<(f64, f64), NoData> {
    let bounds: Vec<(f64, f64)> = buckets
        .iter()
        .filter_map(|(le, count)| Some((bound(le)?, *count)))
        .collect();
    let requests = bounds
        .iter()
        .find(|(le, _)| le.is_infinite())
        .map(|(_, count)| *count)
        .ok_or_else(|| {
            NoData(
                "the histogram has no le=\"+Inf\" bucket: is the selector a _bucket series?".into(),
            )
        })?;
    let fast = bounds
        .iter()
        .find(|(le, _)| same_bound(*le, threshold))
        .map(|(_, count)| *count)
        .ok_or_else(|| {
            let mut finite: Vec<f64> = bounds
                .iter()
                .map(|(le, _)| *le)
                .filter(|le| le.is_finite())
                .collect();
            finite.sort_by(f64::total_cmp);
            let listed: Vec<String> = finite.iter().map(f64::to_string).collect();
            NoData(format!(
                "the histogram has no bucket le={threshold}; its bounds are {}: set latency.threshold to one of them",
                listed.join(", ")
            ))
        })?;
    Ok((requests, (requests - fast).max(0.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buckets(pairs: &[(&str, f64)]) -> Vec<(String, f64)> {
        pairs.iter().map(|(le, n)| ((*le).to_owned(), *n)).collect()
    }

    #[test]
    fn slow_requests_are_all_requests_less_those_in_the_thresholds_bucket() {
        let histogram = buckets(&[
            ("0.1", 700.0),
            ("0.25", 950.0),
            ("1.0", 990.0),
            ("+Inf", 1000.0),
        ]);
        assert_eq!(slow_requests(&histogram, 0.25), Ok((1000.0, 50.0)));
        assert_eq!(slow_requests(&histogram, 1.0), Ok((1000.0, 10.0)));
    }

    #[test]
    fn a_bound_written_either_way_is_the_same_bound() {
        let prometheus_2 = buckets(&[("1", 90.0), ("+Inf", 100.0)]);
        let prometheus_3 = buckets(&[("1.0", 90.0), ("+Inf", 100.0)]);
        assert_eq!(slow_requests(&prometheus_2, 1.0), Ok((100.0, 10.0)));
        assert_eq!(slow_requests(&prometheus_3, 1.0), Ok((100.0, 10.0)));
    }

    #[test]
    fn a_threshold_that_is_no_bound_names_the_bounds() {
        let histogram = buckets(&[("0.25", 9.0), ("0.1", 5.0), ("+Inf", 10.0)]);
        let Err(NoData(why)) = slow_requests(&histogram, 0.3) else {
            panic!("0.3 is no bound");
        };
        assert!(why.contains("le=0.3") && why.contains("0.1, 0.25"), "{why}");
        assert!(slow_requests(&buckets(&[("0.25", 9.0)]), 0.25).is_err());
    }

    #[test]
    fn counts_that_disagree_never_give_negative_slow_requests() {
        let histogram = buckets(&[("0.25", 11.0), ("+Inf", 10.0)]);
        assert_eq!(slow_requests(&histogram, 0.25), Ok((10.0, 0.0)));
    }
}

//! How many pods each revision runs for a given canary weight.

use serin_api::Weight;

/// Pods for the stable and canary revisions at a step, and the share of traffic
/// the canary then really gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Split {
    /// Pods of the stable revision.
    pub stable: i32,
    /// Pods of the canary revision.
    pub canary: i32,
    /// Share of traffic on the canary once the split is in place.
    pub weight: Weight,
}

/// With a traffic router the weight is set on the route: stable keeps every pod and
/// the canary runs enough pods for its share, ceil(weight × replicas), at least one.
pub fn routed(replicas: i32, weight: Weight) -> Split {
    let replicas = replicas.max(0);
    let million = i64::from(serin_api::MILLION);
    let canary =
        ((i64::from(weight.millionths()) * i64::from(replicas) + million - 1) / million).max(1);
    Split {
        stable: replicas,
        canary: i32::try_from(canary).unwrap_or(i32::MAX),
        weight,
    }
}

/// With a router and `stableScale: Weighted`, `replicas` is the total (an HPA's,
/// say) split by the weight: each side runs enough pods for its share, rounded up,
/// at least one, so neither is short and stable is not kept full for traffic it
/// no longer gets.
pub fn weighted(replicas: i32, weight: Weight) -> Split {
    let canary = routed(replicas, weight).canary;
    let stable = routed(replicas, weight.rest()).canary;
    Split {
        stable,
        canary,
        weight,
    }
}

/// Without a router the pods carry the weight: `replicas` pods are split between
/// the two revisions as close to `weight` as whole pods allow, each side keeping at
/// least one pod (so a one-replica workload runs one of each, half and half). The
/// weight it reports is the pods' share, to a whole percent.
pub fn by_pod_count(replicas: i32, weight: Weight) -> Split {
    let replicas = replicas.max(2);
    let wanted = (weight.share() * f64::from(replicas)).round();
    let canary = (wanted as i32).clamp(1, replicas - 1);
    let stable = replicas - canary;
    let percent = (100.0 * f64::from(canary) / f64::from(replicas)).round() as u32;
    Split {
        stable,
        canary,
        weight: Weight::from_percent(percent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pct(percent: u32) -> Weight {
        Weight::from_percent(percent)
    }

    #[test]
    fn routed_examples() {
        assert_eq!(
            routed(4, pct(1)),
            Split {
                stable: 4,
                canary: 1,
                weight: pct(1)
            }
        );
        assert_eq!(
            routed(4, pct(25)),
            Split {
                stable: 4,
                canary: 1,
                weight: pct(25)
            }
        );
        assert_eq!(
            routed(4, pct(50)),
            Split {
                stable: 4,
                canary: 2,
                weight: pct(50)
            }
        );
        assert_eq!(
            routed(10, pct(33)),
            Split {
                stable: 10,
                canary: 4,
                weight: pct(33)
            }
        );
    }

    #[test]
    fn weighted_examples() {
        let sides = |replicas, percent| {
            let split = weighted(replicas, pct(percent));
            (split.stable, split.canary)
        };
        assert_eq!(sides(10, 10), (9, 1));
        assert_eq!(sides(10, 25), (8, 3));
        assert_eq!(sides(10, 50), (5, 5));
        assert_eq!(sides(4, 1), (4, 1));
        assert_eq!(sides(20, 50), (10, 10));
    }

    #[test]
    fn pod_count_examples() {
        assert_eq!(
            by_pod_count(4, pct(25)),
            Split {
                stable: 3,
                canary: 1,
                weight: pct(25)
            }
        );
        assert_eq!(
            by_pod_count(4, pct(50)),
            Split {
                stable: 2,
                canary: 2,
                weight: pct(50)
            }
        );
        assert_eq!(
            by_pod_count(10, pct(10)),
            Split {
                stable: 9,
                canary: 1,
                weight: pct(10)
            }
        );
        assert_eq!(
            by_pod_count(1, pct(10)),
            Split {
                stable: 1,
                canary: 1,
                weight: pct(50)
            }
        );
        assert_eq!(
            by_pod_count(4, pct(99)),
            Split {
                stable: 1,
                canary: 3,
                weight: pct(75)
            }
        );
    }

    proptest! {
        #[test]
        fn routed_canary_has_a_pod_and_enough_for_its_share(replicas in 1..500i32, millionths in 1..1_000_000u32) {
            let split = routed(replicas, Weight::from_millionths(millionths));
            let (canary, wanted) = (i64::from(split.canary) * 1_000_000, i64::from(millionths) * i64::from(replicas));
            prop_assert_eq!(split.stable, replicas);
            prop_assert_eq!(split.weight.millionths(), millionths, "the route carries the weight exactly");
            prop_assert!(split.canary >= 1);
            prop_assert!(canary >= wanted);
            prop_assert!(canary - 1_000_000 < wanted || split.canary == 1);
        }

        #[test]
        fn weighted_sides_each_have_their_share_and_the_total_at_most_one_more(replicas in 1..500i32, millionths in 1..1_000_000u32) {
            let weight = Weight::from_millionths(millionths);
            let split = weighted(replicas, weight);
            let wanted = |share: f64| share * f64::from(replicas);
            prop_assert!(split.canary >= 1 && f64::from(split.canary) >= wanted(weight.share()) - 1e-9);
            prop_assert!(split.stable >= 1 && f64::from(split.stable) >= wanted(weight.rest().share()) - 1e-9);
            prop_assert!(split.stable + split.canary <= replicas.max(1) + 1);
            prop_assert!(split.stable <= replicas.max(1), "stable above the total");
        }

        #[test]
        fn pod_count_keeps_both_sides_and_the_total(replicas in 1..500i32, weight in 1..100u32) {
            let split = by_pod_count(replicas, pct(weight));
            prop_assert!(split.stable >= 1 && split.canary >= 1);
            prop_assert_eq!(split.stable + split.canary, replicas.max(2));
            prop_assert!(split.weight.whole_percent().is_some_and(|p| p <= 100));
        }

        #[test]
        fn pod_count_is_the_closest_whole_split(replicas in 2..500i32, weight in 1..100u32) {
            let split = by_pod_count(replicas, pct(weight));
            let wanted = f64::from(weight) * f64::from(replicas) / 100.0;
            let error = (f64::from(split.canary) - wanted).abs();
            prop_assert!(error <= 0.5 || split.canary == 1 || split.canary == replicas - 1);
        }
    }
}

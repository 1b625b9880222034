//! A canary weight: the share of requests on the canary, written in percent and
//! kept to a millionth of the requests (0.0001%), the finest share Gateway API
//! carries (backendRef weights are integers up to 1,000,000). Whole millionths
//! make weights exact to compare, step through and write on a route; a float
//! percent would not be.

use std::borrow::Cow;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Share of requests on the canary, in millionths of all requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Weight(u32);

/// Millionths of the requests in one percent.
const PER_PERCENT: u32 = 10_000;

/// Millionths of the requests in all of them.
pub const MILLION: u32 = 1_000_000;

impl Weight {
    /// No request on the canary.
    pub const ZERO: Weight = Weight(0);
    /// Every request on the canary.
    pub const FULL: Weight = Weight(MILLION);

    /// `percent` percent of the requests (at most 100).
    pub const fn from_percent(percent: u32) -> Weight {
        Weight(if percent > 100 {
            MILLION
        } else {
            percent * PER_PERCENT
        })
    }

    /// `millionths` millionths of the requests (at most all of them).
    pub const fn from_millionths(millionths: u32) -> Weight {
        Weight(if millionths > MILLION {
            MILLION
        } else {
            millionths
        })
    }

    /// The weight nearest `percent`, or None for a percent outside 0 to 100 (or
    /// not a number).
    pub fn from_percent_f64(percent: f64) -> Option<Weight> {
        (0.0..=100.0)
            .contains(&percent)
            .then(|| Weight((percent * f64::from(PER_PERCENT)).round() as u32))
    }

    /// Millionths of the requests.
    pub const fn millionths(self) -> u32 {
        self.0
    }

    /// Percent of the requests.
    pub fn percent(self) -> f64 {
        f64::from(self.0) / f64::from(PER_PERCENT)
    }

    /// Share of the requests, from 0 to 1.
    pub fn share(self) -> f64 {
        f64::from(self.0) / f64::from(MILLION)
    }

    /// The percent when it is whole: such weights are written on routes as
    /// percents (75/25), as operators write them.
    pub const fn whole_percent(self) -> Option<u32> {
        if self.0.is_multiple_of(PER_PERCENT) {
            Some(self.0 / PER_PERCENT)
        } else {
            None
        }
    }

    /// The rest of the requests: stable's share.
    pub const fn rest(self) -> Weight {
        Weight(MILLION - self.0)
    }

    /// Whether any request goes to the canary.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Weight {
    /// `25`, `0.1`, `0.0005`: as few decimals as the weight needs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, fraction) = (self.0 / PER_PERCENT, self.0 % PER_PERCENT);
        if fraction == 0 {
            write!(f, "{whole}")
        } else {
            let decimals = format!("{fraction:04}");
            write!(f, "{whole}.{}", decimals.trim_end_matches('0'))
        }
    }
}

impl Serialize for Weight {
    /// A whole percent as an integer (status and output read as before), any
    /// other as a number.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.whole_percent() {
            Some(percent) => serializer.serialize_u32(percent),
            None => serializer.serialize_f64(self.percent()),
        }
    }
}

impl<'de> Deserialize<'de> for Weight {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let percent = f64::deserialize(deserializer)?;
        Weight::from_percent_f64(percent).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{percent} is not a weight: a weight is a percent from 0 to 100"
            ))
        })
    }
}

impl JsonSchema for Weight {
    fn schema_name() -> Cow<'static, str> {
        "Weight".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "number"})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_percents_read_and_write_as_integers_and_fractions_as_numbers() {
        for (json, millionths, shown) in [
            ("25", 250_000, "25"),
            ("0.1", 1_000, "0.1"),
            ("0.0005", 5, "0.0005"),
            ("99.9999", 999_999, "99.9999"),
            ("12.5", 125_000, "12.5"),
            ("100", MILLION, "100"),
            ("0", 0, "0"),
        ] {
            let weight: Weight = serde_json::from_str(json).unwrap();
            assert_eq!(weight.millionths(), millionths, "{json}");
            assert_eq!(weight.to_string(), shown);
            assert_eq!(serde_json::to_string(&weight).unwrap(), json);
        }
    }

    #[test]
    fn a_weight_outside_0_to_100_does_not_read() {
        for json in ["-1", "100.5", "1e9"] {
            let read: Result<Weight, _> = serde_json::from_str(json);
            assert!(
                read.as_ref()
                    .is_err_and(|e| e.to_string().contains("a percent from 0 to 100")),
                "{json}: {read:?}"
            );
        }
    }

    #[test]
    fn finer_than_a_millionth_rounds_to_the_nearest() {
        let weight: Weight = serde_json::from_str("0.00004").unwrap();
        assert_eq!(weight, Weight::ZERO);
        let weight: Weight = serde_json::from_str("0.00006").unwrap();
        assert_eq!(weight.millionths(), 1);
    }

    #[test]
    fn the_rest_is_stables_share() {
        assert_eq!(Weight::from_millionths(1_000).rest().millionths(), 999_000);
        assert_eq!(Weight::from_percent(25).rest(), Weight::from_percent(75));
        assert_eq!(Weight::from_percent(25).whole_percent(), Some(25));
        assert_eq!(Weight::from_millionths(1_000).whole_percent(), None);
    }
}

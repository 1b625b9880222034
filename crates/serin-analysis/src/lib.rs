//! Serin's judges: threshold metrics as Flagger and Argo have them, and the sequential
//! judge that compares the canary's error rate, or its share of slow requests, with
//! stable's; plus the detection simulator that measures them. Pure functions of their inputs: no client, no clock, and no
//! randomness but from the seeds the caller gives.

pub mod detection;
pub mod error_rate;
pub mod judge;
pub mod latency;

pub use error_rate::Tolerance;
pub use judge::{
    Bad, CLOSE_TO_THE_BAR, NoData, Overall, Reading, Window, alpha_for, analyse, cadence,
    comparison, look_after, overall,
};

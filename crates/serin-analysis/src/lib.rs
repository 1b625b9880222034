//! Serin's judges: threshold metrics as Flagger and Argo have them, and the sequential
//! error-rate judge that compares the canary with stable; plus the detection simulator
//! that measures both. Pure functions of their inputs: no client, no clock, and no
//! randomness but from the seeds the caller gives.

pub mod detection;
pub mod error_rate;
pub mod judge;

pub use error_rate::Tolerance;
pub use judge::{NoData, Overall, Reading, Window, alpha_per_metric, analyse, overall};

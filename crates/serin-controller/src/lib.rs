//! The thin shell around `serin-core`'s state machine: the reconciler observes a
//! Canary and what it owns, asks the machine for a plan, applies it and reports;
//! the analysis shell reads Prometheus for the judges; `run` wires the process
//! (leader election, endpoints, shutdown); `notify` tells the Canary's sinks of
//! its transitions; `gates` calls the checks and hooks of `spec.gates`.

pub mod adoption;
pub mod analysis;
pub mod cache;
pub mod gates;
pub mod health;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod own_writes;
pub mod pods;
pub mod reconciler;
pub mod run;
pub mod watched;

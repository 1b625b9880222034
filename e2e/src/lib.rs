//! The end-to-end harness: a real Kubernetes control plane and a real Prometheus on
//! loopback, started for the tests and the demo and always stopped after them, and
//! kubectl to drive them as a user does.

pub mod cluster;
pub mod controller;
pub mod gateway;
pub mod harness;
pub mod http;
pub mod judgement;
pub mod kubectl;
pub mod load;
pub mod manifest;
pub mod metrics;
pub mod node;
pub mod process;
pub mod prometheus;
pub mod receiver;
pub mod rollout;
pub mod slow_proxy;
pub mod traffic;

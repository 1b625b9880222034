//! End-to-end tests against the real local control plane, acting as a user would:
//! kubectl apply, kubectl wait, kubectl get -o json. One control plane serves every
//! test in this binary; each test works in a namespace of its own.

mod adoption;
mod analysis;
mod canary_api;
mod chaos;
mod control_plane;
mod dashboard;
mod gates;
mod gateway;
mod gitops;
mod hardening;
mod idle;
mod istio;
mod monitoring;
mod notifications;
mod plugin;
mod rollout;
mod sharding;

use serin_e2e::harness::Cluster;

/// The cluster of this test run.
fn cluster() -> &'static Cluster {
    Cluster::shared(env!("CARGO_BIN_EXE_serin-cluster"))
}

//! End-to-end tests on the real node: real containers from images built here, real
//! requests through kube-proxy, acting as a user would. One cluster with a real node
//! serves every test in this binary (see `serin_e2e::node`); each test works in a
//! namespace of its own.

mod adoption;
mod analysis;
mod autoscaling;
mod failures;
mod gateway;
mod install;
mod traffic;

use serin_e2e::harness::Cluster;

/// The cluster of this test run, with its real node.
fn cluster() -> &'static Cluster {
    Cluster::shared_with_real_node(env!("CARGO_BIN_EXE_serin-cluster"))
}

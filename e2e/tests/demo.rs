//! `make demo` is a test too: the demo binary on the real node must promote the
//! healthy release and have the analysis roll back the one that answers real 5xx
//! (it exits non-zero otherwise), with what the clients saw printed. A test binary
//! of its own: the demo starts its own cluster with a real node.

use std::process::Command;

use anyhow::{Result, ensure};

#[test]
fn the_demo_promotes_a_healthy_release_and_rolls_back_a_bad_one_on_the_real_node() -> Result<()> {
    let output = Command::new(env!("CARGO_BIN_EXE_serin-demo")).output()?;
    let shown = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "the demo failed: {}\n{shown}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        "AnalysisFailed",
        "1.1.0:",
        "1.2.0-rc1:",
        "control plane stopped",
    ] {
        ensure!(
            shown.contains(expected),
            "the demo did not show {expected:?}:\n{shown}"
        );
    }
    Ok(())
}

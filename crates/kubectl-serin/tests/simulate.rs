//! `kubectl serin simulate` as an operator runs it: a manifest in, tables and JSON out.

use std::process::Command;

#[test]
fn simulate_reads_a_manifest_and_writes_tables_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("detection.json");
    let manifest = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/examples/podinfo.yaml"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_kubectl-serin"))
        .args([
            "simulate",
            "-f",
            manifest,
            "--rps",
            "200",
            "--regression",
            "2,5",
        ])
        .args(["--runs", "200", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("200 req/s") && stdout.contains("1 (healthy)"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "the simulation starts at the first weighted step; before it the canary is judged during mirroring (20%) and the experiment as well"
        ),
        "the example mirrors and runs an experiment first, which the simulation leaves out: {stdout}"
    );
    let cells: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let cells = cells.as_array().unwrap();
    assert_eq!(
        cells.len(),
        12,
        "ratios 1, 2 and 5; Serin, the calibrated rule, Flagger's and Argo's as written"
    );
    for cell in cells {
        for field in [
            "traffic",
            "ratio",
            "method",
            "median_s",
            "p90_s",
            "false_rollback_rate",
            "wald_bound_s",
        ] {
            assert!(cell.get(field).is_some(), "{field} missing in {cell}");
        }
    }
    let serin_at_5 = cells
        .iter()
        .find(|c| c["method"] == "serin" && c["ratio"] == 5.0)
        .unwrap();
    assert!(
        serin_at_5["rollback_rate"].as_f64().unwrap() > 0.9,
        "{serin_at_5}"
    );
}

#[test]
fn simulate_judges_a_manifests_latency_metric_against_a_calibrated_p99_rule() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("latency.json");
    let manifest = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/examples/podinfo.yaml"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_kubectl-serin"))
        .args(["simulate", "-f", manifest, "--kind", "latency"])
        .args(["--rps", "100", "--p50", "0.05", "--regression", "2"])
        .args(["--runs", "200", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("slower than 0.25") && stdout.contains("canary p99 over 1m windows"),
        "{stdout}"
    );
    let cells: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let cells = cells.as_array().unwrap();
    assert!(cells.iter().all(|c| c["kind"] == "latency"), "{cells:?}");
    let serin = cells
        .iter()
        .find(|c| c["method"] == "serin" && c["ratio"] == 2.0)
        .unwrap();
    let rule = cells
        .iter()
        .find(|c| c["method"] == "threshold" && c["ratio"] == 2.0)
        .unwrap();
    assert!(serin["rollback_rate"].as_f64().unwrap() > 0.9, "{serin}");
    assert!(
        serin["bad_share_ratio"].as_f64().unwrap() > 2.0,
        "twice as slow puts more than twice the requests over 250 ms: {serin}"
    );
    assert!(
        rule["median_s"].as_f64().unwrap() > serin["median_s"].as_f64().unwrap(),
        "{rule} against {serin}"
    );
}

#[test]
fn simulate_refuses_a_manifest_it_cannot_judge() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("canary.yaml");
    std::fs::write(&manifest, "kind: Canary\nspec: {steps: [10]}\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_kubectl-serin"))
        .args(["simulate", "-f"])
        .arg(&manifest)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is not a Canary manifest"), "{stderr}");
}

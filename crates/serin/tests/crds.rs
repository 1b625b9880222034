//! `crds/` must hold exactly what `serin crds` prints, or users install a stale API.

use std::path::Path;
use std::process::Command;

#[test]
fn crds_directory_matches_serin_crds() {
    let output = Command::new(env!("CARGO_BIN_EXE_serin"))
        .arg("crds")
        .output()
        .unwrap_or_else(|error| panic!("running serin crds: {error}"));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let committed =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds/serin.dev_canaries.yaml");
    let committed = std::fs::read_to_string(&committed)
        .unwrap_or_else(|error| panic!("reading {}: {error}", committed.display()));
    assert!(
        committed == String::from_utf8_lossy(&output.stdout),
        "crds/serin.dev_canaries.yaml is stale: run `make crds` and commit the result"
    );
}

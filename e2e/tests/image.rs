//! The image `make image` builds without a Docker engine is the one the Dockerfile
//! describes to users: the same user, entrypoint and command, and nothing in it but
//! the static binary and the CA certificates.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use serin_e2e::cluster::{default_image_dir, repository_root};

/// The value of the last `instruction` line of the Dockerfile's final stage.
fn final_stage(dockerfile: &str, instruction: &str) -> Option<String> {
    let stage = dockerfile.rsplit_once("\nFROM ").map(|(_, last)| last)?;
    stage
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix(&format!("{instruction} ")))
        .map(|value| value.trim().to_owned())
}

fn run(program: &str, args: &[&str], dir: &Path) -> Result<String> {
    let output = Command::new(program).args(args).current_dir(dir).output()?;
    if !output.status.success() {
        bail!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn blob(dir: &Path, digest: &str) -> Result<Vec<u8>> {
    let hex = digest.strip_prefix("sha256:").context("a sha256 digest")?;
    Ok(fs::read(dir.join("blobs/sha256").join(hex))?)
}

#[test]
fn the_built_image_is_what_the_dockerfile_describes() -> Result<()> {
    let dockerfile = fs::read_to_string(repository_root().join("Dockerfile"))?;
    let archive = default_image_dir().join("serin.tar");
    ensure!(
        archive.is_file(),
        "{} is missing: run `make image`",
        archive.display()
    );
    let dir = tempfile::tempdir()?;
    run("tar", &["-xf", &archive.to_string_lossy()], dir.path())?;
    let index: Value = serde_json::from_slice(&fs::read(dir.path().join("index.json"))?)?;
    let descriptor = &index["manifests"][0];
    assert_eq!(
        descriptor["annotations"]["io.containerd.image.name"],
        format!("ghcr.io/serin-dev/serin:{}", env!("CARGO_PKG_VERSION")),
        "the name deploy/ runs"
    );
    let manifest: Value = serde_json::from_slice(&blob(
        dir.path(),
        descriptor["digest"].as_str().context("manifest digest")?,
    )?)?;
    let config: Value = serde_json::from_slice(&blob(
        dir.path(),
        manifest["config"]["digest"]
            .as_str()
            .context("config digest")?,
    )?)?;
    let config = &config["config"];

    let user = final_stage(&dockerfile, "USER").context("USER in the final stage")?;
    assert_eq!(config["User"], user);
    let entrypoint: Value =
        serde_json::from_str(&final_stage(&dockerfile, "ENTRYPOINT").context("ENTRYPOINT")?)?;
    assert_eq!(config["Entrypoint"], entrypoint);
    let cmd: Value = serde_json::from_str(&final_stage(&dockerfile, "CMD").context("CMD")?)?;
    assert_eq!(config["Cmd"], cmd);
    assert!(
        dockerfile.contains("\nFROM scratch\n"),
        "an empty base in the Dockerfile"
    );

    let mut files = Vec::new();
    for layer in manifest["layers"].as_array().context("layers")? {
        let digest = layer["digest"].as_str().context("layer digest")?;
        let hex = digest.strip_prefix("sha256:").context("sha256")?;
        let path = format!("blobs/sha256/{hex}");
        let listing = run("tar", &["-tvzf", &path], dir.path())?;
        files.extend(
            listing
                .lines()
                .filter(|line| !line.starts_with('d'))
                .filter_map(|line| line.split_whitespace().last())
                .map(|name| name.trim_start_matches("./").to_owned()),
        );
    }
    files.sort();
    assert_eq!(
        files,
        ["etc/ssl/certs/ca-certificates.crt", "usr/local/bin/serin"],
        "nothing but the binary and the CA certificates"
    );
    Ok(())
}

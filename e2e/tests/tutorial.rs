//! `docs/tutorial.md`, run as written: every `sh` block, in order, in one shell at
//! the repository root, from `make cluster-up` to `make cluster-down`. Needs what
//! `make test` prepares (the binaries, `make controlplane`, `make image`) and root.

use std::fs;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use serin_e2e::cluster::repository_root;

/// The commands of the page's `sh` blocks, in order.
fn commands(markdown: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut in_sh = false;
    for line in markdown.lines() {
        match line.trim() {
            "```sh" => in_sh = true,
            "```" if in_sh => in_sh = false,
            command if in_sh && !command.is_empty() => commands.push(command.to_owned()),
            _ => {}
        }
    }
    commands
}

/// Stops the tutorial's cluster whatever happened, as its last step would.
struct ClusterDown;

impl Drop for ClusterDown {
    fn drop(&mut self) {
        let _ = Command::new("make")
            .arg("cluster-down")
            .current_dir(repository_root())
            .status();
    }
}

#[test]
fn the_tutorial_runs_as_written() -> Result<()> {
    let root = repository_root();
    let page = fs::read_to_string(root.join("docs/tutorial.md"))?;
    let commands = commands(&page);
    ensure!(commands.len() >= 15, "too few commands: {commands:?}");
    ensure!(
        commands.first().map(String::as_str) == Some("make cluster-up")
            && commands.last().map(String::as_str) == Some("make cluster-down"),
        "the tutorial starts from nothing and cleans up: {commands:?}"
    );
    if root.join(".cache/cluster/kubeconfig").exists() {
        bail!("a cluster from `make cluster-up` runs in .cache/cluster: `make cluster-down` first");
    }
    let _down = ClusterDown;
    let mut script = String::from("set -euo pipefail\n");
    for (index, command) in commands.iter().enumerate() {
        script.push_str(&format!("echo '## command {index}'\n{command}\n"));
    }
    let output = Command::new("timeout")
        .args(["1500", "bash", "-c", &script])
        .current_dir(&root)
        .output()
        .context("running bash")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let failed = stdout
            .lines()
            .filter_map(|line| line.strip_prefix("## command "))
            .next_back()
            .and_then(|index| index.parse::<usize>().ok())
            .and_then(|index| commands.get(index));
        bail!(
            "the tutorial stopped at {failed:?} ({}):\n{}\n{}",
            output.status,
            tail(&stdout, 40),
            tail(&stderr, 40)
        );
    }
    for shown in [
        "web    Healthy",
        "canary web promoted",
        "ProgressDeadlineExceeded",
        "condition met",
    ] {
        ensure!(
            stdout.contains(shown),
            "the tutorial did not show {shown:?}:\n{stdout}"
        );
    }
    println!("{}", tail(&stdout, 60));
    Ok(())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

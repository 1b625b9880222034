//! kubectl, run as a user would run it, against one cluster.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};

/// kubectl bound to one kubeconfig.
#[derive(Clone, Debug)]
pub struct Kubectl {
    program: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    /// kubectl `program` talking to the cluster of `kubeconfig`.
    pub fn new(program: &Path, kubeconfig: &Path) -> Self {
        Self {
            program: program.to_path_buf(),
            kubeconfig: kubeconfig.to_path_buf(),
        }
    }

    /// Another program that takes `--kubeconfig` as kubectl does (helm), run
    /// against the same cluster.
    pub fn with_program(&self, program: &Path) -> Self {
        Self::new(program, &self.kubeconfig)
    }

    /// The kubeconfig this kubectl uses.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A kube-rs client for the same cluster and user, for tests and benchmarks
    /// that watch or drive the controller's own code in-process.
    pub async fn client(&self) -> Result<kube::Client> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let options = kube::config::KubeConfigOptions::default();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// A command with the kubeconfig set, to add arguments to.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.program);
        command
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::null());
        command
    }

    /// A command for a kubectl plugin (`kubectl serin ...`): kubectl takes no flag
    /// before a plugin's name, so the kubeconfig goes in `KUBECONFIG`.
    pub fn plugin(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.program);
        command
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .stdin(Stdio::null());
        command
    }

    /// Runs kubectl, feeding `input` on standard input, and returns what it printed
    /// whether it succeeded or not.
    pub fn output(&self, args: &[&str], input: Option<&str>) -> Result<Output> {
        let mut command = self.command(args);
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        if input.is_some() {
            command.stdin(Stdio::piped());
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin.write_all(text.as_bytes())?;
        }
        Ok(child.wait_with_output()?)
    }

    /// Runs kubectl and returns its standard output, or fails with its standard error.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        self.run_with_input(args, None)
    }

    /// Like [`Kubectl::run`], with `input` on standard input (`apply -f -`).
    pub fn run_with_input(&self, args: &[&str], input: Option<&str>) -> Result<String> {
        let output = self.output(args, input)?;
        if !output.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// True when kubectl exits successfully.
    pub fn succeeds(&self, args: &[&str]) -> bool {
        self.command(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// A value of the kubeconfig, by JSONPath (`.clusters[0].cluster.server`), with
    /// its secrets (`--raw`): what a process beside the cluster needs to reach it.
    pub fn config(&self, path: &str) -> Result<String> {
        let value = self.run(&[
            "config",
            "view",
            "--raw",
            "--minify",
            "-o",
            &format!("jsonpath={{{path}}}"),
        ])?;
        Ok(value.trim().to_owned())
    }

    /// `kubectl get ... -o json`, parsed.
    pub fn get_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        Ok(serde_json::from_str(&self.run(&all)?)?)
    }
}

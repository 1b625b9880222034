//! A real node for the test bed: containerd, runc and the CNI plugins from Debian,
//! kubelet and kube-proxy built from the same pinned `k8s.io/kubernetes` module as
//! the control plane, CoreDNS from its module as the cluster DNS. Its pods are real
//! containers from images imported into containerd (no registry), on a bridge
//! `serin0` (10.88.0.0/16, the node at 10.88.0.1), and kube-proxy in iptables mode
//! makes ClusterIP Services balance.
//!
//! A machine holds one real node at a time: the bridge, the cgroup root `serin` and
//! kube-proxy's iptables chains are global. [`clean_up`] removes everything the node
//! made (processes, mounts, veths, the bridge, iptables chains, cgroups) from what is
//! on disk and in the kernel, so it also works after the launcher was killed;
//! [`leftovers`] lists what remains, for the test that checks it. [`MachineLock`]
//! runs it for a node whose whole run was killed, when the next node starts.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cluster::built_binary;
use crate::kubectl::Kubectl;
use crate::process::{Supervised, wait_until};

/// The node's name, and its `kubernetes.io/hostname` label.
pub const NODE_NAME: &str = "serin-node";
/// The node's label that tests select real pods with (`nodeSelector: {type: real}`).
pub const NODE_TYPE_LABEL: &str = "type=real";
/// The bridge the pods are attached to.
pub const BRIDGE: &str = "serin0";
/// The node's address on the bridge: pods reach the API server, DNS and Prometheus here.
pub const NODE_IP: &str = "10.88.0.1";
/// Where pod addresses come from.
pub const POD_CIDR: &str = "10.88.0.0/16";
/// Whether the bridge exists (a real node runs, or one was left behind).
fn bridge_exists() -> bool {
    Path::new("/sys/class/net").join(BRIDGE).exists()
}

/// The cgroup, in every hierarchy, under which the kubelet puts every pod.
const CGROUP_ROOT: &str = "serin";
/// Iptables chains of kube-proxy, the kubelet and the CNI plugins.
const CHAIN_PREFIXES: [&str; 2] = ["KUBE-", "CNI-"];
const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// The programs the node runs.
#[derive(Clone, Debug)]
pub struct NodeBinaries {
    /// kubelet, built from k8s.io/kubernetes.
    pub kubelet: PathBuf,
    /// kube-proxy, built from k8s.io/kubernetes.
    pub kube_proxy: PathBuf,
    /// containerd, from Debian.
    pub containerd: PathBuf,
    /// ctr, containerd's client, from Debian: it imports the images.
    pub ctr: PathBuf,
    /// CoreDNS, built from its Go module: the cluster DNS.
    pub coredns: PathBuf,
}

/// The Debian packages a real node and its images need (`make image` uses umoci).
pub const NODE_PACKAGES: &str =
    "containerd runc containernetworking-plugins iptables iproute2 conntrack umoci";

impl NodeBinaries {
    /// Finds the node's programs, or says how to get the missing ones.
    pub fn locate(bin_dir: &Path) -> Result<Self> {
        let built = |name: &str| built_binary(bin_dir, name);
        let installed = |name: &str| -> Result<PathBuf> {
            ["/usr/bin", "/usr/sbin", "/sbin", "/bin"]
                .iter()
                .map(|dir| Path::new(dir).join(name))
                .find(|path| path.is_file())
                .with_context(|| format!("{name} is missing: apt-get install -y {NODE_PACKAGES}"))
        };
        installed("runc")?;
        installed("iptables")?;
        installed("ip")?;
        if !Path::new(CNI_BIN_DIR).join("bridge").is_file() {
            bail!("the CNI plugins are missing: apt-get install -y {NODE_PACKAGES}");
        }
        Ok(Self {
            kubelet: built("kubelet")?,
            kube_proxy: built("kube-proxy")?,
            coredns: built("coredns")?,
            containerd: installed("containerd")?,
            ctr: installed("ctr")?,
        })
    }
}

/// The machine-wide lock of the real node, held by the process that runs one
/// until it has cleaned up after it: the next test binary's node waits for the last
/// one's cleanup instead of finding its bridge. The kernel releases it when the
/// holder dies, however it dies; the file names the holder's cluster directory
/// until a clean stop, so the next holder finds what a killed one left behind.
pub struct MachineLock {
    file: fs::File,
}

impl MachineLock {
    /// Takes the lock for the cluster in `dir`, waiting up to `wait` for another
    /// node to stop, and first cleans up the node of a holder that died before it
    /// could (a killed session, a machine's CI run cut short).
    pub fn acquire(dir: &Path, wait: Duration) -> Result<Self> {
        let path = std::env::temp_dir().join("serin-real-node.lock");
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let deadline = std::time::Instant::now() + wait;
        // SAFETY: flock on a file descriptor this function owns.
        while unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        } != 0
        {
            if std::time::Instant::now() > deadline {
                bail!(
                    "another real node runs on this machine ({} is locked for {wait:?}): stop it first (`make cluster-down`)",
                    path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let mut holder = String::new();
        std::io::Read::read_to_string(&mut file, &mut holder)?;
        let abandoned = PathBuf::from(holder.trim());
        if !holder.trim().is_empty() && abandoned != dir {
            // Only a directory a node was prepared in is removed: the record is a
            // file anyone could write.
            let prepared = abandoned.join(IP_FORWARD_SAVED).is_file();
            clean_up(&abandoned).with_context(|| {
                format!(
                    "cleaning up the real node a killed run left in {}",
                    abandoned.display()
                )
            })?;
            if prepared {
                let _ = fs::remove_dir_all(&abandoned);
            }
        }
        let lock = Self { file };
        lock.record(dir.as_os_str().as_encoded_bytes())?;
        Ok(lock)
    }

    /// Clears the record once the node is cleaned up, and lets the lock go.
    pub fn release(self) -> Result<()> {
        self.record(b"")
    }

    fn record(&self, holder: &[u8]) -> Result<()> {
        use std::io::{Seek, Write};
        let mut file = &self.file;
        file.set_len(0)?;
        file.seek(std::io::SeekFrom::Start(0))?;
        file.write_all(holder)?;
        file.sync_all()?;
        Ok(())
    }
}

/// Makes the host ready for a node: the bridge with the node's address (the API
/// server binds to it, so it must exist first), IP forwarding, the cgroup root.
/// Refuses when another real node, or what one left behind, is still there.
pub fn prepare_host(dir: &Path) -> Result<()> {
    if bridge_exists() {
        bail!(
            "the bridge {BRIDGE} exists: another real node runs on this machine, or one was left behind (`make cluster-down`, or `serin-cluster stop --dir <its dir>`)"
        );
    }
    let forward = fs::read_to_string(IP_FORWARD)?;
    fs::write(dir.join(IP_FORWARD_SAVED), forward.trim())?;
    fs::write(IP_FORWARD, "1").context("enabling IP forwarding (needs root)")?;
    run("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
    run(
        "ip",
        &["addr", "add", &format!("{NODE_IP}/16"), "dev", BRIDGE],
    )?;
    run("ip", &["link", "set", BRIDGE, "up"])?;
    for hierarchy in cgroup_hierarchies()? {
        fs::create_dir_all(hierarchy.join(CGROUP_ROOT))?;
    }
    Ok(())
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const IP_FORWARD_SAVED: &str = "ip_forward.saved";

/// Starts containerd (and imports every image archive in `images`), the kubelet,
/// kube-proxy and CoreDNS, and returns their processes once the node is Ready and
/// DNS answers.
pub fn start(
    dir: &Path,
    binaries: &NodeBinaries,
    kubectl: &Kubectl,
    images: &Path,
    mut alive: impl FnMut(&mut [Supervised]) -> Result<()>,
) -> Result<Vec<Supervised>> {
    let logs = dir.join("logs");
    let node = dir.join("node");
    fs::create_dir_all(node.join("cni"))?;
    let socket = node.join("containerd.sock");
    fs::write(node.join("containerd.toml"), containerd_config(&node))?;
    fs::write(node.join("cni/10-serin.conflist"), cni_config(&node))?;
    let mut processes = vec![Supervised::spawn(
        "containerd",
        &binaries.containerd,
        &[format!(
            "--config={}",
            node.join("containerd.toml").display()
        )],
        &logs,
    )?];
    let ctr = |args: &[&str]| -> bool {
        Command::new(&binaries.ctr)
            .arg(format!("--address={}", socket.display()))
            .args(["--namespace", "k8s.io"])
            .args(args)
            .output()
            .is_ok_and(|out| out.status.success())
    };
    wait_until(
        "containerd",
        Duration::from_secs(30),
        || alive(&mut processes),
        || ctr(&["version"]),
    )?;
    import_images(&binaries.ctr, &socket, images)?;

    let kubeconfig = kubectl.kubeconfig().display().to_string();
    fs::write(node.join("kubelet.yaml"), kubelet_config(&node, &logs))?;
    processes.push(Supervised::spawn(
        "kubelet",
        &binaries.kubelet,
        &[
            format!("--config={}", node.join("kubelet.yaml").display()),
            format!("--kubeconfig={kubeconfig}"),
            format!("--root-dir={}", node.join("kubelet").display()),
            format!("--hostname-override={NODE_NAME}"),
            format!("--node-ip={NODE_IP}"),
            format!("--node-labels={NODE_TYPE_LABEL}"),
        ],
        &logs,
    )?);
    fs::write(node.join("kube-proxy.yaml"), kube_proxy_config(&kubeconfig))?;
    processes.push(Supervised::spawn(
        "kube-proxy",
        &binaries.kube_proxy,
        &[format!(
            "--config={}",
            node.join("kube-proxy.yaml").display()
        )],
        &logs,
    )?);
    fs::write(node.join("Corefile"), corefile(&kubeconfig))?;
    processes.push(Supervised::spawn(
        "coredns",
        &binaries.coredns,
        &["-conf".into(), node.join("Corefile").display().to_string()],
        &logs,
    )?);
    wait_until(
        "CoreDNS, synced with the API server",
        Duration::from_secs(60),
        || alive(&mut processes),
        || crate::http::get(DNS_READY_PORT, "/ready").is_some_and(|(code, _)| code == 200),
    )?;
    wait_until(
        "the real node to be Ready",
        Duration::from_secs(120),
        || alive(&mut processes),
        || {
            kubectl.succeeds(&[
                "wait",
                "--for=condition=Ready",
                &format!("node/{NODE_NAME}"),
                "--timeout=2s",
            ])
        },
    )?;
    Ok(processes)
}

/// Imports every `*.tar` OCI archive in `images` (built by `make image`) into the
/// node's containerd, under the name its index carries.
pub fn import_images(ctr: &Path, socket: &Path, images: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(images) else {
        bail!("{} has no images: run `make image` first", images.display());
    };
    let mut archives: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "tar"))
        .collect();
    archives.sort();
    if archives.is_empty() {
        bail!("{} has no images: run `make image` first", images.display());
    }
    for archive in archives {
        let output = Command::new(ctr)
            .arg(format!("--address={}", socket.display()))
            .args(["--namespace", "k8s.io", "images", "import"])
            .arg(&archive)
            .output()?;
        if !output.status.success() {
            bail!(
                "importing {}: {}",
                archive.display(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    Ok(())
}

/// The name every image of the test bed is imported under: `make image` builds them.
pub fn image(name: &str) -> String {
    match name {
        "serin" => format!("ghcr.io/serin-dev/serin:{}", env!("CARGO_PKG_VERSION")),
        other => format!("localhost/serin/{other}:{}", env!("CARGO_PKG_VERSION")),
    }
}

fn containerd_config(node: &Path) -> String {
    let node = node.display();
    let pause = image("pause");
    format!(
        r#"version = 2
root = "{node}/containerd"
state = "{node}/containerd-state"
[grpc]
  address = "{node}/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "{node}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  netns_mounts_under_state_dir = true
  enable_unprivileged_ports = true
  # This machine denies lowering a process's oom_score_adj (no CAP_SYS_RESOURCE):
  # keep every container's at or above containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{node}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{node}/cni"
"#
    )
}

fn cni_config(node: &Path) -> String {
    format!(
        r#"{{
  "cniVersion": "1.0.0",
  "name": "serin",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "{BRIDGE}",
      "isGateway": true,
      "hairpinMode": true,
      "ipam": {{
        "type": "host-local",
        "ranges": [[{{"subnet": "{POD_CIDR}", "gateway": "{NODE_IP}"}}]],
        "routes": [{{"dst": "0.0.0.0/0"}}],
        "dataDir": "{ipam}"
      }}
    }},
    {{"type": "portmap", "capabilities": {{"portMappings": true}}}}
  ]
}}
"#,
        ipam = node.join("cni-ipam").display()
    )
}

fn kubelet_config(node: &Path, logs: &Path) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# The kubelet's own API (logs, exec) on the node's bridge address only. Anonymous
# and allowed: this is a test bed on one machine, nothing outside reaches it.
address: {NODE_IP}
authentication:
  anonymous: {{enabled: true}}
  webhook: {{enabled: false}}
authorization: {{mode: AlwaysAllow}}
readOnlyPort: 0
healthzPort: 0
cgroupDriver: cgroupfs
cgroupRoot: /{CGROUP_ROOT}
cgroupsPerQOS: true
enforceNodeAllocatable: []
containerRuntimeEndpoint: unix://{node}/containerd.sock
failSwapOn: false
podLogsDir: {logs}/pods
localStorageCapacityIsolation: false
evictionHard: {{}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
makeIPTablesUtilChains: false
protectKernelDefaults: false
resolvConf: /etc/resolv.conf
clusterDNS: [{NODE_IP}]
clusterDomain: {CLUSTER_DOMAIN}
"#,
        node = node.display(),
        logs = logs.display(),
    )
}

/// Where CoreDNS says it has synced with the API server.
const DNS_READY_PORT: u16 = 18181;
/// The cluster's DNS domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// CoreDNS on the node's bridge address: Service and pod names from the API server,
/// anything else from the host's resolver.
fn corefile(kubeconfig: &str) -> String {
    format!(
        r#".:53 {{
    bind {NODE_IP}
    errors
    ready 127.0.0.1:{DNS_READY_PORT}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    forward . /etc/resolv.conf
    cache 5
}}
"#
    )
}

fn kube_proxy_config(kubeconfig: &str) -> String {
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {{kubeconfig: "{kubeconfig}"}}
hostnameOverride: {NODE_NAME}
clusterCIDR: {POD_CIDR}
bindAddress: {NODE_IP}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["{NODE_IP}/32"]
iptables: {{masqueradeAll: true}}
# Leave the host's conntrack settings alone.
conntrack: {{maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}}
"#
    )
}

/// Removes everything a real node made, whether it stopped cleanly or not:
/// containers and shims, mounts under `dir`, the pods' veths and the bridge,
/// iptables chains, the cgroups, and IP forwarding as it was. Idempotent, and a
/// no-op for a cluster that never prepared the host for a node.
pub fn clean_up(dir: &Path) -> Result<()> {
    if !dir.join(IP_FORWARD_SAVED).exists() {
        return Ok(());
    }
    let node = dir.join("node");
    let host_files = host_files(dir)?;
    kill_processes(&node)?;
    for file in host_files {
        let _ = fs::remove_file(file);
    }
    unmount_under(dir)?;
    for link in bridge_ports()? {
        let _ = run("ip", &["link", "delete", &link]);
    }
    if bridge_exists() {
        run("ip", &["link", "delete", BRIDGE])?;
    }
    remove_chains()?;
    for hierarchy in cgroup_hierarchies()? {
        remove_cgroup_tree(&hierarchy.join(CGROUP_ROOT))?;
    }
    if let Ok(saved) = fs::read_to_string(dir.join(IP_FORWARD_SAVED)) {
        fs::write(IP_FORWARD, saved.trim())?;
        fs::remove_file(dir.join(IP_FORWARD_SAVED))?;
    }
    Ok(())
}

/// What a real node left behind: processes, mounts under `dir`, links on the
/// bridge, iptables chains and cgroups. Empty after [`clean_up`].
pub fn leftovers(dir: &Path) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for pid in node_processes(&dir.join("node"))? {
        found.push(format!("process {pid}"));
    }
    for mount in mounts_under(dir)? {
        found.push(format!("mount {}", mount.display()));
    }
    for link in bridge_ports()? {
        found.push(format!("link {link}"));
    }
    if bridge_exists() {
        found.push(format!("link {BRIDGE}"));
    }
    for (family, table, chain) in chains()? {
        found.push(format!("{family} chain {table}/{chain}"));
    }
    for hierarchy in cgroup_hierarchies()? {
        let cgroup = hierarchy.join(CGROUP_ROOT);
        if cgroup.exists() {
            found.push(format!("cgroup {}", cgroup.display()));
        }
    }
    Ok(found)
}

/// The files the node's containers leave outside its directory, where containerd
/// 1.6 and libcni put them whatever the configuration says: the shims' sockets in
/// `/run/containerd/s` (named by a hash of containerd's address, the namespace and
/// the container) and the CNI result cache in `/var/lib/cni/results`.
pub fn host_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let node = dir.join("node");
    let mut ids: Vec<String> = [
        "containerd/io.containerd.grpc.v1.cri/sandboxes",
        "containerd/io.containerd.grpc.v1.cri/containers",
        "containerd-state/io.containerd.runtime.v2.task/k8s.io",
    ]
    .iter()
    .filter_map(|sub| fs::read_dir(node.join(sub)).ok())
    .flat_map(|entries| entries.filter_map(|entry| entry.ok()))
    .map(|entry| entry.file_name().to_string_lossy().into_owned())
    .collect();
    ids.sort();
    ids.dedup();
    let socket = node.join("containerd.sock");
    let mut files = Vec::new();
    for id in ids {
        let key = socket.join("k8s.io").join(&id);
        let hash = output_with_input("sha256sum", &[], key.as_os_str().as_encoded_bytes())?;
        if let Some(hex) = hash.split_whitespace().next() {
            files.push(Path::new("/run/containerd/s").join(hex));
        }
        for (network, interface) in [("serin", "eth0"), ("cni-loopback", "lo")] {
            files.push(
                Path::new("/var/lib/cni/results").join(format!("{network}-{id}-{interface}")),
            );
        }
    }
    Ok(files)
}

/// Every process of the node: those in its cgroups (the containers), and those whose
/// command line names its directory (containerd, its shims, the kubelet, kube-proxy).
fn node_processes(node: &Path) -> Result<Vec<i32>> {
    let mut pids = Vec::new();
    for hierarchy in cgroup_hierarchies()? {
        collect_cgroup_pids(&hierarchy.join(CGROUP_ROOT), &mut pids);
    }
    let marker = node.display().to_string();
    for entry in fs::read_dir("/proc")?.filter_map(|entry| entry.ok()) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&marker) {
            pids.push(pid);
        }
    }
    let me = i32::try_from(std::process::id())?;
    pids.retain(|pid| *pid != me);
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

fn collect_cgroup_pids(cgroup: &Path, pids: &mut Vec<i32>) {
    if let Ok(text) = fs::read_to_string(cgroup.join("cgroup.procs")) {
        pids.extend(
            text.lines()
                .filter_map(|line| line.trim().parse::<i32>().ok()),
        );
    }
    if let Ok(entries) = fs::read_dir(cgroup) {
        for entry in entries.filter_map(|entry| entry.ok()) {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                collect_cgroup_pids(&entry.path(), pids);
            }
        }
    }
}

fn kill_processes(node: &Path) -> Result<()> {
    for _ in 0..50 {
        let pids = node_processes(node)?;
        if pids.is_empty() {
            return Ok(());
        }
        for pid in pids {
            // SAFETY: a signal to a process of the node this test bed started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "processes of the node would not die: {:?}",
        node_processes(node)?
    )
}

fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    let mut mounts: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| PathBuf::from(point.replace("\\040", " ")))
        .filter(|point| point.starts_with(dir))
        .collect();
    // Deepest first, so nested mounts go before their parents.
    mounts.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    mounts.dedup();
    Ok(mounts)
}

fn unmount_under(dir: &Path) -> Result<()> {
    for _ in 0..5 {
        let mounts = mounts_under(dir)?;
        if mounts.is_empty() {
            return Ok(());
        }
        for mount in mounts {
            let path = std::ffi::CString::new(mount.as_os_str().as_encoded_bytes())?;
            // SAFETY: unmounting a path under the test bed's own directory.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
    let left = mounts_under(dir)?;
    if !left.is_empty() {
        bail!("mounts under {} would not go: {left:?}", dir.display());
    }
    Ok(())
}

/// The interfaces attached to the bridge: the host ends of the pods' veths.
fn bridge_ports() -> Result<Vec<String>> {
    let ports = Path::new("/sys/class/net").join(BRIDGE).join("brif");
    let Ok(entries) = fs::read_dir(ports) else {
        return Ok(Vec::new());
    };
    Ok(entries
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect())
}

const IPTABLES: [(&str, &str); 2] = [("iptables", "ip4"), ("ip6tables", "ip6")];
const TABLES: [&str; 3] = ["filter", "nat", "mangle"];

fn is_node_chain(name: &str) -> bool {
    CHAIN_PREFIXES.iter().any(|prefix| name.starts_with(prefix))
}

/// Whether an `iptables-save` line declares, fills or jumps to one of the node's chains.
fn mentions_node_chain(line: &str) -> bool {
    CHAIN_PREFIXES.iter().any(|prefix| line.contains(prefix))
}

/// The node's chains (KUBE-*, CNI-*) in every table of both families.
fn chains() -> Result<Vec<(&'static str, &'static str, String)>> {
    let mut found = Vec::new();
    for (program, family) in IPTABLES {
        for table in TABLES {
            let Ok(rules) = output(&format!("{program}-save"), &["-t", table]) else {
                continue;
            };
            found.extend(
                rules
                    .lines()
                    .filter_map(|line| line.strip_prefix(':'))
                    .filter_map(|line| line.split(' ').next())
                    .filter(|chain| is_node_chain(chain))
                    .map(|chain| (family, table, chain.to_owned())),
            );
        }
    }
    Ok(found)
}

/// Rewrites each table without the node's chains and the rules that mention them,
/// keeping every other rule as it is.
fn remove_chains() -> Result<()> {
    for (program, _) in IPTABLES {
        for table in TABLES {
            let Ok(rules) = output(&format!("{program}-save"), &["-t", table]) else {
                continue;
            };
            if !rules.lines().any(mentions_node_chain) {
                continue;
            }
            let kept: String = rules
                .lines()
                .filter(|line| !mentions_node_chain(line))
                .map(|line| format!("{line}\n"))
                .collect();
            output_with_input(&format!("{program}-restore"), &[], kept.as_bytes())
                .with_context(|| format!("rewriting table {table} without the node's chains"))?;
        }
    }
    Ok(())
}

fn cgroup_hierarchies() -> Result<Vec<PathBuf>> {
    Ok(fs::read_dir("/sys/fs/cgroup")?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .filter(|path| path.is_dir())
        .collect())
}

/// Removes a cgroup and its children, deepest first (a cgroup directory is removed
/// with rmdir once it has no processes and no children).
fn remove_cgroup_tree(cgroup: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(cgroup) else {
        return Ok(());
    };
    for entry in entries.filter_map(|entry| entry.ok()) {
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            remove_cgroup_tree(&entry.path())?;
        }
    }
    fs::remove_dir(cgroup).with_context(|| format!("removing cgroup {}", cgroup.display()))
}

fn output_with_input(program: &str, args: &[&str], input: &[u8]) -> Result<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        std::io::Write::write_all(&mut stdin, input)?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{program} {} failed", args.join(" "));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    output(program, args).map(drop)
}

fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

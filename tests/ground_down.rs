//! `scripts/ground down` leaves the machine as it was: a ground with a real
//! node runs pods (pod network, host network, a Secret volume), then goes
//! down; processes, mounts, links, routes, network namespaces, nft and
//! iptables rules, cgroups and the sysctls the kubelet changes are compared
//! with what was there before. Its own test binary: nothing else runs beside it.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

fn run(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Everything `down` must restore, as comparable text.
fn machine_state() -> BTreeSet<String> {
    let mut state = BTreeSet::new();
    let components = [
        "containerd",
        "containerd-shim",
        "kubelet",
        "kube-proxy",
        "coredns",
        "etcd",
        "kube-apiserver",
        "kube-controller",
        "kube-scheduler",
        "kwok",
        "pause",
        "asterisk",
        "unshare",
    ];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        let comm = comm.trim();
        if components.iter().any(|c| comm.starts_with(c)) {
            state.insert(format!("process {comm}"));
        }
    }
    for line in std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
    {
        if let Some(point) = line.split_whitespace().nth(4) {
            state.insert(format!("mount {point}"));
        }
    }
    for line in run("ip", &["-o", "link"]).lines() {
        if let Some(name) = line.split(':').nth(1) {
            state.insert(format!(
                "link {}",
                name.trim().split('@').next().unwrap_or("")
            ));
        }
    }
    for line in run("ip", &["route"]).lines() {
        state.insert(format!("route {line}"));
    }
    for line in run("ip", &["netns", "list"]).lines() {
        state.insert(format!("netns {line}"));
    }
    for line in run("nft", &["list", "ruleset"]).lines() {
        state.insert(format!("nft {line}"));
    }
    for line in run("iptables-save", &[])
        .lines()
        .filter(|l| !l.starts_with('#'))
    {
        state.insert(format!(
            "iptables {}",
            line.split(" [").next().unwrap_or(line)
        ));
    }
    for key in [
        "vm.overcommit_memory",
        "kernel.panic",
        "kernel.panic_on_oops",
        "net.ipv4.ip_forward",
        "net.bridge.bridge-nf-call-iptables",
    ] {
        state.insert(format!(
            "sysctl {key}={}",
            run("sysctl", &["-n", key]).trim()
        ));
    }
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        for c in std::fs::read_dir(hierarchy.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if c.file_name().to_string_lossy().starts_with("wpbx-node") {
                state.insert(format!("cgroup {}", c.path().display()));
            }
        }
    }
    for dir in [
        "/var/lib/kubelet",
        "/var/log/containers",
        "/var/log/pods",
        "/var/lib/cni",
        "/run/containerd",
        "/opt/cni",
        "/opt/containerd",
        "/etc/cni",
    ] {
        if std::path::Path::new(dir).exists() {
            state.insert(format!("dir {dir}"));
        }
    }
    state
}

#[test]
fn ground_down_leaves_the_machine_as_it_was() {
    harness::require_provisioned();
    // The grounds of earlier test binaries may still be going down.
    let settle = Instant::now();
    let mut before = machine_state();
    while before.iter().any(|s| s.starts_with("process "))
        && settle.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(500));
        before = machine_state();
    }
    let dir = std::env::temp_dir().join(format!("webrtc-pbx-ground.down-{}", std::process::id()));
    let ground = harness::repo().join("scripts/ground");
    // Down even when an assertion below fails.
    struct Down(std::path::PathBuf);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = Command::new(harness::repo().join("scripts/ground"))
                .args(["down", "--dir"])
                .arg(&self.0)
                .output();
        }
    }
    let _guard = Down(dir.clone());
    let started = Instant::now();
    let up = Command::new(&ground)
        .args(["up", "--dir"])
        .arg(&dir)
        .output()
        .expect("scripts/ground up");
    assert!(
        up.status.success(),
        "scripts/ground up: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let up_time = started.elapsed();
    let kubeconfig = dir.join("kubeconfig");
    let kubectl = |args: &[&str]| harness::kubectl_at(&kubeconfig, args);
    let image = webrtc_pbx_operator::api::DEFAULT_IMAGE;
    let manifest = format!(
        r#"{{"apiVersion": "v1", "kind": "List", "items": [
  {{"apiVersion": "v1", "kind": "Secret", "metadata": {{"name": "s", "namespace": "default"}}, "stringData": {{"k": "v"}}}},
  {{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "pod-net", "namespace": "default"}},
    "spec": {{"automountServiceAccountToken": false, "containers": [{{"name": "c", "image": "{image}", "command": ["sleep", "3600"],
      "volumeMounts": [{{"name": "s", "mountPath": "/s"}}]}}], "volumes": [{{"name": "s", "secret": {{"secretName": "s"}}}}]}}}},
  {{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "host-net", "namespace": "default"}},
    "spec": {{"hostNetwork": true, "automountServiceAccountToken": false, "containers": [{{"name": "c", "image": "{image}", "command": ["sleep", "3600"]}}]}}}}
]}}"#
    );
    let manifest_file = dir.join("pods.json");
    std::fs::write(&manifest_file, manifest).unwrap();
    kubectl(&["apply", "-f", manifest_file.to_str().unwrap()]);
    kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/pod-net",
        "pod/host-net",
        "--timeout=120s",
    ]);
    let pods = kubectl(&["get", "pods", "-o", "wide"]);
    eprintln!(
        "ground up with a real node {:.1} s; pods:\n{pods}",
        up_time.as_secs_f64()
    );
    let during = machine_state();
    assert!(
        during.iter().any(|s| s == "process kubelet"),
        "the node ran: {during:?}"
    );
    let down_started = Instant::now();
    let down = Command::new(&ground)
        .args(["down", "--dir"])
        .arg(&dir)
        .output()
        .expect("scripts/ground down");
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    // Killed processes take a moment to be reaped.
    let mut after = machine_state();
    while !after.is_subset(&before) && down_started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
        after = machine_state();
    }
    eprintln!("ground down {:.1} s", down_started.elapsed().as_secs_f64());
    let left: Vec<_> = after.difference(&before).collect();
    // A process of someone else's that ended meanwhile is no change of ours.
    let gone: Vec<_> = before
        .difference(&after)
        .filter(|s| !s.starts_with("process "))
        .collect();
    assert!(
        left.is_empty() && gone.is_empty(),
        "ground down changed the machine:\nleft behind: {left:#?}\nremoved: {gone:#?}"
    );
    assert!(!dir.exists(), "{} removed", dir.display());
}

//! The benchmarks (`scripts/bench`): figures and ratios measured side by
//! side in one run on the real ground, printed as a Markdown table. Never
//! timed unit tests: these machines are shared and noisy, so each figure is
//! compared with its baseline measured in the same run.
//!
//! - convergence: apply one WebRtcPbx -> every child exists and status is
//!   observed, against `kubectl apply --server-side` of exactly what
//!   `render` prints (medians of 20);
//! - scale: 500 WebRtcPbx at once (probes off) -> all ConfigRendered=True,
//!   the operator's peak RSS and its API requests;
//! - churn: writes by the operator over `WPBX_BENCH_CHURN_SECONDS` (600) once
//!   the 500 have settled;
//! - probe cost: WSS + REGISTER by the probe engine against a raw TLS +
//!   WebSocket handshake and two SIP round trips, and against JsSIP in Node;
//!   the most concurrent REGISTER probes with zero errors; CPU per second of
//!   echo call;
//! - echo: CPU per second of echo call inside one long-lived process (the
//!   operator's case), for one call and for 100 at once against one
//!   Asterisk, with their loss. The calls run in a worker: this binary
//!   again, inside the test host (`WPBX_BENCH_ECHO_WORKER`);
//! - node: on a real node (kubelet, containerd, the project's images, the
//!   chart's operator in its pod), apply -> Ready=True of one PBX against
//!   the same pod spec started as a bare pod and timed to its first
//!   answered REGISTER; and a certificate rotation timed to the certificate
//!   the pod serves. Run by this binary again with a ground of its own
//!   (`WPBX_BENCH_NODE_WORKER`).
#![forbid(unsafe_code)]

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt, TryStreamExt};
use harness::fixture::Pbx;
use harness::{Requests, api_requests, reconciles};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::api::{Api, PostParams};
use kube::runtime::WatchStreamExt as _;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use webrtc_pbx_operator::api::WebRtcPbx;
use webrtc_pbx_operator::controller::events;
use webrtc_pbx_operator::names;
use webrtc_pbx_operator::probe::{self, digest, register, transport};

const DOMAIN: &str = "pbx.bench.test";

/// One line of the results table.
struct Row {
    what: String,
    figure: String,
    target: String,
    verdict: &'static str,
}

fn row(rows: &mut Vec<Row>, what: &str, figure: String, target: &str, met: Option<bool>) {
    println!("  {what}: {figure}");
    rows.push(Row {
        what: what.into(),
        figure,
        target: target.into(),
        verdict: match met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "-",
        },
    });
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Bench PBX `name`: domain `NAME.bench.test`, off the host network, probes off.
fn bench_pbx(name: &str) -> Pbx {
    Pbx::new(name, json!({"domain": format!("{name}.bench.test")})).quiet()
}

/// Creates bench PBX `name` through `pbxes`.
async fn create(pbxes: &Api<WebRtcPbx>, name: &str) {
    pbxes
        .create(&PostParams::default(), &bench_pbx(name).typed())
        .await
        .unwrap();
}

/// True once every named object exists.
async fn all_exist(client: &Client, ns: &str, names: &[(&str, String)]) -> bool {
    for (kind, name) in names {
        let found = match *kind {
            "Secret" => {
                Api::<Secret>::namespaced(client.clone(), ns)
                    .get_opt(name)
                    .await
            }
            "ConfigMap" => Api::<ConfigMap>::namespaced(client.clone(), ns)
                .get_opt(name)
                .await
                .map(|o| o.map(|_| Secret::default())),
            "Service" => Api::<Service>::namespaced(client.clone(), ns)
                .get_opt(name)
                .await
                .map(|o| o.map(|_| Secret::default())),
            _ => Api::<StatefulSet>::namespaced(client.clone(), ns)
                .get_opt(name)
                .await
                .map(|o| o.map(|_| Secret::default())),
        };
        if !matches!(found, Ok(Some(_))) {
            return false;
        }
    }
    true
}

fn children(name: &str) -> Vec<(&'static str, String)> {
    vec![
        ("Secret", format!("{name}-ca")),
        ("Secret", format!("{name}-tls")),
        ("Secret", format!("{name}-asterisk")),
        ("ConfigMap", format!("{name}-asterisk")),
        ("Service", format!("{name}-wss")),
        ("Service", format!("{name}-rtp")),
        ("StatefulSet", name.to_string()),
    ]
}

/// What `webrtc-pbx-operator render` prints for bench PBX `name` in `ns`
/// (the input file is written to `dir`), as YAML text.
fn render_pbx(dir: &std::path::Path, name: &str, ns: &str) -> Vec<u8> {
    render_input(dir, &bench_pbx(name), ns)
}

/// What `webrtc-pbx-operator render` prints for `pbx` in `ns`.
fn render_input(dir: &std::path::Path, pbx: &Pbx, ns: &str) -> Vec<u8> {
    let input = dir.join(format!("{}.yaml", pbx.name()));
    std::fs::write(&input, pbx.json_in(ns).to_string()).unwrap();
    let rendered = Command::new(harness::operator_exe())
        .arg("render")
        .arg(&input)
        .output()
        .unwrap();
    assert!(rendered.status.success());
    rendered.stdout
}

/// Server-side applies one rendered object, as field manager "bench".
async fn ssa(client: &Client, ns: &str, doc: &Value) {
    let name = doc["metadata"]["name"].as_str().unwrap();
    let params = kube::api::PatchParams::apply("bench").force();
    let patch = kube::api::Patch::Apply(doc);
    let c = client.clone();
    match doc["kind"].as_str().unwrap() {
        "Secret" => drop(
            Api::<Secret>::namespaced(c, ns)
                .patch(name, &params, &patch)
                .await
                .unwrap(),
        ),
        "ConfigMap" => drop(
            Api::<ConfigMap>::namespaced(c, ns)
                .patch(name, &params, &patch)
                .await
                .unwrap(),
        ),
        "Service" => drop(
            Api::<Service>::namespaced(c, ns)
                .patch(name, &params, &patch)
                .await
                .unwrap(),
        ),
        _ => drop(
            Api::<StatefulSet>::namespaced(c, ns)
                .patch(name, &params, &patch)
                .await
                .unwrap(),
        ),
    }
}

async fn convergence(rows: &mut Vec<Row>) {
    println!("convergence (20 runs each)");
    let client = harness::client().await;
    let ns = harness::namespace(&client, "bench-conv").await;
    let _operator = harness::operator_binary(&ns, harness::free_port(), None);
    let pbxes = Api::<WebRtcPbx>::namespaced(client.clone(), &ns);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Seen by a watch, as a client waiting for it would (`kubectl wait`):
    // the status is the operator's last write, after every child.
    let mut events = pbxes
        .watch(&kube::api::WatchParams::default().timeout(290), "0")
        .await
        .unwrap()
        .boxed();
    let mut operator_ms = Vec::new();
    let mut sample = None;
    for i in 0..20 {
        let name = format!("c{i}");
        let t0 = Instant::now();
        create(&pbxes, &name).await;
        loop {
            match events.try_next().await.unwrap() {
                Some(kube::api::WatchEvent::Added(p) | kube::api::WatchEvent::Modified(p))
                    if p.name_any() == name
                        && p.status.as_ref().and_then(|s| s.observed_generation) == Some(1) =>
                {
                    sample = Some(Sample {
                        status: serde_json::to_value(&p.status).unwrap(),
                        name: name.clone(),
                    });
                    break;
                }
                Some(_) => {}
                None => panic!("the watch of the PBXs ended"),
            }
        }
        operator_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        assert!(
            all_exist(&client, &ns, &children(&name)).await,
            "{name}: status written before every child"
        );
    }
    // kubectl applying exactly what `render` prints (start-up and discovery
    // included: what a user's own apply costs).
    let raw = harness::namespace(&client, "bench-raw").await;
    let dir = harness::scratch_dir("bench-render");
    let mut kubectl_ms = Vec::new();
    for i in 0..20 {
        let name = format!("r{i}");
        let rendered = render_pbx(&dir, &name, &raw);
        let t0 = Instant::now();
        let mut apply = Command::new(harness::ground_env("KUBECTL"))
            .arg("--kubeconfig")
            .arg(&harness::control_plane().kubeconfig)
            .args(["apply", "--server-side", "--field-manager=bench", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        apply.stdin.take().unwrap().write_all(&rendered).unwrap();
        assert!(apply.wait().unwrap().success());
        kubectl_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    // The floor: the operator's own writes for a new PBX (the create, 7
    // children, the status it wrote) sent straight from this warm client,
    // in the operator's order - the apiserver's time for them, nothing else.
    let floor_pbxes = Api::<WebRtcPbx>::namespaced(client.clone(), &raw);
    let mut floor_ms = Vec::new();
    for i in 0..20 {
        let name = format!("q{i}");
        let work = FloorWork {
            docs: floor_docs(&dir, &name, &raw),
            statuses: sample.iter().map(|s| s.for_pbx(&name)).collect(),
            events: 0,
            name,
        };
        let t0 = Instant::now();
        floor_writes(&client, &floor_pbxes, &raw, &work).await;
        floor_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let floor = median(&mut floor_ms);
    let (op, kc) = (median(&mut operator_ms), median(&mut kubectl_ms));
    row(
        rows,
        "convergence: operator, create -> 7 children and status written, seen by a watch (median)",
        format!("{op:.0} ms"),
        "",
        None,
    );
    row(
        rows,
        "convergence: kubectl apply --server-side of render's 5 objects (median)",
        format!("{kc:.0} ms"),
        "",
        None,
    );
    row(
        rows,
        "convergence baseline: the same writes (create, 7 children in the operator's two stages, status) straight from a warm client (median)",
        format!("{floor:.0} ms"),
        "",
        None,
    );
    row(
        rows,
        "convergence ratio operator / baseline",
        format!("{:.2}", op / floor),
        "<= 1.5",
        Some(op / floor <= 1.5),
    );
    row(
        rows,
        "convergence ratio operator / kubectl",
        format!("{:.2}", op / kc),
        "",
        None,
    );
    harness::remove_dir(&dir);
}

/// Peak resident set of a process (VmHWM), MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmHWM:")
}

/// The resident memory of `pid` now, MiB: anonymous (heap, stacks) and
/// file-backed (mostly the binary's own code).
fn rss_split_mib(pid: u32) -> (f64, f64) {
    (status_mib(pid, "RssAnon:"), status_mib(pid, "RssFile:"))
}

/// A kB field of `/proc/PID/status` (`field` with its colon), MiB; 0
/// when the process is gone.
fn status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// What was requested between two readings, matching `keep`, by method.
fn requested_since(
    before: &Requests,
    after: &Requests,
    keep: impl Fn(&str, &str) -> bool,
) -> std::collections::BTreeMap<String, u64> {
    let mut by_method = std::collections::BTreeMap::new();
    for ((method, resource), n) in after {
        let was = before
            .get(&(method.clone(), resource.clone()))
            .unwrap_or(&0);
        if keep(method, resource) && n > was {
            *by_method.entry(method.clone()).or_insert(0) += n - was;
        }
    }
    by_method
}

fn is_write(method: &str) -> bool {
    ["POST", "PATCH", "PUT", "DELETE"].contains(&method)
}

/// Waits until `n` PBXs of `pbxes` have condition `type_` True, seen by a
/// watch: a LIST of them every 250 ms would cost the apiserver (and this
/// process) more during the operator's run than the baseline pays, which
/// sends no such reads. Returns the status of the first PBX seen so, as
/// the operator wrote it (what the baseline sends).
async fn wait_all(pbxes: &Api<WebRtcPbx>, n: usize, type_: &str, deadline: Instant) -> Sample {
    let mut done = std::collections::BTreeSet::new();
    let mut sample = None;
    let changes = kube::runtime::watcher(pbxes.clone(), Default::default()).applied_objects();
    futures::pin_mut!(changes);
    while done.len() < n {
        let next = tokio::time::timeout_at(deadline.into(), changes.try_next()).await;
        let Ok(next) = next else {
            panic!("{}/{n} {type_} at the deadline", done.len());
        };
        let Some(pbx) = next.unwrap() else {
            panic!("the watch of the PBXs ended");
        };
        let true_now = pbx.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == type_ && c.status == "True")
        });
        if true_now {
            if sample.is_none() {
                sample = Some(Sample {
                    name: pbx.name_any(),
                    status: serde_json::to_value(&pbx.status).unwrap(),
                });
            }
            done.insert(pbx.name_any());
        } else {
            done.remove(&pbx.name_any());
        }
    }
    sample.unwrap()
}

/// One PBX's status as the operator wrote it.
struct Sample {
    name: String,
    status: Value,
}

impl Sample {
    /// The same status for PBX `name`, as a status apply.
    fn for_pbx(&self, name: &str) -> Value {
        let text = self.status.to_string().replace(&self.name, name);
        json!({"apiVersion": "pbx.webrtc.io/v1alpha1", "kind": "WebRtcPbx",
            "status": serde_json::from_str::<Value>(&text).unwrap()})
    }
}

/// What the baseline replays of the operator's run: its writes, by content
/// and count. Every PBX gets the first status the operator wrote; as many
/// as the operator wrote a second status for before the last ConfigRendered
/// (pods turning Ready) get its Ready status; and as many Events are posted.
struct Replay {
    first: Sample,
    ready: Sample,
    second_statuses: usize,
    events: usize,
}

async fn scale_and_churn(rows: &mut Vec<Row>, churn: Duration) {
    const N: usize = 500;
    println!("scale: {N} WebRtcPbx at once, probes off");
    let client = harness::client().await;
    let ns = harness::namespace(&client, "bench-scale").await;
    let port = harness::free_port();
    let log = std::env::temp_dir().join("wpbx-bench-scale-operator.log");
    let _ = std::fs::remove_file(&log);
    println!("  operator log: {}", log.display());
    let mut operator = harness::operator_binary(&ns, port, Some(&log));
    let pid = operator.id();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = api_requests(port);
    let pbxes = Api::<WebRtcPbx>::namespaced(client.clone(), &ns);
    let (operator_cpu, server_cpu) = (cpu_seconds_of(&pid.to_string()), control_plane_cpu());
    let profile = apiserver_profile("scale-operator");
    let t0 = Instant::now();
    futures::stream::iter(0..N)
        .map(|i| {
            let pbxes = pbxes.clone();
            async move {
                let name = format!("s{i:03}");
                create(&pbxes, &name).await;
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let created = t0.elapsed();
    let first = wait_all(&pbxes, N, "ConfigRendered", t0 + Duration::from_secs(600)).await;
    let took = t0.elapsed();
    let operator_cpu =
        cpu_seconds_of(&pid.to_string()).unwrap_or(0.0) - operator_cpu.unwrap_or(0.0);
    let server_cpu = cpu_since(server_cpu);
    let rss = peak_rss_mib(pid);
    let after = api_requests(port);
    let by_method = requested_since(&before, &after, |_, _| true);
    for ((method, resource), n) in &after {
        let was = before
            .get(&(method.clone(), resource.clone()))
            .unwrap_or(&0);
        if n > was {
            println!("    {method} {resource}: {}", n - was);
        }
    }
    let total: u64 = by_method.values().sum();
    let counted = |method: &str, resource: &str| {
        let key = (method.to_string(), resource.to_string());
        after.get(&key).unwrap_or(&0) - before.get(&key).unwrap_or(&0)
    };
    let status_writes = counted("PATCH", "webrtcpbxes/status");
    let events = counted("POST", "events");
    row(
        rows,
        "scale: operator status writes per PBX until then",
        format!("{:.2}", status_writes as f64 / N as f64),
        "",
        None,
    );
    row(
        rows,
        &format!(
            "scale: {N} created (in {:.1} s) -> all ConfigRendered=True",
            created.as_secs_f64()
        ),
        format!("{:.1} s", took.as_secs_f64()),
        "< 30 s",
        Some(took < Duration::from_secs(30)),
    );
    row(
        rows,
        "scale: CPU until then: operator / apiserver / etcd",
        format!(
            "{operator_cpu:.1} s / {:.1} s / {:.1} s",
            server_cpu[0], server_cpu[1]
        ),
        "",
        None,
    );
    row(
        rows,
        "scale: operator peak RSS",
        format!("{rss:.1} MiB"),
        "<= 48 MiB",
        Some(rss <= RSS_TARGET_MIB),
    );
    row(
        rows,
        "scale: operator API requests until then",
        format!(
            "{total} ({:.1} per PBX; {by_method:?})",
            total as f64 / N as f64,
        ),
        "",
        None,
    );

    // Churn: let everything settle (pods Ready), then count writes.
    println!("churn: waiting for the {N} to settle, then counting writes for {churn:?}");
    let ready = wait_all(&pbxes, N, "Ready", t0 + Duration::from_secs(900)).await;
    let settled = t0.elapsed();
    let replay = Replay {
        first,
        ready,
        second_statuses: usize::try_from(status_writes)
            .unwrap_or(0)
            .saturating_sub(N),
        events: usize::try_from(events).unwrap_or(0),
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    let start = api_requests(port);
    tokio::time::sleep(churn).await;
    let end = api_requests(port);
    // The leader's Lease renewals are writes too, but to its own Lease,
    // not to anything it manages: counted apart.
    let sum = |keep: &dyn Fn(&str, &str) -> bool| -> u64 {
        requested_since(&start, &end, keep).values().sum()
    };
    let written = sum(&|m, r| is_write(m) && r != "leases");
    let reads = sum(&|m, r| !is_write(m) && r != "leases");
    let lease = sum(&|_, r| r == "leases");
    row(
        rows,
        &format!(
            "churn: operator writes over {} s with {N} settled (all Ready after {:.0} s)",
            churn.as_secs(),
            settled.as_secs_f64()
        ),
        format!("{written} (and {reads} reads)"),
        "0",
        Some(written == 0),
    );
    row(
        rows,
        "churn: leader Lease requests in the same window (renewals)",
        lease.to_string(),
        "",
        None,
    );
    let settled_rss = peak_rss_mib(pid);
    let (anon, file) = rss_split_mib(pid);
    row(
        rows,
        "churn: operator RSS now: heap and stacks / file-backed (its code)",
        format!("{anon:.1} MiB / {file:.1} MiB"),
        "",
        None,
    );
    row(
        rows,
        "churn: operator peak RSS after settling",
        format!("{settled_rss:.1} MiB"),
        "<= 48 MiB",
        Some(settled_rss <= RSS_TARGET_MIB),
    );

    // A restart with the 500 settled (failover, upgrade): the new process
    // starts from full LISTs. It should write nothing.
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = operator.wait();
    let port = harness::free_port();
    let t1 = Instant::now();
    let second = harness::operator_binary(&ns, port, Some(&log));
    while reconciles(port) < N as u64 {
        assert!(
            t1.elapsed() < Duration::from_secs(300),
            "restart: not every PBX reconciled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reconciled = t1.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let requests = api_requests(port);
    let none = Requests::new();
    let written: u64 = requested_since(&none, &requests, |m, r| is_write(m) && r != "leases")
        .values()
        .sum();
    row(
        rows,
        &format!("restart: a new operator with {N} settled -> every PBX reconciled"),
        format!("{:.1} s", reconciled.as_secs_f64()),
        "",
        None,
    );
    row(
        rows,
        "restart: its writes (Lease apart)",
        written.to_string(),
        "",
        None,
    );
    let restart_rss = peak_rss_mib(second.id());
    row(
        rows,
        "restart: its peak RSS",
        format!("{restart_rss:.1} MiB"),
        "<= 48 MiB",
        Some(restart_rss <= RSS_TARGET_MIB),
    );
    drop(second);
    // The baseline starts from the cluster the operator's run started
    // from: each ClusterIP allocation scans the addresses in use (the
    // apiserver's profile had it at 14 % of the baseline's work beside the
    // operator's 1000 Services, 2 % in the operator's own run).
    let t2 = Instant::now();
    let namespaces = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone());
    namespaces.delete(&ns, &Default::default()).await.unwrap();
    while namespaces.get_opt(&ns).await.unwrap().is_some() {
        assert!(
            t2.elapsed() < Duration::from_secs(300),
            "the scale run's namespace still there"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!(
        "  scale: the run's namespace deleted before the baseline ({:.0} s)",
        t2.elapsed().as_secs_f64()
    );
    let server_cpu = control_plane_cpu();
    let floor_profile = apiserver_profile("scale-baseline");
    let floor = scale_floor(&client, N, &replay).await;
    let server_cpu = cpu_since(server_cpu);
    for p in [profile, floor_profile].into_iter().flatten() {
        let _ = p.wait_with_output();
    }
    row(
        rows,
        &format!(
            "scale baseline: the operator's writes for {N} PBXs (create, 7 objects, its status; {} second statuses, {} Events, as it sent) straight from a warm client, {RECONCILES} at a time",
            replay.second_statuses, replay.events
        ),
        format!("{:.1} s", floor.as_secs_f64()),
        "",
        None,
    );
    row(
        rows,
        "scale baseline: CPU: apiserver / etcd",
        format!("{:.1} s / {:.1} s", server_cpu[0], server_cpu[1]),
        "",
        None,
    );
    let ratio = took.as_secs_f64() / floor.as_secs_f64();
    row(
        rows,
        "scale ratio operator / baseline",
        format!("{ratio:.2}"),
        "<= 1.2",
        Some(ratio <= 1.2),
    );
}

/// The operator's memory target with 500 PBXs, MiB (VmHWM).
const RSS_TARGET_MIB: f64 = 48.0;

/// The operator's reconcile concurrency, which the scale baseline matches.
const RECONCILES: usize = 16;

/// The writes the operator makes for one new bench PBX `name`, rendered
/// by `render`: its 5 objects, and two certificate-sized Secrets (the CA
/// and TLS Secrets, which `render` leaves to the operator).
fn floor_docs(dir: &std::path::Path, name: &str, ns: &str) -> Vec<Value> {
    let rendered = render_pbx(dir, name, ns);
    let mut docs: Vec<Value> =
        serde_saphyr::from_multiple(&String::from_utf8_lossy(&rendered)).unwrap();
    for suffix in ["ca", "tls"] {
        docs.push(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": format!("{name}-{suffix}"), "namespace": ns},
            "stringData": {"tls.crt": "c".repeat(1200), "tls.key": "k".repeat(300)}}));
    }
    docs
}

/// One PBX's writes sent straight from this (warm) client, as the operator
/// sends them: the create, what the pod mounts together, the StatefulSet,
/// then `statuses` and `events` Events about it.
async fn floor_writes(client: &Client, pbxes: &Api<WebRtcPbx>, ns: &str, work: &FloorWork) {
    let name = &work.name;
    create(pbxes, name).await;
    let (mounted, workload): (Vec<&Value>, Vec<&Value>) =
        work.docs.iter().partition(|d| d["kind"] != "StatefulSet");
    futures::future::join_all(mounted.into_iter().map(|d| ssa(client, ns, d))).await;
    for d in workload {
        ssa(client, ns, d).await;
    }
    let params = kube::api::PatchParams::apply(names::FIELD_MANAGER).force();
    let mut pbx = None;
    for status in &work.statuses {
        let written = pbxes
            .patch_status(name, &params, &kube::api::Patch::Apply(status))
            .await
            .unwrap();
        pbx = Some(written);
    }
    let Some(pbx) = pbx else { return };
    let reporter = events::Reporter {
        controller: names::FIELD_MANAGER.into(),
        instance: "bench".into(),
    };
    let api = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), ns);
    for i in 0..work.events {
        let about = ["WorkloadReady", "Ready", "ConfigRendered"][i % 3];
        let event = events::event(
            &kube::Resource::object_ref(&pbx, &()),
            about,
            events::Kind::Normal,
            "Ready",
            &format!("{about} is True: every enabled check passed"),
            &reporter,
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
        api.create(&PostParams::default(), &event).await.unwrap();
    }
}

/// What [`floor_writes`] sends for one PBX.
struct FloorWork {
    name: String,
    docs: Vec<Value>,
    statuses: Vec<Value>,
    events: usize,
}

/// The physical limit of the scale run on this machine, measured in the same
/// run: [`floor_writes`] of what `replay` holds for `n` PBXs, [`RECONCILES`]
/// at a time.
async fn scale_floor(client: &Client, n: usize, replay: &Replay) -> Duration {
    let ns = harness::namespace(client, "bench-scale-raw").await;
    let dir = harness::scratch_dir("bench-scale-render");
    let work: Vec<FloorWork> = (0..n)
        .map(|i| {
            let name = format!("b{i:03}");
            let mut statuses = vec![replay.first.for_pbx(&name)];
            if i < replay.second_statuses {
                statuses.push(replay.ready.for_pbx(&name));
            }
            FloorWork {
                docs: floor_docs(&dir, &name, &ns),
                statuses,
                events: replay.events / n + usize::from(i < replay.events % n),
                name,
            }
        })
        .collect();
    let pbxes = Api::<WebRtcPbx>::namespaced(client.clone(), &ns);
    let t0 = Instant::now();
    futures::stream::iter(&work)
        .map(|work| {
            let (pbxes, ns) = (pbxes.clone(), ns.clone());
            async move { floor_writes(client, &pbxes, &ns, work).await }
        })
        .buffer_unordered(RECONCILES)
        .collect::<Vec<_>>()
        .await;
    let took = t0.elapsed();
    harness::remove_dir(&dir);
    took
}

/// WSS connect + REGISTER of user 1001 without the probe engine (see
/// [`try_raw_register`]). Returns milliseconds.
async fn raw_register(port: u16, ca_pem: &str, cseq_base: u32) -> f64 {
    try_raw_register(port, ca_pem, cseq_base, "1001", false)
        .await
        .unwrap_or_else(|e| panic!("raw REGISTER: {e}"))
}

/// WSS connect + REGISTER without the probe engine: TLS, the WebSocket
/// handshake and two SIP round trips (four with `unregister`, as the
/// engine's probe sends), written plainly with the same libraries, the TCP
/// connect, the TLS handshake and the rest each given the engine's 5 s.
/// Returns milliseconds, or what failed.
async fn try_raw_register(
    port: u16,
    ca_pem: &str,
    cseq_base: u32,
    user: &str,
    unregister: bool,
) -> Result<f64, String> {
    const LIMIT: Duration = Duration::from_secs(5);
    let t0 = Instant::now();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile_certs(ca_pem) {
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::time::timeout(LIMIT, tokio::net::TcpStream::connect(("127.0.0.1", port)))
        .await
        .map_err(|_| "TCP timeout".to_string())?
        .map_err(|e| format!("TCP {}", e.kind()))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let tls = tokio::time::timeout(
        LIMIT,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(DOMAIN.try_into().unwrap(), tcp),
    )
    .await
    .map_err(|_| "TLS timeout".to_string())?
    .map_err(|e| format!("TLS {}", e.kind()))?;
    let request = tokio_tungstenite::tungstenite::http::Request::builder()
        .uri(format!("wss://{DOMAIN}:{port}/ws"))
        .header("Host", format!("{DOMAIN}:{port}"))
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header(
            "Sec-WebSocket-Key",
            tokio_tungstenite::tungstenite::handshake::client::generate_key(),
        )
        .header("Sec-WebSocket-Protocol", "sip")
        .body(())
        .unwrap();
    // The upgrade and each SIP transaction get 5 s in the engine.
    let sip = tokio::time::timeout(LIMIT * 5, async {
        let (mut ws, _) = tokio_tungstenite::client_async(request, tls)
            .await
            .map_err(|e| format!("WebSocket {e}"))?;
        let register = |cseq: u32, expires: u32, auth: Option<String>| {
            format!(
                "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/WSS bench.invalid;branch=z9hG4bK{cseq_base}x{cseq}\r\nMax-Forwards: 70\r\n\
                 From: <sip:{user}@{DOMAIN}>;tag=b{cseq_base}\r\nTo: <sip:{user}@{DOMAIN}>\r\nCall-ID: bench-{cseq_base}\r\nCSeq: {cseq} REGISTER\r\n\
                 Contact: <sip:{user}@bench.invalid;transport=ws>;expires={expires}\r\n{}Expires: {expires}\r\nContent-Length: 0\r\n\r\n",
                auth.map(|a| format!("Authorization: {a}\r\n"))
                    .unwrap_or_default()
            )
        };
        let closed = || "closed before the answer".to_string();
        let password = format!("pw-{user}");
        let creds = digest::Credentials {
            username: user,
            password: &password,
        };
        // Register, then (with `unregister`) unregister, each answering its
        // challenge: the SIP work the engine does for a REGISTER probe.
        let exchanges: &[(u32, u32)] = if unregister { &[(1, 60), (3, 0)] } else { &[(1, 60)] };
        for &(cseq, expires) in exchanges {
            ws.send(Message::text(register(cseq, expires, None)))
                .await
                .map_err(|e| e.to_string())?;
            let challenge = loop {
                if let Message::Text(text) = ws.next().await.ok_or_else(closed)?.map_err(|e| e.to_string())? {
                    let value = text
                        .lines()
                        .find_map(|l| l.strip_prefix("WWW-Authenticate: "))
                        .map(str::to_string);
                    if let Some(v) = value {
                        break digest::parse_challenge(&v).ok_or("no digest challenge")?;
                    }
                }
            };
            let auth = digest::authorization(
                &challenge,
                &creds,
                "REGISTER",
                &format!("sip:{DOMAIN}"),
                "benchcnonce",
                1,
            );
            ws.send(Message::text(register(cseq + 1, expires, Some(auth))))
                .await
                .map_err(|e| e.to_string())?;
            loop {
                if let Message::Text(text) = ws.next().await.ok_or_else(closed)?.map_err(|e| e.to_string())?
                    && text.starts_with("SIP/2.0 200")
                {
                    break;
                }
            }
        }
        let _ = ws.close(None).await;
        Ok::<(), String>(())
    })
    .await
    .map_err(|_| "WebSocket + REGISTER timeout".to_string())?;
    sip.map(|()| t0.elapsed().as_secs_f64() * 1000.0)
}

fn rustls_pemfile_certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.unwrap())
        .collect()
}

/// WSS connect + REGISTER by the probe engine (without the unregister that
/// follows), milliseconds.
async fn engine_register(port: u16, ca_pem: &str) -> f64 {
    let request = probe::Request {
        target: harness::target(port, "/ws", DOMAIN, ca_pem),
        account: Some(register::Account {
            domain: DOMAIN.into(),
            user: "1001".into(),
            password: "pw-1001".into(),
        }),
        echo: None,
        user_call: None,
        metrics: None,
    };
    let t0 = Instant::now();
    let mut ws = match transport::connect(&request.target).await {
        Ok((ws, _, _)) => ws,
        Err((e, _)) => panic!("{e}"),
    };
    let connected = t0.elapsed().as_secs_f64() * 1000.0;
    let account = request.account.as_ref().unwrap();
    let result = register::probe(&mut ws, account, Duration::from_secs(5)).await;
    assert_eq!(result.outcome, register::Outcome::Registered);
    // After the 200 the probe also checks the binding and unregisters, which
    // the raw path does not do: count the REGISTER up to its 200 (from the
    // first request sent), as measured inside the engine.
    connected + result.round_trip_ms.unwrap()
}

/// Users of the concurrent REGISTER probes (a PBX's most); probes beyond
/// share them.
const CONCURRENT_USERS: usize = 1000;

/// Samples of each probe timing.
const PROBE_RUNS: u32 = 50;

async fn probe_cost(rows: &mut Vec<Row>) {
    println!("probe cost (real Asterisk on loopback)");
    let dir = harness::scratch_dir("bench-probe");
    let port = harness::free_port();
    // A user per concurrent probe below, as each PBX has its own probe
    // user: one user's registrations are serialized by Asterisk.
    let users: String = (0..CONCURRENT_USERS)
        .map(|i| format!("    - {{extension: \"{}\"}}\n", 3000 + i))
        .collect();
    let etc = harness::render_config(&dir, DOMAIN, port, &users);
    let ca = harness::write_self_signed(&etc.join("keys"), &[DOMAIN]);
    std::fs::write(dir.join("ca.crt"), &ca).unwrap();
    let mut asterisk = harness::Asterisk::start(&etc);
    asterisk.wait_wss(port, DOMAIN, &ca, Instant::now()).await;
    // Warm up both paths, then alternate them.
    engine_register(port, &ca).await;
    raw_register(port, &ca, 0).await;
    let (mut engine, mut raw) = (Vec::new(), Vec::new());
    for i in 0..PROBE_RUNS {
        engine.push(engine_register(port, &ca).await);
        raw.push(raw_register(port, &ca, i + 1).await);
    }
    let (e, r) = (median(&mut engine), median(&mut raw));
    row(
        rows,
        &format!("probe: WSS connect + REGISTER, probe engine (median of {PROBE_RUNS})"),
        format!("{e:.2} ms"),
        "",
        None,
    );
    row(
        rows,
        &format!(
            "probe: raw TLS + WebSocket handshake + 2 SIP round trips (median of {PROBE_RUNS}, alternating with the engine)"
        ),
        format!("{r:.2} ms"),
        "",
        None,
    );
    row(
        rows,
        "probe: ratio engine / raw",
        format!("{:.2}", e / r),
        "<= 1.2",
        Some(e / r <= 1.2),
    );

    // The same REGISTER by JsSIP in Node.
    let node = Command::new("node")
        .arg(harness::repo().join("benches/jssip-register.cjs"))
        .args([
            &format!("wss://{DOMAIN}:{port}/ws"),
            DOMAIN,
            "1001",
            "pw-1001",
            "20",
        ])
        .arg(dir.join("ca.crt"))
        .env("BROWSER_DIR", harness::ground_env("BROWSER_DIR"))
        .output()
        .unwrap();
    let out: Value = serde_json::from_slice(&node.stdout).unwrap_or_else(|_| {
        panic!(
            "jssip: {}{}",
            String::from_utf8_lossy(&node.stdout),
            String::from_utf8_lossy(&node.stderr)
        )
    });
    let js = out["median_ms"].as_f64().unwrap();
    row(
        rows,
        "probe: the same REGISTER by JsSIP 3.13 in Node 20 (median of 20)",
        format!("{js:.2} ms"),
        "",
        None,
    );
    row(
        rows,
        "probe: ratio engine / JsSIP",
        format!("{:.2}", e / js),
        "",
        None,
    );

    // The most concurrent REGISTER probes from one process with no error,
    // and beside them at each level, against the same Asterisk, the raw
    // client doing the same SIP work: when both fail at a level, the limit
    // is the server's, and the accept queue's overflows say where.
    let levels = [25usize, 50, 100, 250, 500, 1000, 2000];
    let (mut engine_best, mut raw_best, mut first_failures) = (0, 0, String::new());
    let (mut raw_clean, mut overflowed) = (true, false);
    let count = |r: &std::collections::BTreeMap<String, usize>| r.values().sum::<usize>();
    for (level, n) in levels.into_iter().enumerate() {
        // Each burst starts on an Asterisk done with the one before (its
        // session threads and closing sockets), and the two clients take
        // turns going first: neither meets the other's leftovers each time.
        let engine_first = level % 2 == 0;
        let ((engine, engine_s, engine_o), (raw, raw_s, raw_o)) = if engine_first {
            let engine = spaced_burst(engine_burst(port, &ca, n)).await;
            (engine, spaced_burst(raw_burst(port, &ca, n)).await)
        } else {
            let raw = spaced_burst(raw_burst(port, &ca, n)).await;
            (spaced_burst(engine_burst(port, &ca, n)).await, raw)
        };
        println!(
            "  {n} concurrent: engine {} failed in {engine_s:.1} s {engine:?}, {engine_o} accept-queue overflows; \
             raw {} failed in {raw_s:.1} s {raw:?}, {raw_o} overflows",
            count(&engine),
            count(&raw)
        );
        raw_clean &= count(&raw) == 0;
        if raw_clean {
            raw_best = n;
        }
        if count(&engine) > 0 {
            overflowed = engine_o + raw_o > 0;
            first_failures = format!(
                "; at {n}: engine {} failed {engine:?} ({engine_o} accept-queue overflows), raw client {} failed {raw:?} ({raw_o})",
                count(&engine),
                count(&raw)
            );
            break;
        }
        engine_best = n;
    }
    // Met: 1000 with zero errors, or the engine does as well as the raw
    // client against the same Asterisk and the server's accept queue
    // overflowed where it failed (the ceiling is the server's).
    let server_bound = engine_best >= raw_best && overflowed;
    row(
        rows,
        "probe: most concurrent WSS + REGISTER probes from one process with zero errors, each its own user (of 25/50/100/250/500/1000/2000)",
        format!("engine {engine_best}, raw client {raw_best}{first_failures}"),
        ">= 1000, or the raw client's ceiling, the accept queue overflowing (Asterisk listens with a backlog of 10)",
        Some(engine_best >= 1000 || server_bound),
    );
    asterisk.kill();

    // CPU per second of echo call: the probe command in a test host, 10 s.
    let netns = harness::Netns::new("bench-echo");
    let echo_dir = harness::scratch_dir("bench-echo");
    let port = harness::free_port();
    let etc = harness::render_config(&echo_dir, DOMAIN, port, "");
    harness::write_self_signed(&etc.join("keys"), &[DOMAIN]);
    harness::map_media_address(&etc, "127.0.0.1");
    std::fs::copy(etc.join("keys/ca.crt"), echo_dir.join("ca.crt")).unwrap();
    let mut asterisk = harness::Asterisk::start_in(&etc, Some(&netns));
    asterisk.wait_booted();
    let script = format!(
        "{} probe --url wss://{DOMAIN}:{port}/ws --connect-to 127.0.0.1:{port} --ca-file {} --user 1001 --password pw-1001 \
         --echo-extension '*43' --echo-duration 10s --output json >/dev/null; times",
        harness::operator_exe().display(),
        echo_dir.join("ca.crt").display()
    );
    let out = netns
        .command("bash")
        .args(["-c", &script])
        .output()
        .unwrap();
    let times = String::from_utf8_lossy(&out.stdout);
    // `times`: the shell's user/sys, then its children's.
    let seconds = |t: &str| {
        let (m, s) = t.trim_end_matches('s').split_once('m').unwrap();
        m.parse::<f64>().unwrap() * 60.0 + s.parse::<f64>().unwrap()
    };
    let children = times.lines().nth(1).unwrap_or("0m0s 0m0s");
    let cpu: f64 = children.split_whitespace().map(seconds).sum();
    row(
        rows,
        "probe: CPU per second of echo call (10 s call, PCMU 50 pps, DTLS-SRTP; user + sys)",
        format!("{:.1} ms/s", cpu * 1000.0 / 10.0),
        "",
        None,
    );
    asterisk.kill();
    drop(netns);
    harness::remove_dir(&dir);
    harness::remove_dir(&echo_dir);
}

/// `n` concurrent REGISTER probes by the engine, users 3000.. (shared
/// beyond [`CONCURRENT_USERS`]): the failures by reason, as the status
/// would name them.
async fn engine_burst(port: u16, ca: &str, n: usize) -> std::collections::BTreeMap<String, usize> {
    let results: Vec<Option<String>> = futures::stream::iter(0..n)
        .map(|i| async move {
            let user = 3000 + i % CONCURRENT_USERS;
            let report = probe::run(&probe::Request {
                target: harness::target(port, "/ws", DOMAIN, ca),
                account: Some(register::Account {
                    domain: DOMAIN.into(),
                    user: user.to_string(),
                    password: format!("pw-{user}"),
                }),
                echo: None,
                user_call: None,
                metrics: None,
            })
            .await;
            (!report.ok).then(|| match &report.register {
                Some(r) if r.reason != "NotAttempted" => format!("REGISTER {}", r.reason),
                _ => format!("WSS {} ({:?})", report.wss.reason, report.failed_phase),
            })
        })
        .buffer_unordered(n)
        .collect()
        .await;
    tally(results)
}

/// The same by the raw client ([`try_raw_register`]).
async fn raw_burst(port: u16, ca: &str, n: usize) -> std::collections::BTreeMap<String, usize> {
    let results: Vec<Option<String>> = futures::stream::iter(0..n)
        .map(|i| async move {
            let user = (3000 + i % CONCURRENT_USERS).to_string();
            try_raw_register(port, ca, 10_000 + i as u32, &user, true)
                .await
                .err()
        })
        .buffer_unordered(n)
        .collect()
        .await;
    tally(results)
}

/// Runs `burst` 2 s after the one before: its failures, how long it took
/// (s) and the accept-queue overflows meanwhile.
async fn spaced_burst<T>(burst: impl std::future::Future<Output = T>) -> (T, f64, u64) {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (o, t0) = (listen_overflows(), Instant::now());
    let failures = burst.await;
    (failures, t0.elapsed().as_secs_f64(), listen_overflows() - o)
}

/// The kernel's count of connections a full accept queue turned away
/// (`TcpExt: ListenOverflows`, all sockets of this network namespace):
/// Asterisk listens with a backlog of 10 (`listen(fd, 10)` in its
/// tcptls.c, not configurable), so a burst of connects beyond what its
/// accept thread takes in time shows here as SYNs and ACKs dropped, which
/// the client sees as a slow connect or TLS handshake.
fn listen_overflows() -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ListenOverflows")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Failures counted by reason.
fn tally(results: Vec<Option<String>>) -> std::collections::BTreeMap<String, usize> {
    let mut reasons = std::collections::BTreeMap::new();
    for reason in results.into_iter().flatten() {
        *reasons.entry(reason).or_default() += 1;
    }
    reasons
}

/// This process's CPU time (user + system, all threads), seconds.
fn cpu_seconds() -> f64 {
    cpu_seconds_of("self").unwrap()
}

/// The CPU time of process `pid` (a number or `self`), seconds; `None`
/// when it is gone.
fn cpu_seconds_of(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces: state is the
    // first, utime the 12th, stime the 13th; in clock ticks (100 per s).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// With `WPBX_BENCH_PPROF=DIR`: a 15 s CPU profile of the apiserver from
/// now, written to DIR/NAME.pprof (`go tool pprof -top` reads it), to see
/// what a burst of writes costs the server side.
fn apiserver_profile(name: &str) -> Option<std::process::Child> {
    let dir = std::env::var("WPBX_BENCH_PPROF").ok()?;
    std::fs::create_dir_all(&dir).ok()?;
    let out = std::fs::File::create(format!("{dir}/{name}.pprof")).ok()?;
    Command::new(harness::ground_env("KUBECTL"))
        .arg("--kubeconfig")
        .arg(&harness::control_plane().kubeconfig)
        .args(["get", "--raw", "/debug/pprof/profile?seconds=15"])
        .stdout(out)
        .spawn()
        .ok()
}

/// The control plane's CPU since the reading `before`.
fn cpu_since(before: [f64; 2]) -> [f64; 2] {
    let now = control_plane_cpu();
    [now[0] - before[0], now[1] - before[1]]
}

/// The CPU time so far of the control plane's apiserver and etcd,
/// seconds, each: what a burst of writes costs the server side.
fn control_plane_cpu() -> [f64; 2] {
    ["kube-apiserver", "etcd"].map(|name| {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == name)
            })
            .filter_map(|e| cpu_seconds_of(&e.file_name().to_string_lossy()))
            .sum()
    })
}

/// The echo worker: `CALLS,SECONDS,PORT,CA_FILE` - that many concurrent
/// echo calls of users 2000.. against 127.0.0.1:PORT; prints JSON with the
/// calls that were Healthy, the loss over all calls and the CPU the calls
/// took (the process's start left out).
async fn echo_worker(spec: &str) {
    let parts: Vec<&str> = spec.split(',').collect();
    let calls: u32 = parts[0].parse().unwrap();
    let seconds: u64 = parts[1].parse().unwrap();
    let port: u16 = parts[2].parse().unwrap();
    let ca = std::fs::read_to_string(parts[3]).unwrap();
    let request = |user: u32| probe::Request {
        target: harness::target(port, "/ws", DOMAIN, &ca),
        account: Some(register::Account {
            domain: DOMAIN.into(),
            user: user.to_string(),
            password: format!("pw-{user}"),
        }),
        echo: Some(probe::echo::EchoOptions {
            extension: "*43".into(),
            duration: Duration::from_secs(seconds),
            timeout: Duration::from_secs(10),
            media_ip: harness::Netns::MEDIA_ADDRESS.parse().unwrap(),
            max_loss_percent: 100.0,
            max_rtt_ms: 10_000.0,
            min_mos: 1.0,
        }),
        user_call: None,
        metrics: None,
    };
    // Once, before measuring: what a long-lived process pays only once
    // (crypto providers, entropy seeding, the first DTLS certificate).
    let _ = probe::run(&request(2000)).await;
    let cpu = cpu_seconds();
    let started = Instant::now();
    let reports = futures::future::join_all((0..calls).map(|i| {
        let request = request(2000 + i);
        tokio::spawn(async move { probe::run(&request).await })
    }))
    .await;
    let cpu = cpu_seconds() - cpu;
    let results: Vec<&probe::echo::EchoResult> = reports
        .iter()
        .filter_map(|r| r.as_ref().ok()?.echo_result.as_ref())
        .collect();
    let healthy = results
        .iter()
        .filter(|r| r.outcome == probe::echo::EchoOutcome::Healthy)
        .count();
    let (sent, echoed) = results.iter().fold((0u64, 0u64), |(s, e), r| {
        (s + u64::from(r.sent), e + u64::from(r.echoed))
    });
    println!(
        "{}",
        json!({
            "calls": calls, "healthy": healthy, "sent": sent, "echoed": echoed,
            "cpu_seconds": cpu, "wall_seconds": started.elapsed().as_secs_f64(),
        })
    );
}

/// The floor worker: `FLOWS,SECONDS,PORT` - that many tokio tasks, each
/// with a UDP socket sending a 172-byte datagram every 20 ms to the echo
/// server at 127.0.0.1:PORT and reading the echo: the I/O of an echo call
/// (50 packets/s each way) without RTP, SRTP or ICE. Prints the CPU taken.
async fn udp_floor_worker(spec: &str) {
    let parts: Vec<u64> = spec.split(',').map(|p| p.parse().unwrap()).collect();
    let (flows, seconds, port) = (parts[0], parts[1], parts[2] as u16);
    let cpu = cpu_seconds();
    let tasks = (0..flows).map(|_| {
        tokio::spawn(async move {
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            socket.connect(("127.0.0.1", port)).await.unwrap();
            let end = tokio::time::Instant::now() + Duration::from_secs(seconds);
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let (packet, mut buf, mut echoed) = ([0xffu8; 172], [0u8; 2000], 0u64);
            while tokio::time::Instant::now() < end {
                tokio::select! {
                    _ = tick.tick() => { let _ = socket.send(&packet).await; }
                    r = socket.recv(&mut buf) => { if r.is_ok() { echoed += 1; } }
                }
            }
            echoed
        })
    });
    let echoed: u64 = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap_or(0))
        .sum();
    println!(
        "{}",
        json!({"flows": flows, "echoed": echoed, "cpu_seconds": cpu_seconds() - cpu})
    );
}

/// Runs this binary again in `netns` as the worker that env var `var`
/// selects, with `spec`; returns the JSON it prints. A `profiled` worker
/// runs under `perf record` (DWARF stacks) when `WPBX_BENCH_PERF=FILE`.
fn run_worker(netns: &harness::Netns, var: &str, spec: &str, profiled: bool) -> Value {
    let exe = std::env::current_exe().unwrap();
    let perf = std::env::var("WPBX_BENCH_PERF").ok().filter(|_| profiled);
    let mut command = match perf {
        Some(file) => {
            let mut c = netns.command("perf");
            c.args([
                "record",
                "-F",
                "500",
                "--call-graph",
                "dwarf,16384",
                "-o",
                &file,
                "--",
            ])
            .arg(exe);
            c
        }
        None => netns.command(exe),
    };
    let out = command.env(var, spec).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "{var} worker: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// CPU per call-second in one long-lived process, and 100 calls at once.
async fn echo_cpu(rows: &mut Vec<Row>) {
    println!("echo calls in one process (real Asterisk in a test host)");
    const MANY: u32 = 100;
    const SECONDS: u64 = 10;
    const LONE: u64 = 30;
    let netns = harness::Netns::new("bench-echo-many");
    let dir = harness::scratch_dir("bench-echo-many");
    let port = harness::free_port();
    let users: String = (0..MANY)
        .map(|i| format!("    - {{extension: \"{}\"}}\n", 2000 + i))
        .collect();
    let etc = harness::render_config(&dir, DOMAIN, port, &users);
    harness::write_self_signed(&etc.join("keys"), &[DOMAIN]);
    harness::map_media_address(&etc, "127.0.0.1");
    let ca_file = dir.join("ca.crt");
    std::fs::copy(etc.join("keys/ca.crt"), &ca_file).unwrap();
    let mut asterisk = harness::Asterisk::start_in(&etc, Some(&netns));
    asterisk.wait_booted();
    let worker = |calls: u32, seconds: u64| {
        let spec = format!("{calls},{seconds},{port},{}", ca_file.display());
        run_worker(&netns, "WPBX_BENCH_ECHO_WORKER", &spec, true)
    };
    // Calls of two lengths: the difference is the media's cost alone, the
    // rest the setup (REGISTER, INVITE, ICE, DTLS).
    const SHORT: u64 = 2;
    let counts: Vec<u32> = std::env::var("WPBX_BENCH_ECHO_CALLS")
        .map(|v| v.split(',').map(|n| n.parse().unwrap()).collect())
        .unwrap_or(vec![1, MANY]);
    for calls in counts {
        // The process's CPU is counted in 10 ms ticks: a lone call runs
        // longer so that is 0.4 ms/s of its figure, not 1.25.
        let seconds = if calls == 1 { LONE } else { SECONDS };
        let short = worker(calls, SHORT);
        let long = worker(calls, seconds);
        println!("  {calls} at once: {SHORT} s {short}, {seconds} s {long}");
        let cpu = |r: &Value| r["cpu_seconds"].as_f64().unwrap();
        let n = f64::from(calls);
        let media = (cpu(&long) - cpu(&short)) / (n * (seconds - SHORT) as f64);
        let setup = (cpu(&short) / n - media * SHORT as f64).max(0.0);
        let (sent, echoed) = (
            long["sent"].as_f64().unwrap(),
            long["echoed"].as_f64().unwrap(),
        );
        let loss = if sent > 0.0 {
            100.0 * (sent - echoed) / sent
        } else {
            100.0
        };
        row(
            rows,
            &format!(
                "echo: CPU per second of call in one process, {calls} call(s) at once ({seconds} s less {SHORT} s calls: the media alone; PCMU 50 pps, DTLS-SRTP)"
            ),
            format!("{:.1} ms/s", media * 1000.0),
            "<= 2.5 ms/s",
            Some(media * 1000.0 <= 2.5),
        );
        row(
            rows,
            &format!(
                "echo: CPU per call to set it up (REGISTER, INVITE, ICE, DTLS), {calls} at once"
            ),
            format!("{:.0} ms", setup * 1000.0),
            "",
            None,
        );
        row(
            rows,
            &format!("echo: {calls} call(s) of {seconds} s at once: Healthy, and loss over all"),
            format!("{} of {calls}, {loss:.2} %", long["healthy"]),
            if calls == MANY { "all, 0 %" } else { "" },
            (calls == MANY)
                .then(|| long["healthy"].as_u64() == Some(u64::from(calls)) && loss == 0.0),
        );
    }
    asterisk.kill();
    // The floor: the same packets through plain tokio UDP, echoed by a
    // small server in the test host (its CPU not counted), for as many
    // flows as there were calls: a lone flow pays every wakeup alone.
    let echo_port = harness::free_port();
    let mut server = netns
        .command("python3")
        .args([
            "-c",
            "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('127.0.0.1',int(sys.argv[1])))\nwhile True:\n d,a=s.recvfrom(2048)\n s.sendto(d,a)",
            &echo_port.to_string(),
        ])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for (flows, seconds) in [(1, LONE), (MANY, SECONDS)] {
        let floor = run_worker(
            &netns,
            "WPBX_BENCH_UDP_FLOOR",
            &format!("{flows},{seconds},{echo_port}"),
            false,
        );
        println!("  floor, {flows} flow(s): {floor}");
        let per =
            floor["cpu_seconds"].as_f64().unwrap() * 1000.0 / (f64::from(flows) * seconds as f64);
        row(
            rows,
            &format!(
                "echo floor: {flows} flow(s) of 50 packets/s each way through plain tokio UDP in one process (no RTP, SRTP or ICE), per flow-second"
            ),
            format!("{per:.1} ms/s"),
            "",
            None,
        );
    }
    let _ = server.kill();
    let _ = server.wait();
    drop(netns);
    harness::remove_dir(&dir);
}

/// The real node's PBX domain.
const NODE_DOMAIN: &str = "pbx.node.bench.test";
/// Its WSS port (host network, the default mode; pinned: the PBXs of the
/// runs before hold their allocated ports for their drain timeout).
const NODE_WSS_PORT: u16 = 8089;
/// How long one REGISTER attempt of the bare pod's floor waits for each
/// phase: the floor's resolution, with the 50 ms between attempts.
const NODE_ATTEMPT: Duration = Duration::from_millis(300);
/// Timed runs of each kind on the real node (after one warm-up of each).
const NODE_RUNS: usize = 3;

/// The real-node section's PBX: host network and every default, but no
/// echo call, so its Ready=True means WSS and REGISTER answered - what the
/// bare pod it is compared with is timed to.
fn node_pbx(name: &str) -> Pbx {
    Pbx::new(
        name,
        json!({"domain": NODE_DOMAIN, "wss": {"port": NODE_WSS_PORT},
               "probes": {"echoCall": {"enabled": false}}}),
    )
}

/// True once the probe user of the PBX on `ip` is registered. Asterisk
/// ignores SIP until it has booted: an attempt sent before then is given up
/// after [`NODE_ATTEMPT`] and sent again.
async fn node_registered(ip: &str, password: &str) -> bool {
    harness::register_at(
        ip,
        NODE_WSS_PORT,
        NODE_DOMAIN,
        webrtc_pbx_operator::validate::PROBE_USERNAME,
        password,
        NODE_ATTEMPT,
    )
    .await
    .ok
}

/// True once the probe user registers through the WSS Service's cluster IP
/// `ip`, from the node (the project's `probe` command in the node's network
/// namespace, where kube-proxy's rules are), with [`NODE_ATTEMPT`] per
/// phase.
async fn node_registered_through(
    node: &harness::Node,
    ip: &str,
    ca_file: &std::path::Path,
    password: &str,
) -> bool {
    let mut probe = node.command(harness::operator_exe());
    probe
        .args([
            "probe",
            "--url",
            &format!("wss://{NODE_DOMAIN}:{NODE_WSS_PORT}/ws"),
        ])
        .args(["--connect-to", &format!("{ip}:{NODE_WSS_PORT}")])
        .arg("--ca-file")
        .arg(ca_file)
        .args(["--user", webrtc_pbx_operator::validate::PROBE_USERNAME])
        .args(["--password", password])
        .args(["--timeout", &format!("{}ms", NODE_ATTEMPT.as_millis())])
        .args(["--output", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    tokio::process::Command::from(probe)
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// Waits until nothing listens on the node's WSS port and pod `pod` is
/// gone: the next run can bind it.
async fn node_port_free(client: &Client, node: &harness::Node, ns: &str, pod: &str) {
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let gone = matches!(pods.get_opt(pod).await, Ok(None));
        let closed = std::net::TcpStream::connect_timeout(
            &format!("{}:{NODE_WSS_PORT}", node.ip).parse().unwrap(),
            Duration::from_millis(500),
        )
        .is_err();
        if gone && closed {
            return;
        }
        assert!(Instant::now() < deadline, "pod {pod} did not go away");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The floor: what `render` makes for PBX `name` (its ConfigMap, Secret
/// and WSS Service, and a TLS Secret) applied first, then the StatefulSet's
/// pod template created as a bare pod; seconds from the pod's create to the
/// first answered REGISTER of the probe user (polled every 50 ms) at the
/// node's address, and through the WSS Service from the node, as the
/// operator's probe reaches it (which waits for the pod's readiness and
/// kube-proxy's rules).
async fn node_floor_once(
    client: &Client,
    node: &harness::Node,
    ns: &str,
    dir: &std::path::Path,
    name: &str,
) -> (f64, f64) {
    let rendered = render_input(dir, &node_pbx(name), ns);
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&String::from_utf8_lossy(&rendered)).unwrap();
    let secret = docs
        .iter()
        .find(|d| d["kind"] == "Secret")
        .expect("render prints the PBX's Secret");
    let password = match secret["stringData"][names::PROBE_PASSWORD_KEY].as_str() {
        Some(p) => p.to_string(),
        None => {
            use base64::Engine as _;
            let b64 = secret["data"][names::PROBE_PASSWORD_KEY].as_str().unwrap();
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap(),
            )
            .unwrap()
        }
    };
    for doc in docs
        .iter()
        .filter(|d| d["kind"] == "Secret" || d["kind"] == "ConfigMap")
    {
        ssa(client, ns, doc).await;
    }
    let keys = dir.join(format!("{name}-keys"));
    let pem = harness::write_self_signed(&keys, &[NODE_DOMAIN]);
    let key = std::fs::read_to_string(keys.join("tls.key")).unwrap();
    let tls = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": names::tls_secret_name(name), "namespace": ns},
        "stringData": {"tls.crt": pem, "tls.key": key, "ca.crt": pem}});
    ssa(client, ns, &tls).await;
    let template = &docs
        .iter()
        .find(|d| d["kind"] == "StatefulSet")
        .expect("render prints the StatefulSet")["spec"]["template"];
    // The PBX's WSS Service too, selecting the bare pod by the template's
    // labels: the way the operator's probe reaches a PBX.
    let service = docs
        .iter()
        .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == names::wss_service_name(name))
        .expect("render prints the WSS Service");
    ssa(client, ns, service).await;
    let cluster_ip = Api::<Service>::namespaced(client.clone(), ns)
        .get(&names::wss_service_name(name))
        .await
        .unwrap()
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("the WSS Service has a cluster IP");
    let ca_file = keys.join("ca.crt");
    let pod_name = format!("{name}-bare");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": pod_name, "namespace": ns, "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    }))
    .unwrap();
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let t0 = Instant::now();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let stuck = || {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the bare pod never answered REGISTER:\n{}",
            harness::kubectl(&["get", "pods", "-A", "-o", "wide"])
        );
    };
    let direct = async {
        while !node_registered(&node.ip, &password).await {
            stuck();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        t0.elapsed().as_secs_f64()
    };
    let through_service = async {
        while !node_registered_through(node, &cluster_ip, &ca_file, &password).await {
            stuck();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        t0.elapsed().as_secs_f64()
    };
    let took = futures::join!(direct, through_service);
    pods.delete(
        &pod_name,
        &kube::api::DeleteParams::default().grace_period(0),
    )
    .await
    .unwrap();
    node_port_free(client, node, ns, &pod_name).await;
    took
}

/// Seconds from the create of node PBX `name` to Ready=True, and to its
/// pod's Ready condition, polled every 50 ms.
async fn node_operator_once(client: &Client, ns: &str, name: &str) -> (f64, f64) {
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let pod_name = names::pod_name(name);
    let t0 = Instant::now();
    node_pbx(name).create(client, ns).await;
    let mut pod_ready = None;
    loop {
        if pod_ready.is_none()
            && let Ok(Some(pod)) = pods.get_opt(&pod_name).await
            && pod
                .status
                .and_then(|s| s.conditions)
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        {
            pod_ready = Some(t0.elapsed().as_secs_f64());
        }
        let ready = harness::condition(client, ns, name, "Ready").await;
        if ready.as_ref().is_some_and(|(s, _, _)| s == "True") {
            let took = t0.elapsed().as_secs_f64();
            return (took, pod_ready.unwrap_or(took));
        }
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "{name} not Ready: {ready:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deletes node PBX `name` and waits until its pod has let go of the port.
async fn node_delete(client: &Client, node: &harness::Node, ns: &str, name: &str) {
    Api::<WebRtcPbx>::namespaced(client.clone(), ns)
        .delete(name, &Default::default())
        .await
        .unwrap();
    let sets = Api::<StatefulSet>::namespaced(client.clone(), ns);
    harness::wait_until(
        Duration::from_secs(60),
        "the StatefulSet deleted",
        || async { matches!(sets.get_opt(name).await, Ok(None)).then_some(()) },
    )
    .await;
    // Not the pod's 30 s grace: the next run needs the host port now.
    let _ = Api::<Pod>::namespaced(client.clone(), ns)
        .delete(
            &names::pod_name(name),
            &kube::api::DeleteParams::default().grace_period(0),
        )
        .await;
    node_port_free(client, node, ns, &names::pod_name(name)).await;
}

/// SHA-256 fingerprint of the certificate served on the node's WSS port.
fn node_served_certificate(node: &harness::Node) -> String {
    harness::served_certificate(&node.ip, NODE_WSS_PORT, NODE_DOMAIN)
}

/// The kubelet's `syncFrequency` on the ground's node, seconds.
fn kubelet_sync_seconds() -> f64 {
    let config = harness::control_plane().dir.join("node/kubelet.yaml");
    let text =
        std::fs::read_to_string(&config).unwrap_or_else(|e| panic!("{}: {e}", config.display()));
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix("syncFrequency:"))
        .expect("the node's kubelet config sets syncFrequency")
        .trim();
    value
        .strip_suffix('s')
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("syncFrequency {value}: not in seconds"))
}

/// The real-node section, in a process of its own (its ground has a real
/// node, the other sections' has kwok nodes): prints its rows as one JSON
/// line after `ROWS `.
async fn node_worker() {
    let node = harness::real_node();
    let client = harness::client().await;
    harness::install_chart("webrtc-pbx-operator", "webrtc-pbx-system");
    let ns = harness::namespace(&client, "bench-node").await;
    let dir = harness::scratch_dir("bench-node");
    let (mut floor, mut operator, mut pod_ready) = (Vec::new(), Vec::new(), Vec::new());
    let mut floor_service = Vec::new();
    // Run 0 warms both paths up (the image in the page cache, the
    // operator's caches); then they alternate.
    for run in 0..=NODE_RUNS {
        let (f, fs) = node_floor_once(&client, node, &ns, &dir, &format!("f{run}")).await;
        let name = format!("p{run}");
        let (o, p) = node_operator_once(&client, &ns, &name).await;
        eprintln!(
            "  run {run}: bare pod {f:.2} s ({fs:.2} s through its Service), operator {o:.2} s (its pod Ready at {p:.2} s)"
        );
        if run > 0 {
            floor.push(f);
            floor_service.push(fs);
            operator.push(o);
            pod_ready.push(p);
        }
        if run < NODE_RUNS {
            node_delete(&client, node, &ns, &name).await;
        }
    }
    let (f, fs, o, p) = (
        median(&mut floor),
        median(&mut floor_service),
        median(&mut operator),
        median(&mut pod_ready),
    );
    let mut rows = Vec::new();
    row(
        &mut rows,
        &format!(
            "node: a bare pod of the same image and pod spec (render's, its ConfigMap, Secrets and WSS Service applied first), create -> first answered REGISTER at the node's address (median of {NODE_RUNS}; attempts every 50 ms, {} ms each)",
            NODE_ATTEMPT.as_millis()
        ),
        format!("{f:.2} s"),
        "",
        None,
    );
    row(
        &mut rows,
        &format!(
            "node: operator, apply WebRtcPbx (host network, WSS + REGISTER probes) -> Ready=True (median of {NODE_RUNS}; its pod Ready at {p:.2} s)"
        ),
        format!("{o:.2} s"),
        "",
        None,
    );
    row(
        &mut rows,
        &format!(
            "node: the same bare pod, create -> first answered REGISTER through its WSS Service from the node, as the operator's probe reaches a PBX (median of {NODE_RUNS})"
        ),
        format!("{fs:.2} s"),
        "",
        None,
    );
    row(
        &mut rows,
        "node: ratio operator / bare pod at the node's address (the pod's readiness and the Service's routing not included)",
        format!("{:.2}", o / f),
        "",
        None,
    );
    row(
        &mut rows,
        "node: ratio operator / bare pod through its Service",
        format!("{:.2}", o / fs),
        "<= 1.3",
        Some(o / fs <= 1.3),
    );
    // Certificate rotation on the pod that stays: its TLS Secret deleted,
    // the operator issues a new one from its CA; timed to the served one.
    let name = format!("p{NODE_RUNS}");
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    let sync = kubelet_sync_seconds();
    // The kubelet refreshes a Secret volume when it syncs the pod, every
    // syncFrequency with up to 50 % jitter; the reloader looks every 2 s.
    let limit = 1.5 * sync + 2.0 + 1.0;
    let mut rotations = Vec::new();
    for _ in 0..NODE_RUNS {
        let before = node_served_certificate(node);
        assert!(before.contains("Fingerprint"), "nothing served: {before}");
        secrets
            .delete(&names::tls_secret_name(&name), &Default::default())
            .await
            .unwrap();
        let t0 = Instant::now();
        loop {
            let now = node_served_certificate(node);
            if now.contains("Fingerprint") && now != before {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(180),
                "the new certificate was never served"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        rotations.push(t0.elapsed().as_secs_f64());
        eprintln!("  rotation: {:.2} s", t0.elapsed().as_secs_f64());
    }
    let worst = rotations.iter().copied().fold(0.0, f64::max);
    let typical = median(&mut rotations);
    row(
        &mut rows,
        &format!(
            "node: certificate re-issued -> served by the running pod, no restart (median of {NODE_RUNS}; worst {worst:.1} s)"
        ),
        format!("{typical:.1} s"),
        &format!("<= {limit:.0} s (1.5 x kubelet syncFrequency {sync:.0} s + reloader 2 s + 1 s)"),
        Some(worst <= limit),
    );
    harness::remove_dir(&dir);
    let out: Vec<Value> = rows
        .iter()
        .map(|r| json!([r.what, r.figure, r.target, r.verdict]))
        .collect();
    println!("ROWS {}", Value::Array(out));
}

/// Runs the real-node section ([`node_worker`]) and adds its rows.
fn node_section(rows: &mut Vec<Row>) {
    println!("real node: apply -> Ready=True against a bare pod; certificate rotation");
    let out = Command::new(std::env::current_exe().unwrap())
        .env("WPBX_BENCH_NODE_WORKER", "1")
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ROWS "))
        .unwrap_or_else(|| panic!("the real-node worker printed no rows:\n{stdout}"));
    let parsed: Vec<Vec<String>> = serde_json::from_str(line).unwrap();
    for r in parsed {
        let met = match r[3].as_str() {
            "met" => Some(true),
            "MISSED" => Some(false),
            _ => None,
        };
        row(rows, &r[0], r[1].clone(), &r[2], met);
    }
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Ok(spec) = std::env::var("WPBX_BENCH_ECHO_WORKER") {
        echo_worker(&spec).await;
        return;
    }
    if let Ok(spec) = std::env::var("WPBX_BENCH_UDP_FLOOR") {
        udp_floor_worker(&spec).await;
        return;
    }
    if std::env::var("WPBX_BENCH_NODE_WORKER").is_ok() {
        node_worker().await;
        return;
    }
    let only = std::env::var("WPBX_BENCH_ONLY").unwrap_or_default();
    let wanted = |s: &str| only.is_empty() || only.split(',').any(|o| o == s);
    let churn = Duration::from_secs(
        std::env::var("WPBX_BENCH_CHURN_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(600),
    );
    let mut rows = Vec::new();
    let started = Instant::now();
    // First, before this process starts its own (kwok) ground.
    if wanted("node") {
        node_section(&mut rows);
    }
    harness::install_project_crds(&harness::client().await).await;
    // The probe section first: later sections leave the control plane
    // busy with hundreds of PBXs, which would weigh on its timings.
    if wanted("probe") {
        probe_cost(&mut rows).await;
    }
    if wanted("echo") {
        echo_cpu(&mut rows).await;
    }
    if wanted("convergence") {
        convergence(&mut rows).await;
    }
    if wanted("scale") {
        scale_and_churn(&mut rows, churn).await;
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
        / 1024.0;
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .unwrap();
    println!(
        "\nBenchmarks, {} on {cores} cores / {memory:.0} GiB, Kubernetes {} (kwok nodes; a real node for the node rows), Asterisk 22, debug={} ({:.0} s)\n",
        String::from_utf8_lossy(&date.stdout).trim(),
        harness::ground_env("K8S_VERSION"),
        cfg!(debug_assertions),
        started.elapsed().as_secs_f64()
    );
    println!("| benchmark | figure | target | |\n|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} |",
            r.what, r.figure, r.target, r.verdict
        );
    }
}

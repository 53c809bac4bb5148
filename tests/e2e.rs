//! End to end on real pods, real everything: the ground's real node
//! (kubelet, containerd, runc, CNI, kube-proxy, CoreDNS) runs the project's
//! own images, imported, never pulled. The operator is installed by the Helm
//! chart with its default values (two replicas, leader election, the chart's
//! ServiceAccount and RBAC) and probes the PBX from its pod through the
//! `NAME-wss` Service and cluster DNS, as in a user's cluster. The PBX is
//! `deploy/examples/minimal`; the kubelet starts the StatefulSet's pod as
//! rendered (config-reloader sidecar, startup probe, nested mounts, host
//! network). Then faults, one at a time, each named by its condition; and a
//! real browser (headless Chromium with JsSIP) calls the echo extension.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use harness::fixture::Pbx;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod, Secret};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use webrtc_pbx_operator::api::WebRtcPbx;

const NAME: &str = "demo";
const DOMAIN: &str = "pbx.demo.example";
/// The WSS port of the Service-mode PBXs (HostNetwork ones get theirs from
/// the operator's pool: [`Ground::ports`]).
const WSS_PORT: u16 = 8089;
/// The probe interval of the test (the minimum the API allows).
const INTERVAL: Duration = Duration::from_secs(5);
/// Where the chart is installed.
const OPERATOR_NS: &str = "webrtc-pbx-system";
const RELEASE: &str = "webrtc-pbx-operator";

/// The chart, installed once per test binary, as a user installs it.
fn operator() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| harness::install_chart(RELEASE, OPERATOR_NS));
}

struct Ground {
    client: Client,
    ns: String,
    node: &'static harness::Node,
}

impl Ground {
    async fn new(prefix: &str) -> Ground {
        let node = harness::real_node();
        let client = harness::client().await;
        operator();
        let ns = harness::namespace(&client, prefix).await;
        Ground { client, ns, node }
    }

    async fn pbx(&self) -> Option<WebRtcPbx> {
        Api::<WebRtcPbx>::namespaced(self.client.clone(), &self.ns)
            .get_opt(NAME)
            .await
            .ok()
            .flatten()
    }

    /// The demo PBX's WSS port and RTP range as its status shows them (the
    /// minimal example leaves them out: the operator allocates them).
    async fn ports(&self) -> (u16, webrtc_pbx_operator::api::PortRange) {
        harness::host_ports(&self.client, &self.ns, NAME).await
    }

    async fn condition(&self, type_: &str) -> Option<(String, String, String)> {
        harness::condition(&self.client, &self.ns, NAME, type_).await
    }

    async fn pod(&self) -> Option<Pod> {
        Api::<Pod>::namespaced(self.client.clone(), &self.ns)
            .get_opt(&format!("{NAME}-0"))
            .await
            .ok()
            .flatten()
    }

    /// The asterisk container's containerd ID and restart count.
    async fn asterisk_container(&self) -> Option<(String, i32)> {
        let pod = self.pod().await?;
        let c = pod
            .status?
            .container_statuses?
            .into_iter()
            .find(|c| c.name == "asterisk")?;
        let id = c.container_id?.strip_prefix("containerd://")?.to_string();
        Some((id, c.restart_count))
    }

    /// Kills the asterisk container's task (it may be gone already: a
    /// failed kill is no failure); the kubelet restarts it.
    async fn kill_asterisk(&self) {
        if let Some((id, _)) = self.asterisk_container().await {
            let _ = self
                .node
                .ctr()
                .args(["task", "kill", "-s", "SIGKILL", &id])
                .output();
        }
    }

    /// Waits until `type_` has `status` and, if given, `reason`; returns the
    /// time it took.
    async fn wait(
        &self,
        type_: &str,
        status: &str,
        reason: Option<&str>,
        limit: Duration,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let seen = self.condition(type_).await;
            if let Some((s, r, _)) = &seen
                && s == status
                && reason.is_none_or(|want| want == r)
            {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "{type_} did not become {status} ({reason:?}) within {limit:?}; now {seen:?}\n\
                 status: {:#?}\n{}",
                self.pbx().await.and_then(|p| p.status),
                self.diagnostics()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Re-issues the demo PBX's certificate (deletes its Secret; the
    /// operator issues a new one from its CA) and waits until the pod on
    /// `port` serves it; returns the time from the delete.
    async fn reissue_certificate(&self, port: u16, limit: Duration) -> Duration {
        // Blocking (openssl), so a call running on this runtime goes on.
        let served = || {
            let ip = self.node.ip.clone();
            async move {
                tokio::task::spawn_blocking(move || served_certificate(&ip, port))
                    .await
                    .unwrap()
            }
        };
        let before = served().await;
        assert!(
            before.contains("Fingerprint"),
            "a certificate is served: {before}"
        );
        Api::<Secret>::namespaced(self.client.clone(), &self.ns)
            .delete(&format!("{NAME}-tls"), &DeleteParams::default())
            .await
            .unwrap();
        let ((), took) = self
            .until(limit, "the served certificate changed", || async {
                let now = served().await;
                (now.contains("Fingerprint") && now != before).then_some(())
            })
            .await;
        took
    }

    /// Polls `check` until it returns `Some`, failing the test after `limit`
    /// with `what` and the diagnostics; returns the value and the time taken.
    async fn until<T, F, Fut>(&self, limit: Duration, what: &str, mut check: F) -> (T, Duration)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let start = Instant::now();
        loop {
            if let Some(v) = check().await {
                return (v, start.elapsed());
            }
            assert!(
                start.elapsed() < limit,
                "not {what} within {limit:?}:\n{}",
                self.diagnostics()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Pods, the operator's and Asterisk's logs (tails), for failure messages.
    fn diagnostics(&self) -> String {
        let logs = |args: &[&str]| {
            Command::new(harness::ground_env("KUBECTL"))
                .arg("--kubeconfig")
                .arg(&harness::control_plane().kubeconfig)
                .args(args)
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout).into_owned()
                        + &String::from_utf8_lossy(&o.stderr)
                })
                .unwrap_or_default()
        };
        format!(
            "pods:\n{}\noperator:\n{}\nasterisk:\n{}",
            logs(&["get", "pods", "-A", "-o", "wide"]),
            logs(&[
                "logs",
                "-n",
                OPERATOR_NS,
                "-l",
                "app.kubernetes.io/name=webrtc-pbx-operator",
                "--tail",
                "20",
                "--prefix"
            ]),
            logs(&[
                "logs",
                "-n",
                &self.ns,
                &format!("{NAME}-0"),
                "--all-containers",
                "--tail",
                "30",
                "--prefix"
            ]),
        )
    }

    /// The metrics of the leading operator pod (the one that probes), read
    /// from the pod's own address.
    async fn metrics(&self) -> String {
        let pods = Api::<Pod>::namespaced(self.client.clone(), OPERATOR_NS)
            .list(&ListParams::default().labels("app.kubernetes.io/name=webrtc-pbx-operator"))
            .await
            .unwrap();
        pods.items
            .iter()
            .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
            .filter_map(|ip| harness::http_get_at(&format!("{ip}:8080"), "/metrics"))
            .max_by_key(|m| probe_runs(m))
            .unwrap_or_default()
    }

    async fn probe_runs(&self) -> u64 {
        probe_runs(&self.metrics().await)
    }
}

fn probe_runs(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("webrtc_pbx_probe_runs_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Two probe intervals, plus the time limit of the run that sees the change.
fn two_intervals() -> Duration {
    INTERVAL * 2 + Duration::from_secs(3)
}

/// SHA-256 fingerprint of the certificate served on `ip`:`port` for DOMAIN.
fn served_certificate(ip: &str, port: u16) -> String {
    harness::served_certificate(ip, port, DOMAIN)
}

#[tokio::test]
async fn the_operator_proves_a_real_pbx_works_and_names_each_fault() {
    let g = Ground::new("e2e").await;
    let (client, ns, node) = (g.client.clone(), g.ns.clone(), g.node);

    // The minimal example with the probes every 5 s; they dial the Service.
    // The user call (probe user to callee probe through the dialplan) too.
    let (pbx, users) = Pbx::minimal_example(json!({
        "interval": "5s", "timeout": "3s", "echoCall": {"duration": "2s"},
        "userCall": {"enabled": true, "duration": "2s"},
    }));
    let applied = Instant::now();
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &users)
        .await
        .unwrap();
    pbx.create(&client, &ns).await;

    // Ready, with every probe condition True.
    g.wait("Ready", "True", None, Duration::from_secs(90)).await;
    let to_ready = applied.elapsed();
    for type_ in [
        "WssReachable",
        "SipRegistered",
        "EchoCallHealthy",
        "UserCallHealthy",
        "WorkloadReady",
    ] {
        let (s, reason, message) = g.condition(type_).await.unwrap();
        assert_eq!(s, "True", "{type_}: {reason}: {message}");
    }
    // The ports came from the operator's pools (the chart's defaults), and
    // the pod declares the WSS one as a host port.
    let (wss_port, rtp) = g.ports().await;
    assert!((8089..=8999).contains(&wss_port), "{wss_port}");
    assert!(
        rtp.start >= 10000 && rtp.end <= 59999 && rtp.len() == 100,
        "{rtp:?}"
    );
    eprintln!("allocated: WSS {wss_port}, RTP {}-{}", rtp.start, rtp.end);
    // On the real node, in containers containerd started.
    let pod = g.pod().await.unwrap();
    assert_eq!(
        pod.spec.as_ref().unwrap().node_name.as_deref(),
        Some(node.name.as_str())
    );
    let statuses = pod
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .clone()
        .unwrap();
    for c in &statuses {
        assert!(
            c.container_id
                .as_deref()
                .is_some_and(|id| id.starts_with("containerd://")),
            "{}: {:?}",
            c.name,
            c.container_id
        );
        assert!(c.ready, "{} not ready", c.name);
    }
    eprintln!(
        "{}",
        harness::kubectl(&["get", "pod", "-n", &ns, "-o", "wide"])
            + &harness::kubectl(&["get", "wpbx", "-n", &ns])
    );
    let status = g.pbx().await.unwrap().status.unwrap();
    let figures = status.probes.clone().unwrap();
    eprintln!(
        "apply -> Ready=True {:.2} s on real pods; probe from the operator pod: connect {:?} ms, tls {:?} ms, upgrade {:?} ms, REGISTER {:?} ms, echo rtt {:?} ms, loss {:?} %, jitter {:?} ms, MOS {:?}; call setup: invite {:?} ms, ice {:?} ms, dtls {:?} ms, first echo {:?} ms",
        to_ready.as_secs_f64(),
        figures.connect_ms,
        figures.tls_ms,
        figures.upgrade_ms,
        figures.register_ms,
        figures.echo_round_trip_ms,
        figures.loss_percent,
        figures.jitter_ms,
        figures.mos,
        figures.invite_ms,
        figures.ice_ms,
        figures.dtls_ms,
        figures.first_echo_ms
    );
    let call = figures.user_call.clone().unwrap();
    eprintln!("user call between the two probe users on real pods: {call:?}");
    for way in [&call.caller_to_callee, &call.callee_to_caller] {
        let way = way.as_ref().unwrap();
        assert!(way.packets_received > 0, "{call:?}");
        assert!(way.loss_percent.is_some_and(|l| l <= 5.0), "{call:?}");
    }
    assert!(
        call.round_trip_ms.is_some() && call.mos.is_some(),
        "{call:?}"
    );
    assert!(figures.echo_round_trip_ms.is_some() && figures.register_ms.is_some());
    assert_eq!(figures.loss_percent, Some(0.0));
    // A clean call on one node rates near the narrowband ceiling (4.41).
    assert!(figures.mos.is_some_and(|m| m > 4.3), "{figures:?}");
    assert!(
        [
            figures.invite_ms,
            figures.ice_ms,
            figures.dtls_ms,
            figures.first_echo_ms
        ]
        .iter()
        .all(Option::is_some),
        "{figures:?}"
    );
    harness::kubectl(&[
        "wait",
        "--for=condition=Ready",
        &format!("wpbx/{NAME}"),
        "-n",
        &ns,
        "--timeout=10s",
    ]);
    // Blackbox-style metrics, labelled by PBX, from the leader's pod.
    let metrics = g.metrics().await;
    let labels = format!("namespace=\"{ns}\",name=\"{NAME}\"");
    for line in [
        format!("probe_success{{{labels}}} 1"),
        format!("probe_check_success{{{labels},check=\"echo\"}} 1"),
        format!("probe_check_success{{{labels},check=\"user_call\"}} 1"),
    ] {
        assert!(metrics.contains(&line), "{line} not in:\n{metrics}");
    }
    for name in [
        "probe_ssl_earliest_cert_expiry{",
        "probe_phase_duration_seconds{",
        "probe_phase_seconds_bucket{",
        "probe_echo_loss_ratio{",
        "probe_echo_mos{",
        "phase=\"first_echo\"",
    ] {
        assert!(metrics.contains(name), "{name} not in:\n{metrics}");
    }

    // A real browser registers as a user and hears the echo.
    browser_check(&g).await;
    // What client-config prints works in JsSIP, SIP.js and the web phone.
    clients_check(&g).await;

    // The Asterisk container is killed (and again each time the kubelet
    // restarts it): WssReachable=False (ConnectionRefused), then recovery.
    let (_, restarts_before) = g.asterisk_container().await.unwrap();
    let (reason, flip) = g
        .until(Duration::from_secs(60), "WssReachable=False", || async {
            g.kill_asterisk().await;
            let (s, r, _) = g.condition("WssReachable").await?;
            (s == "False").then_some(r)
        })
        .await;
    assert_eq!(reason, "ConnectionRefused", "{}", g.diagnostics());
    let (ready, _, ready_message) = g.condition("Ready").await.unwrap();
    assert_eq!(ready, "False");
    assert!(
        ready_message.contains("ConnectionRefused"),
        "{ready_message}"
    );
    let (_, _, wss_message) = g.condition("WssReachable").await.unwrap();
    assert!(wss_message.contains("2 probes in a row"), "{wss_message}");
    let events = Api::<Event>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("ConnectionRefused")),
        "an Event names the fault"
    );
    // The kubelet restarts it (after its crash-loop back-off).
    let back = g
        .wait("Ready", "True", None, Duration::from_secs(120))
        .await;
    let (_, restarts_after) = g.asterisk_container().await.unwrap();
    assert!(
        restarts_after > restarts_before,
        "the kubelet restarted the container"
    );
    eprintln!(
        "Asterisk container killed -> WssReachable=False (ConnectionRefused) {:.2} s; kubelet restarted it ({} restarts) -> Ready=True {:.2} s later",
        flip.as_secs_f64(),
        restarts_after - restarts_before,
        back.as_secs_f64()
    );

    // A user's password changes: the operator re-renders the Secret, the
    // kubelet updates the volume, the config-reloader reloads Asterisk; the
    // new password registers, the pod is not restarted, Ready never flips.
    let ready_since = ready_transition(&g).await;
    let (container, restarts) = g.asterisk_container().await.unwrap();
    Api::<Secret>::namespaced(client.clone(), &ns)
        .patch(
            "demo-users",
            &PatchParams::default(),
            &Patch::Merge(&json!({"stringData": {"1001": "new-pw-alice"}})),
        )
        .await
        .unwrap();
    let ((), reload) = g
        .until(
            Duration::from_secs(90),
            "the new password accepted",
            || async {
                (register_as(&node.ip, wss_port, "1001", "new-pw-alice").await == "Registered")
                    .then_some(())
            },
        )
        .await;
    assert_eq!(
        register_as(&node.ip, wss_port, "1001", "change-me-alice").await,
        "AuthenticationFailed"
    );
    assert_eq!(
        g.asterisk_container().await.unwrap(),
        (container.clone(), restarts),
        "no container restart for a password change"
    );
    eprintln!(
        "password Secret changed -> new password accepted by the real pod {:.2} s (kubelet volume sync + config-reloader), no restart",
        reload.as_secs_f64()
    );
    let runs = g.probe_runs().await;
    harness::wait_until(two_intervals(), "one more probe run", || async {
        (g.probe_runs().await > runs).then_some(())
    })
    .await;
    assert_eq!(g.condition("Ready").await.unwrap().0, "True");
    assert_eq!(
        ready_transition(&g).await,
        ready_since,
        "Ready never flipped"
    );

    // The certificate is re-issued (its Secret deleted; the operator issues a
    // new one from its CA): the served certificate changes, no restart.
    let rotation = g
        .reissue_certificate(wss_port, Duration::from_secs(90))
        .await;
    assert_eq!(
        g.asterisk_container().await.unwrap(),
        (container, restarts),
        "no container restart for a new certificate"
    );
    eprintln!(
        "certificate re-issued -> served by the real pod {:.2} s, no restart",
        rotation.as_secs_f64()
    );
    g.wait("Ready", "True", None, two_intervals()).await;

    // RTP blocked at the node: the call fails on ICE, REGISTER still works.
    node.drop_udp(&format!("{}-{}", rtp.start, rtp.end));
    let flip = g
        .wait(
            "EchoCallHealthy",
            "False",
            Some("IceFailed"),
            // Each failing run waits out the echo call's 3 s setup limit,
            // then the user call's (its callee's WebSocket and REGISTER
            // first): two such runs before the flip.
            two_intervals() + Duration::from_secs(16),
        )
        .await;
    eprintln!(
        "RTP blocked -> EchoCallHealthy=False (IceFailed) {:.2} s",
        flip.as_secs_f64()
    );
    assert_eq!(g.condition("SipRegistered").await.unwrap().0, "True");
    assert_eq!(g.condition("WssReachable").await.unwrap().0, "True");
    assert_eq!(g.condition("Ready").await.unwrap().0, "False");
    // The call between the two probe users names the same fault.
    g.wait(
        "UserCallHealthy",
        "False",
        Some("IceFailed"),
        two_intervals() + Duration::from_secs(16),
    )
    .await;
    node.allow_all();
    g.wait("EchoCallHealthy", "True", None, two_intervals())
        .await;
    g.wait("UserCallHealthy", "True", None, two_intervals())
        .await;

    // The certificate Secret is replaced by one for another hostname (a new
    // Secret name: the pod is replaced with the new volume).
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["other.example".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &rcgen::Issuer::new(ca, ca_key))
        .unwrap();
    let other: Secret = serde_json::from_value(json!({
        "metadata": {"name": "other-tls"},
        "type": "kubernetes.io/tls",
        "stringData": {
            "tls.crt": leaf.pem(), "tls.key": leaf_key.serialize_pem(), "ca.crt": ca_cert.pem()
        }
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &other)
        .await
        .unwrap();
    Api::<WebRtcPbx>::namespaced(client.clone(), &ns)
        .patch(
            NAME,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"tls": {"mode": "Secret", "secretName": "other-tls"}}})),
        )
        .await
        .unwrap();
    let flip = g
        .wait(
            "WssReachable",
            "False",
            Some("CertificateHostnameMismatch"),
            Duration::from_secs(90),
        )
        .await;
    eprintln!(
        "certificate for another hostname -> WssReachable=False (CertificateHostnameMismatch) {:.2} s",
        flip.as_secs_f64()
    );
    let (_, reason, _) = g.condition("CertificateReady").await.unwrap();
    assert_eq!(reason, "DomainNotCovered");

    // Deleted: probes stop, the pod and every child are gone.
    Api::<WebRtcPbx>::namespaced(client.clone(), &ns)
        .delete(NAME, &DeleteParams::default())
        .await
        .unwrap();
    let deleted = Instant::now();
    harness::wait_until(
        Duration::from_secs(60),
        "pod and children collected",
        || async {
            let sts = Api::<StatefulSet>::namespaced(client.clone(), &ns)
                .get_opt(NAME)
                .await
                .ok()?;
            let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
                .get_opt(&format!("{NAME}-asterisk"))
                .await
                .ok()?;
            let secrets = Api::<Secret>::namespaced(client.clone(), &ns)
                .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={NAME}")))
                .await
                .ok()?;
            let pod = g.pod().await;
            (sts.is_none() && cm.is_none() && secrets.items.is_empty() && pod.is_none())
                .then_some(())
        },
    )
    .await;
    eprintln!(
        "deleted -> pod and children gone {:.2} s",
        deleted.elapsed().as_secs_f64()
    );
    // A run in flight may still finish; none starts afterwards. Counted
    // by this PBX's own series (a run writes them again): the operator's
    // run counter also counts the other e2e tests' PBXs.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let probed = |metrics: String| metrics.contains(&format!("probe_success{{{labels}}}"));
    assert!(
        !probed(g.metrics().await),
        "the PBX's probe series are dropped"
    );
    tokio::time::sleep(INTERVAL * 2).await;
    assert!(
        !probed(g.metrics().await),
        "no probe runs after the PBX is gone"
    );
}

/// Several PBXs per node: five HostNetwork PBXs with WSS ports and RTP
/// ranges of their own on the one real node (their WSS ports declared as
/// host ports, no anti-affinity), all Ready with the operator's probes
/// passing; then an echo call to each at once from the host: every call
/// hears all of its own audio and none of another's (each call marks its
/// packets with an id of its own).
#[tokio::test]
async fn five_host_network_pbxs_share_one_node_and_their_calls_stay_apart() {
    const PBXS: u16 = 5;
    let g = Ground::new("e2e-dense").await;
    let (client, ns, node) = (g.client.clone(), g.ns.clone(), g.node);
    let name = |i: u16| format!("dense-{i}");
    let domain = |i: u16| format!("pbx{i}.dense.example");
    // No ports in the specs: the operator allocates them, all created at
    // once.
    let created = Instant::now();
    futures::future::join_all((0..PBXS).map(|i| {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            Pbx::new(
                &name(i),
                json!({
                    "domain": domain(i),
                    "users": [{"extension": "1001"}],
                    "network": {"mode": "HostNetwork"},
                    "probes": {"interval": "30s", "timeout": "3s", "echoCall": {"duration": "2s"}},
                }),
            )
            .create(&client, &ns)
            .await
        }
    }))
    .await;
    for i in 0..PBXS {
        harness::wait_for_condition(&client, &ns, &name(i), "Ready", "True", None).await;
    }
    let all_ready = created.elapsed();
    let mut ports = Vec::new();
    for i in 0..PBXS {
        let pbx = Api::<WebRtcPbx>::namespaced(client.clone(), &ns)
            .get(&name(i))
            .await
            .unwrap();
        let e = pbx.status.unwrap().endpoints.unwrap();
        let (wss, rtp) = (e.wss_port.unwrap(), e.rtp_port_range.unwrap());
        assert_eq!(e.wss_url, format!("wss://{}:{wss}/ws", domain(i)));
        ports.push((u16::try_from(wss).unwrap(), rtp));
    }
    for (i, a) in ports.iter().enumerate() {
        for b in &ports[i + 1..] {
            assert!(
                a.0 != b.0 && (a.1.end < b.1.start || b.1.end < a.1.start),
                "allocations overlap: {ports:?}"
            );
        }
    }
    let wss_port = |i: u16| ports[usize::from(i)].0;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    let nodes: Vec<_> = pods
        .items
        .iter()
        .map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
        .collect();
    assert_eq!(nodes.len(), usize::from(PBXS), "{nodes:?}");
    assert!(
        nodes
            .iter()
            .all(|n| n.as_deref() == Some(node.name.as_str())),
        "{nodes:?}"
    );
    let mut passwords = Vec::new();
    for i in 0..PBXS {
        passwords.push(harness::probe_password(&client, &ns, &name(i)).await);
    }
    // All five calls at once, 10 s each.
    let calls = futures::future::join_all((0..PBXS).map(|i| {
        let (domain, password) = (domain(i), passwords[usize::from(i)].clone());
        async move {
            let user = webrtc_pbx_operator::validate::PROBE_USERNAME;
            harness::echo_at(&node.ip, wss_port(i), &domain, user, &password, 10).await
        }
    }))
    .await;
    for (i, report) in calls.iter().enumerate() {
        let echo = report.echo_result.as_ref();
        let r = echo.unwrap_or_else(|| panic!("PBX {i}: no call: {report:?}"));
        eprintln!(
            "dense-{i} (wss {}, rtp {}-{}): {}/{} echoed, loss {:?} %, rtt {:?} ms, {} packets of another call",
            wss_port(i as u16),
            ports[i].1.start,
            ports[i].1.end,
            r.echoed,
            r.sent,
            r.loss_percent,
            r.rtt_median_ms,
            r.foreign_packets
        );
        assert_eq!(
            report.echo.as_ref().map(|c| c.reason.as_str()),
            Some("Healthy"),
            "{report:?}"
        );
        assert_eq!(r.foreign_packets, 0, "{report:?}");
        assert!(r.sent >= 450 && r.echoed == r.sent, "{report:?}");
    }
    eprintln!(
        "{PBXS} HostNetwork PBXs on one node: created -> all Ready {:.1} s; five 10 s echo calls at once, none lost or crossed",
        all_ready.as_secs_f64()
    );
    for i in 0..PBXS {
        Api::<WebRtcPbx>::namespaced(client.clone(), &ns)
            .delete(&name(i), &DeleteParams::default())
            .await
            .unwrap();
    }
}

/// Service mode on real pods: the PBX in the pod network (no host network),
/// WSS through its ClusterIP Service (kube-proxy) and cluster DNS, the RTP
/// range as a Service with an endpoint per port; Ready=True with the probes
/// passing from the operator's pod.
/// A PBX in the pod network (no host ports), probed every 5 s with a 2 s
/// echo call: the tests add its users (and TLS).
fn service_mode_pbx() -> Pbx {
    Pbx::new(
        NAME,
        json!({
            "domain": DOMAIN,
            "network": {"mode": "Service"},
            "wss": {"port": WSS_PORT},
            "rtp": {"portRange": {"start": 20000, "end": 20009}},
            "probes": {"interval": "5s", "timeout": "3s", "echoCall": {"duration": "2s"}}
        }),
    )
}

#[tokio::test]
async fn a_service_mode_pbx_runs_in_the_pod_network() {
    let g = Ground::new("e2e-svc").await;
    let (client, ns) = (g.client.clone(), g.ns.clone());
    let users: Secret = serde_json::from_value(json!({
        "metadata": {"name": "demo-users"}, "stringData": {"200": "change-me-reception"}
    }))
    .unwrap();
    let pbx = service_mode_pbx().merged(json!({
        "users": [{"extension": "200", "passwordSecretRef": {"name": "demo-users", "key": "200"}}]
    }));
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &users)
        .await
        .unwrap();
    let applied = Instant::now();
    pbx.create(&client, &ns).await;
    g.wait("Ready", "True", None, Duration::from_secs(90)).await;
    let to_ready = applied.elapsed();
    let pod = g.pod().await.unwrap();
    assert_ne!(pod.spec.as_ref().unwrap().host_network, Some(true));
    let pod_ip = pod.status.as_ref().unwrap().pod_ip.clone().unwrap();
    assert!(
        pod_ip.starts_with("10.244."),
        "a pod-network address: {pod_ip}"
    );
    assert_ne!(pod_ip, g.node.ip);
    // The RTP Service selects the pod on every port of the range.
    let slices = harness::kubectl(&[
        "get",
        "endpointslices",
        "-n",
        &ns,
        "-l",
        &format!("kubernetes.io/service-name={NAME}-rtp"),
        "-o",
        "jsonpath={.items[*].endpoints[*].addresses[*]} {.items[*].ports[*].port}",
    ]);
    assert!(slices.contains(&pod_ip), "RTP Service endpoints: {slices}");
    assert_eq!(
        slices.split_whitespace().count(),
        11,
        "10 RTP ports and the pod: {slices}"
    );
    let figures = g.pbx().await.unwrap().status.unwrap().probes.unwrap();
    assert_eq!(figures.loss_percent, Some(0.0));
    eprintln!(
        "Service mode: apply -> Ready=True {:.2} s, pod {pod_ip}, probe through the ClusterIP Service: REGISTER {:?} ms, echo rtt {:?} ms",
        to_ready.as_secs_f64(),
        figures.register_ms,
        figures.echo_round_trip_ms
    );
    Api::<WebRtcPbx>::namespaced(client.clone(), &ns)
        .delete(NAME, &DeleteParams::default())
        .await
        .unwrap();
}

/// The chart's dashboard panels: (title, unit, query).
fn dashboard_panels() -> Vec<(String, String, String)> {
    let file = harness::repo().join("charts/webrtc-pbx-operator/files/dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (
                text(&p["title"]),
                text(&p["fieldConfig"]["defaults"]["unit"]),
                text(&p["targets"][0]["expr"]),
            )
        })
        .collect()
}

/// The chart's alerts: (name, expression).
fn alert_rules() -> Vec<(String, String)> {
    let file = harness::repo().join("charts/webrtc-pbx-operator/files/alerts.yaml");
    let rules: Value = serde_saphyr::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    rules["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["alert"].as_str().unwrap().to_string(),
                r["expr"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_operator_and_asterisk_and_every_panel_and_alert_answers() {
    let g = Ground::new("e2e-mon").await;
    let (client, ns) = (g.client.clone(), g.ns.clone());
    // The user's own certificate, with 5 days left (outside a 72h renewal
    // window, so the PBX is Ready while the expiry alert fires).
    let issued = time::OffsetDateTime::now_utc() - time::Duration::days(85);
    let key = || webrtc_pbx_operator::certs::generate_key().unwrap();
    let m =
        webrtc_pbx_operator::certs::issue_self_signed(NAME, &[DOMAIN.into()], issued, key(), key())
            .unwrap();
    let tls: Secret = serde_json::from_value(json!({
        "metadata": {"name": "demo-own-tls"}, "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": m.tls_crt, "tls.key": m.tls_key, "ca.crt": m.ca_crt}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &tls)
        .await
        .unwrap();
    service_mode_pbx()
        .merged(json!({
            "tls": {"mode": "Secret", "secretName": "demo-own-tls", "renewBefore": "72h"},
            "users": [{"extension": "200"}]
        }))
        .create(&client, &ns)
        .await;
    g.wait("Ready", "True", None, Duration::from_secs(120))
        .await;
    let pod_ip = g.pod().await.unwrap().status.unwrap().pod_ip.unwrap();
    let operators: Vec<String> = Api::<Pod>::namespaced(client.clone(), OPERATOR_NS)
        .list(&ListParams::default().labels("app.kubernetes.io/name=webrtc-pbx-operator"))
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|p| Some(format!("{}:8080", p.status.as_ref()?.pod_ip.as_ref()?)))
        .collect();
    // What the operator's PodMonitor tells prometheus-operator, as a
    // static job: the pod's WSS port, TLS with the CA, the PBX's own
    // metrics credentials from the operator's Secret.
    let secret = Api::<Secret>::namespaced(client.clone(), &ns)
        .get(&format!("{NAME}-asterisk"))
        .await
        .unwrap()
        .data
        .unwrap();
    let password = String::from_utf8(secret["metrics-password"].0.clone()).unwrap();
    let user = String::from_utf8(secret["metrics-username"].0.clone()).unwrap();
    let alerts = std::fs::read_to_string(
        harness::repo().join("charts/webrtc-pbx-operator/files/alerts.yaml"),
    )
    .unwrap();
    let config = [
        "global: {scrape_interval: 2s, evaluation_interval: 2s}".to_string(),
        "rule_files: [alerts.yaml]".into(),
        "scrape_configs:".into(),
        "- job_name: webrtc-pbx-operator".into(),
        format!("  static_configs: [{{targets: {operators:?}}}]"),
        "- job_name: asterisk".into(),
        "  scheme: https".into(),
        "  metrics_path: /metrics".into(),
        format!("  basic_auth: {{username: {user}, password_file: metrics-password}}"),
        format!("  tls_config: {{ca_file: ca.crt, server_name: {DOMAIN}}}"),
        format!("  static_configs: [{{targets: ['{pod_ip}:{WSS_PORT}'], labels: {{namespace: {ns}, name: {NAME}}}}}]"),
    ]
    .join("\n");
    let prometheus = harness::prometheus::Prometheus::start(
        "e2e-prometheus",
        &config,
        &[
            ("alerts.yaml", &alerts),
            ("metrics-password", &password),
            ("ca.crt", &m.ca_crt),
        ],
    );
    let started = Instant::now();
    let ours = format!("namespace=\"{ns}\", name=\"{NAME}\"");
    // Asterisk scraped straight (res_prometheus) and through the probe.
    prometheus.wait_for(
        &format!("up{{job=\"asterisk\", {ours}}} == 1"),
        Duration::from_secs(30),
    );
    prometheus.wait_for(
        &format!("asterisk_calls_count{{{ours}}}"),
        Duration::from_secs(30),
    );
    prometheus.wait_for(
        &format!("webrtc_pbx_asterisk_uptime_seconds{{{ours}}}"),
        Duration::from_secs(60),
    );
    let panel = |expr: &str| {
        expr.replace("$namespace", &ns)
            .replace("$pbx", NAME)
            .replace("$__rate_interval", "1m")
    };
    let mine = |result: &[Value]| {
        result
            .iter()
            .filter(|r| {
                r["metric"]["namespace"] == ns.as_str() || r["metric"]["namespace"].is_null()
            })
            .count()
    };
    // The chart's panels and alerts, read once.
    let panels = dashboard_panels();
    let rules: std::collections::BTreeMap<String, String> = alert_rules().into_iter().collect();
    let rule = |name: &str| rules[name].clone();
    let expr_of = |title: &str| {
        let (_, _, expr) = panels.iter().find(|(t, _, _)| t == title).unwrap();
        panel(expr)
    };
    let fired = |name: &str| mine(&prometheus.query(&rule(name)));
    // Healthy: every panel but "Conditions not True" has data, and of the
    // alerts only the certificate's fires for this PBX - all at one moment.
    // The other e2e tests load this 2-core machine (Chromium among them), so
    // a probe may time out for a while: the moment is waited for (60 s).
    let healthy = || -> Result<(Vec<String>, f64), String> {
        let mut answered = Vec::new();
        for (title, _, expr) in &panels {
            let result = prometheus.query(&panel(expr));
            let expected = title != "Conditions not True";
            if (mine(&result) > 0) != expected {
                return Err(format!(
                    "panel {title:?} ({expr}) while healthy: {result:?}"
                ));
            }
            answered.push(format!("{title}: {}", result.len()));
        }
        let days = prometheus.query(&expr_of("Certificate days left"));
        let days = days[0]["value"][1]
            .as_str()
            .unwrap()
            .parse::<f64>()
            .unwrap();
        if !(4.9..5.1).contains(&days) {
            return Err(format!("certificate days left: {days}"));
        }
        if fired("WebRtcPbxCertificateExpiringSoon") != 1 {
            return Err("WebRtcPbxCertificateExpiringSoon does not fire".into());
        }
        for quiet in [
            "WebRtcPbxNotReady",
            "WebRtcPbxProbeFailing",
            "WebRtcPbxPoorCallQuality",
            "WebRtcPbxOperatorDown",
            "WebRtcPbxOperatorNoLeader",
        ] {
            if fired(quiet) != 0 {
                return Err(format!("{quiet} while healthy"));
            }
        }
        Ok((answered, days))
    };
    let waited = Instant::now();
    let (answered, days) = loop {
        match healthy() {
            Ok(snapshot) => break snapshot,
            Err(why) if waited.elapsed() < Duration::from_secs(60) => {
                eprintln!("not yet healthy: {why}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(why) => panic!("{why}\n{}", g.diagnostics()),
        }
    };
    let mos = prometheus.query(&format!("probe_echo_mos{{{ours}}}"));
    eprintln!(
        "healthy: panels {answered:?}; certificate {days:.2} days left; MOS {}",
        mos[0]["value"][1]
    );
    // A few more probe runs on the dashboard's picture before the fault.
    tokio::time::sleep(Duration::from_secs(20)).await;

    // Asterisk stopped, and kept stopped (killed again each time the
    // kubelet restarts it) until both expressions have been seen: the
    // kubelet's first restart comes within seconds, and a single kill left
    // a not-Ready window that could close between two scrapes (CI saw
    // NotReady never fire).
    let (_, stopped) = g
        .until(Duration::from_secs(60), "Ready=False", || async {
            g.kill_asterisk().await;
            let (s, _, _) = g.condition("Ready").await?;
            (s == "False").then_some(())
        })
        .await;
    // The probe's verdict follows at its next run.
    let firing = [rule("WebRtcPbxNotReady"), rule("WebRtcPbxProbeFailing")]
        .map(|r| format!("({r}) and on (namespace, name) webrtc_pbx_condition{{{ours}}}"));
    let not_true = expr_of("Conditions not True");
    let down = format!("up{{job=\"asterisk\", {ours}}} == 0");
    let (mut seen, mut conditions, mut scrape_down) = ([false; 2], Vec::new(), false);
    let waited = Instant::now();
    while seen.contains(&false) || mine(&conditions) == 0 {
        g.kill_asterisk().await;
        for (expr, seen) in firing.iter().zip(seen.iter_mut()) {
            *seen |= !prometheus.query(expr).is_empty();
        }
        let now_not_true = prometheus.query(&not_true);
        if mine(&now_not_true) > 0 {
            conditions = now_not_true;
        }
        scrape_down |= !prometheus.query(&down).is_empty();
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "with Asterisk kept down, not every expression fired within 60 s ({firing:?}: {seen:?}, conditions not True: {conditions:?}); targets: {}\n{}",
            prometheus.targets(),
            g.diagnostics()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    eprintln!(
        "Asterisk stopped -> Ready=False {:.1} s, NotReady and ProbeFailing expressions fire, direct scrape seen down: {}; conditions not True: {}",
        stopped.as_secs_f64(),
        scrape_down,
        conditions
            .iter()
            .map(|c| c["metric"]["type"].to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    // The picture: every panel over the run, from what Prometheus holds.
    let seconds = started.elapsed().as_secs_f64() + 10.0;
    let pictured: Vec<harness::prometheus::Panel> = panels
        .into_iter()
        .map(|(title, unit, expr)| harness::prometheus::Panel {
            series: prometheus
                .query_range(&panel(&expr), seconds, 2.0)
                .iter()
                .map(|s| {
                    let m = &s["metric"];
                    let label = ["name", "check", "phase", "type", "category"]
                        .iter()
                        .filter_map(|k| m[*k].as_str())
                        .collect::<Vec<_>>()
                        .join(" ");
                    let points = s["values"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter_map(|p| Some((p[0].as_f64()?, p[1].as_str()?.parse().ok()?)))
                        .collect();
                    (label, points)
                })
                .collect(),
            title,
            unit,
        })
        .collect();
    let png = harness::scratch_dir("dashboard").join("dashboard.png");
    harness::prometheus::screenshot(
        &harness::prometheus::dashboard_page(
            "WebRtcPbx dashboard (charts/webrtc-pbx-operator/files/dashboard.json), from a real Prometheus: healthy, then Asterisk killed",
            &pictured,
        ),
        &png,
        1260,
        1330,
    );
    if std::env::var_os("UPDATE_PICTURES").is_some() {
        std::fs::copy(
            &png,
            harness::repo().join("deploy/monitoring/dashboard.png"),
        )
        .unwrap();
    }
    eprintln!("dashboard picture: {}", png.display());
    Api::<WebRtcPbx>::namespaced(client.clone(), &ns)
        .delete(NAME, &DeleteParams::default())
        .await
        .unwrap();
}

/// Ready's lastTransitionTime.
async fn ready_transition(g: &Ground) -> String {
    let status = g.pbx().await.unwrap().status.unwrap();
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    format!("{:?}", c.last_transition_time)
}

/// REGISTERs as `user` at the node's address through the probe engine;
/// returns the outcome's reason.
async fn register_as(ip: &str, port: u16, user: &str, password: &str) -> String {
    let report =
        harness::register_at(ip, port, DOMAIN, user, password, Duration::from_secs(5)).await;
    report
        .register
        .map(|c| c.reason)
        .unwrap_or(report.wss.reason)
}
/// The Chromium flags every browser check runs with: fake media, the
/// PBX's domain mapped to the node, and trust in exactly the served
/// certificate, as a user who installed the CA would have.
async fn chromium_flags(g: &Ground) -> Vec<String> {
    let tls = Api::<Secret>::namespaced(g.client.clone(), &g.ns)
        .get(&format!("{NAME}-tls"))
        .await
        .unwrap();
    let pem = String::from_utf8(tls.data.unwrap()["tls.crt"].0.clone()).unwrap();
    vec![
        format!("--host-resolver-rules=MAP {DOMAIN} {}", g.node.ip),
        format!(
            "--ignore-certificate-errors-spki-list={}",
            spki_sha256_base64(&pem)
        ),
    ]
}

/// Reads the one `WPBX-RESULT {json}` line a browser check prints to
/// `stream` (or fails with what it printed instead).
fn result_line(
    stream: impl std::io::Read + Send + 'static,
) -> std::sync::mpsc::Receiver<Result<String, String>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut seen = Vec::new();
        for line in std::io::BufReader::new(stream)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(i) = line.find("WPBX-RESULT ") {
                let json = line[i + 12..].trim_end_matches(|c| c != '}').to_string();
                let _ = tx.send(Ok(json));
                return;
            }
            seen.push(line);
        }
        let _ = tx.send(Err(seen.join("\n")));
    });
    rx
}

/// Kills a process group started with `process_group(0)` and reaps its leader.
fn kill_group(child: &mut std::process::Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status();
    let _ = child.wait();
}

/// Opens `page` (from tests/browser, with the client bundles beside it) in
/// headless Chromium, in the node's network namespace (it has no route off
/// the machine), with `fragment`; returns the page's WPBX-RESULT.
async fn browser_page(g: &Ground, page: &str, fragment: &str) -> Value {
    let dir = harness::scratch_dir("browser");
    std::fs::copy(
        harness::repo().join("tests/browser").join(page),
        dir.join(page),
    )
    .unwrap();
    std::fs::copy(harness::ground_env("JSSIP_JS"), dir.join("jssip.js")).unwrap();
    std::fs::copy(harness::ground_env("SIPJS_JS"), dir.join("sipjs.js")).unwrap();
    let mut chromium = g
        .node
        .command(harness::ground_env("CHROMIUM"))
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
            "--disable-features=WebRtcHideLocalIpsWithMdns",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .args(chromium_flags(g).await)
        .arg(format!("file://{}#{fragment}", dir.join(page).display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // A group of its own: Chromium's helper processes go with it.
        .process_group(0)
        .spawn()
        .expect("start chromium (scripts/ground provision browser)");
    let rx = result_line(chromium.stderr.take().unwrap());
    let result = rx.recv_timeout(Duration::from_secs(40));
    kill_group(&mut chromium);
    harness::remove_dir(&dir);
    let json = match result {
        Ok(Ok(json)) => json,
        other => panic!("no result from the browser: {other:?}\n{}", g.diagnostics()),
    };
    serde_json::from_str(&json.replace("\\\"", "\"")).unwrap_or_else(|e| panic!("{e}: {json}"))
}

/// A fragment of `key=value` pairs, form-encoded.
fn fragment_of(pairs: &[(&str, &str)]) -> String {
    let mut f = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        f.append_pair(k, v);
    }
    f.finish()
}

/// Headless Chromium with JsSIP registers as user 1001 with the password
/// from the example at the pod's host address and calls the echo extension
/// with a fake microphone.
async fn browser_check(g: &Ground) {
    let started = Instant::now();
    let url = format!("wss://{DOMAIN}:{}/ws", g.ports().await.0);
    let fragment = fragment_of(&[
        ("url", &url),
        ("domain", DOMAIN),
        ("user", "1001"),
        ("password", "change-me-alice"),
        ("echo", "*43"),
        ("seconds", "4"),
    ]);
    let r = browser_page(g, "echo.html", &fragment).await;
    eprintln!(
        "browser (Chromium + JsSIP): registered at {} ms, call confirmed at {} ms, {} packets echoed back ({}), lost {}, jitter {} s, ICE rtt {} s; total {:.1} s",
        r["registeredAt"],
        r["confirmedAt"],
        r["packetsReceived"],
        r["codec"],
        r["packetsLost"],
        r["jitter"],
        r["rtt"],
        started.elapsed().as_secs_f64()
    );
    assert_eq!(r["ok"], true, "{r}");
    assert!(
        r["packetsReceived"].as_u64().unwrap_or(0) > 100,
        "4 s of audio echoed: {r}"
    );
}

/// `webrtc-pbx-operator client-config -n NS demo USER --format FORMAT [ARGS]`
/// against the ground's apiserver: stdout, stderr.
fn client_config(
    g: &Ground,
    user: &str,
    format: &str,
    args: &[&str],
) -> Result<(String, String), String> {
    let out = Command::new(env!("CARGO_BIN_EXE_webrtc-pbx-operator"))
        .args(["client-config", "-n", &g.ns, NAME, user, "--format", format])
        .args(args)
        .env("KUBECONFIG", &harness::control_plane().kubeconfig)
        .output()
        .unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    if out.status.success() {
        Ok((text(out.stdout), text(out.stderr)))
    } else {
        Err(text(out.stderr))
    }
}

/// What client-config prints, used as a user would: its JsSIP and SIP.js
/// JSON fed unmodified to those libraries in Chromium (each registers and
/// hears the echo), its QR code decoded back to its link, its CA the one
/// that signed the served certificate; then the web phone the PBX serves,
/// opened from those links by two users who call each other.
async fn clients_check(g: &Ground) {
    // A second user, whose password the operator generates.
    let api = Api::<WebRtcPbx>::namespaced(g.client.clone(), &g.ns);
    let mut users = serde_json::to_value(&g.pbx().await.unwrap().spec.users).unwrap();
    users
        .as_array_mut()
        .unwrap()
        .push(json!({"extension": "1002", "displayName": "Bob"}));
    api.patch(
        NAME,
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"users": users}})),
    )
    .await
    .unwrap();
    let (_, took) = g
        .until(
            Duration::from_secs(30),
            "client-config for 1002",
            || async { client_config(g, "1002", "uri", &[]).ok() },
        )
        .await;
    eprintln!(
        "user 1002 added: client-config has it after {:.1} s",
        took.as_secs_f64()
    );
    let missing = client_config(g, "1003", "uri", &[]).unwrap_err();
    assert!(
        missing.contains("has no user 1003; its users: 1001, 1002"),
        "{missing}"
    );

    for lib in ["jssip", "sipjs"] {
        let (json_text, note) = client_config(g, "1001", lib, &[]).unwrap();
        assert!(
            note.contains("--format ca") && note.contains("certutil"),
            "{note}"
        );
        let started = Instant::now();
        let r = browser_page(
            g,
            "client.html",
            &fragment_of(&[("lib", lib), ("config", &json_text), ("seconds", "3")]),
        )
        .await;
        eprintln!(
            "client-config --format {lib} in Chromium: registered at {} ms, echo call confirmed at {} ms, {} packets sent, {} echoed back, lost {}; total {:.1} s",
            r["registeredAt"],
            r["confirmedAt"],
            r["packetsSent"],
            r["packetsReceived"],
            r["packetsLost"],
            started.elapsed().as_secs_f64()
        );
        assert_eq!(r["ok"], true, "{lib}: {r}\n{json_text}");
        assert!(
            r["packetsReceived"].as_u64().unwrap_or(0) > 75,
            "{lib}: 3 s echoed: {r}"
        );
    }

    let links: Vec<(String, String)> = ["1001", "1002"]
        .iter()
        .map(|u| {
            let (text, _) = client_config(g, u, "uri", &[]).unwrap();
            let mut lines = text.lines();
            (
                lines.next().unwrap().to_string(),
                lines.next().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(links[0].0, format!("sip:1001@{DOMAIN}"));
    let phone = format!(
        "https://{DOMAIN}:{}/static/phone/index.html",
        g.ports().await.0
    );
    assert!(
        links[1]
            .1
            .starts_with(&format!("{phone}#user=1002&password=")),
        "{links:?}"
    );
    let status = g.pbx().await.unwrap().status.unwrap();
    assert_eq!(
        status.endpoints.unwrap().phone_url.as_deref(),
        Some(phone.as_str())
    );

    // The QR code, as a phone's camera reads it.
    let dir = harness::scratch_dir("clients");
    let png_path = dir.join("1001.png");
    let (terminal, _) =
        client_config(g, "1001", "qr", &["--output", png_path.to_str().unwrap()]).unwrap();
    assert!(
        terminal.lines().count() > 20 && terminal.contains('▀'),
        "{terminal}"
    );
    assert_eq!(decode_qr(&png_path), links[0].1);

    // The CA: the one the served certificate chains to.
    let (ca, _) = client_config(g, "1001", "ca", &[]).unwrap();
    let tls = Api::<Secret>::namespaced(g.client.clone(), &g.ns)
        .get(&format!("{NAME}-tls"))
        .await
        .unwrap();
    assert_eq!(ca.as_bytes(), tls.data.unwrap()["ca.crt"].0.as_slice());

    // The web phone: A (1001) calls B (1002), both from their links.
    let shot = dir.join("web-phone.png");
    let mut node = g
        .node
        .command("node")
        .arg(harness::repo().join("tests/browser/phone-call.cjs"))
        .args([&links[0].1, &links[1].1, "1002", shot.to_str().unwrap()])
        .args(chromium_flags(g).await)
        .env("PLAYWRIGHT", harness::ground_env("PLAYWRIGHT"))
        .env("CHROMIUM", harness::ground_env("CHROMIUM"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .expect("start node (scripts/ground provision browser)");
    let rx = result_line(node.stdout.take().unwrap());
    let result = rx.recv_timeout(Duration::from_secs(150));
    kill_group(&mut node);
    let json = match result {
        Ok(Ok(json)) => json,
        other => panic!(
            "no result from the web phone: {other:?}\n{}",
            g.diagnostics()
        ),
    };
    let r: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let t = &r["timings"];
    eprintln!(
        "web phone (Chromium, two contexts): pages loaded {} ms, both registered {} ms, B ringing {} ms (call attempts {}, last failure {}), answered {} ms, hung up {} ms; A sent {} / received {} packets, B sent {} / received {} ({}), lost A {} B {}; mic level {}, speaker level {}",
        t["pagesLoaded"],
        t["registered"],
        t["ringing"],
        r["attempts"],
        r["lastFailure"],
        t["answered"],
        t["hungUp"],
        r["a"]["packetsSent"],
        r["a"]["packetsReceived"],
        r["b"]["packetsSent"],
        r["b"]["packetsReceived"],
        r["a"]["codec"],
        r["a"]["packetsLost"],
        r["b"]["packetsLost"],
        r["micLevel"],
        r["speakerLevel"]
    );
    assert_eq!(r["ok"], true, "{r}\n{}", g.diagnostics());
    for side in ["a", "b"] {
        for counter in ["packetsSent", "packetsReceived"] {
            assert!(
                r[side][counter].as_u64().unwrap_or(0) > 100,
                "4 s of audio, {side} {counter}: {r}"
            );
        }
    }
    assert_eq!(
        r["addressBar"],
        phone.as_str(),
        "credentials left in the address bar"
    );
    assert_eq!(r["bAfter"]["callState"], "idle", "{r}");
    assert!(r["micLevel"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    if std::env::var_os("UPDATE_PICTURES").is_some() {
        std::fs::copy(&shot, harness::repo().join("deploy/examples/web-phone.png")).unwrap();
    }
    eprintln!("web phone screenshot: {}", shot.display());
}

/// The text of the one QR code in a PNG (rqrr, as a phone's camera app).
fn decode_qr(path: &std::path::Path) -> String {
    let mut reader = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut buf).unwrap();
    assert_eq!(frame.color_type, png::ColorType::Grayscale);
    let (w, h) = (frame.width as usize, frame.height as usize);
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| buf[y * w + x]);
    let grids = img.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code in {}", path.display());
    grids[0].decode().unwrap().1
}

/// Base64 of the SHA-256 of a certificate's SubjectPublicKeyInfo (Chromium's pin format).
fn spki_sha256_base64(pem: &str) -> String {
    use sha2::Digest;
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    let cert = pem.parse_x509().unwrap();
    use base64::Engine as _;
    base64::prelude::BASE64_STANDARD
        .encode(sha2::Sha256::digest(cert.tbs_certificate.subject_pki.raw))
}

/// A HostNetwork PBX named [`NAME`] with user 1001 (password in Secret
/// `demo-users`), probed every 5 s, draining for `drain`; Ready, with the
/// probe user's password and its allocated WSS port.
async fn live_pbx(g: &Ground, drain: &str) -> (String, u16) {
    let users: Secret = serde_json::from_value(json!({
        "metadata": {"name": "demo-users"}, "stringData": {"1001": "alice-1"}
    }))
    .unwrap();
    Api::<Secret>::namespaced(g.client.clone(), &g.ns)
        .create(&PostParams::default(), &users)
        .await
        .unwrap();
    Pbx::new(
        NAME,
        json!({
            "domain": DOMAIN,
            "users": [{"extension": "1001", "passwordSecretRef": {"name": "demo-users", "key": "1001"}}],
            "drain": {"timeout": drain},
            "probes": {"interval": "5s", "timeout": "3s", "echoCall": {"duration": "2s"}},
        }),
    )
    .create(&g.client, &g.ns)
    .await;
    g.wait("Ready", "True", None, Duration::from_secs(90)).await;
    let password = harness::probe_password(&g.client, &g.ns, NAME).await;
    (password, g.ports().await.0)
}

/// A 60 s echo call from this host to the demo PBX, on its own task.
fn long_call(
    g: &Ground,
    port: u16,
    password: &str,
) -> tokio::task::JoinHandle<(webrtc_pbx_operator::probe::Report, Instant)> {
    let (ip, password) = (g.node.ip.clone(), password.to_string());
    tokio::spawn(async move {
        let user = webrtc_pbx_operator::validate::PROBE_USERNAME;
        let report = harness::echo_at(&ip, port, DOMAIN, user, &password, 60).await;
        (report, Instant::now())
    })
}

/// The echo figures of a finished call, printed.
fn call_figures(
    what: &str,
    report: &webrtc_pbx_operator::probe::Report,
) -> webrtc_pbx_operator::probe::echo::EchoResult {
    let r = report
        .echo_result
        .clone()
        .unwrap_or_else(|| panic!("{what}: no call: {report:?}"));
    eprintln!(
        "{what}: {:?}, {}/{} echoed, loss {:?} %, rtt {:?} ms",
        report.echo.as_ref().map(|c| &c.reason),
        r.echoed,
        r.sent,
        r.loss_percent,
        r.rtt_median_ms
    );
    r
}

/// Changes that Asterisk reloads, made during a 60 s echo call: a user
/// added, a password changed, the certificate re-issued. The call hears
/// all of its audio back, the container never restarts, the new user and
/// password register and new connections get the new certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_call_outlasts_new_users_passwords_and_certificates() {
    let g = Ground::new("e2e-live").await;
    let (password, port) = live_pbx(&g, "5m").await;
    let ip = g.node.ip.clone();
    let container = g.asterisk_container().await.unwrap();
    let call = long_call(&g, port, &password);
    tokio::time::sleep(Duration::from_secs(5)).await;

    // (a) A user added and a password changed.
    let changed = Instant::now();
    Api::<Secret>::namespaced(g.client.clone(), &g.ns)
        .patch(
            "demo-users",
            &PatchParams::default(),
            &Patch::Merge(&json!({"stringData": {"1001": "alice-2", "1002": "bob-1"}})),
        )
        .await
        .unwrap();
    let users = json!({"spec": {"users": [
        {"extension": "1001", "passwordSecretRef": {"name": "demo-users", "key": "1001"}},
        {"extension": "1002", "passwordSecretRef": {"name": "demo-users", "key": "1002"}},
    ]}});
    Api::<WebRtcPbx>::namespaced(g.client.clone(), &g.ns)
        .patch(NAME, &PatchParams::default(), &Patch::Merge(&users))
        .await
        .unwrap();
    let ((), users_applied) = g
        .until(
            Duration::from_secs(40),
            "the new user and password registered",
            || async {
                let bob = register_as(&ip, port, "1002", "bob-1").await;
                let alice = register_as(&ip, port, "1001", "alice-2").await;
                (bob == "Registered" && alice == "Registered").then_some(())
            },
        )
        .await;
    assert_eq!(
        register_as(&ip, port, "1001", "alice-1").await,
        "AuthenticationFailed"
    );

    // (b) The certificate re-issued.
    let rotated = Instant::now();
    let rotation = g.reissue_certificate(port, Duration::from_secs(40)).await;
    let (report, _) = call.await.unwrap();
    let r = call_figures(
        "60 s call through a user added, a password and a certificate",
        &report,
    );
    assert_eq!(
        report.echo.as_ref().map(|c| c.reason.as_str()),
        Some("Healthy"),
        "{report:?}"
    );
    assert!(r.sent >= 2900 && r.echoed == r.sent, "{report:?}");
    assert_eq!(
        g.asterisk_container().await.unwrap(),
        container,
        "no container restart"
    );
    eprintln!(
        "during one 60 s call: user + password applied in {:.1} s, certificate in {:.1} s (started {:.1} s after the user change), no restart",
        users_applied.as_secs_f64(),
        rotation.as_secs_f64(),
        rotated.duration_since(changed).as_secs_f64()
    );
}

/// Moves the demo PBX to WSS port `to` (a change that needs a new pod).
async fn move_port(g: &Ground, to: u16) -> Instant {
    let patch = json!({"spec": {"wss": {"port": to}}});
    Api::<WebRtcPbx>::namespaced(g.client.clone(), &g.ns)
        .patch(NAME, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    Instant::now()
}

/// A change that needs a new pod (the WSS port) during a 60 s call: the old
/// pod drains (WorkloadReady=False, Draining, with the call count), the call
/// runs to its end with all of its audio, and only then is the pod
/// replaced, Ready on the new port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_change_waits_for_the_live_call_before_replacing_the_pod() {
    let g = Ground::new("e2e-drain").await;
    let (password, port) = live_pbx(&g, "3m").await;
    let call = long_call(&g, port, &password);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let to = 8990;
    let changed = move_port(&g, to).await;
    let (message, draining) = g
        .until(
            Duration::from_secs(30),
            "WorkloadReady Draining",
            || async {
                let (_, reason, message) = g.condition("WorkloadReady").await?;
                (reason == "Draining").then_some(message)
            },
        )
        .await;
    eprintln!(
        "{:.1} s after the change: {message}",
        draining.as_secs_f64()
    );
    // The probe reads Asterisk's call count from the draining pod: our
    // call shows (with the probe's own refused attempts, which Asterisk
    // counts until they end).
    let started = Instant::now();
    let active = |message: &str| -> u64 {
        // "... (N calls active at the last probe run ..."
        let before = message.split(" active at").next().unwrap_or_default();
        let count = before.rsplit('(').next().unwrap_or_default();
        let n = count.split_whitespace().next().unwrap_or_default();
        n.parse().unwrap_or(0)
    };
    let calls = loop {
        let (_, reason, message) = g.condition("WorkloadReady").await.unwrap();
        if reason == "Draining" && active(&message) >= 1 {
            break message;
        }
        let status = g.pbx().await.and_then(|p| p.status);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the call not counted within 20 s: {message}\n{:#?}",
            status.map(|s| (s.probes, s.conditions))
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(calls.contains("spec.drain.timeout"), "{calls}");
    // No probe call is placed on the draining pod, and the echo check says
    // why.
    let (echo, _) = g
        .until(
            Duration::from_secs(10),
            "EchoCallHealthy naming the drain",
            || async {
                let (_, reason, message) = g.condition("EchoCallHealthy").await?;
                (reason == "AwaitingProbe" && message.contains("while the pod drains"))
                    .then_some(message)
            },
        )
        .await;
    eprintln!("while draining, EchoCallHealthy: {echo}");
    let (report, ended) = call.await.unwrap();
    let r = call_figures("60 s call through a port change", &report);
    assert_eq!(
        report.echo.as_ref().map(|c| c.reason.as_str()),
        Some("Healthy"),
        "{report:?}"
    );
    assert!(r.sent >= 2900 && r.echoed == r.sent, "{report:?}");
    g.wait("Ready", "True", None, Duration::from_secs(90)).await;
    let ready = Instant::now();
    assert_eq!(g.ports().await.0, to);
    let pod = g.pod().await.unwrap();
    let started = pod.metadata.creation_timestamp.unwrap().0.as_second();
    let call_end = harness::unix_seconds_at(ended);
    assert!(
        started + 1 >= call_end,
        "the new pod (created at {started}) started before the call ended ({call_end})"
    );
    eprintln!(
        "port change -> call ended {:.1} s later (55 s of it left) -> new pod Ready on port {to} {:.1} s after the change",
        ended.duration_since(changed).as_secs_f64(),
        ready.duration_since(changed).as_secs_f64()
    );
}

/// The same change with `drain.timeout: 10s`: the call is hung up when the
/// timeout passes, not before, and the new pod follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_timeout_hangs_up_calls_that_outlast_it() {
    let g = Ground::new("e2e-drain-cut").await;
    let (password, port) = live_pbx(&g, "10s").await;
    let call = long_call(&g, port, &password);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let changed = move_port(&g, 8991).await;
    let (report, ended) = call.await.unwrap();
    let cut = ended.duration_since(changed);
    let r = call_figures("60 s call, drain timeout 10 s", &report);
    assert!(
        matches!(
            r.outcome,
            webrtc_pbx_operator::probe::echo::EchoOutcome::CallDropped { .. }
        ),
        "{report:?}"
    );
    assert!(
        cut >= Duration::from_secs(9) && cut <= Duration::from_secs(20),
        "cut {cut:?} after the change, drain timeout 10 s"
    );
    g.wait("Ready", "True", None, Duration::from_secs(90)).await;
    eprintln!(
        "drain timeout 10 s: the call was cut {:.1} s after the change ({}/{} echoed until then); new pod Ready {:.1} s after the change",
        cut.as_secs_f64(),
        r.echoed,
        r.sent,
        changed.elapsed().as_secs_f64()
    );
}

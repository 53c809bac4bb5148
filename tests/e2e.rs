//! End to end, real everything: the operator binary against the real
//! control plane; the harness plays kubelet and runs real Asterisk 22 on the
//! ConfigMap and Secrets the operator wrote, unmodified, in a test host
//! linked to this one by a veth pair; the operator's probes register and
//! place WebRTC echo calls against it and write what they found into status.
//! Then faults, one at a time, each named by its condition; and a real
//! browser (headless Chromium with JsSIP) calls the echo extension as a user.
mod support;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::kubelet::Kubelet;
use webrtc_pbx_operator::api::WebRtcPbx;
use webrtc_pbx_operator::probe::{register, transport};

const NAME: &str = "demo";
const DOMAIN: &str = "pbx.demo.example";
const WSS_PORT: u16 = 8089;
/// The probe interval of the test (the minimum the API allows).
const INTERVAL: Duration = Duration::from_secs(5);

struct Ground {
    client: Client,
    ns: String,
    metrics_port: u16,
    log: std::path::PathBuf,
}

impl Ground {
    async fn pbx(&self) -> Option<WebRtcPbx> {
        Api::<WebRtcPbx>::namespaced(self.client.clone(), &self.ns)
            .get_opt(NAME)
            .await
            .ok()
            .flatten()
    }

    async fn condition(&self, type_: &str) -> Option<(String, String, String)> {
        support::condition(&self.client, &self.ns, NAME, type_).await
    }

    /// Waits (while playing kubelet) until `type_` has `status` and, if
    /// given, `reason`; returns the time it took.
    async fn wait(
        &self,
        kubelet: &mut Kubelet,
        type_: &str,
        status: &str,
        reason: Option<&str>,
        limit: Duration,
    ) -> Duration {
        let start = Instant::now();
        loop {
            kubelet.sync().await;
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
                 status: {:#?}\noperator log (tail):\n{}\nAsterisk:\n{}",
                self.pbx().await.and_then(|p| p.status),
                tail(&self.log, 30),
                kubelet.asterisk_output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn metrics(&self) -> String {
        support::http_get(self.metrics_port, "/metrics").unwrap_or_default()
    }

    fn probe_runs(&self) -> u64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix("webrtc_pbx_probe_runs_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Two probe intervals, plus the time limit of the run that sees the change.
fn two_intervals() -> Duration {
    INTERVAL * 2 + Duration::from_secs(3)
}

#[tokio::test]
async fn the_operator_proves_a_real_pbx_works_and_names_each_fault() {
    let client = support::client().await;
    support::install_project_crds(&client).await;
    let ns = support::namespace(&client, "e2e").await;
    let dir = support::scratch_dir("e2e");
    let netns = support::Netns::linked("e2e");
    let inside = netns.link.as_ref().unwrap().inside.clone();
    let metrics_port = support::free_port();
    let log = dir.join("operator.log");
    let mut operator = support::operator_binary(&ns, metrics_port, Some(&log));
    let g = Ground {
        client: client.clone(),
        ns: ns.clone(),
        metrics_port,
        log,
    };

    // Apply the example; the harness starts Asterisk on what the operator wrote.
    // The minimal example, with the probes aimed at the test host every 5 s.
    let (pbx, users) = support::minimal_example(json!({
        "interval": "5s", "timeout": "3s",
        "connectAddress": format!("{inside}:{WSS_PORT}"),
        "echoCall": {"duration": "2s"},
    }));
    let applied = Instant::now();
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &users)
        .await
        .unwrap();
    Api::<WebRtcPbx>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &pbx)
        .await
        .unwrap();
    let mut kubelet = Kubelet::start(client.clone(), &ns, NAME, netns, &dir).await;
    let asterisk_up = applied.elapsed();

    // Ready, with every probe condition True, within two probe intervals.
    g.wait(&mut kubelet, "Ready", "True", None, INTERVAL * 2)
        .await;
    let to_ready = applied.elapsed();
    for type_ in ["WssReachable", "SipRegistered", "EchoCallHealthy"] {
        let (s, reason, message) = g.condition(type_).await.unwrap();
        assert_eq!(s, "True", "{type_}: {reason}: {message}");
    }
    let status = g.pbx().await.unwrap().status.unwrap();
    let figures = status.probes.clone().unwrap();
    eprintln!(
        "apply -> Ready=True {:.2} s (Asterisk up after {:.2} s); probe: connect {:?} ms, tls {:?} ms, upgrade {:?} ms, REGISTER {:?} ms, echo rtt {:?} ms, loss {:?} %, jitter {:?} ms",
        to_ready.as_secs_f64(),
        asterisk_up.as_secs_f64(),
        figures.connect_ms,
        figures.tls_ms,
        figures.upgrade_ms,
        figures.register_ms,
        figures.echo_round_trip_ms,
        figures.loss_percent,
        figures.jitter_ms
    );
    assert!(figures.echo_round_trip_ms.is_some() && figures.register_ms.is_some());
    assert_eq!(figures.loss_percent, Some(0.0));
    let out = Command::new(support::ground_env("KUBECTL"))
        .arg("--kubeconfig")
        .arg(&support::control_plane().kubeconfig)
        .args(["wait", "--for=condition=Ready", &format!("wpbx/{NAME}")])
        .args(["-n", &ns, "--timeout=10s"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Blackbox-style metrics, labelled by PBX.
    let metrics = g.metrics();
    let labels = format!("namespace=\"{ns}\",name=\"{NAME}\"");
    for line in [
        format!("probe_success{{{labels}}} 1"),
        format!("probe_check_success{{{labels},check=\"echo\"}} 1"),
    ] {
        assert!(metrics.contains(&line), "{line} not in:\n{metrics}");
    }
    for name in [
        "probe_ssl_earliest_cert_expiry{",
        "probe_phase_duration_seconds{",
        "probe_phase_seconds_bucket{",
        "probe_echo_loss_ratio{",
    ] {
        assert!(metrics.contains(name), "{name} not in:\n{metrics}");
    }

    // A real browser registers as a user and hears the echo.
    browser_check(&g, &kubelet, &inside).await;

    // Asterisk stops: WssReachable=False (ConnectionRefused) and Ready=False.
    kubelet.stop_asterisk();
    let flip = g
        .wait(
            &mut kubelet,
            "WssReachable",
            "False",
            Some("ConnectionRefused"),
            two_intervals(),
        )
        .await;
    let (ready, _, ready_message) = g.condition("Ready").await.unwrap();
    assert_eq!(ready, "False");
    assert!(
        ready_message.contains("ConnectionRefused"),
        "{ready_message}"
    );
    let (_, _, wss_message) = g.condition("WssReachable").await.unwrap();
    assert!(wss_message.contains("2 probes in a row"), "{wss_message}");
    eprintln!(
        "Asterisk stopped -> WssReachable=False {:.2} s",
        flip.as_secs_f64()
    );
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
    kubelet.start_asterisk();
    let back = g
        .wait(&mut kubelet, "Ready", "True", None, two_intervals())
        .await;
    eprintln!(
        "Asterisk restarted -> Ready=True {:.2} s",
        back.as_secs_f64()
    );

    // A user's password changes: the config follows, the PBX stays Ready.
    let ready_since = ready_transition(&g).await;
    Api::<Secret>::namespaced(client.clone(), &ns)
        .patch(
            "demo-users",
            &PatchParams::default(),
            &Patch::Merge(&json!({"stringData": {"1001": "new-pw-alice"}})),
        )
        .await
        .unwrap();
    let changed = Instant::now();
    loop {
        kubelet.sync().await;
        let auth = std::fs::read_to_string(kubelet.etc.join("secrets/pjsip_auth.conf"))
            .unwrap_or_default();
        if auth.contains("new-pw-alice") {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(20),
            "password not rendered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "password Secret changed -> mounted config updated {:.2} s",
        changed.elapsed().as_secs_f64()
    );
    assert_eq!(
        register_as(&inside, "1001", "new-pw-alice").await,
        "Registered"
    );
    assert_eq!(
        register_as(&inside, "1001", "change-me-alice").await,
        "AuthenticationFailed"
    );
    let runs = g.probe_runs();
    support::wait_until(two_intervals(), "one more probe run", || async {
        (g.probe_runs() > runs).then_some(())
    })
    .await;
    assert_eq!(g.condition("Ready").await.unwrap().0, "True");
    assert_eq!(
        ready_transition(&g).await,
        ready_since,
        "Ready never flipped"
    );

    // RTP blocked in the test host: the call fails on ICE, REGISTER still works.
    kubelet.netns.drop_udp("10000-20000");
    let flip = g
        .wait(
            &mut kubelet,
            "EchoCallHealthy",
            "False",
            Some("IceFailed"),
            // Each failing run waits out the call's 3 s setup limit.
            two_intervals() + Duration::from_secs(6),
        )
        .await;
    eprintln!(
        "RTP blocked -> EchoCallHealthy=False (IceFailed) {:.2} s",
        flip.as_secs_f64()
    );
    assert_eq!(g.condition("SipRegistered").await.unwrap().0, "True");
    assert_eq!(g.condition("WssReachable").await.unwrap().0, "True");
    assert_eq!(g.condition("Ready").await.unwrap().0, "False");
    kubelet.netns.allow_all();
    g.wait(
        &mut kubelet,
        "EchoCallHealthy",
        "True",
        None,
        two_intervals(),
    )
    .await;

    // The certificate Secret is replaced by one for another hostname.
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
            &mut kubelet,
            "WssReachable",
            "False",
            Some("CertificateHostnameMismatch"),
            two_intervals(),
        )
        .await;
    eprintln!(
        "certificate for another hostname -> WssReachable=False (CertificateHostnameMismatch) {:.2} s",
        flip.as_secs_f64()
    );
    let (_, reason, _) = g.condition("CertificateReady").await.unwrap();
    assert_eq!(reason, "DomainNotCovered");

    // Deleted: probes stop, children are garbage-collected.
    Api::<WebRtcPbx>::namespaced(client.clone(), &ns)
        .delete(NAME, &DeleteParams::default())
        .await
        .unwrap();
    support::wait_until(Duration::from_secs(30), "children collected", || async {
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
        (sts.is_none() && cm.is_none() && secrets.items.is_empty()).then_some(())
    })
    .await;
    // A run in flight may still finish; none starts afterwards.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let runs = g.probe_runs();
    tokio::time::sleep(INTERVAL * 2).await;
    assert_eq!(g.probe_runs(), runs, "no probe runs after the PBX is gone");
    assert!(
        !g.metrics().contains(&format!("probe_success{{{labels}}}")),
        "the PBX's probe series are dropped"
    );

    let _ = operator.kill();
    let _ = operator.wait();
    kubelet.stop_asterisk();
    std::fs::remove_dir_all(&dir).unwrap();
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

/// REGISTERs as `user` through the probe engine; returns the outcome's reason.
async fn register_as(inside: &str, user: &str, password: &str) -> String {
    let pbx = webrtc_pbx_operator::probe::Request {
        target: transport::Target {
            url: url::Url::parse(&format!("wss://{DOMAIN}:{WSS_PORT}/ws")).unwrap(),
            connect_to: Some(format!("{inside}:{WSS_PORT}")),
            ca_pem: None,
            insecure: true,
            timeout: Duration::from_secs(5),
        },
        account: Some(register::Account {
            domain: DOMAIN.into(),
            user: user.into(),
            password: password.into(),
        }),
        echo: None,
    };
    let report = webrtc_pbx_operator::probe::run(&pbx).await;
    report
        .register
        .map(|c| c.reason)
        .unwrap_or(report.wss.reason)
}

/// Headless Chromium with JsSIP, in the test host (it has no route out),
/// registers as user 1001 with the password from the example and calls the
/// echo extension with a fake microphone.
async fn browser_check(g: &Ground, kubelet: &Kubelet, inside: &str) {
    let dir = support::scratch_dir("browser");
    std::fs::copy(
        support::repo().join("tests/browser/echo.html"),
        dir.join("echo.html"),
    )
    .unwrap();
    std::fs::copy(support::ground_env("JSSIP_JS"), dir.join("jssip.js")).unwrap();
    // Trust exactly the served certificate, as a user who installed the CA would.
    let tls = Api::<Secret>::namespaced(g.client.clone(), &g.ns)
        .get(&format!("{NAME}-tls"))
        .await
        .unwrap();
    let pem = String::from_utf8(tls.data.unwrap()["tls.crt"].0.clone()).unwrap();
    let spki = spki_sha256_base64(&pem);
    let password = "change-me-alice";
    let fragment: String = [
        ("url", format!("wss://{DOMAIN}:{WSS_PORT}/ws")),
        ("domain", DOMAIN.to_string()),
        ("user", "1001".to_string()),
        ("password", password.to_string()),
        ("echo", "*43".to_string()),
        ("seconds", "4".to_string()),
    ]
    .iter()
    .map(|(k, v)| {
        format!(
            "{k}={}",
            url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
        )
    })
    .collect::<Vec<_>>()
    .join("&");
    let started = Instant::now();
    let mut chromium = kubelet
        .netns
        .command(support::ground_env("CHROMIUM"))
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
        .arg(format!("--host-resolver-rules=MAP {DOMAIN} {inside}"))
        .arg(format!("--ignore-certificate-errors-spki-list={spki}"))
        .arg(format!(
            "file://{}#{fragment}",
            dir.join("echo.html").display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // A group of its own: Chromium's helper processes go with it.
        .process_group(0)
        .spawn()
        .expect("start chromium (scripts/ground provision browser)");
    let stderr = chromium.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut seen = Vec::new();
        for line in std::io::BufReader::new(stderr)
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
    let result = rx.recv_timeout(Duration::from_secs(40));
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", chromium.id())])
        .status();
    let _ = chromium.wait();
    let json = match result {
        Ok(Ok(json)) => json,
        other => panic!(
            "no result from the browser: {other:?}\nAsterisk:\n{}",
            kubelet.asterisk_output()
        ),
    };
    let r: Value =
        serde_json::from_str(&json.replace("\\\"", "\"")).unwrap_or_else(|e| panic!("{e}: {json}"));
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
    support::remove_dir(&dir);
}

/// Base64 of the SHA-256 of a certificate's SubjectPublicKeyInfo (Chromium's pin format).
fn spki_sha256_base64(pem: &str) -> String {
    use sha2::Digest;
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    let cert = pem.parse_x509().unwrap();
    base64(&sha2::Sha256::digest(cert.tbs_certificate.subject_pki.raw))
}

/// RFC 4648 base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_matches_rfc_4648_vectors() {
    let vectors = [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ];
    for (input, want) in vectors {
        assert_eq!(base64(input.as_bytes()), want, "{input}");
    }
}

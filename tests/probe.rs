//! The `probe` command against real Asterisk 22: a healthy PBX passes with
//! timings; each fault, produced by a real cause, gets its reason and a
//! non-zero exit.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use serde_json::Value;
use webrtc_pbx_operator::certs;

const DOMAIN: &str = "pbx.probe.test";

fn probe(args: &[&str]) -> (i32, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_webrtc-pbx-operator"))
        .arg("probe")
        .args(args)
        .args(["--output", "json", "--timeout", "3s"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        json,
        stdout + &String::from_utf8_lossy(&out.stderr),
    )
}

fn write_config(dir: &Path, port: u16) -> std::path::PathBuf {
    harness::render_config(dir, DOMAIN, port, "")
}

fn write_config_with(dir: &Path, port: u16, extra_users: &str) -> std::path::PathBuf {
    harness::render_config(dir, DOMAIN, port, extra_users)
}

#[tokio::test]
async fn probe_names_each_fault() {
    let dir = harness::scratch_dir("probe");
    let port = harness::free_port();
    let etc = write_config(&dir, port);
    let ca = harness::write_self_signed(&etc.join("keys"), &[DOMAIN]);
    let ca_file = dir.join("ca.crt");
    std::fs::write(&ca_file, &ca).unwrap();
    let mut asterisk = harness::Asterisk::start(&etc);
    asterisk.wait_wss(port, DOMAIN, &ca, Instant::now()).await;
    let url = format!("wss://{DOMAIN}:{port}/ws");
    let connect_to = format!("127.0.0.1:{port}");
    let ca_arg = ca_file.to_str().unwrap();
    let base = [
        "--url",
        &url,
        "--connect-to",
        &connect_to,
        "--ca-file",
        ca_arg,
    ];

    // Healthy: WSS and REGISTER pass, with timings.
    let (code, json, out) =
        probe(&[&base[..], &["--user", "1001", "--password", "pw-1001"]].concat());
    assert_eq!(code, 0, "{out}");
    assert_eq!(json["wss"]["ok"], true);
    assert_eq!(json["register"]["reason"], "Registered");
    for phase in ["dns_ms", "connect_ms", "tls_ms", "upgrade_ms"] {
        assert!(
            json["timings"][phase].as_f64().is_some(),
            "{phase} missing: {out}"
        );
    }
    assert!(json["register_result"]["round_trip_ms"].as_f64().is_some());
    assert!(
        json["certificate"]["days_to_expiry"]
            .as_i64()
            .is_some_and(|d| d >= 0)
    );

    // Wrong password: 401 again after credentials.
    let (code, json, out) = probe(&[&base[..], &["--user", "1001", "--password", "nope"]].concat());
    assert_eq!(
        (code, json["register"]["reason"].as_str()),
        (1, Some("AuthenticationFailed")),
        "{out}"
    );

    // Wrong path.
    let bad_path = format!("wss://{DOMAIN}:{port}/sip");
    let (code, json, out) = probe(&[
        "--url",
        &bad_path,
        "--connect-to",
        &connect_to,
        "--ca-file",
        ca_arg,
    ]);
    assert_eq!(
        (code, json["wss"]["reason"].as_str()),
        (1, Some("WebSocketPathNotFound")),
        "{out}"
    );

    // Untrusted CA: the system roots do not know it.
    let (code, json, out) = probe(&["--url", &url, "--connect-to", &connect_to]);
    assert_eq!(
        (code, json["wss"]["reason"].as_str()),
        (1, Some("CertificateUntrusted")),
        "{out}"
    );
    assert!(
        json["wss"]["message"].as_str().unwrap().contains("1006"),
        "{out}"
    );

    // The certificate is for another name.
    let other = format!("wss://other.probe.test:{port}/ws");
    let (code, json, out) = probe(&[
        "--url",
        &other,
        "--connect-to",
        &connect_to,
        "--ca-file",
        ca_arg,
    ]);
    assert_eq!(
        (code, json["wss"]["reason"].as_str()),
        (1, Some("CertificateHostnameMismatch")),
        "{out}"
    );

    // --insecure accepts it and still reports the certificate.
    let (code, json, out) = probe(&["--url", &other, "--connect-to", &connect_to, "--insecure"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(json["certificate"]["dns_names"][0], DOMAIN);

    // An expired certificate, rotated in with `core reload`.
    let old = certs::issue_self_signed(
        "p",
        &[DOMAIN.to_string()],
        time::OffsetDateTime::now_utc() - time::Duration::days(200),
        certs::generate_key().unwrap(),
        certs::generate_key().unwrap(),
    )
    .unwrap();
    std::fs::write(etc.join("keys/tls.crt"), &old.tls_crt).unwrap();
    std::fs::write(etc.join("keys/tls.key"), &old.tls_key).unwrap();
    let old_ca = dir.join("old-ca.crt");
    std::fs::write(&old_ca, &old.ca_crt).unwrap();
    asterisk.cli("core reload");
    let (code, json, out) = probe(&[
        "--url",
        &url,
        "--connect-to",
        &connect_to,
        "--ca-file",
        old_ca.to_str().unwrap(),
    ]);
    assert_eq!(
        (code, json["wss"]["reason"].as_str()),
        (1, Some("CertificateExpired")),
        "{out}"
    );

    // Asterisk stopped: refused.
    asterisk.kill();
    let (code, json, out) = probe(&base);
    assert_eq!(
        (code, json["wss"]["reason"].as_str()),
        (1, Some("ConnectionRefused")),
        "{out}"
    );
    assert_eq!(json["failed_phase"], "connect");

    // The table names the failing phase for people.
    let table = Command::new(env!("CARGO_BIN_EXE_webrtc-pbx-operator"))
        .args([
            "probe",
            "--url",
            &url,
            "--connect-to",
            &connect_to,
            "--ca-file",
            ca_arg,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("connect")
            && text.contains("FAIL ConnectionRefused")
            && text.contains("result: FAIL"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_arguments_exit_2_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_webrtc-pbx-operator"))
        .args(["probe", "--url", "https://pbx.test/ws"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("wss://"));
    let out = Command::new(env!("CARGO_BIN_EXE_webrtc-pbx-operator"))
        .args(["probe", "--url", "wss://pbx.test/ws", "--user", "1001"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--password"));
}

#[tokio::test]
async fn one_process_runs_hundreds_of_register_probes_at_once() {
    const N: usize = 200;
    let dir = harness::scratch_dir("probe-many");
    let port = harness::free_port();
    let users: String = (0..N)
        .map(|i| format!("    - {{extension: \"{}\"}}\n", 2000 + i))
        .collect();
    let etc = write_config_with(&dir, port, &users);
    let ca = harness::write_self_signed(&etc.join("keys"), &[DOMAIN]);
    let mut asterisk = harness::Asterisk::start(&etc);
    asterisk.wait_wss(port, DOMAIN, &ca, Instant::now()).await;

    // The subject is this process's concurrency, not Asterisk's accept
    // rate: Asterisk listens with a backlog of 10, so a burst of 200
    // connects loses SYNs and waits for TCP's retransmits (1 s, 3 s, 7 s,
    // 15 s), and how many depends on the CPU the other tests leave it.
    // Each phase gets past the fourth retransmit; the ceiling itself is
    // the bench's concurrent-probes row.
    let mut target = harness::target(port, "/ws", DOMAIN, &ca);
    target.timeout = std::time::Duration::from_secs(16);
    let started = Instant::now();
    let probes = (0..N).map(|i| {
        let request = webrtc_pbx_operator::probe::Request {
            target: target.clone(),
            account: Some(webrtc_pbx_operator::probe::register::Account {
                domain: DOMAIN.into(),
                user: (2000 + i).to_string(),
                password: format!("pw-{}", 2000 + i),
            }),
            echo: None,
            user_call: None,
            metrics: None,
        };
        tokio::spawn(async move { webrtc_pbx_operator::probe::run(&request).await })
    });
    let reports = futures::future::join_all(probes).await;
    let elapsed = started.elapsed();
    let failed: Vec<String> = reports
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .filter(|r| !r.ok)
        .map(|r| {
            format!(
                "{}/{}",
                r.wss.reason,
                r.register
                    .as_ref()
                    .map(|c| c.reason.clone())
                    .unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(reports.len(), N);
    assert!(
        failed.is_empty(),
        "{} of {N} concurrent probes failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );
    eprintln!("{N} concurrent WSS + REGISTER probes from one process: all passed in {elapsed:?}");
    asterisk.kill();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_frozen_pbx_times_out_in_the_phase_it_froze() {
    let dir = harness::scratch_dir("probe-frozen");
    let port = harness::free_port();
    let etc = write_config(&dir, port);
    let ca = harness::write_self_signed(&etc.join("keys"), &[DOMAIN]);
    let mut asterisk = harness::Asterisk::start(&etc);
    asterisk.wait_wss(port, DOMAIN, &ca, Instant::now()).await;
    let mut target = harness::target(port, "/ws", DOMAIN, &ca);
    target.timeout = std::time::Duration::from_secs(1);
    let account = webrtc_pbx_operator::probe::register::Account {
        domain: DOMAIN.into(),
        user: "1001".into(),
        password: "pw-1001".into(),
    };

    // Frozen after the WebSocket opened: REGISTER gets no answer.
    let (mut ws, _, _) = webrtc_pbx_operator::probe::transport::connect(&target)
        .await
        .unwrap();
    asterisk.freeze();
    let r = webrtc_pbx_operator::probe::register::probe(&mut ws, &account, target.timeout).await;
    assert_eq!(
        r.outcome,
        webrtc_pbx_operator::probe::register::Outcome::Timeout
    );

    // Frozen before: the kernel accepts TCP, the TLS handshake hangs.
    let report = webrtc_pbx_operator::probe::run(&webrtc_pbx_operator::probe::Request {
        target,
        account: Some(account),
        echo: None,
        user_call: None,
        metrics: None,
    })
    .await;
    asterisk.thaw();
    assert_eq!(report.wss.reason, "ConnectTimeout", "{report:?}");
    assert_eq!(
        report.failed_phase,
        Some(webrtc_pbx_operator::probe::transport::Phase::Tls)
    );
    assert!(
        report.wss.message.contains("TLS handshake"),
        "{}",
        report.wss.message
    );
    asterisk.kill();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn echo_call_hears_its_audio_back() {
    let dir = harness::scratch_dir("probe-echo");
    let port = harness::free_port();
    let etc = write_config(&dir, port);
    let ca = harness::write_self_signed(&etc.join("keys"), &[DOMAIN]);
    let ca_file = dir.join("ca.crt");
    std::fs::write(&ca_file, &ca).unwrap();
    // Asterisk offers the namespace's non-loopback address; map it to loopback.
    harness::map_media_address(&etc, "127.0.0.1");
    let netns = harness::Netns::new("echo");
    let mut asterisk = harness::Asterisk::start_in(&etc, Some(&netns));
    asterisk.wait_booted();
    let url = format!("wss://{DOMAIN}:{port}/ws");
    let out = netns
        .command(env!("CARGO_BIN_EXE_webrtc-pbx-operator"))
        .args([
            "probe",
            "--url",
            &url,
            "--connect-to",
            &format!("127.0.0.1:{port}"),
        ])
        .args([
            "--ca-file",
            ca_file.to_str().unwrap(),
            "--user",
            "1001",
            "--password",
            "pw-1001",
        ])
        .args([
            "--echo-extension",
            "*43",
            "--echo-duration",
            "10s",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    assert_eq!(
        json["echo"]["reason"],
        "Healthy",
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        asterisk.output()
    );
    let r = &json["echo_result"];
    eprintln!(
        "echo call: {}/{} echoed, loss {}%, rtt median {} ms p95 {} ms, jitter {} ms, setup {} ms",
        r["echoed"],
        r["sent"],
        r["loss_percent"],
        r["rtt_median_ms"],
        r["rtt_p95_ms"],
        r["jitter_ms"],
        r["setup_ms"]
    );
    assert!(
        r["sent"].as_u64().unwrap() >= 450,
        "10 s of 20 ms frames: {r}"
    );
    assert_eq!(r["loss_percent"].as_f64(), Some(0.0), "{r}");
    assert_eq!(out.status.code(), Some(0));
    asterisk.kill();
    drop(netns);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Starts Asterisk in a test host with `mapping` as the ICE host-candidate
/// target of the host's media address; returns what the echo probe needs.
fn echo_ground(
    name: &str,
    extra_users: &str,
    mapping: &str,
) -> (std::path::PathBuf, u16, harness::Netns, harness::Asterisk) {
    let dir = harness::scratch_dir(name);
    let port = harness::free_port();
    let etc = write_config_with(&dir, port, extra_users);
    let ca = harness::write_self_signed(&etc.join("keys"), &[DOMAIN]);
    std::fs::write(dir.join("ca.crt"), &ca).unwrap();
    harness::map_media_address(&etc, mapping);
    let netns = harness::Netns::new(name);
    let mut asterisk = harness::Asterisk::start_in(&etc, Some(&netns));
    asterisk.wait_booted();
    (dir, port, netns, asterisk)
}

/// The `probe` command in `netns` against the test PBX on `port`;
/// `extra` says what to check.
fn probe_in(dir: &Path, port: u16, netns: &harness::Netns, extra: &[&str]) -> Command {
    let mut c = harness::probe_in(netns, DOMAIN, port, &dir.join("ca.crt"));
    c.args(extra);
    c
}

fn echo_probe(
    dir: &Path,
    port: u16,
    netns: &harness::Netns,
    user: &str,
    extra: &[&str],
) -> Command {
    let password = format!("pw-{user}");
    let mut c = probe_in(
        dir,
        port,
        netns,
        &[
            "--user",
            user,
            "--password",
            &password,
            "--echo-extension",
            "*43",
        ],
    );
    c.args(extra);
    c
}

fn echo_json(mut command: Command) -> Value {
    harness::probe_json(command.output().unwrap())
}

#[test]
fn echo_call_faults_have_their_reasons() {
    let (dir, port, netns, mut asterisk) = echo_ground(
        "echo-faults",
        "    - {extension: \"1003\", codecs: [opus]}\n",
        "127.0.0.1",
    );

    // No codec in common (the probe speaks PCMU, 1003 only opus): 488.
    let json = echo_json(echo_probe(
        &dir,
        port,
        &netns,
        "1003",
        &["--echo-duration", "2s"],
    ));
    assert_eq!(json["echo"]["reason"], "CallRejected", "{json}");
    assert_eq!(json["echo_result"]["outcome"]["status"], 488, "{json}");
    assert_eq!(
        json["register"]["reason"], "Registered",
        "SIP still works: {json}"
    );

    // Credentials refused (an unknown user, answered like a wrong password):
    // the call is not attempted, and the report says why.
    let json = echo_json(echo_probe(
        &dir,
        port,
        &netns,
        "9999",
        &["--echo-duration", "1s"],
    ));
    assert_eq!(json["register"]["reason"], "AuthenticationFailed", "{json}");
    assert_eq!(json["echo"]["reason"], "NotAttempted", "{json}");

    // A latency budget below the real round trip.
    let json = echo_json(echo_probe(
        &dir,
        port,
        &netns,
        "1001",
        &["--echo-duration", "2s", "--max-rtt", "0.001"],
    ));
    assert_eq!(json["echo"]["reason"], "HighLatency", "{json}");

    // Asterisk dies 3 s into a 10 s call: dropped at about second 3.
    let mut call = echo_probe(&dir, port, &netns, "1001", &["--echo-duration", "10s"]);
    let child = call.stdout(std::process::Stdio::piped()).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    asterisk.kill();
    let out = child.wait_with_output().unwrap();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["echo"]["reason"], "CallDropped", "{json}");
    let at = json["echo_result"]["outcome"]["at_second"]
        .as_f64()
        .unwrap();
    assert!((2.0..=3.5).contains(&at), "dropped at {at} s: {json}");
    eprintln!("killed at 3 s after start; probe saw the drop at {at:.2} s of media");
    drop(netns);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn blocked_rtp_fails_ice_while_sip_works() {
    // Asterisk's RTP ports closed by a firewall: signalling works, media
    // cannot flow. (An rtp.conf ice_deny is not enough: Asterisk still sends
    // checks from its socket and the probe learns a peer-reflexive candidate.)
    let (dir, port, netns, mut asterisk) = echo_ground("echo-ice", "", "127.0.0.1");
    netns.drop_udp("10000-20000");
    let json = echo_json(echo_probe(
        &dir,
        port,
        &netns,
        "1001",
        &["--echo-duration", "2s"],
    ));
    assert_eq!(json["register"]["reason"], "Registered", "{json}");
    assert_eq!(json["echo"]["reason"], "IceFailed", "{json}");
    asterisk.kill();
    drop(netns);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn behind_nat_the_pods_own_candidate_still_serves_lan_clients() {
    // With network.externalAddress the ice-candidates init container maps the
    // pod's address to the public one, keeping the pod's own candidate
    // (include_local_address): Asterisk accepts the line and a client inside
    // the network (here the test host itself, where the public address has
    // no route) gets audio. (Without it this client would still connect
    // through a peer-reflexive candidate; browsers hiding their addresses
    // behind mDNS names give Asterisk nothing to send checks to, and would not.)
    let (dir, port, netns, mut asterisk) =
        echo_ground("echo-nat", "", "203.0.113.10,include_local_address");
    let json = echo_json(echo_probe(
        &dir,
        port,
        &netns,
        "1001",
        &["--echo-duration", "2s"],
    ));
    assert_eq!(json["echo"]["reason"], "Healthy", "{json}");
    asterisk.kill();
    drop(netns);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The spec line that adds the user-call probe's callee to a test config.
const USER_CALL: &str = "  probes: {userCall: {enabled: true}}\n";

/// The probe user calling the callee probe of a [`USER_CALL`] config, both
/// ends in `netns`.
fn user_call_probe(dir: &Path, port: u16, netns: &harness::Netns, extra: &[&str]) -> Command {
    use webrtc_pbx_operator::validate::{CALLEE_USERNAME, PROBE_USERNAME};
    let callee_password = dir.join("callee.pw");
    std::fs::write(&callee_password, "callee-pw").unwrap();
    let mut c = probe_in(
        dir,
        port,
        netns,
        &["--user", PROBE_USERNAME, "--password", "probe-pw"],
    );
    c.args([
        "--call-extension",
        CALLEE_USERNAME,
        "--callee",
        CALLEE_USERNAME,
    ])
    .args(["--callee-password-file", callee_password.to_str().unwrap()])
    .args(extra);
    c
}

#[test]
fn user_call_carries_audio_both_ways_and_names_the_silent_direction() {
    let (dir, port, netns, mut asterisk) = echo_ground("user-call", USER_CALL, "127.0.0.1");
    let json = echo_json(user_call_probe(
        &dir,
        port,
        &netns,
        &["--call-duration", "10s"],
    ));
    assert_eq!(
        json["user_call"]["reason"],
        "Healthy",
        "{json}\n{}",
        asterisk.output()
    );
    assert_eq!(json["ok"], true, "{json}");
    let r = &json["user_call_result"];
    for way in ["caller_to_callee", "callee_to_caller"] {
        let w = &r[way];
        eprintln!(
            "user call {way}: {}/{} packets, loss {} %, delay median {} ms p95 {} ms, jitter {} ms",
            w["received"],
            w["sent"],
            w["loss_percent"],
            w["delay_median_ms"],
            w["delay_p95_ms"],
            w["jitter_ms"]
        );
        assert!(
            w["sent"].as_u64().unwrap() >= 450,
            "10 s of 20 ms frames: {r}"
        );
        assert!(w["loss_percent"].as_f64().unwrap() <= 1.0, "{way}: {r}");
    }
    eprintln!(
        "user call: INVITE to 200 OK {} ms, setup (both ends DTLS up) {} ms, round trip {} ms, MOS {}",
        r["invite_ms"], r["setup_ms"], r["round_trip_ms"], r["mos"]
    );

    // RTP (not STUN or DTLS) to one end's media address dropped: that
    // end hears nothing, the other end's audio arrives, and the silent
    // direction is named.
    // The callee's media address defaults to the caller's: each end gets
    // its own here.
    for (address, ends, silent, silent_way, heard) in [
        (
            "127.0.0.2",
            ["127.0.0.1", "127.0.0.2"],
            "callerToCallee",
            "caller_to_callee",
            "callee_to_caller",
        ),
        (
            "127.0.0.3",
            ["127.0.0.3", "127.0.0.1"],
            "calleeToCaller",
            "callee_to_caller",
            "caller_to_callee",
        ),
    ] {
        netns.drop_rtp_to(address);
        let json = echo_json(user_call_probe(
            &dir,
            port,
            &netns,
            &[
                "--call-duration",
                "3s",
                "--media-address",
                ends[0],
                "--callee-media-address",
                ends[1],
            ],
        ));
        assert_eq!(json["user_call"]["reason"], "OneWayAudio", "{json}");
        assert_eq!(json["ok"], false, "{json}");
        let r = &json["user_call_result"];
        assert_eq!(r["outcome"]["silent"], silent, "{r}");
        assert_eq!(r[silent_way]["received"], 0, "{r}");
        assert!(r[heard]["received"].as_u64().unwrap() > 100, "{r}");
        let message = json["user_call"]["message"].as_str().unwrap();
        let named = silent_way.replace('_', " ");
        assert!(
            message.contains(&format!("nothing arrived from {named}")),
            "{message}"
        );
        eprintln!("RTP to {address} dropped: {message}");
        netns.allow_all();
    }
    asterisk.kill();
    drop(netns);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn figures_over_20_runs() {
    // Figures for the notes (medians of 20), not timing assertions.
    let (dir, port, netns, mut asterisk) = echo_ground("figures", "", "127.0.0.1");
    let mut connect = Vec::new();
    let mut register = Vec::new();
    let mut echo = Vec::new();
    for _ in 0..20 {
        let json = echo_json(echo_probe(
            &dir,
            port,
            &netns,
            "1001",
            &["--echo-duration", "1s"],
        ));
        assert_eq!(json["ok"], true, "{json}");
        let t = &json["timings"];
        connect.push(
            t["connect_ms"].as_f64().unwrap()
                + t["tls_ms"].as_f64().unwrap()
                + t["upgrade_ms"].as_f64().unwrap(),
        );
        register.push(json["register_result"]["round_trip_ms"].as_f64().unwrap());
        echo.push(json["echo_result"]["rtt_median_ms"].as_f64().unwrap());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    eprintln!(
        "20 runs: WSS connect (TCP+TLS+upgrade) median {:.2} ms, REGISTER (401+200) median {:.2} ms, echo round trip median {:.2} ms",
        median(&mut connect),
        median(&mut register),
        median(&mut echo)
    );
    asterisk.kill();
    drop(netns);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn echo_call_quality_is_rated_by_the_e_model_and_its_setup_timed_by_phase() {
    use webrtc_pbx_operator::probe::quality::{self, Codec};
    let (dir, port, netns, mut asterisk) = echo_ground("echo-mos", "", "127.0.0.1");
    let figures = |json: &Value| {
        let r = &json["echo_result"];
        let f = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} in {r}"));
        (
            f("rtt_median_ms"),
            f("loss_percent"),
            f("jitter_ms"),
            f("mos"),
            f("r_factor"),
        )
    };
    // A clean loopback call: near the narrowband ceiling (4.41), every
    // phase of the setup timed.
    let clean = echo_json(echo_probe(
        &dir,
        port,
        &netns,
        "1001",
        &["--echo-duration", "5s"],
    ));
    assert_eq!(
        clean["echo"]["reason"],
        "Healthy",
        "{clean}\n{}",
        asterisk.output()
    );
    let (rtt, loss, jitter, mos, r) = figures(&clean);
    assert!(mos > 4.3, "{clean}");
    let phases = &clean["echo_result"]["phases"];
    for phase in ["invite_ms", "ice_ms", "dtls_ms", "first_echo_ms"] {
        let ms = phases[phase].as_f64().unwrap_or(-1.0);
        assert!((0.0..3000.0).contains(&ms), "{phase}: {phases}");
    }
    eprintln!(
        "loopback: rtt {rtt} ms, loss {loss} %, jitter {jitter:.2} ms -> R {r:.1}, MOS {mos:.2}; setup {phases}"
    );
    // 3 % of UDP dropped at random on arrival: both legs arrive in the
    // test host, so about 6 % of the echoes are lost.
    netns.lose_udp(3);
    let lossy_call = || {
        echo_json(echo_probe(
            &dir,
            port,
            &netns,
            "1001",
            &[
                "--echo-duration",
                "5s",
                "--max-loss",
                "50",
                "--min-mos",
                "4.2",
            ],
        ))
    };
    // The random drop can also take enough of the DTLS handshake that it
    // fails (seen once in CI): that is not what this test rates, so such a
    // call is placed again, once.
    let mut lossy = lossy_call();
    if lossy["echo"]["reason"] == "DtlsFailed" {
        eprintln!("the lossy call's DTLS handshake failed; placing it again");
        lossy = lossy_call();
    }
    netns.allow_all();
    assert_eq!(lossy["echo"]["reason"], "PoorCallQuality", "{lossy}");
    let message = lossy["echo"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("below 4.2"), "{message}");
    let (rtt, loss, jitter, mos, r) = figures(&lossy);
    assert!(loss > 1.0 && mos < 4.2, "{lossy}");
    // What the probe reported is the model applied to what it measured.
    let expected = quality::rate(rtt, loss, jitter, Codec::Pcmu);
    assert!((expected.mos - mos).abs() < 0.01, "{expected:?} vs {lossy}");
    eprintln!(
        "3 % of UDP dropped per leg: rtt {rtt} ms, loss {loss} %, jitter {jitter:.2} ms -> R {r:.1}, MOS {mos:.2}"
    );
    // A bottleneck a little narrower than the call (both legs, about 170
    // kbit/s, cross the namespace's loopback): its 200 ms queue fills, so
    // each leg waits in it, then overflows into some loss.
    netns.bottleneck(160, 200);
    let slow = echo_json(echo_probe(
        &dir,
        port,
        &netns,
        "1001",
        &[
            "--echo-duration",
            "8s",
            "--max-loss",
            "50",
            "--max-rtt",
            "5000",
            "--min-mos",
            "1",
        ],
    ));
    netns.unlimit();
    assert_eq!(slow["echo"]["reason"], "Healthy", "{slow}");
    let (rtt, loss, jitter, mos, r) = figures(&slow);
    assert!(rtt > 100.0, "the queue delays: {slow}");
    let expected = quality::rate(rtt, loss, jitter, Codec::Pcmu);
    assert!((expected.mos - mos).abs() < 0.01, "{expected:?} vs {slow}");
    eprintln!(
        "a 160 kbit/s bottleneck with a 200 ms queue: rtt {rtt} ms, loss {loss} %, jitter {jitter:.2} ms -> R {r:.1}, MOS {mos:.2}"
    );
    asterisk.kill();
    drop(netns);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn asterisk_metrics_count_the_calls_up_and_refuse_a_wrong_password() {
    let (dir, port, netns, mut asterisk) = echo_ground(
        "asterisk-metrics",
        "    - {extension: \"1002\"}\n",
        "127.0.0.1",
    );
    let password = dir.join("metrics-password");
    std::fs::write(&password, "metrics-pw\n").unwrap();
    let metrics = |password: &Path| {
        let mut c = netns.command(env!("CARGO_BIN_EXE_webrtc-pbx-operator"));
        c.args(["probe", "--url", &format!("wss://{DOMAIN}:{port}/ws")])
            .args(["--connect-to", &format!("127.0.0.1:{port}")])
            .arg("--ca-file")
            .arg(dir.join("ca.crt"))
            .args(["--user", "1002", "--password", "pw-1002"])
            .args(["--output", "json", "--timeout", "3s"])
            .arg("--metrics-password-file")
            .arg(password);
        echo_json(c)
    };
    // Idle: nothing up. The probing user's endpoint (1002) is left out:
    // 1001 and the operator's probe endpoint remain.
    let idle = metrics(&password);
    assert_eq!(idle["asterisk"]["active_calls"], 0, "{idle}");
    assert_eq!(idle["asterisk"]["endpoints"], 2, "{idle}");
    assert_eq!(idle["asterisk"]["endpoints_online"], 0, "{idle}");
    // An echo call of 1001 is up while 1002 reads the metrics.
    let call = echo_probe(&dir, port, &netns, "1001", &["--echo-duration", "6s"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    let busy = metrics(&password);
    let echoed = call.wait_with_output().unwrap();
    let echoed: Value = serde_json::from_slice(&echoed.stdout).unwrap_or(Value::Null);
    assert_eq!(echoed["echo"]["reason"], "Healthy", "{echoed}");
    assert_eq!(busy["asterisk"]["active_calls"], 1, "{busy}");
    assert!(
        busy["asterisk"]["active_channels"].as_u64() >= Some(1),
        "{busy}"
    );
    // The probe unregisters before its call: nobody is registered (the
    // online count of a registered endpoint is unit-tested on a scrape).
    assert_eq!(busy["asterisk"]["endpoints_online"], 0, "{busy}");
    assert!(
        busy["asterisk"]["uptime_seconds"].as_u64() >= Some(3),
        "{busy}"
    );
    // A wrong password: Asterisk refuses, the probe says so and still passes.
    let wrong = dir.join("wrong-password");
    std::fs::write(&wrong, "nope").unwrap();
    let refused = metrics(&wrong);
    assert_eq!(refused["ok"], true, "{refused}");
    let error = refused["asterisk_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("refused the metrics credentials (401)"),
        "{refused}"
    );
    eprintln!(
        "during one echo call: {}; idle: {}",
        busy["asterisk"], idle["asterisk"]
    );
    asterisk.kill();
    drop(netns);
    std::fs::remove_dir_all(&dir).unwrap();
}

//! Every row of `render::reloads::TABLE` on real Asterisk 22: the rendered
//! files of a running Asterisk change as the operator's ConfigMap and
//! Secret would, `core reload` runs (what the pod's config-reloader runs),
//! and each Reload row takes effect in place while an echo call runs
//! through all of them; each Restart row shows why a reload is not enough.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use webrtc_pbx_operator::render::reloads::{Applied, TABLE};

const DOMAIN: &str = "pbx.reload.test";

/// Renders the test PBX (users 1001 and `tail`'s, spec lines after the
/// users list) over `dir`'s files, with the media mapping of the test host.
fn render(dir: &Path, port: u16, tail: &str) -> PathBuf {
    let etc = harness::render_config(dir, DOMAIN, port, tail);
    harness::map_media_address(&etc, "127.0.0.1");
    etc
}

/// The `probe` command in `netns` as `user`; `extra` adds checks.
fn probe(
    dir: &Path,
    port: u16,
    netns: &harness::Netns,
    user: &str,
    password: &str,
    extra: &[&str],
) -> Command {
    let mut c = harness::probe_in(netns, DOMAIN, port, &dir.join("ca.crt"));
    c.args(["--user", user, "--password", password]).args(extra);
    c
}

/// The REGISTER reason for `user` with `password`.
fn register(dir: &Path, port: u16, netns: &harness::Netns, user: &str, password: &str) -> String {
    let json = harness::probe_json(
        probe(dir, port, netns, user, password, &[])
            .output()
            .unwrap(),
    );
    json["register"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `core reload`, as the config-reloader runs it, and a moment to apply.
fn reload(asterisk: &harness::Asterisk) {
    asterisk.cli("core reload");
    std::thread::sleep(Duration::from_millis(500));
}

#[test]
fn each_reload_row_applies_in_place_while_a_call_runs_and_each_restart_row_does_not() {
    let dir = harness::scratch_dir("reload");
    let port = harness::free_port();
    let etc = render(&dir, port, "");
    let ca = harness::write_self_signed(&etc.join("keys"), &[DOMAIN]);
    std::fs::write(dir.join("ca.crt"), &ca).unwrap();
    let netns = harness::Netns::new("reload");
    let mut asterisk = harness::Asterisk::start_in(&etc, Some(&netns));
    asterisk.wait_booted();
    let pid = asterisk.pid();
    asterisk.cli("pjsip set logger on");
    let mut rows_shown = Vec::new();

    // A 20 s echo call runs through every reload below.
    let live = probe(
        &dir,
        port,
        &netns,
        "1001",
        "pw-1001",
        &["--echo-extension", "*43", "--echo-duration", "20s"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));

    // Users: a new one registers.
    let user_1002 = "    - {extension: \"1002\"}\n";
    render(&dir, port, user_1002);
    reload(&asterisk);
    assert_eq!(
        register(&dir, port, &netns, "1002", "pw-1002"),
        "Registered"
    );
    rows_shown.push("users[]");

    // Passwords: the Secret's new password holds, the old one not.
    let auth = etc.join("secrets/pjsip_auth.conf");
    let text = std::fs::read_to_string(&auth).unwrap();
    std::fs::write(
        &auth,
        text.replace("password = pw-1002", "password = pw-1002-new"),
    )
    .unwrap();
    reload(&asterisk);
    assert_eq!(
        register(&dir, port, &netns, "1002", "pw-1002"),
        "AuthenticationFailed"
    );
    assert_eq!(
        register(&dir, port, &netns, "1002", "pw-1002-new"),
        "Registered"
    );
    rows_shown.push("passwords");

    // Codecs.
    let mut tail = "    - {extension: \"1002\", codecs: [alaw, ulaw]}\n".to_string();
    render(&dir, port, &tail);
    reload(&asterisk);
    let endpoint = asterisk.cli("pjsip show endpoint 1002");
    assert!(endpoint.contains("(alaw|ulaw)"), "{endpoint}");
    rows_shown.push("users[].codecs");

    // Dialplan.
    tail.push_str("  dialplan: {echoExtension: \"*44\"}\n");
    render(&dir, port, &tail);
    reload(&asterisk);
    let plan = asterisk.cli("dialplan show *44@users");
    assert!(plan.contains("Echo()"), "{plan}");
    rows_shown.push("dialplan");

    // RTP range and ICE (the STUN server is taken out again: nothing
    // answers there, and Asterisk asks it at every call).
    tail.push_str("  rtp: {portRange: {start: 21000, end: 21999}");
    render(
        &dir,
        port,
        &format!("{tail}, ice: {{stunServers: [\"stun:127.0.0.1:3478\"]}}}}\n"),
    );
    reload(&asterisk);
    let rtp = asterisk.cli("rtp show settings");
    assert!(rtp.contains("21000") && rtp.contains("21999"), "{rtp}");
    assert!(rtp.contains("127.0.0.1:3478"), "{rtp}");
    tail.push_str("}\n");
    render(&dir, port, &tail);
    reload(&asterisk);
    rows_shown.push("rtp");

    // Keep-alives.
    tail.push_str("  sip: {keepAliveInterval: 45s}\n");
    render(&dir, port, &tail);
    reload(&asterisk);
    let settings = asterisk.cli("pjsip show settings");
    assert!(
        settings
            .lines()
            .any(|l| l.contains("keep_alive_interval") && l.trim_end().ends_with("45")),
        "{settings}"
    );
    rows_shown.push("sip.keepAliveInterval");

    // Local networks (Reload) and the external address (Restart): the
    // transport takes both.
    tail.push_str("  network: {externalAddress: 203.0.113.7, localNetworks: [10.0.0.0/8]}\n");
    render(&dir, port, &tail);
    reload(&asterisk);
    let transport = asterisk.cli("pjsip show transport transport-wss");
    assert!(
        transport.contains("203.0.113.7") && transport.contains("10.0.0.0/255.0.0.0"),
        "{transport}"
    );
    rows_shown.push("network.localNetworks");
    // Yet a WebSocket client outside localNetworks (this one dials from
    // 127.0.0.1) does not get the external address in the SDP of a call
    // placed after the reload (pjsip's logger prints the messages): Asterisk
    // applies external_* to UDP, TCP and TLS transports only. Browsers get
    // it through the pod's ICE host-candidate mapping, written when the pod
    // starts: the row is Restart. (The same holds for an Asterisk started
    // with it.)
    let logged = asterisk.output().len();
    let _ = probe(
        &dir,
        port,
        &netns,
        "1001",
        "pw-1001",
        &["--echo-extension", "*44", "--echo-duration", "1s"],
    )
    .output()
    .unwrap();
    let out = asterisk.output();
    let sdp: Vec<&str> = out
        .get(logged..)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("c=IN IP4") || l.starts_with("a=candidate"))
        .collect();
    assert!(
        sdp.iter().any(|l| l.starts_with("c=IN IP4")),
        "no SDP logged: {sdp:?}"
    );
    assert!(
        !sdp.iter().any(|l| l.contains("203.0.113.7")),
        "the external address reached a WebSocket client's SDP: {sdp:?}"
    );
    rows_shown.push("network.externalAddress");

    // The module list (Restart): a module taken out stays loaded.
    let modules = etc.join("modules.conf");
    let text = std::fs::read_to_string(&modules).unwrap();
    assert!(text.contains("load => res_prometheus.so"), "{text}");
    std::fs::write(&modules, text.replace("load => res_prometheus.so\n", "")).unwrap();
    reload(&asterisk);
    let shown = asterisk.cli("module show like res_prometheus");
    assert!(shown.contains("1 modules loaded"), "{shown}");
    rows_shown.push("modules");

    // The call ran through every reload.
    let out = live.wait_with_output().unwrap();
    let json = harness::probe_json(out);
    assert_eq!(json["echo"]["reason"], "Healthy", "{json}");
    let r = &json["echo_result"];
    assert_eq!(r["loss_percent"].as_f64(), Some(0.0), "{r}");
    eprintln!(
        "20 s echo call through {} reloads: {}/{} echoed, loss {} %, rtt {} ms",
        rows_shown.len(),
        r["echoed"],
        r["sent"],
        r["loss_percent"],
        r["rtt_median_ms"]
    );

    // The WSS port (Restart, through the pod): Asterisk rebinds it on a
    // reload, but the pod's declared ports and Service change with it.
    let moved = harness::free_port();
    let moved_etc = render(&dir, moved, &tail);
    assert_eq!(moved_etc, etc);
    reload(&asterisk);
    assert_eq!(
        register(&dir, moved, &netns, "1002", "pw-1002"),
        "Registered"
    );
    rows_shown.push("wss.port");
    assert_eq!(asterisk.pid(), pid, "no restart");

    // Every row of the table was shown, and as the table says.
    let restart_rows = TABLE
        .iter()
        .filter(|r| r.applied == Applied::Restart)
        .count();
    assert_eq!(restart_rows, 3);
    assert_eq!(
        rows_shown.len() + 1,
        TABLE.len(),
        "{rows_shown:?} (certificates: tests/asterisk_render.rs)"
    );
    asterisk.kill();
    drop(netns);
    std::fs::remove_dir_all(&dir).unwrap();
}

//! The rendered configuration, unmodified, loaded into real Asterisk 22:
//! WSS on the TLS port, every endpoint present, REGISTER works with the right
//! password and fails with another, and the probe endpoint reaches the echo
//! extension and nothing else.

use std::time::Instant;

use webrtc_pbx_operator::cli;
use webrtc_pbx_operator::probe::register;
use webrtc_pbx_operator::render;
use webrtc_pbx_operator::validate::{self, CALLEE_USERNAME, Generated, PROBE_USERNAME, Referenced};

const DOMAIN: &str = "pbx.test";

fn manifest(port: u16) -> String {
    format!(
        r#"apiVersion: pbx.webrtc.io/v1alpha1
kind: WebRtcPbx
metadata: {{name: real, namespace: voice}}
spec:
  domain: {DOMAIN}
  wss: {{port: {port}, bindAddress: 127.0.0.1}}
  network: {{localNetworks: ["127.0.0.0/8"]}}
  probes: {{userCall: {{enabled: true}}}}
  users:
    - {{extension: "1001", displayName: Alice, passwordSecretRef: {{name: users, key: alice}}}}
    - {{extension: "1002", codecs: [ulaw]}}
---
apiVersion: v1
kind: Secret
metadata: {{name: users, namespace: voice}}
stringData: {{alice: "alice;secret"}}
"#
    )
}

#[tokio::test]
async fn rendered_config_runs_in_real_asterisk() {
    let dir = harness::scratch_dir("asterisk-render");
    let port = harness::free_port();
    let input = dir.join("pbx.yaml");
    std::fs::write(&input, manifest(port)).unwrap();
    let inputs = cli::read_inputs(&[input]).unwrap();
    let pbx = &inputs.pbxes[0];
    let generated = Generated {
        user_passwords: [("1002".to_string(), "generated-1002".to_string())].into(),
        probe_password: "probe-pw".into(),
        metrics_password: "metrics-pw".into(),
        callee_password: "callee-pw".into(),
        ports: webrtc_pbx_operator::allocate::place_all(&Default::default(), &inputs.pbxes)
            .remove(0),
    };
    let referenced = Referenced::from_objects(inputs.secrets["voice"].clone(), vec![]);
    let validated = validate::validate(pbx, &referenced, &generated).unwrap();
    let rendered = render::render(&validated);
    cli::write_config_dir(&dir, &rendered, None).unwrap();
    let etc = dir.join("etc/asterisk");
    let ca = harness::write_self_signed(&etc.join("keys"), &[DOMAIN]);

    let started = Instant::now();
    let mut asterisk = harness::Asterisk::start(&etc);
    let ready = asterisk.wait_wss(port, DOMAIN, &ca, started).await;
    eprintln!("rendered config: WSS ready after {ready:?}");

    // `http show status` prints the HTTPS bind only when plain HTTP is also
    // enabled (main/http.c); the rendered config has no plain listener, so
    // the TLS port is proven by the 101 above and /ws by the URI list.
    let http = asterisk.cli("http show status");
    assert!(
        http.contains("/ws => Asterisk HTTP WebSocket"),
        "http show status:\n{http}"
    );
    assert!(
        http.contains("Server Disabled"),
        "no plain HTTP listener expected:\n{http}"
    );
    let endpoints = asterisk.cli("pjsip show endpoints");
    for name in ["1001", "1002", PROBE_USERNAME, CALLEE_USERNAME] {
        assert!(
            endpoints.contains(&format!("Endpoint:  {name}")),
            "{name} missing:\n{endpoints}"
        );
    }
    let modules = asterisk.cli("module show like pjsip");
    assert!(
        modules.contains("res_pjsip_transport_websocket.so"),
        "{modules}"
    );

    let mut ws = harness::wss_connect(port, "/ws", DOMAIN, &ca)
        .await
        .unwrap();
    let account = |user: &str, password: &str| register::Account {
        domain: DOMAIN.into(),
        user: user.into(),
        password: password.into(),
    };
    let timeout = std::time::Duration::from_secs(5);
    // A password with `;` survives the config escaping.
    for (user, password) in [
        ("1001", "alice;secret"),
        ("1002", "generated-1002"),
        (PROBE_USERNAME, "probe-pw"),
        (CALLEE_USERNAME, "callee-pw"),
    ] {
        let r = register::probe(&mut ws, &account(user, password), timeout).await;
        assert_eq!(
            r.outcome,
            register::Outcome::Registered,
            "REGISTER {user} with its password"
        );
        assert!(r.unregistered, "{user}: the binding was not removed again");
    }
    // Asterisk answers a wrong password with 401 again (not 403).
    let r = register::probe(&mut ws, &account("1001", "wrong"), timeout).await;
    assert_eq!(
        r.outcome,
        register::Outcome::AuthenticationFailed,
        "REGISTER 1001 with a wrong password"
    );
    let contacts = asterisk.cli("pjsip show contacts");
    assert!(
        !contacts.contains("1001/sip"),
        "1001 still bound after unregistering:\n{contacts}"
    );

    // Toll-fraud guard: from the probe context only the echo extension and
    // the callee probe exist.
    let probe_plan = asterisk.cli("dialplan show *43@probe");
    assert!(
        probe_plan.contains("Echo()"),
        "echo extension not reachable from probe:\n{probe_plan}"
    );
    let callee_plan = asterisk.cli(&format!("dialplan show {CALLEE_USERNAME}@probe"));
    assert!(
        callee_plan.contains(&format!("Dial(PJSIP/{CALLEE_USERNAME},20)")),
        "the callee probe not reachable from probe:\n{callee_plan}"
    );
    for ext in ["1001", "1002", "0039061234567", "600", PROBE_USERNAME] {
        let shown = asterisk.cli(&format!("dialplan show {ext}@probe"));
        assert!(
            shown.contains("There is no existence"),
            "{ext} reachable from the probe context:\n{shown}"
        );
    }
    // Users reach each other and the echo test.
    let users_plan = asterisk.cli("dialplan show users");
    assert!(
        users_plan.contains("'1001'") && users_plan.contains("'1002'"),
        "{users_plan}"
    );
    let users_echo = asterisk.cli("dialplan show *43@users");
    assert!(users_echo.contains("Echo()"), "{users_echo}");
    // Calls whose client vanished without a BYE end (a drain waits for none).
    let endpoint = asterisk.cli("pjsip show endpoint 1001");
    let timeout = endpoint
        .lines()
        .find(|l| l.trim_start().starts_with("rtp_timeout "))
        .unwrap_or_default();
    assert!(
        timeout.trim_end().ends_with(": 30"),
        "{timeout:?}\n{endpoint}"
    );

    let out = asterisk.output();
    for line in out.lines().filter(|l| l.contains("ERROR")) {
        // The readiness checks drop their connections without a close frame,
        // which Asterisk logs (SSL_shutdown, ws_safe_read); anything else is
        // a config fault.
        assert!(
            line.contains("SSL_shutdown") || line.contains("ws_safe_read"),
            "Asterisk logged an error: {line}\n{out}"
        );
    }
    // (After the log check: the handshakes refused here are logged.)
    // Certificate rotation: new files under the same names reach WSS on
    // `core reload` (what the pod's config-reloader runs), without a restart.
    let pid = asterisk.pid();
    let rotated_ca = harness::write_self_signed(&etc.join("keys"), &[DOMAIN]);
    assert!(
        harness::wss_connect(port, "/ws", DOMAIN, &rotated_ca)
            .await
            .is_err(),
        "new CA trusted before reload"
    );
    let reload = asterisk.cli("core reload");
    harness::wait_until(
        std::time::Duration::from_secs(5),
        "rotated certificate served",
        || async {
            harness::wss_connect(port, "/ws", DOMAIN, &rotated_ca)
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
    assert!(
        harness::wss_connect(port, "/ws", DOMAIN, &ca)
            .await
            .is_err(),
        "old certificate still served after: {reload}"
    );
    assert_eq!(asterisk.pid(), pid);

    asterisk.kill();
    std::fs::remove_dir_all(&dir).unwrap();
}

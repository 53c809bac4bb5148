//! The `render` command as users run it: every example renders; bad input
//! fails with one line per problem and writes nothing.

use std::path::PathBuf;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_webrtc-pbx-operator"))
}

/// `deploy/examples/*/pbx.yaml`.
fn examples() -> Vec<PathBuf> {
    let dir = harness::repo().join("deploy/examples");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path().join("pbx.yaml"))
        .filter(|p| p.exists())
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_renders() {
    let files = examples();
    assert_eq!(files.len(), 4, "{files:?}");
    for file in files {
        let out = bin().arg("render").arg(&file).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: {stderr}", file.display());
        let stdout = String::from_utf8_lossy(&out.stdout);
        for kind in [
            "kind: Secret",
            "kind: ConfigMap",
            "kind: Service",
            "kind: StatefulSet",
        ] {
            assert!(
                stdout.contains(kind),
                "{}: no {kind} in output",
                file.display()
            );
        }
    }
}

#[test]
fn config_dir_writes_asterisk_files_with_secret_modes() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("wpbx-render-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let file = harness::repo().join("deploy/examples/host-network-nat/pbx.yaml");
    let out = harness::render_to_dir(&file, &dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let etc = dir.join("etc/asterisk");
    for f in [
        "pjsip.conf",
        "http.conf",
        "extensions.conf",
        "rtp.conf",
        "modules.conf",
        "logger.conf",
    ] {
        assert!(etc.join(f).is_file(), "{f} not written");
    }
    let auth = etc.join("secrets/pjsip_auth.conf");
    let mode = std::fs::metadata(&auth).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "secret-bearing file must be 0600");
    let text = std::fs::read_to_string(&auth).unwrap();
    assert!(text.contains("password = change-me-alice"), "{text}");
    assert!(
        !std::fs::read_to_string(etc.join("pjsip.conf"))
            .unwrap()
            .contains("change-me-alice")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_secret_and_bad_values_fail_with_one_line_each_and_write_nothing() {
    let dir = std::env::temp_dir().join(format!("wpbx-render-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let manifest = dir.with_extension("yaml");
    std::fs::write(
        &manifest,
        r#"apiVersion: pbx.webrtc.io/v1alpha1
kind: WebRtcPbx
metadata: {name: bad, namespace: voice}
spec:
  domain: pbx.bad.example
  sip: {keepAliveInterval: soon}
  wss: {port: 8500}
  rtp: {portRange: {start: 8000, end: 9000}}
  users:
    - {extension: "1001", passwordSecretRef: {name: nowhere, key: "1001"}}
---
apiVersion: pbx.webrtc.io/v1alpha1
kind: WebRtcPbx
metadata: {name: bad2, namespace: voice}
spec:
  domain: pbx.bad2.example
  users:
    - {extension: "7", passwordSecretRef: {name: missing-too, key: "7"}}
"#,
    )
    .unwrap();
    let out = harness::render_to_dir(&manifest, &dir);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Secret nowhere") && l.contains("not found")),
        "{stderr}"
    );
    assert!(
        lines.iter().any(|l| l.contains("sip.keepAliveInterval")),
        "{stderr}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("wss.port") && l.contains("inside rtp.portRange")),
        "{stderr}"
    );
    assert!(
        lines.iter().all(|l| l.starts_with("error: voice/bad")),
        "{stderr}"
    );
    // Every PBX's problems are reported, not only the first PBX's.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("error: voice/bad2: ") && l.contains("missing-too")),
        "{stderr}"
    );
    assert!(!dir.exists(), "nothing may be written on error");
    std::fs::remove_file(&manifest).unwrap();
}

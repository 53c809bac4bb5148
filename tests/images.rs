//! The project's images (`scripts/images`), built without a container
//! engine: reproducible (built twice, the same digests, equal to the ones the
//! ground imported), labelled, and holding what the rendered pod and the chart
//! need and nothing of what they do not.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The files of an image archive: the OCI index, the image config and the
/// single layer's entries (path -> (mode, uid, gid, size, link)).
struct Image {
    config: serde_json::Value,
    manifest: serde_json::Value,
    entries: BTreeMap<String, (u32, u64, u64, u64, String)>,
    compressed: u64,
    layer: Vec<u8>,
}

impl Image {
    /// One file's content, from the layer.
    fn file(&self, path: &str) -> Vec<u8> {
        pipe(&self.layer, &["-xzO", path])
    }
}

/// `tar ARGS` with `input` on stdin; its stdout.
fn pipe(input: &[u8], args: &[&str]) -> Vec<u8> {
    let mut child = Command::new("tar")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &data));
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    writer.join().unwrap().unwrap();
    assert!(child.wait().unwrap().success(), "tar {args:?}");
    out
}

fn tar_files(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let listing = Command::new("tar").arg("-tf").arg(path).output().unwrap();
    String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter(|l| !l.ends_with('/'))
        .map(|name| {
            let data = Command::new("tar")
                .arg("-xOf")
                .arg(path)
                .arg(name)
                .output()
                .unwrap()
                .stdout;
            (name.to_string(), data)
        })
        .collect()
}

fn read_image(path: &Path) -> Image {
    let files = tar_files(path);
    assert!(
        files.contains_key("index.json"),
        "{} is no OCI archive",
        path.display()
    );
    let blob = |digest: &str| {
        files
            .get(&format!(
                "blobs/sha256/{}",
                digest.trim_start_matches("sha256:")
            ))
            .unwrap_or_else(|| panic!("blob {digest} missing"))
            .clone()
    };
    let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&blob(manifest["config"]["digest"].as_str().unwrap())).unwrap();
    let layer = blob(manifest["layers"][0]["digest"].as_str().unwrap());
    let text = String::from_utf8(pipe(&layer, &["--numeric-owner", "-tvzf", "-"])).unwrap();
    let entries = text
        .lines()
        .filter_map(|l| {
            // -rwxr-xr-x 1000/1000 1234 1970-01-01 00:00 path [-> target]
            let mut f = l.split_whitespace();
            let perms = f.next()?;
            let (uid, gid) = f.next()?.split_once('/')?;
            let size = f.next()?.parse().ok()?;
            let _date = f.next()?;
            let _time = f.next()?;
            let rest: Vec<&str> = f.collect();
            let (name, link) = match rest.iter().position(|w| *w == "->" || *w == "link") {
                Some(i) => (rest[..i].join(" "), rest[i + 1..].join(" ")),
                None => (rest.join(" "), String::new()),
            };
            let mode = perms
                .chars()
                .skip(1)
                .fold(0u32, |m, c| (m << 1) | u32::from(c != '-'));
            Some((
                name.trim_end_matches('/').to_string(),
                (mode, uid.parse().ok()?, gid.parse().ok()?, size, link),
            ))
        })
        .collect();
    Image {
        config,
        manifest,
        entries,
        compressed: std::fs::metadata(path).unwrap().len(),
        layer,
    }
}

fn build(out: &Path, names: &[&str]) -> BTreeMap<String, String> {
    // The release binary where scripts/images itself would build it.
    let binary = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(harness::ground_env("WEBRTC_PBX_CACHE")).join("target"))
        .join("release/webrtc-pbx-operator");
    assert!(
        binary.exists(),
        "{} is missing; build it with: cargo build --release (scripts/test does)",
        binary.display()
    );
    let status = Command::new(harness::repo().join("scripts/images"))
        .args(["build", "--out"])
        .arg(out)
        .args(names)
        .env("WPBX_OPERATOR_BINARY", &binary)
        .status()
        .expect("scripts/images");
    assert!(status.success(), "scripts/images build failed");
    names
        .iter()
        .map(|n| {
            let digest = std::fs::read_to_string(out.join(format!("{n}.digest"))).unwrap();
            (n.to_string(), digest.trim().to_string())
        })
        .collect()
}

#[test]
fn images_are_reproducible_labelled_and_hold_what_the_pods_run() {
    harness::require_provisioned();
    let first = harness::scratch_dir("images-1");
    let second = harness::scratch_dir("images-2");
    let names = ["asterisk", "operator", "pause"];
    let a = build(&first, &names);
    let b = build(&second, &names);
    assert_eq!(a, b, "two builds of the same inputs give the same digests");
    // The Asterisk and pause images the ground imported are these.
    let cached = PathBuf::from(harness::ground_env("IMAGES_DIR"));
    for n in ["asterisk", "pause"] {
        let digest = std::fs::read_to_string(cached.join(format!("{n}.digest"))).unwrap();
        assert_eq!(digest.trim(), a[n], "{n}: the ground imports this build");
    }
    let version = env!("CARGO_PKG_VERSION");
    for n in names {
        let image = read_image(&first.join(format!("{n}.tar")));
        let layer_size: u64 = image.entries.values().map(|e| e.3).sum();
        eprintln!(
            "image {n}: {} {}, {:.1} MB compressed archive, {:.1} MB unpacked, {} files",
            std::fs::read_to_string(first.join(format!("{n}.ref")))
                .unwrap()
                .trim(),
            a[n],
            image.compressed as f64 / 1e6,
            layer_size as f64 / 1e6,
            image.entries.len()
        );
        // No build-host leftovers, whatever the image.
        for path in image.entries.keys() {
            for banned in [
                "usr/share/man/",
                "var/lib/apt/lists/",
                "var/cache/apt/",
                "var/log/",
                "usr/share/locale/",
            ] {
                assert!(
                    !path.starts_with(banned)
                        || path.trim_end_matches('/') == banned.trim_end_matches('/'),
                    "{n}: {path} should not be in the image"
                );
            }
        }
        if n == "pause" {
            continue;
        }
        let labels = &image.config["config"]["Labels"];
        assert_eq!(labels["org.opencontainers.image.version"], version, "{n}");
        assert!(
            labels["org.opencontainers.image.source"]
                .as_str()
                .is_some_and(|s| s.starts_with("https://github.com/")),
            "{n}: {labels}"
        );
        assert_eq!(
            labels["org.opencontainers.image.revision"]
                .as_str()
                .map(str::len),
            Some(40),
            "{n}: {labels}"
        );
        assert_eq!(
            image.manifest["annotations"]["org.opencontainers.image.version"],
            version
        );
    }

    // Asterisk: uid/gid 1000, what the rendered pod runs, an empty /etc/asterisk.
    let asterisk = read_image(&first.join("asterisk.tar"));
    assert_eq!(asterisk.config["config"]["User"], "1000:1000");
    for path in [
        "usr/sbin/asterisk",
        "bin/sh",
        "usr/bin/md5sum",
        "usr/bin/cat",
        "usr/bin/sleep",
        "usr/lib/x86_64-linux-gnu/asterisk/modules/res_pjsip_transport_websocket.so",
        "usr/lib/x86_64-linux-gnu/asterisk/modules/app_echo.so",
        "usr/lib/x86_64-linux-gnu/asterisk/modules/codec_opus_open_source.so",
        "etc/ssl/certs/ca-certificates.crt",
    ] {
        let found = asterisk.entries.contains_key(path)
            || asterisk
                .entries
                .contains_key(&path.replacen("bin/", "usr/bin/", 1));
        assert!(found, "asterisk image lacks {path}");
    }
    assert!(
        !asterisk
            .entries
            .keys()
            .any(|p| p.starts_with("etc/asterisk/")),
        "/etc/asterisk comes from the operator"
    );
    let passwd = String::from_utf8(asterisk.file("etc/passwd")).unwrap();
    assert!(passwd.contains("\nasterisk:x:1000:1000:"), "{passwd}");
    let spool = &asterisk.entries["var/spool/asterisk"];
    assert_eq!(
        (spool.1, spool.2),
        (1000, 1000),
        "spool owned by asterisk (1000)"
    );

    // The operator: the binary, CA roots, non-root, no shell.
    let operator = read_image(&first.join("operator.tar"));
    assert_eq!(operator.config["config"]["User"], "65532:65532");
    assert!(
        operator
            .entries
            .contains_key("usr/local/bin/webrtc-pbx-operator")
    );
    assert!(operator.entries["etc/ssl/certs/ca-certificates.crt"].3 > 100_000);
    for shell in ["bin/sh", "usr/bin/sh", "bin/bash", "usr/bin/bash"] {
        assert!(!operator.entries.contains_key(shell), "no shell: {shell}");
    }
    harness::remove_dir(&first);
    harness::remove_dir(&second);
}

#[test]
fn the_versions_come_from_the_crate() {
    let version = env!("CARGO_PKG_VERSION");
    let chart =
        std::fs::read_to_string(harness::repo().join("charts/webrtc-pbx-operator/Chart.yaml"))
            .unwrap();
    assert!(
        chart.contains(&format!("\nversion: {version}\n")),
        "Chart.yaml version"
    );
    assert!(
        chart.contains(&format!("\nappVersion: \"{version}\"\n")),
        "Chart.yaml appVersion"
    );
    assert_eq!(
        webrtc_pbx_operator::api::DEFAULT_IMAGE,
        format!("ghcr.io/webrtc-pbx-operator/asterisk:{version}")
    );
    let out = Command::new(harness::repo().join("scripts/images"))
        .args(["ref", "operator"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("ghcr.io/webrtc-pbx-operator/operator:{version}")
    );
}

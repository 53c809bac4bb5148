//! Golden files for every rendered config file and object set, and the
//! committed CRD. `UPDATE_GOLDEN=1 cargo test --test golden` rewrites them;
//! review the diff of tests/golden/ and crds/, not the code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use webrtc_pbx_operator::cli;
use webrtc_pbx_operator::render;
use webrtc_pbx_operator::validate::{self, Generated, Referenced};

fn root() -> PathBuf {
    harness::repo()
}

fn updating() -> bool {
    std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1")
}

/// Compares `actual` with the file, or rewrites it when updating.
fn check(path: &Path, actual: &str, failures: &mut Vec<String>) {
    if updating() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, actual).unwrap();
        return;
    }
    match std::fs::read_to_string(path) {
        Ok(expected) if expected == actual => {}
        Ok(expected) => {
            let line = expected
                .lines()
                .zip(actual.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
            failures.push(format!(
                "{} differs from the rendered output at line {} (expected {:?}, got {:?})",
                path.display(),
                line + 1,
                expected.lines().nth(line).unwrap_or("<end>"),
                actual.lines().nth(line).unwrap_or("<end>")
            ));
        }
        Err(_) => failures.push(format!("{} is missing", path.display())),
    }
}

/// Deterministic stand-ins for the passwords the operator generates.
fn fixed_generated(pbx: &webrtc_pbx_operator::api::WebRtcPbx) -> Generated {
    Generated {
        user_passwords: validate::users_needing_generated_passwords(&pbx.spec)
            .into_iter()
            .map(|ext| {
                let pw = format!("generated-{ext}");
                (ext, pw)
            })
            .collect(),
        probe_password: "probe-secret".into(),
        metrics_password: "metrics-secret".into(),
        callee_password: "callee-secret".into(),
        ports: webrtc_pbx_operator::allocate::place_all(
            &Default::default(),
            std::slice::from_ref(pbx),
        )
        .remove(0),
    }
}

fn render_case(dir: &Path) -> render::Rendered {
    render::render(&validated_case(dir))
}

fn validated_case(dir: &Path) -> validate::ValidatedPbx {
    let inputs = cli::read_inputs(&[dir.join("input.yaml")]).unwrap();
    assert_eq!(
        inputs.pbxes.len(),
        1,
        "{}: one WebRtcPbx per case",
        dir.display()
    );
    let pbx = &inputs.pbxes[0];
    let ns = pbx.metadata.namespace.clone().unwrap();
    let referenced = Referenced::from_objects(
        inputs.secrets.get(&ns).cloned().unwrap_or_default(),
        inputs.config_maps.get(&ns).cloned().unwrap_or_default(),
    );
    validate::validate(pbx, &referenced, &fixed_generated(pbx))
        .unwrap_or_else(|p| panic!("{}: {p:?}", dir.display()))
}

#[test]
fn rendered_config_and_objects_match_golden_files() {
    let cases = root().join("tests/golden");
    let mut failures = Vec::new();
    let mut count = 0;
    let mut dirs: Vec<_> = std::fs::read_dir(&cases)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    for dir in dirs.into_iter().filter(|d| d.join("input.yaml").exists()) {
        count += 1;
        let rendered = render_case(&dir);
        let mut expected_files: BTreeMap<PathBuf, String> = BTreeMap::new();
        for (name, text) in &rendered.config.files {
            expected_files.insert(dir.join("etc").join(name), text.clone());
        }
        for (name, text) in &rendered.config.secret_files {
            expected_files.insert(dir.join("etc/secrets").join(name), text.clone());
        }
        expected_files.insert(
            dir.join("objects.yaml"),
            render::objects_yaml(&rendered.objects).unwrap(),
        );
        // What `--pod-monitors --pod-monitor-label release=monitoring` adds.
        let labels = [("release".to_string(), "monitoring".to_string())].into();
        let monitor = render::objects::pod_monitor(&validated_case(&dir), &labels);
        expected_files.insert(
            dir.join("pod-monitor.yaml"),
            render::objects_yaml(&[render::Object::PodMonitor(monitor)]).unwrap(),
        );
        // The clients Secret's records, decoded, and what client-config
        // prints of the first user from them.
        let validated = validated_case(&dir);
        let records = webrtc_pbx_operator::clients::secret_data(&validated);
        for (key, json) in &records {
            let value: serde_json::Value = serde_json::from_str(json).unwrap();
            expected_files.insert(
                dir.join("clients").join(key),
                serde_json::to_string_pretty(&value).unwrap() + "\n",
            );
        }
        if let Some(user) = validated.users.first() {
            use webrtc_pbx_operator::clients;
            let (pbx, user) = (clients::pbx_client(&validated), clients::user_client(user));
            let pretty = |v: serde_json::Value| serde_json::to_string_pretty(&v).unwrap();
            expected_files.insert(
                dir.join("clients/first-user.txt"),
                format!(
                    "--format jssip\n{}\n--format sipjs\n{}\n--format uri\n{}\n{}\n",
                    pretty(clients::jssip(&pbx, &user)),
                    pretty(clients::sipjs(&pbx, &user)),
                    clients::sip_uri(&pbx, &user),
                    clients::phone_link(&pbx, &user)
                ),
            );
        }
        for (path, text) in &expected_files {
            check(path, text, &mut failures);
        }
        // A golden file the renderer no longer produces is stale.
        for entry in walk(&dir.join("etc"))
            .into_iter()
            .chain(walk(&dir.join("clients")))
        {
            if !expected_files.contains_key(&entry) {
                if updating() {
                    std::fs::remove_file(&entry).unwrap();
                } else {
                    failures.push(format!("{} is no longer rendered", entry.display()));
                }
            }
        }
        // Same input, same bytes.
        assert_eq!(
            render_case(&dir),
            rendered,
            "{}: rendering is not deterministic",
            dir.display()
        );
    }
    assert!(
        count >= 6,
        "expected at least 6 golden cases, found {count}"
    );
    assert!(
        failures.is_empty(),
        "golden files differ (UPDATE_GOLDEN=1 cargo test --test golden rewrites them; review the diff):\n{}",
        failures.join("\n")
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn committed_crd_matches_generator() {
    let mut failures = Vec::new();
    let yaml = webrtc_pbx_operator::crd::crd_yaml().unwrap();
    check(
        &root().join(webrtc_pbx_operator::crd::CRD_PATH),
        &yaml,
        &mut failures,
    );
    assert!(
        failures.is_empty(),
        "crds/ is stale: run `cargo run -- crd > {}` and commit it:\n{}",
        webrtc_pbx_operator::crd::CRD_PATH,
        failures.join("\n")
    );
}

#[test]
fn readme_reference_matches_the_crd() {
    use webrtc_pbx_operator::crd::{REFERENCE_BEGIN, REFERENCE_END, reference_markdown};
    let path = root().join("README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let (Some(begin), Some(end)) = (readme.find(REFERENCE_BEGIN), readme.find(REFERENCE_END))
    else {
        panic!("README.md lacks the reference markers");
    };
    let head = &readme[..begin + REFERENCE_BEGIN.len()];
    let want = format!("{head}\n{}\n{}", reference_markdown(), &readme[end..]);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    assert!(
        std::fs::read_to_string(&path).unwrap() == want,
        "the README's WebRtcPbx reference is stale: UPDATE_GOLDEN=1 cargo test --test golden"
    );
}

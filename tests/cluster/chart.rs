//! The Helm chart and the plain manifests made from it: `helm lint`, the
//! chart's CRDs equal to `crds/`, `deploy/operator.yaml` equal to what the
//! chart renders (`UPDATE_GOLDEN=1` rewrites it), and the rendered objects
//! accepted by the real apiserver (server-side dry run) in a namespace that
//! enforces the restricted Pod Security Standard, without warnings.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use k8s_openapi::api::core::v1::{Namespace, Node, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use webrtc_pbx_operator::api::WebRtcPbx;

/// The namespace and release name of the plain manifests.
const SYSTEM_NAMESPACE: &str = "webrtc-pbx-system";
const RELEASE: &str = "webrtc-pbx-operator";

fn chart() -> PathBuf {
    harness::repo().join("charts/webrtc-pbx-operator")
}

fn helm(args: &[&str]) -> String {
    let out = Command::new(harness::ground_env("HELM"))
        .args(args)
        .output()
        .expect("run helm (scripts/ground provision helm)");
    assert!(
        out.status.success(),
        "helm {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `helm template` of the chart into `namespace`, with `--set` values.
fn template(namespace: &str, sets: &[&str]) -> String {
    let chart = chart();
    let mut args = vec![
        "template",
        RELEASE,
        chart.to_str().unwrap(),
        "--namespace",
        namespace,
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    helm(&args)
}

/// The plain manifests: the namespace, the CRDs and the chart's objects.
fn plain_manifests() -> String {
    let mut out = String::from(
        "# Generated from charts/webrtc-pbx-operator (tests/cluster/chart.rs keeps it in sync:\n\
         # UPDATE_GOLDEN=1 cargo test --test cluster chart::). Install with:\n\
         #   kubectl apply --server-side -f deploy/operator.yaml\n",
    );
    out.push_str(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {SYSTEM_NAMESPACE}\n  labels:\n    pod-security.kubernetes.io/enforce: restricted\n"
    ));
    for entry in std::fs::read_dir(chart().join("crds")).unwrap() {
        out.push_str("---\n");
        out.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    out.push_str(&template(SYSTEM_NAMESPACE, &[]));
    out
}

#[test]
fn helm_lint_is_clean() {
    let out = helm(&["lint", "--strict", chart().to_str().unwrap()]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
    assert!(
        !out.contains("[WARNING]") && !out.contains("[ERROR]"),
        "{out}"
    );
}

#[test]
fn chart_crds_are_the_generated_ones() {
    for entry in std::fs::read_dir(harness::repo().join("crds")).unwrap() {
        let path = entry.unwrap().path();
        let copy = chart().join("crds").join(path.file_name().unwrap());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            std::fs::read_to_string(&copy).unwrap_or_default(),
            "{} differs from {}: cp crds/*.yaml charts/webrtc-pbx-operator/crds/",
            copy.display(),
            path.display()
        );
    }
}

#[test]
fn plain_manifests_are_rendered_from_the_chart() {
    let path = harness::repo().join("deploy/operator.yaml");
    let want = plain_manifests();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(&path).unwrap_or_default(),
        want,
        "deploy/operator.yaml is stale: UPDATE_GOLDEN=1 cargo test --test cluster chart::"
    );
}

#[test]
fn values_outside_the_schema_are_refused() {
    let out = Command::new(harness::ground_env("HELM"))
        .args(["template", "x", chart().to_str().unwrap()])
        .args([
            "--set",
            "replicaCount=0",
            "--set",
            "image.pullPolicy=Sometimes",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("replicaCount") && stderr.contains("pullPolicy"),
        "{stderr}"
    );
}

#[test]
fn optional_parts_render() {
    let monitor = template("ops", &["metrics.serviceMonitor.enabled=true"]);
    assert!(monitor.contains("kind: ServiceMonitor"), "{monitor}");
    let scoped = template("ops", &["watchNamespace=voice"]);
    assert!(
        scoped.contains("kind: Role\n") && !scoped.contains("kind: ClusterRole"),
        "{scoped}"
    );
    assert!(scoped.contains("--namespace=voice"), "{scoped}");
}

fn dry_run(namespace: &str, manifests: &str) -> (bool, String) {
    let mut child = Command::new(harness::ground_env("KUBECTL"))
        .arg("--kubeconfig")
        .arg(&harness::control_plane().kubeconfig)
        .args(["apply", "--dry-run=server", "-n", namespace, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(manifests.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn the_apiserver_accepts_the_chart_under_restricted_pod_security() {
    let client = harness::client().await;
    harness::install_project_crds(&client).await;
    let ns = harness::namespace(&client, "chart").await;
    Api::<Namespace>::all(client.clone())
        .patch(
            &ns,
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({"metadata": {"labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/warn": "restricted"
            }}})),
        )
        .await
        .unwrap();
    // All namespaces, and only its own (Role instead of ClusterRole).
    let own = format!("watchNamespace={ns}");
    for sets in [&[][..], &[own.as_str(), "replicaCount=1"][..]] {
        let (ok, out) = dry_run(&ns, &template(&ns, sets));
        assert!(ok, "{sets:?}: {out}");
        assert!(!out.contains("Warning"), "{sets:?}: {out}");
        for kind in ["deployment.apps", "serviceaccount", "role.rbac", "service/"] {
            assert!(out.contains(kind), "{kind} not applied: {out}");
        }
    }
    // Every monitoring part, against prometheus-operator's real CRDs.
    harness::install_monitoring_crds(&client).await;
    let monitoring = [
        "metrics.serviceMonitor.enabled=true",
        "metrics.prometheusRule.enabled=true",
        "metrics.podMonitor.enabled=true",
        "metrics.dashboard.enabled=true",
    ];
    let (ok, out) = dry_run(&ns, &template(&ns, &monitoring));
    assert!(ok, "{out}");
    for kind in [
        "servicemonitor.monitoring.coreos.com",
        "prometheusrule.monitoring.coreos.com",
        "-dashboard",
    ] {
        assert!(out.contains(kind), "{kind} not applied: {out}");
    }
}

#[tokio::test]
async fn the_chart_service_account_gets_what_the_operator_uses_and_no_more() {
    // The RBAC pass of scripts/test (WPBX_TEST_AS_CHART_SA=1) runs the
    // controller and e2e tests as this identity; here: it is really that
    // identity, and it is refused what the operator never does.
    let client = harness::client().await;
    harness::install_project_crds(&client).await;
    let ns = harness::namespace(&client, "rbac").await;
    let user = harness::install_chart_rbac(&ns);
    let operator = harness::client_as(&user).await;
    let review: serde_json::Value = operator
        .request(
            http::Request::post("/apis/authentication.k8s.io/v1/selfsubjectreviews")
                .header("content-type", "application/json")
                .body(
                    serde_json::to_vec(&serde_json::json!({
                        "apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"
                    }))
                    .unwrap(),
                )
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(review["status"]["userInfo"]["username"], user.as_str());
    let list = ListParams::default();
    assert!(
        Api::<WebRtcPbx>::all(operator.clone())
            .list(&list)
            .await
            .is_ok()
    );
    assert!(
        Api::<Secret>::namespaced(operator.clone(), &ns)
            .list(&list)
            .await
            .is_ok()
    );
    let forbidden =
        |r: Result<_, kube::Error>| matches!(r, Err(kube::Error::Api(s)) if s.code == 403);
    assert!(forbidden(
        Api::<Node>::all(operator.clone())
            .list(&list)
            .await
            .map(|_| ())
    ));
    assert!(forbidden(
        Api::<Namespace>::all(operator.clone())
            .delete(&ns, &Default::default())
            .await
            .map(|_| ())
    ));
    // WebRtcPbx specs are the users'; the operator only writes status.
    assert!(forbidden(
        Api::<WebRtcPbx>::namespaced(operator.clone(), &ns)
            .delete("any", &Default::default())
            .await
            .map(|_| ())
    ));
}

#[test]
fn the_prometheus_rule_carries_the_rules_file_promtool_tests() {
    let rules: serde_json::Value = serde_saphyr::from_str(
        &std::fs::read_to_string(chart().join("files/alerts.yaml")).unwrap(),
    )
    .unwrap();
    let off = template("voice-ops", &[]);
    assert!(!off.contains("kind: PrometheusRule"), "off by default");
    let on = template("voice-ops", &["metrics.prometheusRule.enabled=true"]);
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&on).unwrap();
    let rule = docs
        .iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .expect("a PrometheusRule");
    assert_eq!(rule["metadata"]["namespace"], "voice-ops");
    assert_eq!(rule["spec"]["groups"], rules["groups"]);
}

#[test]
fn the_dashboard_config_map_carries_the_dashboard_file_for_grafanas_sidecar() {
    let file: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(chart().join("files/dashboard.json")).unwrap(),
    )
    .unwrap();
    let off = template("voice-ops", &[]);
    assert!(!off.contains("-dashboard"), "off by default");
    let on = template("voice-ops", &["metrics.dashboard.enabled=true"]);
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&on).unwrap();
    let map = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["data"]["webrtc-pbx.json"].is_string())
        .expect("the dashboard ConfigMap");
    assert_eq!(map["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: serde_json::Value =
        serde_json::from_str(map["data"]["webrtc-pbx.json"].as_str().unwrap()).unwrap();
    assert_eq!(shipped, file);
    // Every panel queries something (tests/e2e.rs evaluates each query).
    let panels = file["panels"].as_array().unwrap();
    assert!(panels.len() >= 10, "{} panels", panels.len());
    for panel in panels {
        assert!(
            panel["targets"][0]["expr"]
                .as_str()
                .is_some_and(|e| !e.is_empty()),
            "{panel}"
        );
    }
}

#[test]
fn pod_monitors_are_the_operators_flag() {
    let on = template(
        "voice-ops",
        &[
            "metrics.podMonitor.enabled=true",
            "metrics.podMonitor.labels.release=monitoring",
        ],
    );
    assert!(on.contains("- --pod-monitors\n"), "{on}");
    assert!(
        on.contains("- --pod-monitor-label=release=monitoring\n"),
        "{on}"
    );
    assert!(!template("voice-ops", &[]).contains("--pod-monitors"));
}

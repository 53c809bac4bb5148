//! The control plane fails under a running operator: kube-apiserver and
//! etcd are killed (SIGKILL) and started again on the real ground. The
//! operator's watches resume and no change is missed; it backs off while
//! the API is gone and never exits. One test (this binary's control plane is
//! shared, and restarting it would disturb any other test in the binary).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use webrtc_pbx_operator::api::WebRtcPbx;

async fn create(client: &Client, ns: &str, name: &str) {
    let pbx: WebRtcPbx = serde_json::from_value(json!({
        "apiVersion": "pbx.webrtc.io/v1alpha1", "kind": "WebRtcPbx",
        "metadata": {"name": name},
        "spec": {"domain": format!("{name}.restart.test"), "network": {"mode": "Service"},
                 "rtp": {"portRange": {"start": 20000, "end": 20003}}, "probes": {"enabled": false}}
    }))
    .unwrap();
    Api::<WebRtcPbx>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pbx)
        .await
        .unwrap();
}

/// Waits until `name` is Ready for its current generation.
async fn ready(client: &Client, ns: &str, name: &str, limit: Duration) -> Duration {
    let api = Api::<WebRtcPbx>::namespaced(client.clone(), ns);
    let start = Instant::now();
    harness::wait_until(limit, &format!("{name} Ready and observed"), || async {
        let pbx = api.get(name).await.ok()?;
        let status = pbx.status?;
        (status.observed_generation == pbx.metadata.generation
            && status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True"))
        .then_some(())
    })
    .await;
    start.elapsed()
}

/// Waits until the apiserver answers again.
async fn api_back(client: &Client, ns: &str) -> Duration {
    let start = Instant::now();
    harness::wait_until(Duration::from_secs(90), "the apiserver back", || async {
        Api::<Namespace>::all(client.clone())
            .get(ns)
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    start.elapsed()
}

#[tokio::test]
async fn apiserver_and_etcd_restarts_lose_no_change_and_crash_nothing() {
    let client = harness::client().await;
    harness::install_project_crds(&client).await;
    let ns = harness::namespace(&client, "restarts").await;
    let dir = harness::scratch_dir("restarts");
    let log = dir.join("operator.log");
    let metrics_port = harness::free_port();
    let mut operator = harness::operator_binary(&ns, metrics_port, Some(&log));
    create(&client, &ns, "a").await;
    ready(&client, &ns, "a", Duration::from_secs(60)).await;

    // kube-apiserver killed and back after 2 s: every watch breaks.
    harness::restart_component("kube-apiserver", Duration::from_secs(2));
    let back = api_back(&client, &ns).await;
    // Changes right after it is back: a new PBX, a spec change, a deleted child.
    create(&client, &ns, "b").await;
    Api::<WebRtcPbx>::namespaced(client.clone(), &ns)
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"sip": {"keepAliveInterval": "20s"}}})),
        )
        .await
        .unwrap();
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    config_maps
        .delete("a-asterisk", &Default::default())
        .await
        .unwrap();
    let new_pbx = ready(&client, &ns, "b", Duration::from_secs(60)).await;
    let changed = ready(&client, &ns, "a", Duration::from_secs(60)).await;
    harness::wait_until(
        Duration::from_secs(60),
        "a's ConfigMap restored",
        || async {
            let cm = config_maps.get_opt("a-asterisk").await.ok()??;
            cm.data?
                .get("pjsip.conf")?
                .contains("keep_alive_interval = 20")
                .then_some(())
        },
    )
    .await;
    assert!(operator_alive(&mut operator), "{}", tail(&log));
    eprintln!(
        "kube-apiserver restart: API back after {:.1} s; new PBX Ready {:.1} s and the spec change observed {:.1} s after that",
        back.as_secs_f64(),
        new_pbx.as_secs_f64(),
        changed.as_secs_f64()
    );

    // etcd killed for 10 s: the API fails underneath the operator.
    let failures_before = failures(metrics_port);
    harness::restart_component("etcd", Duration::from_secs(10));
    let back = api_back(&client, &ns).await;
    create(&client, &ns, "c").await;
    let recovered = ready(&client, &ns, "c", Duration::from_secs(120)).await;
    assert!(operator_alive(&mut operator), "{}", tail(&log));
    let health = harness::http_get(metrics_port, "/healthz").unwrap_or_default();
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    eprintln!(
        "etcd down 10 s: API back {:.1} s after the restart, new PBX Ready {:.1} s later; reconcile failures counted meanwhile: {}; same operator process throughout",
        back.as_secs_f64(),
        recovered.as_secs_f64(),
        failures(metrics_port) - failures_before
    );
    let _ = operator.kill();
    harness::remove_dir(&dir);
}

fn operator_alive(operator: &mut harness::Operator) -> bool {
    operator.try_wait().ok().flatten().is_none()
}

/// webrtc_pbx_reconcile_failures_total, all categories.
fn failures(port: u16) -> u64 {
    harness::http_get(port, "/metrics")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("webrtc_pbx_reconcile_failures_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn tail(log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

//! The demo (`scripts/demo`): a local control plane, the operator, and real
//! Asterisk fed with the configuration the operator rendered, on the
//! test ground the tests use. It applies `deploy/examples/minimal`, shows
//! the PBX going to Ready with its probe figures, then tells you the WSS URL
//! and credentials to try from a browser softphone. Ctrl-C tears everything
//! down (the ground's watchdogs follow this process).
//!
//! `--until-ready` exits 0 once the PBX is Ready (CI and timing).
#![forbid(unsafe_code)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, PostParams};
use serde_json::json;
use webrtc_pbx_operator::api::WebRtcPbx;

const NS: &str = "voice";
const NAME: &str = "demo";

fn say(what: &str) {
    println!("[demo {:>6.1}s] {what}", started().elapsed().as_secs_f64());
}

fn started() -> &'static Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now)
}

/// One `kubectl get wpbx`-style row, with the probe figures.
fn row(pbx: &WebRtcPbx) -> String {
    let status = pbx.status.clone().unwrap_or_default();
    let condition = |t: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| format!("{}/{}", c.status, c.reason))
            .unwrap_or_else(|| "-".into())
    };
    let p = status.probes.unwrap_or_default();
    let ms = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into());
    format!(
        "{:<6} {:<22} {:<24} {:<26} {:<20} {:>8} {:>8} {:>7}",
        NAME,
        condition("Ready"),
        condition("WssReachable"),
        condition("SipRegistered"),
        condition("EchoCallHealthy"),
        ms(p.register_ms),
        ms(p.echo_round_trip_ms),
        ms(p.loss_percent),
    )
}

#[tokio::main]
async fn main() {
    let until_ready = std::env::args().any(|a| a == "--until-ready");
    started();
    say("starting the control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok)");
    let client = support::client().await;
    support::install_project_crds(&client).await;
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace voice");
    let dir = support::scratch_dir("demo");
    let netns = support::Netns::linked("demo");
    let inside = netns.link.as_ref().unwrap().inside.clone();
    let log = dir.join("operator.log");
    let metrics_port = support::free_port();
    let mut operator = support::operator_binary(NS, metrics_port, Some(&log));
    say(&format!(
        "operator running (log {}, metrics http://127.0.0.1:{metrics_port}/metrics)",
        log.display()
    ));

    // The minimal example, probing the test host where Asterisk runs.
    let (pbx, users) = support::minimal_example(json!({
        "interval": "10s", "timeout": "3s", "echoCall": {"duration": "3s"},
        "connectAddress": format!("{inside}:8089"),
    }));
    let password = users
        .string_data
        .as_ref()
        .and_then(|d| d.get("1001").cloned())
        .unwrap_or_default();
    Api::<Secret>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &users)
        .await
        .unwrap();
    let applied = Instant::now();
    let pbxes = Api::<WebRtcPbx>::namespaced(client.clone(), NS);
    pbxes.create(&PostParams::default(), &pbx).await.unwrap();
    say("applied deploy/examples/minimal (probes every 10 s, aimed at the test host)");
    let mut kubelet = support::kubelet::Kubelet::start(client.clone(), NS, NAME, netns, &dir).await;
    say(&format!(
        "Asterisk 22 running on the operator's ConfigMap and Secrets in test host {inside}"
    ));
    println!(
        "\n{:<6} {:<22} {:<24} {:<26} {:<20} {:>8} {:>8} {:>7}",
        "NAME", "READY", "WSS", "REGISTERED", "ECHO", "REG ms", "RTT ms", "LOSS %"
    );
    let mut last = String::new();
    let mut told = false;
    let shutdown = tokio::signal::ctrl_c();
    tokio::pin!(shutdown);
    loop {
        kubelet.sync().await;
        if let Ok(pbx) = pbxes.get(NAME).await {
            let line = row(&pbx);
            if line != last {
                println!("{line}");
                last = line;
            }
            let ready = pbx.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            });
            if ready && !told {
                told = true;
                let ca = dir.join("demo-ca.crt");
                let tls = Api::<Secret>::namespaced(client.clone(), NS)
                    .get(&format!("{NAME}-tls"))
                    .await
                    .ok()
                    .and_then(|s| s.data?.get("ca.crt").map(|b| b.0.clone()))
                    .unwrap_or_default();
                let _ = std::fs::write(&ca, tls);
                println!();
                say(&format!(
                    "Ready=True {:.1} s after apply: a browser can register and hear audio.",
                    applied.elapsed().as_secs_f64()
                ));
                println!(
                    "\n  Try it from a browser softphone (JsSIP, SIP.js, or the check page tests/browser/echo.html):\n\
                     \x20   WebSocket  wss://pbx.demo.example:8089/ws   (add \"{inside} pbx.demo.example\" to /etc/hosts)\n\
                     \x20   SIP URI    sip:1001@pbx.demo.example\n\
                     \x20   password   {password}\n\
                     \x20   call       *43 (echo)\n\
                     \x20   trust      {} (the operator's CA; import it into the browser)\n\
                     \n  kubectl: export KUBECONFIG={}; kubectl get wpbx -n {NS}\n  Ctrl-C stops everything.\n",
                    ca.display(),
                    support::control_plane().kubeconfig.display()
                );
                if until_ready {
                    break;
                }
            }
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        if !told && applied.elapsed() > Duration::from_secs(300) {
            say(&format!(
                "not Ready after 5 minutes; operator log: {}",
                log.display()
            ));
            let _ = operator.kill();
            std::process::exit(1);
        }
    }
    say("stopping: operator, Asterisk, test host and control plane");
    let _ = operator.kill();
    let _ = operator.wait();
    kubelet.stop_asterisk();
    drop(kubelet);
    let _ = std::fs::remove_dir_all(&dir);
}

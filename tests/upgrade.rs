//! An operator upgrade on the real node, under live calls. The chart is
//! installed with this build (`maxRollingPbxs` 2), three HostNetwork PBXs
//! run on the one node, each with an echo call up, and the chart is
//! upgraded to the next version: image `operator-next`, this source built
//! with the `upgrade-drill` feature, whose pod template differs by one
//! variable, as a new version's does (`scripts/images build operator-next`).
//! Every PBX gets the new template, at most two out of service at a time;
//! an old pod with a call up drains it to its end before it is replaced,
//! and no call loses audio. A test binary of its own: the upgrade replaces
//! the operator every PBX of its cluster answers to.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use harness::fixture::Pbx;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use serde_json::json;
use webrtc_pbx_operator::probe::Report;

const OPERATOR_NS: &str = "webrtc-pbx-system";
const RELEASE: &str = "webrtc-pbx-operator";
/// The chart's maxRollingPbxs in this test.
const BUDGET: usize = 2;
const PBXS: [&str; 3] = ["up-a", "up-b", "up-c"];
const DOMAIN: &str = "pbx.upgrade.example";
/// Each call's length: longer than the new operator takes to lead, so the
/// first PBXs to roll still have their calls up.
const CALL_SECONDS: u64 = 90;

/// Whether `pod` is Ready.
fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Whether `pod` runs the next version's template.
fn next_template(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.containers
            .iter()
            .filter(|c| c.name == "asterisk")
            .flat_map(|c| c.env.iter().flatten())
            .any(|e| e.name == "UPGRADE_DRILL")
    })
}

/// What the watch saw of one PBX after the upgrade.
#[derive(Default, Debug)]
struct Seen {
    /// When its old pod first went out of service (terminating, gone or
    /// not Ready).
    out: Option<Instant>,
    /// When a pod of the new template was first Ready.
    back: Option<Instant>,
    /// When the new pod was created, as the apiserver says (Unix seconds).
    created: Option<i64>,
    /// WorkloadReady's last message with reason Draining.
    draining: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_upgrade_rolls_the_fleet_within_its_budget_and_cuts_no_call() {
    let node = harness::real_node();
    harness::require_image("operator-next");
    let client = harness::client().await;
    let budget = format!("maxRollingPbxs={BUDGET}");
    let took = harness::helm_chart(
        &["install", RELEASE, "--create-namespace"],
        OPERATOR_NS,
        &["--set", &budget],
    );
    eprintln!(
        "helm install (this build, {budget}) -> operator pods Ready {:.1} s",
        took.as_secs_f64()
    );
    let ns = harness::namespace(&client, "upgrade").await;
    for name in PBXS {
        Pbx::new(
            name,
            json!({
                "domain": DOMAIN,
                "users": [{"extension": "1001"}],
                "network": {"mode": "HostNetwork"},
                "drain": {"timeout": "5m"},
                "probes": {"interval": "5s", "timeout": "3s", "echoCall": {"duration": "2s"}},
            }),
        )
        .create(&client, &ns)
        .await;
    }
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let mut old = BTreeMap::new();
    for name in PBXS {
        harness::wait_for_condition(&client, &ns, name, "Ready", "True", None).await;
        let pod = pods.get(&format!("{name}-0")).await.unwrap();
        assert!(!next_template(&pod), "{name} runs this build's template");
        old.insert(name, pod.metadata.uid.unwrap());
    }

    // A call on every PBX, then the upgrade 5 s into them.
    let mut calls = Vec::new();
    for name in PBXS {
        let password = harness::probe_password(&client, &ns, name).await;
        let (port, _) = harness::host_ports(&client, &ns, name).await;
        let ip = node.ip.clone();
        calls.push(tokio::spawn(async move {
            let user = webrtc_pbx_operator::validate::PROBE_USERNAME;
            let report = harness::echo_at(&ip, port, DOMAIN, user, &password, CALL_SECONDS).await;
            (report, Instant::now())
        }));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let upgraded = Instant::now();
    let helm = tokio::task::spawn_blocking(|| {
        harness::helm_chart(
            &["upgrade", RELEASE, "--reuse-values"],
            OPERATOR_NS,
            &["--set", "image.tag=0.1.0-next"],
        )
    });

    // Watch every PBX until all run the new template, Ready.
    let mut seen: BTreeMap<&str, Seen> = PBXS.iter().map(|n| (*n, Seen::default())).collect();
    let mut most_out = 0;
    loop {
        let now = Instant::now();
        let mut out = BTreeSet::new();
        for name in PBXS {
            let pod = pods.get_opt(&format!("{name}-0")).await.unwrap();
            let s = seen.get_mut(name).unwrap();
            match &pod {
                Some(p)
                    if p.metadata.deletion_timestamp.is_none() && ready(p) && next_template(p) =>
                {
                    if s.back.is_none() {
                        s.back = Some(now);
                        s.created = p
                            .metadata
                            .creation_timestamp
                            .as_ref()
                            .map(|t| t.0.as_second());
                    }
                }
                Some(p) if p.metadata.deletion_timestamp.is_none() && ready(p) => {}
                _ => {
                    out.insert(name);
                    s.out.get_or_insert(now);
                }
            }
            let workload = harness::condition(&client, &ns, name, "WorkloadReady").await;
            if let Some((_, reason, message)) = workload
                && reason == "Draining"
            {
                s.draining = Some(message);
            }
        }
        most_out = most_out.max(out.len());
        assert!(
            out.len() <= BUDGET,
            "{out:?} out of service at once, budget {BUDGET}\n{}",
            harness::kubectl(&["get", "pods", "-A", "-o", "wide"])
        );
        if seen.values().all(|s| s.back.is_some()) {
            break;
        }
        assert!(
            upgraded.elapsed() < Duration::from_secs(300),
            "the fleet not on the new template within 300 s: {seen:#?}\n{}",
            harness::kubectl(&["get", "pods", "-A", "-o", "wide"])
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let helm_took = helm.await.unwrap();
    for name in PBXS {
        harness::wait_for_condition(&client, &ns, name, "Ready", "True", None).await;
        let pod = pods.get(&format!("{name}-0")).await.unwrap();
        assert_ne!(
            pod.metadata.uid.as_ref(),
            old.get(name),
            "{name}: not replaced"
        );
    }

    // Every call heard all of its audio; a pod that went out with its call
    // up was replaced only once the call had ended (it drained).
    let mut drained_live = 0;
    for (name, call) in PBXS.iter().zip(calls) {
        let (report, ended): (Report, Instant) = call.await.unwrap();
        let r = report
            .echo_result
            .clone()
            .unwrap_or_else(|| panic!("{name}: no call: {report:?}"));
        let s = &seen[name];
        let (out, back) = (s.out.unwrap(), s.back.unwrap());
        let at = |t: Instant| {
            if t >= upgraded {
                format!("{:.1} s", t.duration_since(upgraded).as_secs_f64())
            } else {
                format!("-{:.1} s", upgraded.duration_since(t).as_secs_f64())
            }
        };
        eprintln!(
            "{name}: call {}/{} echoed, loss {:?} %, ended {}; old pod out {}; new pod created {} s, Ready {}; {:?}",
            r.echoed,
            r.sent,
            r.loss_percent,
            at(ended),
            at(out),
            s.created.unwrap() - harness::unix_seconds_at(upgraded),
            at(back),
            s.draining
        );
        assert_eq!(
            report.echo.as_ref().map(|c| c.reason.as_str()),
            Some("Healthy"),
            "{name}: {report:?}"
        );
        assert!(
            u64::from(r.sent) >= CALL_SECONDS * 50 - 100 && r.echoed == r.sent,
            "{name}: {report:?}"
        );
        // Without a call up, the drain is short: a probe call in flight
        // ends with its BYE (cut off, Asterisk would hold it until its RTP
        // timed out, 30 s).
        if out >= ended {
            assert!(
                back.duration_since(out) < Duration::from_secs(25),
                "{name}: out of service {:?} with no call up",
                back.duration_since(out)
            );
        }
        if out < ended {
            drained_live += 1;
            let call_end = harness::unix_seconds_at(ended);
            let created = s.created.unwrap();
            assert!(
                created + 1 >= call_end,
                "{name}: the new pod (created at {created}) started before the call ended ({call_end})"
            );
        }
    }
    assert!(
        drained_live >= 2,
        "{drained_live} PBXs went out with a call up; the upgrade came too late to show a drain: {seen:#?}"
    );
    assert_eq!(most_out, BUDGET, "the budget was never used: {seen:#?}");
    eprintln!(
        "operator upgrade under {} live {CALL_SECONDS} s calls: helm upgrade {:.1} s; {drained_live} PBXs drained a live call, at most {most_out} out at once (budget {BUDGET}); the whole fleet on the new template {:.1} s after the upgrade; no call lost audio",
        PBXS.len(),
        helm_took.as_secs_f64(),
        seen.values()
            .filter_map(|s| s.back)
            .max()
            .unwrap()
            .duration_since(upgraded)
            .as_secs_f64()
    );
}

//! The reconciler against the real control plane: children with owner
//! references, Ready progression, no writes in steady state, drift restored,
//! orphans pruned, and every certificate outcome. The controller runs in the
//! test process, scoped to the test's namespace, on an injectable clock.

use harness::fixture::Pbx;
use harness::inprocess::{Running, condition, create_secret, start, versions, wait_condition};

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::json;
use time::OffsetDateTime;
use webrtc_pbx_operator::api::WebRtcPbx;
use webrtc_pbx_operator::certs;
use webrtc_pbx_operator::controller::{self, Context};
use webrtc_pbx_operator::names;

fn canonical_spec() -> serde_json::Value {
    let text =
        std::fs::read_to_string(harness::repo().join("deploy/examples/host-network-nat/pbx.yaml"))
            .unwrap();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
    docs.into_iter().find(|d| d["kind"] == "WebRtcPbx").unwrap()["spec"].clone()
}

#[tokio::test]
async fn canonical_pbx_becomes_ready_and_stays_quiet() {
    let r = start("ctl-basic").await;
    create_secret(
        &r,
        "acme-users",
        BTreeMap::from([("1001", "alice-pw".to_string())]),
    )
    .await;
    let started = Instant::now();
    // Host network on a node of its own: concurrent tests use the others.
    let mut spec = canonical_spec();
    spec["nodeSelector"] = json!({"kubernetes.io/hostname": "kwok-node-0"});
    // Nothing serves this PBX: tests/e2e.rs probes the canonical one for real.
    spec["probes"]["enabled"] = json!(false);
    let pbx = r.create(Pbx::new("acme", spec)).await;
    let uid = pbx.uid().unwrap();

    // Every child exists, owned by the PBX.
    let children = harness::wait_until(Duration::from_secs(30), "children created", || async {
        let secrets = Api::<Secret>::namespaced(r.client.clone(), &r.ns);
        let names = ["acme-asterisk", "acme-tls", "acme-ca", "acme-clients"];
        let mut owned = 0;
        for n in names {
            owned += usize::from(
                secrets
                    .get_opt(n)
                    .await
                    .ok()??
                    .owner_references()
                    .iter()
                    .any(|o| o.uid == uid),
            );
        }
        let cm = Api::<ConfigMap>::namespaced(r.client.clone(), &r.ns)
            .get_opt("acme-asterisk")
            .await
            .ok()??;
        let svc = Api::<Service>::namespaced(r.client.clone(), &r.ns)
            .get_opt("acme-wss")
            .await
            .ok()??;
        let sts = Api::<StatefulSet>::namespaced(r.client.clone(), &r.ns)
            .get_opt("acme")
            .await
            .ok()??;
        let all_owned = [
            cm.owner_references(),
            svc.owner_references(),
            sts.owner_references(),
        ]
        .iter()
        .all(|refs| {
            refs.iter()
                .any(|o| o.uid == uid && o.controller == Some(true))
        });
        (owned == names.len() && all_owned).then_some(names.len() + 3)
    })
    .await;
    let created_after = started.elapsed();
    eprintln!("{children} children created {created_after:?} after apply");
    assert!(
        Api::<Service>::namespaced(r.client.clone(), &r.ns)
            .get_opt("acme-rtp")
            .await
            .unwrap()
            .is_none(),
        "HostNetwork mode has no RTP Service"
    );

    // kwok runs the pod; the StatefulSet controller reports it ready.
    let ready_after = wait_condition(&r, "acme", "Ready", "True", Some("Ready")).await;
    eprintln!("Ready=True {:?} after apply", started.elapsed());
    let _ = ready_after;
    assert_eq!(
        condition(&r, "acme", "CertificateReady").await.unwrap().1,
        "CertificateValid"
    );
    assert_eq!(condition(&r, "acme", "Stalled").await.unwrap().0, "False");
    let api: Api<WebRtcPbx> = Api::namespaced(r.client.clone(), &r.ns);
    let status = api.get("acme").await.unwrap().status.unwrap();
    assert_eq!(
        status.endpoints.unwrap().wss_url,
        "wss://pbx.acme.example:8089/ws"
    );
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(
        status.certificate.unwrap().dns_names,
        vec!["pbx.acme.example"]
    );

    // kubectl wait sees it as users would.
    let out = Command::new(harness::ground_env("KUBECTL"))
        .arg("--kubeconfig")
        .arg(&harness::control_plane().kubeconfig)
        .args([
            "wait",
            "--for=condition=Ready",
            "wpbx/acme",
            "-n",
            &r.ns,
            "--timeout=10s",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // WorkloadReady and Ready turn True in one reconcile, so at one instant:
    // each has its Event all the same.
    let notes: Vec<String> =
        Api::<k8s_openapi::api::events::v1::Event>::namespaced(r.client.clone(), &r.ns)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|o| o.name.as_deref()) == Some("acme"))
            .filter_map(|e| e.note)
            .collect();
    for condition in ["WorkloadReady", "Ready"] {
        assert!(
            notes
                .iter()
                .any(|n| n.starts_with(&format!("{condition} is True"))),
            "no Event for {condition} turning True among {notes:?}"
        );
    }

    // Steady state: nothing changes for 30 s, so nothing is written.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = versions(&r).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let after = versions(&r).await;
    let changed: Vec<_> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v))
        .map(|(k, _)| k)
        .collect();
    assert!(changed.is_empty(), "writes in steady state: {changed:?}");
    eprintln!("steady state: 0 writes to {} objects in 30 s", before.len());

    // Reconciles that find nothing to do send nothing either (not even a
    // no-op apply, which changes no resourceVersion): counted in the
    // apiserver's audit log of writes.
    let patches = || {
        let log = std::fs::read_to_string(harness::control_plane().dir.join("logs/audit.log"))
            .unwrap_or_default();
        log.lines()
            .filter(|l| l.contains(&format!("\"namespace\":\"{}\"", r.ns)))
            .filter(|l| l.contains("\"verb\":\"patch\""))
            .filter(|l| {
                !l.contains("\"resource\":\"webrtcpbxes\"") && !l.contains("\"resource\":\"pods\"")
            })
            .filter(|l| {
                !l.contains("\"resource\":\"leases\"") && !l.contains("\"resource\":\"events\"")
            })
            .count()
    };
    let before = patches();
    for i in 0..3 {
        Api::<WebRtcPbx>::namespaced(r.client.clone(), &r.ns)
            .patch(
                "acme",
                &PatchParams::default(),
                // Labels and annotations the pod does not read: reconciled,
                // and nothing written (no pod restart either).
                &Patch::Merge(&json!({"metadata": {
                    "annotations": {"test/poke": i.to_string()},
                    "labels": {"team": format!("t{i}")}
                }})),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        patches(),
        before,
        "children patched by reconciles with nothing to do"
    );
    r.stop().await;
}

#[tokio::test]
async fn drift_is_restored_and_orphans_pruned() {
    let r = start("ctl-drift").await;
    r.create(Pbx::new("svc", json!({"domain": "pbx.svc.test", "network": {"mode": "Service"}, "rtp": {"portRange": {"start": 20000, "end": 20003}}}))).await;
    let services = Api::<Service>::namespaced(r.client.clone(), &r.ns);
    let cms = Api::<ConfigMap>::namespaced(r.client.clone(), &r.ns);
    let sts = Api::<StatefulSet>::namespaced(r.client.clone(), &r.ns);
    harness::wait_until(Duration::from_secs(30), "RTP Service", || async {
        services.get_opt("svc-rtp").await.ok()?
    })
    .await;
    let rtp = services.get("svc-rtp").await.unwrap();
    assert_eq!(
        rtp.spec.unwrap().ports.unwrap().len(),
        4,
        "one Service port per RTP port"
    );
    // The StatefulSet is applied after the Services: wait for it too.
    let original = harness::wait_until(Duration::from_secs(30), "StatefulSet", || async {
        sts.get_opt("svc").await.ok()?
    })
    .await;

    // Deleted ConfigMap comes back.
    cms.delete("svc-asterisk", &DeleteParams::default())
        .await
        .unwrap();
    let t = Instant::now();
    harness::wait_until(Duration::from_secs(30), "ConfigMap restored", || async {
        let cm = cms.get_opt("svc-asterisk").await.ok()??;
        cm.data?.contains_key("pjsip.conf").then_some(())
    })
    .await;
    eprintln!("deleted ConfigMap restored after {:?}", t.elapsed());

    // A hand-edited image is set back.
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "asterisk", "image": "evil/asterisk:1"}]}}}});
    sts.patch("svc", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap();
    harness::wait_until(Duration::from_secs(30), "image restored", || async {
        let s = sts.get("svc").await.ok()?;
        let image = s
            .spec?
            .template
            .spec?
            .containers
            .into_iter()
            .find(|c| c.name == "asterisk")?
            .image?;
        (image
            == original.spec.as_ref()?.template.spec.as_ref()?.containers[0]
                .image
                .clone()?)
        .then_some(())
    })
    .await;

    // A deleted WSS Service comes back.
    services
        .delete("svc-wss", &DeleteParams::default())
        .await
        .unwrap();
    harness::wait_until(Duration::from_secs(30), "WSS Service restored", || async {
        services.get_opt("svc-wss").await.ok()?
    })
    .await;

    // A spec edit is observed and reaches the children.
    let api: Api<WebRtcPbx> = Api::namespaced(r.client.clone(), &r.ns);
    // Host network on a node of its own: concurrent tests use the others.
    let patch = json!({"spec": {
        "network": {"mode": "HostNetwork"},
        "sip": {"keepAliveInterval": "20s"},
        "nodeSelector": {"kubernetes.io/hostname": "kwok-node-5"}
    }});
    api.patch("svc", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    harness::wait_until(
        Duration::from_secs(30),
        "RTP Service pruned and config updated",
        || async {
            let gone = services.get_opt("svc-rtp").await.ok()?.is_none();
            let pjsip = cms
                .get("svc-asterisk")
                .await
                .ok()?
                .data?
                .get("pjsip.conf")?
                .clone();
            let observed = api.get("svc").await.ok()?.status?.observed_generation == Some(2);
            (gone && pjsip.contains("keep_alive_interval = 20") && observed).then_some(())
        },
    )
    .await;
    let host_network = sts
        .get("svc")
        .await
        .unwrap()
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .host_network;
    assert_eq!(host_network, Some(true));
    r.stop().await;
}

#[tokio::test]
async fn invalid_input_stalls_with_a_reason_and_recovers() {
    let r = start("ctl-invalid").await;
    r.create(Pbx::new("lost", json!({"domain": "pbx.lost.test", "users": [{"extension": "7", "passwordSecretRef": {"name": "nowhere", "key": "7"}}]})).off_host())
        .await;
    wait_condition(
        &r,
        "lost",
        "ConfigRendered",
        "False",
        Some("SecretNotFound"),
    )
    .await;
    let (_, _, message) = condition(&r, "lost", "ConfigRendered").await.unwrap();
    assert!(message.contains("Secret nowhere"), "{message}");
    assert_eq!(condition(&r, "lost", "Stalled").await.unwrap().0, "True");
    assert_eq!(condition(&r, "lost", "Ready").await.unwrap().0, "False");
    // Creating the Secret is enough: referenced Secrets are watched.
    create_secret(&r, "nowhere", BTreeMap::from([("7", "pw".to_string())])).await;
    wait_condition(&r, "lost", "ConfigRendered", "True", Some("Rendered")).await;
    // A password change reaches the rendered config.
    create_secret(
        &r,
        "nowhere",
        BTreeMap::from([("7", "changed-pw".to_string())]),
    )
    .await;
    let secrets = Api::<Secret>::namespaced(r.client.clone(), &r.ns);
    harness::wait_until(Duration::from_secs(30), "new password rendered", || async {
        let s = secrets.get("lost-asterisk").await.ok()?;
        let auth = String::from_utf8(s.data?.get("pjsip_auth.conf")?.0.clone()).ok()?;
        auth.contains("password = changed-pw").then_some(())
    })
    .await;
    r.stop().await;
}

#[tokio::test]
async fn self_signed_certificate_renews_on_the_injected_clock() {
    let r = start("ctl-renew").await;
    r.create(Pbx::new("renew", json!({"domain": "pbx.renew.test"})).off_host())
        .await;
    wait_condition(
        &r,
        "renew",
        "CertificateReady",
        "True",
        Some("CertificateValid"),
    )
    .await;
    let secrets = Api::<Secret>::namespaced(r.client.clone(), &r.ns);
    let not_after = |s: Secret| {
        certs::inspect(&String::from_utf8(s.data.unwrap()["tls.crt"].0.clone()).unwrap())
            .unwrap()
            .not_after
    };
    let first = not_after(secrets.get("renew-tls").await.unwrap());
    let ca_before = secrets.get("renew-ca").await.unwrap().data.unwrap()["ca.crt"].clone();
    // 70 days later the certificate is inside the 30-day renewal window.
    r.clock.advance(time::Duration::days(70));
    let api: Api<WebRtcPbx> = Api::namespaced(r.client.clone(), &r.ns);
    api.patch(
        "renew",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"annotations": {"test/poke": "1"}}})),
    )
    .await
    .unwrap();
    let renewed = harness::wait_until(Duration::from_secs(30), "certificate renewed", || async {
        let t = not_after(secrets.get("renew-tls").await.ok()?);
        (t > first).then_some(t)
    })
    .await;
    assert!(
        renewed - first >= time::Duration::days(69),
        "renewed {renewed} vs first {first}"
    );
    assert_eq!(
        secrets.get("renew-ca").await.unwrap().data.unwrap()["ca.crt"],
        ca_before,
        "the CA is kept"
    );
    wait_condition(
        &r,
        "renew",
        "CertificateReady",
        "True",
        Some("CertificateValid"),
    )
    .await;
    r.stop().await;
}

#[tokio::test]
async fn user_certificate_faults_have_their_reasons() {
    let r = start("ctl-usercert").await;
    let now = OffsetDateTime::now_utc();
    let good = certs::issue_self_signed(
        "t",
        &["pbx.user.test".into()],
        now,
        certs::generate_key().unwrap(),
        certs::generate_key().unwrap(),
    )
    .unwrap();
    let other = certs::issue_self_signed(
        "t",
        &["other.test".into()],
        now,
        certs::generate_key().unwrap(),
        certs::generate_key().unwrap(),
    )
    .unwrap();
    let old = certs::issue_self_signed(
        "t",
        &["pbx.user.test".into()],
        now - time::Duration::days(200),
        certs::generate_key().unwrap(),
        certs::generate_key().unwrap(),
    )
    .unwrap();
    let tls = |m: &certs::TlsMaterial, key: &str| {
        BTreeMap::from([
            ("tls.crt", m.tls_crt.clone()),
            ("tls.key", key.to_string()),
            ("ca.crt", m.ca_crt.clone()),
        ])
    };
    r.create(Pbx::new("user", json!({"domain": "pbx.user.test", "tls": {"mode": "Secret", "secretName": "user-cert"}})).off_host())
    .await;
    wait_condition(
        &r,
        "user",
        "CertificateReady",
        "False",
        Some("SecretNotFound"),
    )
    .await;
    for (data, reason) in [
        (tls(&other, &other.tls_key), "DomainNotCovered"),
        (tls(&old, &old.tls_key), "Expired"),
        (tls(&good, &other.tls_key), "KeyMismatch"),
        (tls(&good, &good.tls_key), "CertificateValid"),
    ] {
        create_secret(&r, "user-cert", data).await;
        let took = wait_condition(
            &r,
            "user",
            "CertificateReady",
            if reason == "CertificateValid" {
                "True"
            } else {
                "False"
            },
            Some(reason),
        )
        .await;
        eprintln!("user certificate {reason} reported after {took:?}");
    }
    // The user's Secret is theirs: never owned, never pruned.
    let secret = Api::<Secret>::namespaced(r.client.clone(), &r.ns)
        .get("user-cert")
        .await
        .unwrap();
    assert!(secret.owner_references().is_empty());
    r.stop().await;
}

#[tokio::test]
async fn cert_manager_mode_follows_the_certificate_status() {
    let r = start("ctl-certmgr").await;
    // A stand-in for cert-manager's CRD: the operator only needs the API.
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "certificates.cert-manager.io"},
        "spec": {"group": "cert-manager.io", "scope": "Namespaced",
            "names": {"plural": "certificates", "singular": "certificate", "kind": "Certificate"},
            "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
    }))
    .unwrap();
    harness::install_crd(&r.client, &crd).await;
    r.create(Pbx::new("cm", json!({"domain": "pbx.cm.test", "tls": {"mode": "CertManager", "issuerRef": {"name": "le", "kind": "ClusterIssuer"}}})).off_host()).await;
    let certs_api: Api<DynamicObject> = Api::namespaced_with(
        r.client.clone(),
        &r.ns,
        &controller::apply::certificate_resource(),
    );
    let cert = harness::wait_until(Duration::from_secs(30), "Certificate applied", || async {
        certs_api.get_opt("cm-tls").await.ok()?
    })
    .await;
    assert_eq!(cert.data["spec"]["dnsNames"], json!(["pbx.cm.test"]));
    assert_eq!(cert.data["spec"]["issuerRef"]["kind"], "ClusterIssuer");
    wait_condition(
        &r,
        "cm",
        "CertificateReady",
        "False",
        Some("IssuerNotReady"),
    )
    .await;
    // "cert-manager" issues: the Secret appears and the Certificate turns Ready.
    let m = certs::issue_self_signed(
        "cm",
        &["pbx.cm.test".into()],
        OffsetDateTime::now_utc(),
        certs::generate_key().unwrap(),
        certs::generate_key().unwrap(),
    )
    .unwrap();
    create_secret(
        &r,
        "cm-tls",
        BTreeMap::from([
            ("tls.crt", m.tls_crt.clone()),
            ("tls.key", m.tls_key.clone()),
            ("ca.crt", m.ca_crt.clone()),
        ]),
    )
    .await;
    let status = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": "issued"}]}});
    certs_api
        .patch_status("cm-tls", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    wait_condition(
        &r,
        "cm",
        "CertificateReady",
        "True",
        Some("CertificateValid"),
    )
    .await;
    r.stop().await;
}

#[tokio::test]
async fn pod_monitors_pass_the_real_crd_and_go_when_turned_off() {
    let client = harness::client().await;
    harness::install_monitoring_crds(&client).await;
    let labels = BTreeMap::from([("release".to_string(), "monitoring".to_string())]);
    let r = harness::inprocess::start_with("ctl-podmon", |c, clock| {
        Context::new(c, clock).with_pod_monitors(Some(labels))
    })
    .await;
    r.create(Pbx::new("scraped", json!({"domain": "scraped.test"})).off_host())
        .await;
    let monitors: Api<DynamicObject> = Api::namespaced_with(
        r.client.clone(),
        &r.ns,
        &controller::apply::pod_monitor_resource(),
    );
    // Accepted by prometheus-operator's own schema (v0.85.0).
    let monitor = harness::wait_until(Duration::from_secs(30), "PodMonitor applied", || async {
        monitors.get_opt("scraped").await.ok()?
    })
    .await;
    let endpoint = &monitor.data["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(endpoint["scheme"], "https");
    assert_eq!(endpoint["tlsConfig"]["serverName"], "scraped.test");
    assert_eq!(monitor.labels()["release"], "monitoring");
    // The credentials it names are in the operator's Secret.
    let secret = Api::<Secret>::namespaced(r.client.clone(), &r.ns)
        .get("scraped-asterisk")
        .await
        .unwrap();
    let data = secret.data.unwrap();
    let auth = &endpoint["basicAuth"];
    assert_eq!(auth["username"]["name"], "scraped-asterisk");
    for key in [&auth["username"]["key"], &auth["password"]["key"]] {
        let key = key.as_str().unwrap();
        assert!(!data[key].0.is_empty(), "{key} empty");
    }
    assert_eq!(data["metrics-username"].0, b"wpbx-metrics");
    let ns = r.ns.clone();
    r.stop().await;
    // The operator again, without --pod-monitors: the PodMonitor is pruned.
    let again = harness::inprocess::start_in(ns, Context::new).await;
    harness::wait_until(Duration::from_secs(30), "PodMonitor pruned", || async {
        monitors
            .get_opt("scraped")
            .await
            .ok()
            .filter(|m| m.is_none())
            .map(|_| ())
    })
    .await;
    again.stop().await;
}

#[tokio::test]
async fn overlapping_host_ports_on_the_same_node_report_port_conflict() {
    let r = start("ctl-ports").await;
    // Both pinned to one node and one WSS port (allocated ports never
    // overlap): the second cannot get its host ports there.
    let spec = |domain: &str| json!({"domain": domain, "wss": {"port": 8089}, "nodeSelector": {"kubernetes.io/hostname": "kwok-node-7"}});
    r.create(Pbx::new("first", spec("first.test"))).await;
    wait_condition(&r, "first", "WorkloadReady", "True", Some("PodsReady")).await;
    r.create(Pbx::new("second", spec("second.test"))).await;
    wait_condition(&r, "second", "WorkloadReady", "False", Some("PortConflict")).await;
    let (_, _, message) = condition(&r, "second", "WorkloadReady").await.unwrap();
    assert!(
        message.contains(&format!("{}/first", r.ns)) && message.contains("8089/TCP"),
        "{message}"
    );
    assert_eq!(condition(&r, "second", "Stalled").await.unwrap().0, "True");
    assert_eq!(
        condition(&r, "first", "Ready").await.unwrap().0,
        "True",
        "the older PBX keeps running"
    );
    // Moving the second PBX to another node resolves it.
    let api: Api<WebRtcPbx> = Api::namespaced(r.client.clone(), &r.ns);
    let patch = json!({"spec": {"nodeSelector": {"kubernetes.io/hostname": "kwok-node-6"}}});
    api.patch("second", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_condition(&r, "second", "WorkloadReady", "True", Some("PodsReady")).await;
    r.stop().await;
}

/// Two instances starting together (a chart install, a rollout of both
/// replicas) may both find the Lease free and both send the lock, a
/// server-side apply of holderIdentity. Only a field manager of its own
/// makes the apiserver refuse the second (409); with one manager shared by
/// the replicas both applies passed and both led until the next renewal.
/// The race itself is a few milliseconds wide: here the second lock is
/// sent as the lease manager sends it, while the first instance leads.
/// A Lease an earlier version left locked (one shared manager) is taken
/// over once expired, and a released one by the next instance.
#[tokio::test]
async fn a_lock_racing_the_leaders_is_refused_by_the_apiserver() {
    use k8s_openapi::api::coordination::v1::Lease;
    use webrtc_pbx_operator::controller::leader;
    let client = harness::client().await;
    let ns = harness::namespace(&client, "ctl-lead-race").await;
    let operator = harness::operator_client(&ns).await;
    let ctx = Arc::new(Context::new(
        operator.clone(),
        Arc::new(controller::SystemClock),
    ));
    let leases = Api::<Lease>::namespaced(operator.clone(), &ns);
    // The Lease as an earlier version left it: locked with the manager its
    // replicas shared, by a pod that died a minute ago without letting go.
    let stale = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "race"},
        "spec": {
            "holderIdentity": "old-pod",
            "leaseDurationSeconds": 15,
            "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                k8s_openapi::jiff::Timestamp::from_second(
                    OffsetDateTime::now_utc().unix_timestamp() - 60
                )
                .unwrap()
            ),
        },
    });
    leases
        .patch(
            "race",
            &PatchParams::apply(names::FIELD_MANAGER),
            &Patch::Apply(&stale),
        )
        .await
        .unwrap();
    let instance = |identity: &str| {
        let lease = leader::LeaseConfig {
            name: "race".into(),
            namespace: ns.clone(),
            identity: identity.into(),
            duration_seconds: 15,
            grace_seconds: 5,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(leader::lead(
            ctx.clone(),
            lease,
            async move {
                let _ = stopped.await;
            },
            |_, stop| async move {
                let _ = stop.await;
            },
        ));
        (stop, task)
    };
    let holder = || async {
        let l = leases.get("race").await.ok()?;
        l.spec?.holder_identity
    };
    let leads = |who: &'static str| {
        harness::wait_until(Duration::from_secs(30), who, move || async move {
            (holder().await.as_deref() == Some(who)).then_some(())
        })
    };
    let (stop, a) = instance("a");
    leads("a").await;
    // Instance b's lock, as kube-lease-manager sends it for a free lease.
    let lock = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "spec": {"holderIdentity": "b", "leaseDurationSeconds": 15},
    });
    let params = PatchParams {
        field_manager: Some(leader::lease_field_manager("b")),
        ..PatchParams::default()
    };
    let refused = leases
        .patch("race", &params, &Patch::Apply(&lock))
        .await
        .expect_err("b's lock on a's lease went through");
    assert!(
        matches!(&refused, kube::Error::Api(e) if e.code == 409),
        "{refused:?}"
    );
    assert_eq!(holder().await.as_deref(), Some("a"));
    assert_ne!(
        leader::lease_field_manager("a"),
        leader::lease_field_manager("b")
    );
    let _ = stop.send(());
    a.await.unwrap().unwrap();
    assert_eq!(holder().await, None, "released on shutdown");
    // Released: the next instance takes it with its own manager.
    let (stop, b) = instance("b");
    leads("b").await;
    let _ = stop.send(());
    b.await.unwrap().unwrap();
}

#[tokio::test]
async fn one_leader_reconciles_and_a_follower_takes_over() {
    let client = harness::client().await;
    harness::install_project_crds(&client).await;
    let ns = harness::namespace(&client, "ctl-leader").await;
    let operator = harness::operator_client(&ns).await;
    let instance = |identity: &str| {
        let ctx = Arc::new(Context::new(
            operator.clone(),
            Arc::new(controller::SystemClock),
        ));
        let lease = controller::leader::LeaseConfig {
            name: "webrtc-pbx-operator".into(),
            namespace: ns.clone(),
            identity: identity.into(),
            duration_seconds: 4,
            grace_seconds: 1,
        };
        let task = tokio::spawn(controller::leader::run_elected(
            ctx.clone(),
            Some(ns.clone()),
            lease,
            std::future::pending(),
        ));
        (ctx, task)
    };
    let (a, task_a) = instance("a");
    // "a" leads before "b" starts (a fixed 2 s was once too short: b led).
    harness::wait_until(Duration::from_secs(30), "a leading", || async {
        assert!(!task_a.is_finished(), "a's leader election ended");
        (a.metrics.leader.get() == 1).then_some(())
    })
    .await;
    let (b, task_b) = instance("b");
    let r = Running::observing(client.clone(), ns.clone());
    r.create(Pbx::new("led", json!({"domain": "pbx.led.test"})).off_host())
        .await;
    wait_condition(&r, "led", "ConfigRendered", "True", None).await;
    let (ra, rb) = (a.metrics.reconciles.get(), b.metrics.reconciles.get());
    assert!(
        ra > 0 && rb == 0,
        "only the leader reconciles: a={ra} b={rb}"
    );
    assert_eq!((a.metrics.leader.get(), b.metrics.leader.get()), (1, 0));

    // The leader dies without releasing the lease; the follower takes over.
    task_a.abort();
    let t = Instant::now();
    let api: Api<WebRtcPbx> = Api::namespaced(client.clone(), &ns);
    api.patch(
        "led",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"sip": {"keepAliveInterval": "25s"}}})),
    )
    .await
    .unwrap();
    harness::wait_until(
        Duration::from_secs(30),
        "follower observes generation 2",
        || async {
            (api.get("led").await.ok()?.status?.observed_generation == Some(2)).then_some(())
        },
    )
    .await;
    eprintln!(
        "follower took over and reconciled {:?} after the leader died",
        t.elapsed()
    );
    assert!(b.metrics.reconciles.get() > 0);
    assert_eq!(b.metrics.leader.get(), 1);
    task_b.abort();
}

#[tokio::test]
async fn health_ready_and_metrics_endpoints() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let metrics = Arc::new(webrtc_pbx_operator::telemetry::Metrics::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(webrtc_pbx_operator::telemetry::serve(
        listener,
        metrics.clone(),
    ));
    let get = |path: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
    assert!(
        get("/readyz").await.starts_with("HTTP/1.1 503"),
        "not ready before the watches run"
    );
    metrics.set_ready(true);
    assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
    metrics.reconciles.inc();
    let text = get("/metrics").await;
    for name in [
        "webrtc_pbx_reconciles_total 1",
        "webrtc_pbx_reconcile_duration_seconds_bucket",
        "webrtc_pbx_leader 0",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
}

async fn passwords(r: &Running, name: &str) -> BTreeMap<String, Vec<u8>> {
    let s = Api::<Secret>::namespaced(r.client.clone(), &r.ns)
        .get(&format!("{name}-asterisk"))
        .await
        .unwrap();
    s.data
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k.starts_with("password-") || k == "probe-password")
        .map(|(k, v)| (k, v.0))
        .collect()
}

#[tokio::test]
async fn killed_mid_reconcile_the_binary_restarts_to_the_same_state() {
    let client = harness::client().await;
    harness::install_project_crds(&client).await;
    let ns = harness::namespace(&client, "ctl-kill").await;
    let r = Running::observing(client.clone(), ns.clone());
    let mut operator = harness::operator_binary(&ns, harness::free_port(), None);
    let names: Vec<String> = (0..5).map(|i| format!("k{i}")).collect();
    for n in &names {
        r.create(
            Pbx::new(
                n,
                json!({"domain": format!("{n}.kill.test"), "users": [{"extension": "1002"}]}),
            )
            .off_host(),
        )
        .await;
    }
    // Killed while the first reconciles are under way.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    operator.kill().unwrap();
    operator.wait().unwrap();
    let mut operator = harness::operator_binary(&ns, harness::free_port(), None);
    for n in &names {
        wait_condition(&r, n, "ConfigRendered", "True", None).await;
        wait_condition(&r, n, "CertificateReady", "True", None).await;
        // Settled: the pods run too, so later writes can only come from a restart.
        wait_condition(&r, n, "Ready", "True", None).await;
    }
    let before: Vec<_> = futures::future::join_all(names.iter().map(|n| passwords(&r, n))).await;
    let certs_before = versions(&r).await;
    // A second kill and restart once settled changes nothing.
    operator.kill().unwrap();
    operator.wait().unwrap();
    let port = harness::free_port();
    let mut operator = harness::operator_binary(&ns, port, None);
    // It leads once the killed one's Lease expires, then reconciles all.
    let deadline = Instant::now() + Duration::from_secs(60);
    while harness::reconciles(port) < names.len() as u64 {
        assert!(
            Instant::now() < deadline,
            "the restarted operator did not reconcile"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Nothing written: not even a re-apply of what its caches had not
    // loaded yet when the first reconciles ran.
    let writes: Vec<_> = harness::api_requests(port)
        .into_iter()
        .filter(|((method, resource), _)| {
            ["POST", "PATCH", "PUT", "DELETE"].contains(&method.as_str()) && resource != "leases"
        })
        .collect();
    assert!(writes.is_empty(), "a restart wrote: {writes:?}");
    let after: Vec<_> = futures::future::join_all(names.iter().map(|n| passwords(&r, n))).await;
    assert_eq!(before, after, "generated passwords must survive restarts");
    let certs_after = versions(&r).await;
    let changed: Vec<_> = certs_after
        .iter()
        .filter(|(k, v)| certs_before.get(*k) != Some(*v))
        .map(|(k, _)| k)
        .collect();
    assert!(changed.is_empty(), "a restart rewrote {changed:?}");
    // Exactly one of each child per PBX, nothing else labelled as ours.
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns)
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=webrtc-pbx-operator"))
        .await
        .unwrap();
    assert_eq!(
        secrets.items.len(),
        names.len() * 4,
        "Secrets: asterisk, tls, ca and clients per PBX"
    );
    let sts = Api::<StatefulSet>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(sts.items.len(), names.len());
    operator.kill().unwrap();
    operator.wait().unwrap();
}

#[tokio::test]
async fn convergence_time_from_apply_to_all_children() {
    // A figure for the notes (median of 20), not a timing assertion.
    let r = start("ctl-converge").await;
    let mut times = Vec::new();
    for i in 0..20 {
        let name = format!("c{i}");
        let t = Instant::now();
        r.create(Pbx::new(&name, json!({"domain": format!("{name}.conv.test")})).off_host())
            .await;
        harness::wait_until(Duration::from_secs(30), "children", || async {
            let secrets = Api::<Secret>::namespaced(r.client.clone(), &r.ns);
            for s in ["asterisk", "tls", "ca"] {
                secrets.get_opt(&format!("{name}-{s}")).await.ok()??;
            }
            Api::<ConfigMap>::namespaced(r.client.clone(), &r.ns)
                .get_opt(&format!("{name}-asterisk"))
                .await
                .ok()??;
            Api::<Service>::namespaced(r.client.clone(), &r.ns)
                .get_opt(&format!("{name}-wss"))
                .await
                .ok()??;
            Api::<StatefulSet>::namespaced(r.client.clone(), &r.ns)
                .get_opt(&name)
                .await
                .ok()??;
            Some(())
        })
        .await;
        times.push(t.elapsed());
    }
    times.sort();
    eprintln!(
        "apply -> all 6 children: median {:?}, p90 {:?}, max {:?} (20 runs)",
        times[10], times[18], times[19]
    );
    assert_eq!(times.len(), 20);
    r.stop().await;
}

/// A reconcile that starts right after a status write, from a PBX cache
/// that does not show the write yet (a child's event), must not write the
/// status again: that write changed nothing but every lastTransitionTime,
/// which then moved without any condition flipping (291 of 921 status
/// writes with 500 PBXs created at once). Watched on the apiserver, with
/// many PBXs at once so reconciles and watch events interleave.
#[tokio::test]
async fn status_writes_change_a_condition_and_times_move_only_on_flips() {
    const N: usize = 30;
    let r = start("ctl-status-writes").await;
    let api = Api::<WebRtcPbx>::namespaced(r.client.clone(), &r.ns);
    let changes = kube::runtime::watcher(api.clone(), Default::default());
    let watching = tokio::spawn(async move {
        use futures::TryStreamExt as _;
        use kube::runtime::WatchStreamExt as _;
        let mut seen: BTreeMap<String, Vec<webrtc_pbx_operator::api::WebRtcPbxStatus>> =
            BTreeMap::new();
        let changes = changes.applied_objects();
        futures::pin_mut!(changes);
        while let Ok(Some(pbx)) = changes.try_next().await {
            let ready = |s: &webrtc_pbx_operator::api::WebRtcPbxStatus| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            };
            let history = seen.entry(pbx.name_any()).or_default();
            if let Some(status) = pbx.status
                && history.last() != Some(&status)
            {
                history.push(status);
            }
            if seen.len() == N && seen.values().all(|h| h.last().is_some_and(ready)) {
                return seen;
            }
        }
        panic!("the watch of the PBXs ended");
    });
    futures::future::join_all((0..N).map(|i| {
        let name = format!("w{i:02}");
        r.create(Pbx::new(&name, json!({"domain": format!("{name}.writes.test")})).quiet())
    }))
    .await;
    let seen = tokio::time::timeout(Duration::from_secs(120), watching)
        .await
        .expect("every PBX Ready within 120 s")
        .unwrap();
    let mut writes = 0;
    for (name, history) in &seen {
        writes += history.len();
        for pair in history.windows(2) {
            let (before, after) = (&pair[0], &pair[1]);
            let mut flipped = false;
            for c in &after.conditions {
                let Some(was) = before.conditions.iter().find(|b| b.type_ == c.type_) else {
                    flipped = true;
                    continue;
                };
                if was.status == c.status {
                    assert_eq!(
                        was.last_transition_time, c.last_transition_time,
                        "{name}: {} stayed {} but its lastTransitionTime moved",
                        c.type_, c.status
                    );
                } else {
                    flipped = true;
                }
                flipped |= (&was.reason, &was.message) != (&c.reason, &c.message);
            }
            let other = |s: &webrtc_pbx_operator::api::WebRtcPbxStatus| {
                let mut s = s.clone();
                s.conditions.clear();
                s
            };
            assert!(
                flipped || other(before) != other(after),
                "{name}: a status write that changed nothing: {after:?}"
            );
        }
    }
    eprintln!("{N} PBXs Ready: {writes} distinct statuses seen");
    r.stop().await;
}

/// The operator reads its own Secrets from a watch cache, which can lag
/// behind its last write. A Secret derived from a stale copy (passwords
/// generated again, a certificate issued again) must be refused by the
/// apiserver rather than replace the newer one.
#[tokio::test]
async fn a_secret_derived_from_a_stale_copy_is_refused() {
    use webrtc_pbx_operator::controller::apply::{self, Applied};
    use webrtc_pbx_operator::render::Object;
    let client = harness::client().await;
    let ns = harness::namespace(&client, "stale").await;
    let operator = harness::operator_client(&ns).await;
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    let secret = |password: &str| {
        let mut s: Secret = serde_json::from_value(json!({
            "metadata": {"name": "pbx-asterisk", "namespace": ns,
                         "labels": {"app.kubernetes.io/managed-by": "webrtc-pbx-operator"}},
            "stringData": {"probe-password": password}
        }))
        .unwrap();
        // As rendered: data, not stringData.
        s.data = s.string_data.take().map(|d| {
            d.into_iter()
                .map(|(k, v)| (k, k8s_openapi::ByteString(v.into_bytes())))
                .collect()
        });
        Object::Secret(s)
    };
    let live = || async {
        let s = secrets.get("pbx-asterisk").await.unwrap();
        (
            serde_json::to_value(&s).unwrap(),
            String::from_utf8(s.data.unwrap()["probe-password"].0.clone()).unwrap(),
        )
    };

    let first = apply::apply(&operator, &ns, &secret("one"), Some(None), None)
        .await
        .unwrap();
    assert_eq!(first, Applied::Written);
    let (stale, _) = live().await;
    // A reconcile that read the current version writes.
    let second = apply::apply(
        &operator,
        &ns,
        &secret("two"),
        Some(Some(stale.clone())),
        None,
    )
    .await
    .unwrap();
    assert_eq!(second, Applied::Written);
    assert_eq!(live().await.1, "two");
    // One still holding the old copy is refused, and "two" stays.
    let third = apply::apply(&operator, &ns, &secret("three"), Some(Some(stale)), None).await;
    let error = third.expect_err("a write from a stale copy must be refused");
    assert!(apply::is_conflict(&error), "{error}");
    assert_eq!(live().await.1, "two");
    // One that believed it absent (a cache behind its create) is refused
    // too: the first write above was the same create-only apply.
    let fourth = apply::apply(&operator, &ns, &secret("four"), Some(None), None).await;
    let error = fourth.expect_err("a create-only write over an existing Secret must be refused");
    assert!(apply::is_conflict(&error), "{error}");
    assert_eq!(live().await.1, "two");
}

/// The operator's own Secret with its labels taken off leaves the watch
/// cache, so a reconcile believes it absent: its create-only write is
/// refused, the labels are put back, and the passwords stay what they were.
#[tokio::test]
async fn an_own_secret_stripped_of_its_labels_is_relabelled_not_regenerated() {
    let r = start("ctl-unlabelled").await;
    r.create(Pbx::new("bare", json!({"domain": "pbx.bare.test"})).off_host())
        .await;
    wait_condition(&r, "bare", "ConfigRendered", "True", Some("Rendered")).await;
    let before = passwords(&r, "bare").await;
    assert!(!before.is_empty(), "no generated passwords");
    let secrets = Api::<Secret>::namespaced(r.client.clone(), &r.ns);
    let labels: serde_json::Map<String, serde_json::Value> = names::labels("bare")
        .into_keys()
        .map(|k| (k, serde_json::Value::Null))
        .collect();
    secrets
        .patch(
            "bare-asterisk",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": labels}})),
        )
        .await
        .unwrap();
    harness::wait_until(Duration::from_secs(30), "the labels put back", || async {
        let s = secrets.get("bare-asterisk").await.ok()?;
        let l = s.metadata.labels?;
        names::labels("bare")
            .iter()
            .all(|(k, v)| l.get(k) == Some(v))
            .then_some(())
    })
    .await;
    // Reconciles after it (a spec edit) keep the same passwords.
    Api::<WebRtcPbx>::namespaced(r.client.clone(), &r.ns)
        .patch(
            "bare",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"sip": {"keepAliveInterval": "45s"}}})),
        )
        .await
        .unwrap();
    harness::wait_until(Duration::from_secs(30), "generation 2 rendered", || async {
        let p = Api::<WebRtcPbx>::namespaced(r.client.clone(), &r.ns)
            .get("bare")
            .await
            .ok()?;
        (p.status?.observed_generation == Some(2)).then_some(())
    })
    .await;
    assert_eq!(passwords(&r, "bare").await, before, "passwords regenerated");
    r.stop().await;
}

/// A new pod template for many PBXs at once (what a new operator version
/// rendering a different pod does) replaces at most `--max-rolling-pbxs`
/// pods at a time; the others keep running until their turn.
#[tokio::test]
async fn a_new_pod_template_reaches_the_fleet_a_few_pbxs_at_a_time() {
    const PBXS: usize = 4;
    let r = start("ctl-rollout").await;
    let ns = r.ns.clone();
    for i in 0..PBXS {
        r.create(
            Pbx::new(
                &format!("f{i}"),
                json!({"domain": format!("f{i}.fleet.test")}),
            )
            .off_host(),
        )
        .await;
    }
    for i in 0..PBXS {
        wait_condition(&r, &format!("f{i}"), "WorkloadReady", "True", None).await;
    }
    r.stop().await;
    // The running pods' template differs from what the operator renders
    // (a field it sets): as after an upgrade that changes it.
    let sts: Api<StatefulSet> = Api::namespaced(harness::client().await, &ns);
    let hash = names::CONFIG_HASH_ANNOTATION;
    let drift =
        json!({"spec": {"template": {"metadata": {"annotations": {hash: "older-operator"}}}}});
    for i in 0..PBXS {
        sts.patch(
            &format!("f{i}"),
            &PatchParams::default(),
            &Patch::Merge(&drift),
        )
        .await
        .unwrap();
    }
    let settled = || async {
        let all = sts.list(&ListParams::default()).await.unwrap().items;
        let rolling = controller::rollouts::rolling(&all);
        let ready = all
            .iter()
            .all(|s| s.status.as_ref().and_then(|st| st.ready_replicas) == Some(1));
        (rolling.is_empty() && ready).then_some(())
    };
    harness::wait_until(Duration::from_secs(60), "the older pods running", settled).await;

    let r = harness::inprocess::start_in(ns.clone(), |client, clock| {
        Context::new(client, clock).with_max_rolling(1)
    })
    .await;
    let started = Instant::now();
    let mut most = 0;
    let mut order = Vec::new();
    let mut queued = std::collections::BTreeSet::new();
    loop {
        // The PBXs held back say so (Reconciling, RolloutQueued), and keep
        // Ready as it was.
        for i in 0..PBXS {
            let name = format!("f{i}");
            if let Some((_, reason, message)) = condition(&r, &name, "Reconciling").await
                && reason == "RolloutQueued"
            {
                assert!(message.contains("at most 1 at once"), "{message}");
                queued.insert(name);
            }
        }
        let all = sts.list(&ListParams::default()).await.unwrap().items;
        let rolling = controller::rollouts::rolling(&all);
        most = most.max(rolling.len());
        for s in &rolling {
            if !order.contains(s) {
                order.push(s.clone());
            }
        }
        let restored = all.iter().all(|s| {
            let t = s.spec.as_ref().unwrap().template.metadata.as_ref();
            t.and_then(|m| m.annotations.as_ref())
                .is_some_and(|a| a.get(hash).is_some_and(|v| v != "older-operator"))
        });
        if restored && rolling.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not every PBX rolled within 120 s: {order:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(most <= 1, "{most} PBXs replaced their pods at once");
    assert!(
        queued.len() >= 2,
        "only {queued:?} showed Reconciling RolloutQueued while waiting"
    );
    // Once through, none says it waits.
    for i in 0..PBXS {
        let name = format!("f{i}");
        harness::wait_until(Duration::from_secs(30), "the queue note gone", || async {
            let (_, reason, _) = condition(&r, &name, "Reconciling").await?;
            (reason != "RolloutQueued").then_some(())
        })
        .await;
    }
    eprintln!(
        "{PBXS} PBXs given a new pod template, one at a time: {:.1} s, order {order:?}; {} showed RolloutQueued while waiting",
        started.elapsed().as_secs_f64(),
        queued.len()
    );
    r.stop().await;
}

//! Faults the operator must survive, on the real ground: malformed Secrets,
//! ConfigMaps and certificates (each named by its reason, nothing crashes),
//! and SIGKILL at 20 random moments while 100 PBXs are created, changed and
//! deleted (the end state equals a clean run's: no orphans, no duplicates).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use harness::fixture::Pbx;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use rand::Rng;
use serde_json::{Value, json};
use time::OffsetDateTime;
use webrtc_pbx_operator::api::WebRtcPbx;
use webrtc_pbx_operator::certs;

const MANAGED: &str = "app.kubernetes.io/managed-by=webrtc-pbx-operator";

/// The spec of a quiet fixture ([`Pbx::quiet`]) for `domain`: many PBXs
/// on the shared fake nodes, nothing to probe.
fn spec(domain: &str) -> Value {
    Pbx::new("-", json!({"domain": domain}))
        .quiet()
        .spec()
        .clone()
}

fn tls_secret(name: &str, crt: &str, key: Option<&str>) -> Value {
    tls_secret_with_ca(name, crt, key, None)
}

fn tls_secret_with_ca(name: &str, crt: &str, key: Option<&str>, ca: Option<&str>) -> Value {
    let mut data = json!({"tls.crt": crt});
    if let Some(ca) = ca {
        data["ca.crt"] = json!(ca);
    }
    if let Some(key) = key {
        data["tls.key"] = json!(key);
    }
    json!({"metadata": {"name": name}, "stringData": data})
}

fn material(domain: &str, now: OffsetDateTime) -> certs::TlsMaterial {
    certs::issue_self_signed(
        "faults",
        &[domain.to_string()],
        now,
        certs::generate_key().unwrap(),
        certs::generate_key().unwrap(),
    )
    .unwrap()
}

/// PBX, spec, objects it references (kind, object), condition, reason.
type Case<'a> = (&'a str, Value, Vec<(&'a str, Value)>, &'a str, &'a str);

#[tokio::test]
async fn malformed_secrets_configmaps_and_certificates_each_get_their_reason() {
    let client = harness::client().await;
    harness::install_project_crds(&client).await;
    let ns = harness::namespace(&client, "malformed").await;
    let mut operator = harness::operator_binary(&ns, harness::free_port(), None);
    let now = OffsetDateTime::now_utc();
    let domain = |name: &str| format!("{name}.faults.test");
    let with_user = |name: &str, secret: &str, key: &str| {
        let mut s = spec(&domain(name));
        s["users"] =
            json!([{"extension": "100", "passwordSecretRef": {"name": secret, "key": key}}]);
        s
    };
    let with_tls = |name: &str| {
        let mut s = spec(&domain(name));
        s["tls"] = json!({"mode": "Secret", "secretName": format!("{name}-cert")});
        s
    };
    let mut cases: Vec<Case> = vec![
        (
            "no-secret",
            with_user("no-secret", "nowhere", "100"),
            vec![],
            "ConfigRendered",
            "SecretNotFound",
        ),
        (
            "no-key",
            with_user("no-key", "no-key-users", "100"),
            vec![(
                "Secret",
                json!({"metadata": {"name": "no-key-users"}, "stringData": {"200": "x"}}),
            )],
            "ConfigRendered",
            "SecretNotFound",
        ),
        (
            "empty-pw",
            with_user("empty-pw", "empty-users", "100"),
            vec![(
                "Secret",
                json!({"metadata": {"name": "empty-users"}, "data": {"100": ""}}),
            )],
            "ConfigRendered",
            "InvalidSpec",
        ),
        (
            "binary-pw",
            with_user("binary-pw", "binary-users", "100"),
            // 0xff 0xfe: not UTF-8, so not a password Asterisk could read.
            vec![(
                "Secret",
                json!({"metadata": {"name": "binary-users"}, "data": {"100": "//4="}}),
            )],
            "ConfigRendered",
            "InvalidSpec",
        ),
        (
            "turn-no-user",
            {
                let mut s = spec(&domain("turn-no-user"));
                s["rtp"]["ice"] = json!({"turnServers": [{"url": "turn:turn.faults.test:3478", "credentialsSecretRef": {"name": "turn-half"}}]});
                s
            },
            vec![(
                "Secret",
                json!({"metadata": {"name": "turn-half"}, "stringData": {"password": "p"}}),
            )],
            "ConfigRendered",
            "SecretNotFound",
        ),
        (
            "no-cm",
            {
                let mut s = spec(&domain("no-cm"));
                s["dialplan"] =
                    json!({"extraConfigMapRef": {"name": "nowhere", "key": "extensions.conf"}});
                s
            },
            vec![],
            "ConfigRendered",
            "ConfigMapNotFound",
        ),
        (
            "cm-no-key",
            {
                let mut s = spec(&domain("cm-no-key"));
                s["dialplan"] = json!({"extraConfigMapRef": {"name": "dialplan-other-key", "key": "extensions.conf"}});
                s
            },
            vec![(
                "ConfigMap",
                json!({"metadata": {"name": "dialplan-other-key"}, "data": {"other": "x"}}),
            )],
            "ConfigRendered",
            "ConfigMapNotFound",
        ),
        (
            "tls-missing",
            with_tls("tls-missing"),
            vec![],
            "CertificateReady",
            "SecretNotFound",
        ),
    ];
    let good = material(&domain("x"), now);
    let tls_cases: Vec<(&str, Value, &str)> = vec![
        (
            "tls-garbage",
            tls_secret("tls-garbage-cert", "not a certificate", Some("not a key")),
            "InvalidCertificate",
        ),
        (
            "tls-no-key",
            tls_secret("tls-no-key-cert", &good.tls_crt, None),
            "InvalidCertificate",
        ),
        (
            "tls-key-as-cert",
            tls_secret("tls-key-as-cert-cert", &good.tls_key, Some(&good.tls_key)),
            "InvalidCertificate",
        ),
        (
            "tls-other-host",
            {
                let m = material("other.example", now);
                tls_secret("tls-other-host-cert", &m.tls_crt, Some(&m.tls_key))
            },
            "DomainNotCovered",
        ),
        (
            "tls-expired",
            {
                let m = material(&domain("tls-expired"), now - time::Duration::days(400));
                tls_secret_with_ca(
                    "tls-expired-cert",
                    &m.tls_crt,
                    Some(&m.tls_key),
                    Some(&m.ca_crt),
                )
            },
            "Expired",
        ),
        (
            "tls-future",
            {
                let m = material(&domain("tls-future"), now + time::Duration::days(10));
                tls_secret_with_ca(
                    "tls-future-cert",
                    &m.tls_crt,
                    Some(&m.tls_key),
                    Some(&m.ca_crt),
                )
            },
            "NotYetValid",
        ),
        (
            "tls-mismatch",
            {
                let m = material(&domain("tls-mismatch"), now);
                tls_secret("tls-mismatch-cert", &m.tls_crt, Some(&good.tls_key))
            },
            "KeyMismatch",
        ),
        (
            "tls-unknown-issuer",
            {
                // Signed by a CA that is neither in tls.crt nor in ca.crt.
                let m = material(&domain("tls-unknown-issuer"), now);
                tls_secret("tls-unknown-issuer-cert", &m.tls_crt, Some(&m.tls_key))
            },
            "ChainIncomplete",
        ),
    ];
    for (name, secret, reason) in &tls_cases {
        cases.push((
            name,
            with_tls(name),
            vec![("Secret", secret.clone())],
            "CertificateReady",
            reason,
        ));
    }
    for (name, spec, objects, _, _) in &cases {
        for (kind, object) in objects {
            match *kind {
                "Secret" => harness::apply_json::<Secret>(&client, &ns, object.clone()).await,
                _ => harness::apply_json::<ConfigMap>(&client, &ns, object.clone()).await,
            }
        }
        Pbx::new(name, spec.clone()).create(&client, &ns).await;
    }
    for (name, _, _, condition, reason) in &cases {
        harness::wait_until(
            Duration::from_secs(60),
            &format!("{name}: {condition}=False ({reason})"),
            || async {
                let (status, why, _) = harness::condition(&client, &ns, name, condition).await?;
                (status == "False" && why == *reason).then_some(())
            },
        )
        .await;
        // A bad input waits for the user: Stalled, not a retry loop.
        let (stalled, _, message) = harness::condition(&client, &ns, name, "Stalled")
            .await
            .unwrap();
        assert_eq!(stalled, "True", "{name}: {message}");
    }
    assert!(
        operator.try_wait().unwrap().is_none(),
        "the operator exited on bad input"
    );
    eprintln!(
        "{} malformed inputs, each reported with its reason; the operator kept running",
        cases.len()
    );
    let _ = operator.kill();
}

/// What a PBX's children hold, minus what is random by design (passwords,
/// keys): equal between two runs of the same operations.
async fn children(client: &Client, ns: &str) -> BTreeMap<String, Value> {
    let list = ListParams::default().labels(MANAGED);
    let mut out = BTreeMap::new();
    for s in Api::<Secret>::namespaced(client.clone(), ns)
        .list(&list)
        .await
        .unwrap()
    {
        let name = s.name_any();
        let keys: BTreeSet<String> = s.data.unwrap_or_default().into_keys().collect();
        assert!(out.insert(format!("Secret/{name}"), json!(keys)).is_none());
    }
    for c in Api::<ConfigMap>::namespaced(client.clone(), ns)
        .list(&list)
        .await
        .unwrap()
    {
        out.insert(format!("ConfigMap/{}", c.name_any()), json!(c.data));
    }
    for s in Api::<Service>::namespaced(client.clone(), ns)
        .list(&list)
        .await
        .unwrap()
    {
        out.insert(
            format!("Service/{}", s.name_any()),
            json!(s.spec.unwrap().ports),
        );
    }
    for s in Api::<StatefulSet>::namespaced(client.clone(), ns)
        .list(&list)
        .await
        .unwrap()
    {
        let name = s.name_any();
        let template = s.spec.unwrap().template;
        // The pod template minus the config hash annotation's neighbours:
        // containers, volumes and security are compared whole.
        out.insert(format!("StatefulSet/{name}"), json!(template.spec));
    }
    out
}

/// Creates 100 PBXs in batches, changes 30 and deletes 20, with pauses so a
/// killer has moments to hit.
async fn operations(client: Client, ns: String) {
    let api = Api::<WebRtcPbx>::namespaced(client.clone(), &ns);
    for batch in 0..10 {
        for i in 0..10 {
            let n = batch * 10 + i;
            let mut s = spec(&format!("p{n:03}.kill.test"));
            s["users"] = json!([{"extension": "1"}]);
            Pbx::new(&format!("p{n:03}"), s).create(&client, &ns).await;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    for n in 0..30 {
        api.patch(
            &format!("p{n:03}"),
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"sip": {"keepAliveInterval": "20s"},
                                           "users": [{"extension": "1"}, {"extension": "2"}]}})),
        )
        .await
        .unwrap();
        if n % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    }
    for n in 80..100 {
        api.delete(&format!("p{n:03}"), &DeleteParams::default())
            .await
            .unwrap();
    }
}

/// The PBXs of `ns` that are not Ready for their generation, with their
/// conditions that are not True (for a failure message).
async fn unsettled(client: &Client, ns: &str) -> String {
    let pbxes = Api::<WebRtcPbx>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    let mut out = format!("{} PBXs; ", pbxes.items.len());
    for p in &pbxes.items {
        let status = p.status.clone().unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if !ready || status.observed_generation != p.metadata.generation {
            let bad: Vec<String> = status
                .conditions
                .iter()
                .filter(|c| c.status != "True")
                .map(|c| format!("{}={}/{}: {}", c.type_, c.status, c.reason, c.message))
                .collect();
            out.push_str(&format!(
                "\n{} (generation {:?}, observed {:?}): {bad:?}",
                p.name_any(),
                p.metadata.generation,
                status.observed_generation
            ));
        }
    }
    out
}

/// All 80 remaining PBXs Ready for their generation, and no child of a
/// deleted one left.
async fn settled(client: &Client, ns: &str) -> Option<()> {
    let pbxes = Api::<WebRtcPbx>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .ok()?;
    if pbxes.items.len() != 80 {
        return None;
    }
    for p in &pbxes.items {
        let status = p.status.as_ref()?;
        let ready = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if !ready || status.observed_generation != p.metadata.generation {
            return None;
        }
    }
    let live: BTreeSet<String> = pbxes.items.iter().map(|p| p.name_any()).collect();
    let owned = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(MANAGED))
        .await
        .ok()?;
    owned
        .items
        .iter()
        .all(|c| {
            live.contains(
                c.labels()
                    .get("app.kubernetes.io/instance")
                    .map(String::as_str)
                    .unwrap_or(""),
            )
        })
        .then_some(())
}

#[tokio::test]
async fn killed_at_20_random_moments_the_end_state_equals_a_clean_run() {
    let client = harness::client().await;
    harness::install_project_crds(&client).await;

    // The clean run.
    let clean = harness::namespace(&client, "clean").await;
    let _clean_operator = harness::operator_binary(&clean, harness::free_port(), None);
    let started = Instant::now();
    operations(client.clone(), clean.clone()).await;
    harness::wait_until(Duration::from_secs(240), "the clean run settled", || {
        settled(&client, &clean)
    })
    .await;
    let clean_took = started.elapsed();

    // The same operations, while the operator is killed and restarted.
    let killed = harness::namespace(&client, "killed").await;
    let port = harness::free_port();
    let mut operator = harness::operator_binary(&killed, port, None);
    let started = Instant::now();
    let driver = tokio::spawn(operations(client.clone(), killed.clone()));
    let mut moments = Vec::new();
    for _ in 0..20 {
        let wait = rand::rng().random_range(200..1500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        operator.kill().unwrap();
        operator.wait().unwrap();
        moments.push(started.elapsed().as_secs_f64());
        operator = harness::operator_binary(&killed, port, None);
    }
    driver.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(240);
    while settled(&client, &killed).await.is_none() {
        assert!(
            Instant::now() < deadline,
            "the killed run did not settle: {}",
            unsettled(&client, &killed).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let killed_took = started.elapsed();

    let a = children(&client, &clean).await;
    let b = children(&client, &killed).await;
    // 80 PBXs: CA, TLS, operator and clients Secrets, ConfigMap, WSS and
    // RTP Services, StatefulSet.
    assert_eq!(a.len(), 80 * 8, "{:?}", a.keys().collect::<Vec<_>>());
    let differing: Vec<&String> = a.keys().filter(|k| a.get(*k) != b.get(*k)).collect();
    let extra: Vec<&String> = b.keys().filter(|k| !a.contains_key(*k)).collect();
    assert!(
        differing.is_empty() && extra.is_empty(),
        "differ: {differing:?}, extra: {extra:?}"
    );
    eprintln!(
        "kill -9 at {:?} s: end state equals the clean run ({} children); settled in {:.1} s (clean run {:.1} s)",
        moments
            .iter()
            .map(|m| (m * 10.0).round() / 10.0)
            .collect::<Vec<_>>(),
        b.len(),
        killed_took.as_secs_f64(),
        clean_took.as_secs_f64()
    );
}

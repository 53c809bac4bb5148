//! Smoke tests of the test ground itself: the control plane validates,
//! schedules, runs (kwok) and garbage-collects; Asterisk 22 serves WSS.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams, PropagationPolicy};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::json;

fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

#[tokio::test]
async fn statefulset_pod_runs_and_children_are_garbage_collected() {
    let client = harness::client().await;
    let ns = harness::namespace(&client, "smoke-gc").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let owner = cms
        .create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"name": "owner"}})),
        )
        .await
        .unwrap();
    let owner_ref = json!([{
        "apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
        "uid": owner.metadata.uid.clone().unwrap(), "controller": true, "blockOwnerDeletion": true
    }]);
    let meta = |name: &str| json!({"name": name, "ownerReferences": owner_ref, "labels": {"app": "smoke"}});
    cms.create(
        &PostParams::default(),
        &from_json(json!({"metadata": meta("child"), "data": {"a": "b"}})),
    )
    .await
    .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .create(
            &PostParams::default(),
            &from_json(json!({"metadata": meta("child"), "stringData": {"k": "v"}})),
        )
        .await
        .unwrap();
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    sts.create(
        &PostParams::default(),
        &from_json(json!({
            "metadata": meta("pbx"),
            "spec": {
                "replicas": 1, "serviceName": "pbx",
                "selector": {"matchLabels": {"app": "smoke"}},
                "template": {
                    "metadata": {"labels": {"app": "smoke"}},
                    "spec": {"containers": [{"name": "c", "image": "example.invalid/none"}]}
                }
            }
        })),
    )
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let started = Instant::now();
    harness::wait_until(Duration::from_secs(60), "pod pbx-0 Running", || async {
        let pod = pods.get("pbx-0").await.ok()?;
        (pod.status?.phase.as_deref() == Some("Running")).then_some(())
    })
    .await;
    eprintln!("StatefulSet pod Running after {:?}", started.elapsed());

    cms.delete(
        "owner",
        &DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let started = Instant::now();
    // The garbage collector learns about new types on a resync: allow time.
    harness::wait_until(
        Duration::from_secs(90),
        "children garbage-collected",
        || async {
            let gone = cms.get_opt("child").await.ok()?.is_none()
                && secrets.get_opt("child").await.ok()?.is_none()
                && sts.get_opt("pbx").await.ok()?.is_none();
            gone.then_some(())
        },
    )
    .await;
    eprintln!("children garbage-collected after {:?}", started.elapsed());
}

#[tokio::test]
async fn crd_cel_rule_rejects_bad_object_with_its_message() {
    let client = harness::client().await;
    let crd: CustomResourceDefinition = from_json(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.smoke.webrtc.io"},
        "spec": {
            "group": "smoke.webrtc.io", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {"spec": {"type": "object",
                    "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}},
                    "x-kubernetes-validations": [{"rule": "self.min <= self.max", "message": "min must not exceed max"}]
                }}
            }}}]
        }
    }));
    harness::install_crd(&client, &crd).await;
    let ns = harness::namespace(&client, "smoke-cel").await;
    let gvk = GroupVersionKind::gvk("smoke.webrtc.io", "v1", "Widget");
    let api: Api<DynamicObject> = Api::namespaced_with(client, &ns, &ApiResource::from_gvk(&gvk));
    let mut good = DynamicObject::new("good", &ApiResource::from_gvk(&gvk));
    good.data = json!({"spec": {"min": 1, "max": 2}});
    api.create(&PostParams::default(), &good)
        .await
        .expect("valid object accepted");
    let mut bad = DynamicObject::new("bad", &ApiResource::from_gvk(&gvk));
    bad.data = json!({"spec": {"min": 3, "max": 2}});
    let err = api
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("invalid object rejected");
    assert!(err.to_string().contains("min must not exceed max"), "{err}");
}

#[tokio::test]
async fn asterisk_serves_wss_with_sip_subprotocol() {
    let dir = harness::scratch_dir("smoke-asterisk");
    let etc = dir.join("etc");
    let port = harness::free_port();
    let ca = harness::write_self_signed(&etc.join("keys"), &["localhost"]);
    std::fs::write(
        etc.join("http.conf"),
        format!(
            "[general]\nenabled=yes\ntlsenable=yes\ntlsbindaddr=127.0.0.1:{port}\n\
             tlscertfile=/etc/asterisk/keys/tls.crt\ntlsprivatekey=/etc/asterisk/keys/tls.key\n"
        ),
    )
    .unwrap();
    std::fs::write(
        etc.join("modules.conf"),
        "[modules]\nautoload=no\nload=res_timing_timerfd.so\nload=res_sorcery_config.so\nload=res_sorcery_memory.so\n\
         load=res_sorcery_astdb.so\nload=res_pjproject.so\nload=res_http_websocket.so\nload=res_pjsip.so\nload=res_pjsip_pubsub.so\n\
         load=res_pjsip_session.so\nload=res_pjsip_transport_websocket.so\n",
    )
    .unwrap();
    std::fs::write(
        etc.join("pjsip.conf"),
        "[wss]\ntype=transport\nprotocol=wss\nbind=0.0.0.0\n",
    )
    .unwrap();
    std::fs::write(
        etc.join("logger.conf"),
        "[logfiles]\nconsole => notice,warning,error\n",
    )
    .unwrap();
    let started = Instant::now();
    let mut asterisk = harness::Asterisk::start(&etc);
    let ready = asterisk.wait_wss(port, "localhost", &ca, started).await;
    eprintln!("Asterisk WSS ready (101 + sip) after {ready:?}");
    assert!(
        ready < Duration::from_secs(5),
        "Asterisk took {ready:?} to serve WSS"
    );
    assert_eq!(
        harness::ws_upgrade(port, "/ws", "localhost", &ca)
            .await
            .unwrap(),
        (101, Some("sip".into()))
    );
    assert_eq!(
        harness::ws_upgrade(port, "/nope", "localhost", &ca)
            .await
            .unwrap()
            .0,
        404
    );
    let status = asterisk.cli("http show status");
    assert!(status.contains("/ws"), "http show status: {status}");
    asterisk.kill();
    std::fs::remove_dir_all(&dir).unwrap();
}

//! GitOps health: the Argo CD health check (`health.lua`, run as Lua 5.1 the
//! way Argo CD runs it) and the Flux `healthCheckExprs` (CEL) give the kstatus
//! verdicts, on Argo CD's test cases and on live WebRtcPbx objects the real
//! operator put into each state on the real apiserver.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use webrtc_pbx_operator::api::WebRtcPbx;
use webrtc_pbx_operator::controller::{self, Context};

fn argocd_dir() -> PathBuf {
    harness::repo().join("deploy/gitops/argocd/pbx.webrtc.io/WebRtcPbx")
}

/// Argo CD's verdict: (status, message).
fn argocd_health(object: &Value) -> (String, String) {
    use mlua::LuaSerdeExt;
    let lua = mlua::Lua::new();
    let script = std::fs::read_to_string(argocd_dir().join("health.lua")).unwrap();
    // Argo CD passes the object as the global `obj`; JSON null stays nil.
    let options = mlua::serde::SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false);
    lua.globals()
        .set("obj", lua.to_value_with(object, options).unwrap())
        .unwrap();
    let hs: mlua::Table = lua.load(&script).eval().unwrap();
    (
        hs.get("status").unwrap(),
        hs.get("message").unwrap_or_default(),
    )
}

/// The Flux verdict: its expressions in its order (inProgress, failed,
/// current); an expression that cannot be evaluated (no status yet) keeps
/// the object in progress, as Flux does.
fn flux_health(object: &Value) -> &'static str {
    let text =
        std::fs::read_to_string(harness::repo().join("deploy/gitops/flux/kustomization.yaml"))
            .unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    let exprs = docs[0]["spec"]["healthCheckExprs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "WebRtcPbx")
        .unwrap()
        .clone();
    let mut context = cel::Context::default();
    for (key, value) in object.as_object().unwrap() {
        context.add_variable_from_value(key.as_str(), cel::to_value(value).unwrap());
    }
    let holds = |name: &str| {
        let program = cel::Program::compile(exprs[name].as_str().unwrap()).unwrap();
        program.execute(&context).ok() == Some(true.into())
    };
    if holds("inProgress") {
        "InProgress"
    } else if holds("failed") {
        "Failed"
    } else if holds("current") {
        "Current"
    } else {
        "InProgress"
    }
}

#[test]
fn argocd_test_cases_pass() {
    let text = std::fs::read_to_string(argocd_dir().join("health_test.yaml")).unwrap();
    let cases: Value = serde_saphyr::from_str(&text).unwrap();
    let cases = cases["tests"].as_array().unwrap();
    assert!(cases.len() >= 6);
    for case in cases {
        let path = argocd_dir().join(case["inputPath"].as_str().unwrap());
        let object: Value =
            serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let (status, message) = argocd_health(&object);
        assert_eq!(status, case["healthStatus"]["status"], "{}", path.display());
        assert_eq!(
            message,
            case["healthStatus"]["message"],
            "{}",
            path.display()
        );
        // Flux reads the same objects the same way.
        let flux = flux_health(&object);
        let want = match status.as_str() {
            "Healthy" => "Current",
            "Degraded" => "Failed",
            _ => "InProgress",
        };
        assert_eq!(flux, want, "{}", path.display());
    }
}

#[test]
fn argocd_cm_snippet_carries_health_lua() {
    let lua = std::fs::read_to_string(argocd_dir().join("health.lua")).unwrap();
    let mut want = String::from(
        "# Argo CD: the WebRtcPbx health check, for the argocd-cm ConfigMap (merge it\n\
         # into yours). Generated from argocd/pbx.webrtc.io/WebRtcPbx/health.lua by\n\
         # tests/cluster/gitops.rs (UPDATE_GOLDEN=1 rewrites it).\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: argocd-cm\n  namespace: argocd\n  labels:\n    app.kubernetes.io/part-of: argocd\ndata:\n  resource.customizations.health.pbx.webrtc.io_WebRtcPbx: |\n",
    );
    for line in lua.lines() {
        if line.is_empty() {
            want.push('\n');
        } else {
            want.push_str(&format!("    {line}\n"));
        }
    }
    let path = harness::repo().join("deploy/gitops/argocd/argocd-cm.yaml");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(&path).unwrap_or_default(),
        want,
        "argocd-cm.yaml is stale: UPDATE_GOLDEN=1 cargo test --test cluster gitops::"
    );
    // And it is valid YAML carrying the script unchanged.
    let doc: Value = serde_saphyr::from_str(&want).unwrap();
    assert_eq!(
        doc["data"]["resource.customizations.health.pbx.webrtc.io_WebRtcPbx"],
        lua.as_str()
    );
}

async fn live(api: &Api<WebRtcPbx>, name: &str) -> Value {
    serde_json::to_value(api.get(name).await.unwrap()).unwrap()
}

/// Waits until Argo CD would say `status` for `name`.
async fn wait_health(api: &Api<WebRtcPbx>, name: &str, status: &str) -> Value {
    harness::wait_until(
        Duration::from_secs(60),
        &format!("{name} {status}"),
        || async {
            let object = live(api, name).await;
            (argocd_health(&object).0 == status).then_some(object)
        },
    )
    .await
}

#[tokio::test]
async fn live_objects_in_every_state_read_as_kstatus_says() {
    let client = harness::client().await;
    harness::install_project_crds(&client).await;
    let ns = harness::namespace(&client, "gitops").await;
    let api = Api::<WebRtcPbx>::namespaced(client.clone(), &ns);
    let create = |name: &'static str, spec: Value| {
        let api = api.clone();
        async move {
            let pbx: WebRtcPbx = serde_json::from_value(json!({
                "apiVersion": "pbx.webrtc.io/v1alpha1", "kind": "WebRtcPbx",
                "metadata": {"name": name}, "spec": spec
            }))
            .unwrap();
            api.create(&PostParams::default(), &pbx).await.unwrap();
        }
    };
    // Probes off: nothing serves these PBXs; tests/e2e.rs covers the probes.
    let base = |domain: &str| {
        json!({"domain": domain, "network": {"mode": "Service"},
               "rtp": {"portRange": {"start": 20000, "end": 20003}},
               "probes": {"enabled": false}})
    };

    // No operator yet: no status.
    create("fresh", base("fresh.gitops.test")).await;
    let object = live(&api, "fresh").await;
    assert_eq!(argocd_health(&object).0, "Progressing");
    assert_eq!(flux_health(&object), "InProgress");

    let start = || {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            let ctx = Arc::new(Context::new(
                harness::operator_client(&ns).await,
                Arc::new(controller::SystemClock),
            ));
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(controller::run(ctx, Some(ns), async move {
                let _ = rx.await;
            }));
            let _ = client;
            (tx, task)
        }
    };
    let (stop, task) = start().await;
    // Healthy: rendered, certificate, pod ready.
    let object = wait_health(&api, "fresh", "Healthy").await;
    assert_eq!(flux_health(&object), "Current");
    // Stalled: a Secret that does not exist.
    let mut missing = base("stalled.gitops.test");
    missing["users"] =
        json!([{"extension": "7", "passwordSecretRef": {"name": "nowhere", "key": "7"}}]);
    create("stalled", missing).await;
    let object = wait_health(&api, "stalled", "Degraded").await;
    assert_eq!(flux_health(&object), "Failed");
    // Reconciling: a pod no node can take (waiting, not the user's fault yet).
    let mut waiting = base("waiting.gitops.test");
    waiting["nodeSelector"] = json!({"gitops.test/none": "true"});
    create("waiting", waiting).await;
    let object = harness::wait_until(Duration::from_secs(60), "waiting Reconciling", || async {
        let object = live(&api, "waiting").await;
        object["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Reconciling" && c["status"] == "True")
            .then_some(object)
    })
    .await;
    assert_eq!(argocd_health(&object).0, "Progressing");
    assert_eq!(flux_health(&object), "InProgress");

    // A new generation the operator has not observed yet.
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    api.patch(
        "fresh",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"sip": {"keepAliveInterval": "20s"}}})),
    )
    .await
    .unwrap();
    let object = live(&api, "fresh").await;
    assert!(
        object["metadata"]["generation"].as_i64() > object["status"]["observedGeneration"].as_i64()
    );
    assert_eq!(argocd_health(&object).0, "Progressing");
    assert_eq!(flux_health(&object), "InProgress");
    // Observed again: Healthy.
    let (stop, task) = start().await;
    let object = wait_health(&api, "fresh", "Healthy").await;
    assert_eq!(
        object["status"]["observedGeneration"],
        object["metadata"]["generation"]
    );
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
}

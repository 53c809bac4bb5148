//! The reconciler in the test process: the controller runs as a task,
//! scoped to a test's namespace, on a clock the test moves. Helpers to
//! create PBXs and Secrets and to wait for conditions.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret, Service};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use time::OffsetDateTime;
use webrtc_pbx_operator::api::WebRtcPbx;
use webrtc_pbx_operator::controller::{self, Clock, Context};

/// A clock the test moves.
pub struct TestClock(Mutex<OffsetDateTime>);

impl Clock for TestClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap()
    }
}

impl TestClock {
    pub fn advance(&self, by: time::Duration) {
        *self.0.lock().unwrap() += by;
    }
}

pub struct Running {
    pub client: Client,
    pub ns: String,
    pub clock: Arc<TestClock>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// A handle on namespace `ns` for a test that runs the controller itself.
    pub fn observing(client: Client, ns: String) -> Running {
        Running {
            client,
            ns,
            clock: Arc::new(TestClock(Mutex::new(OffsetDateTime::now_utc()))),
            stop: None,
            task: tokio::spawn(async {}),
        }
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
    }
}

/// The controller for a new namespace `PREFIX-N`, with the default context.
pub async fn start(prefix: &str) -> Running {
    start_with(prefix, Context::new).await
}

/// [`start`] with the context `make` builds from the operator's client
/// and the test clock (a policy, a probe concurrency).
pub async fn start_with(
    prefix: &str,
    make: impl FnOnce(Client, Arc<dyn Clock>) -> Context,
) -> Running {
    let client = super::client().await;
    super::install_project_crds(&client).await;
    let ns = super::namespace(&client, prefix).await;
    let clock = Arc::new(TestClock(Mutex::new(OffsetDateTime::now_utc())));
    let ctx = Arc::new(make(super::operator_client(&ns).await, clock.clone()));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(controller::run(ctx, Some(ns.clone()), async move {
        let _ = rx.await;
    }));
    Running {
        client,
        ns,
        clock,
        stop: Some(tx),
        task,
    }
}

/// Service mode with a small RTP range: no host ports, so tests running at
/// the same time on the shared fake nodes cannot block each other.
pub fn off_host(mut spec: serde_json::Value) -> serde_json::Value {
    spec["network"] = json!({"mode": "Service"});
    spec["rtp"] = json!({"portRange": {"start": 20000, "end": 20003}});
    spec
}

pub fn pbx_manifest(name: &str, mut spec: serde_json::Value) -> WebRtcPbx {
    // These tests are about the reconciler; nothing serves the PBXs here, so
    // probes are off unless a test asks (tests/e2e.rs probes real Asterisk).
    if spec.get("probes").is_none() {
        spec["probes"] = json!({"enabled": false});
    }
    serde_json::from_value(json!({
        "apiVersion": "pbx.webrtc.io/v1alpha1", "kind": "WebRtcPbx",
        "metadata": {"name": name}, "spec": spec
    }))
    .unwrap()
}

pub async fn create_pbx(r: &Running, name: &str, spec: serde_json::Value) -> WebRtcPbx {
    let api: Api<WebRtcPbx> = Api::namespaced(r.client.clone(), &r.ns);
    api.create(&PostParams::default(), &pbx_manifest(name, spec))
        .await
        .unwrap()
}

pub async fn condition(r: &Running, name: &str, type_: &str) -> Option<(String, String, String)> {
    super::condition(&r.client, &r.ns, name, type_).await
}

pub async fn wait_condition(
    r: &Running,
    name: &str,
    type_: &str,
    status: &str,
    reason: Option<&str>,
) -> Duration {
    let start = Instant::now();
    super::wait_for_condition(&r.client, &r.ns, name, type_, status, reason).await;
    start.elapsed()
}

pub async fn create_secret(r: &Running, name: &str, data: BTreeMap<&str, String>) {
    super::apply_json::<Secret>(
        &r.client,
        &r.ns,
        json!({"metadata": {"name": name}, "stringData": data}),
    )
    .await;
}

/// resourceVersions of everything the operator writes in the namespace.
pub async fn versions(r: &Running) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let lp = ListParams::default();
    macro_rules! collect {
        ($t:ty, $kind:expr) => {
            for o in Api::<$t>::namespaced(r.client.clone(), &r.ns)
                .list(&lp)
                .await
                .unwrap()
            {
                out.insert(
                    format!("{}/{}", $kind, o.name_any()),
                    o.resource_version().unwrap_or_default(),
                );
            }
        };
    }
    collect!(Secret, "Secret");
    collect!(ConfigMap, "ConfigMap");
    collect!(Service, "Service");
    collect!(StatefulSet, "StatefulSet");
    collect!(WebRtcPbx, "WebRtcPbx");
    // Only the operator's own Events: Kubernetes' controllers report too.
    for e in Api::<Event>::namespaced(r.client.clone(), &r.ns)
        .list(&lp)
        .await
        .unwrap()
    {
        if e.reporting_component.as_deref() == Some("webrtc-pbx-operator") {
            out.insert(
                format!("Event/{}", e.name_any()),
                e.resource_version().unwrap_or_default(),
            );
        }
    }
    out
}

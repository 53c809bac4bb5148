//! The reconciler in the test process: the controller runs as a task,
//! scoped to a test's namespace, on a clock the test moves. Helpers to
//! create PBXs and Secrets and to wait for conditions.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret, Service};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use time::OffsetDateTime;
use webrtc_pbx_operator::api::WebRtcPbx;

use crate::fixture::Pbx;
use webrtc_pbx_operator::controller::{self, Clock, Context};

/// A clock the test moves.
pub struct TestClock(Mutex<OffsetDateTime>);

impl Clock for TestClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap()
    }
}

impl TestClock {
    /// Moves the clock on by `by`.
    pub fn advance(&self, by: time::Duration) {
        *self.0.lock().unwrap() += by;
    }
}

/// A controller running in the test process for one namespace.
pub struct Running {
    /// An admin client (the test's; the controller has its own).
    pub client: Client,
    /// The namespace the controller watches.
    pub ns: String,
    /// The controller's clock.
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

    /// Creates `pbx` in the namespace, with probes off unless its spec
    /// sets them: nothing serves these PBXs (tests/e2e.rs probes real
    /// Asterisk).
    pub async fn create(&self, pbx: Pbx) -> WebRtcPbx {
        pbx.probes_off_unless_set()
            .create(&self.client, &self.ns)
            .await
    }

    /// Stops the controller (and waits up to 10 s for it to end).
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
    let client = crate::client().await;
    crate::install_project_crds(&client).await;
    let ns = crate::namespace(&client, prefix).await;
    start_in(ns, make).await
}

/// [`start_with`] in the existing namespace `ns` (a controller started
/// again, with another context).
pub async fn start_in(ns: String, make: impl FnOnce(Client, Arc<dyn Clock>) -> Context) -> Running {
    let client = crate::client().await;
    let clock = Arc::new(TestClock(Mutex::new(OffsetDateTime::now_utc())));
    let ctx = Arc::new(make(crate::operator_client(&ns).await, clock.clone()));
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

/// PBX `name`'s condition `type_` as (status, reason, message).
pub async fn condition(r: &Running, name: &str, type_: &str) -> Option<(String, String, String)> {
    crate::condition(&r.client, &r.ns, name, type_).await
}

/// Waits until PBX `name`'s condition `type_` has `status` (and `reason`,
/// when given); returns how long that took.
pub async fn wait_condition(
    r: &Running,
    name: &str,
    type_: &str,
    status: &str,
    reason: Option<&str>,
) -> Duration {
    let start = Instant::now();
    crate::wait_for_condition(&r.client, &r.ns, name, type_, status, reason).await;
    start.elapsed()
}

/// Creates (applies) Secret `name` with `data` as its stringData.
pub async fn create_secret(r: &Running, name: &str, data: BTreeMap<&str, String>) {
    crate::apply_json::<Secret>(
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

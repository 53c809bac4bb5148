//! The controller (the imperative shell): watches WebRtcPbx and its children
//! and runs the driver steps dereference -> validate -> render -> apply ->
//! status for each PBX, and folds in what the probe scheduler ([`probes`])
//! found. Everything it decides comes from the pure modules; this module
//! only fetches, writes, requeues and reports.

pub mod apply;
pub mod cache;
pub mod leader;
pub mod probes;

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::utils::{Backoff, ResetTimerBackoff};
use kube::runtime::{Predicate, WatchStreamExt, predicates, reflector, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use time::OffsetDateTime;
use tracing::{info, warn};

use crate::api::{CertificateStatus, EndpointsStatus, TlsMode, WebRtcPbx, WebRtcPbxStatus};
use crate::certs::{self, CA_CRT, CA_KEY, TLS_CRT, TLS_KEY};
use crate::names::{self, FIELD_MANAGER};
use crate::ports;
use crate::render::objects;
use crate::render::{self, Object};
use crate::status::{self, Blocking, Tri, Verdict, types};
use crate::telemetry::{FailureLabels, Metrics};
use crate::validate::{self, Referenced, ValidatedPbx};

/// Where the controller reads the time (injectable for tests).
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> OffsetDateTime;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// Reconcile failures, each with a stable category for logs and metrics.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The apiserver refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A certificate could not be issued.
    #[error("certificate: {0}")]
    Cert(#[from] certs::CertError),
    /// The object has no namespace (WebRtcPbx is namespaced).
    #[error("WebRtcPbx has no namespace")]
    NoNamespace,
    /// A child was refused (by the apiserver, or as not ours); the status
    /// says so, and the reconcile backs off.
    #[error("{0}")]
    Rejected(String),
}

impl Error {
    /// A stable category.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "transport",
            Error::Cert(_) => "certificate",
            Error::NoNamespace => "invalid_object",
            Error::Rejected(_) => "rejected",
        }
    }
}

/// Shared state of the reconcilers.
pub struct Context {
    /// The client.
    pub client: Client,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Event recorder.
    pub recorder: Recorder,
    /// Every PBX the controller watches (for port conflicts), set by each [`run`].
    pub pbxes: std::sync::RwLock<Option<Store<WebRtcPbx>>>,
    /// The watched children without generated state, set by each [`run`].
    pub children: std::sync::RwLock<Option<ChildStores>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per PBX, for the backoff.
    pub failures: std::sync::Mutex<std::collections::HashMap<ObjectRef<WebRtcPbx>, u32>>,
    /// The probe schedules.
    pub prober: Arc<probes::Prober>,
    /// Failed probe runs in a row before a True probe condition turns False.
    pub flap_threshold: u32,
    /// Per PBX, the (uid, generation) this process last listed Certificates for.
    pub listed: std::sync::Mutex<std::collections::HashMap<ObjectRef<WebRtcPbx>, ListMark>>,
    /// What tenants' specs may ask for (operator flags).
    pub policy: crate::policy::Policy,
}

/// A PBX's uid and generation, as last listed.
pub type ListMark = (Option<String>, Option<i64>);

impl Context {
    /// A context with the system clock.
    pub fn new(client: Client, clock: Arc<dyn Clock>) -> Self {
        Self::with_probes(
            client,
            clock,
            probes::DEFAULT_CONCURRENCY,
            Arc::new(Metrics::default()),
        )
    }

    /// A context running at most `probe_concurrency` probes at once,
    /// reporting into `metrics`.
    pub fn with_probes(
        client: Client,
        clock: Arc<dyn Clock>,
        probe_concurrency: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            clock,
            pbxes: std::sync::RwLock::new(None),
            children: std::sync::RwLock::new(None),
            prober: Arc::new(probes::Prober::new(probe_concurrency, metrics.clone())),
            metrics,
            failures: std::sync::Mutex::new(std::collections::HashMap::new()),
            listed: std::sync::Mutex::new(std::collections::HashMap::new()),
            flap_threshold: status::DEFAULT_FLAP_THRESHOLD,
            policy: crate::policy::Policy::default(),
        }
    }

    /// The same context under `policy`.
    pub fn with_policy(mut self, policy: crate::policy::Policy) -> Self {
        self.policy = policy;
        self
    }
}

/// The children, read from watch caches instead of GETs. A cache can lag:
/// an operator Secret missing from it is looked up with a GET before
/// anything is generated, and a Secret written from what the cache held
/// carries that resourceVersion, so a stale copy gets a conflict instead of
/// replacing passwords or certificates ([`apply::apply`]).
#[derive(Clone)]
pub struct ChildStores {
    secrets: Store<Secret>,
    config_maps: Store<ConfigMap>,
    services: Store<Service>,
    stateful_sets: Store<StatefulSet>,
    pods: Store<Pod>,
    /// True once every cache above holds its initial list.
    ready: tokio::sync::watch::Receiver<bool>,
}

impl ChildStores {
    /// Waits until every cache holds its initial list: before that, a
    /// missing child would look deleted (and be applied again), e.g. for
    /// every PBX right after a restart. False when a watch ended for good.
    async fn ready(&self) -> bool {
        self.ready.clone().wait_for(|r| *r).await.is_ok()
    }

    /// The caches, with their readiness published to [`ChildStores::ready`].
    /// One task waits on the stores: a store's own readiness future wakes
    /// only the task that polled it last, so concurrent reconciles waiting
    /// on it directly would hang (seen in the restart test).
    fn new(
        secrets: Store<Secret>,
        config_maps: Store<ConfigMap>,
        services: Store<Service>,
        stateful_sets: Store<StatefulSet>,
        pods: Store<Pod>,
    ) -> Self {
        let (tx, ready) = tokio::sync::watch::channel(false);
        let stores = Self {
            secrets,
            config_maps,
            services,
            stateful_sets,
            pods,
            ready,
        };
        let waiting = stores.clone();
        tokio::spawn(async move {
            let ready = futures::try_join!(
                waiting.secrets.wait_until_ready(),
                waiting.config_maps.wait_until_ready(),
                waiting.services.wait_until_ready(),
                waiting.stateful_sets.wait_until_ready(),
                waiting.pods.wait_until_ready(),
            )
            .is_ok();
            let _ = tx.send(ready);
        });
        stores
    }

    /// PBX `pbx`'s children in the caches (no request).
    fn children_of(&self, ns: &str, pbx: &str, owner_uid: &str) -> Vec<apply::Child> {
        fn of<K: Resource<DynamicType = ()> + Clone + 'static>(
            store: &Store<K>,
            kind: &'static str,
            ns: &str,
            pbx: &str,
            owner_uid: &str,
        ) -> Vec<apply::Child> {
            store
                .state()
                .iter()
                .filter(|o| {
                    o.meta().namespace.as_deref() == Some(ns)
                        && o.labels().get(names::INSTANCE_LABEL).map(String::as_str) == Some(pbx)
                        && apply::is_child(o.meta(), owner_uid)
                })
                .map(|o| apply::Child {
                    kind,
                    name: o.name_any(),
                })
                .collect()
        }
        let mut found = of(&self.secrets, "Secret", ns, pbx, owner_uid);
        found.extend(of(&self.config_maps, "ConfigMap", ns, pbx, owner_uid));
        found.extend(of(&self.services, "Service", ns, pbx, owner_uid));
        found.extend(of(&self.stateful_sets, "StatefulSet", ns, pbx, owner_uid));
        found
    }

    /// What the cache knows of `name`: absent, or its JSON; unknown (`None`)
    /// when the cached copy was stripped of its content.
    fn json<K>(store: &Store<K>, ns: &str, name: &str) -> apply::Known
    where
        K: Resource<DynamicType = ()> + Clone + serde::Serialize + 'static,
    {
        match store.get(&ObjectRef::new(name).within(ns)) {
            None => Some(None),
            Some(o) if cache::is_stripped(o.meta()) => None,
            Some(o) => Some(serde_json::to_value(&*o).ok()),
        }
    }
}

impl Context {
    fn listed_at(&self, key: &ObjectRef<WebRtcPbx>) -> Option<ListMark> {
        self.listed.lock().ok()?.get(key).cloned()
    }

    fn set_listed(&self, key: ObjectRef<WebRtcPbx>, mark: ListMark) {
        let Ok(mut listed) = self.listed.lock() else {
            return;
        };
        listed.insert(key, mark);
        // Forget deleted PBXs now and then, so the map stays the store's size.
        let store = self.pbxes.read().ok().and_then(|s| s.clone());
        if let Some(store) = store
            && listed.len() > 2 * store.state().len() + 64
        {
            listed.retain(|k, _| store.get(k).is_some());
        }
    }

    /// Forgets a deleted PBX: its backoff, its list mark and every metric
    /// series it had (a long-lived operator would otherwise keep them all).
    fn forget(&self, pbx: &WebRtcPbx) {
        let key = ObjectRef::from_obj(pbx);
        if let Ok(mut f) = self.failures.lock() {
            f.remove(&key);
        }
        if let Ok(mut l) = self.listed.lock() {
            l.remove(&key);
        }
        self.metrics.forget_pbx(
            pbx.namespace().as_deref().unwrap_or(""),
            &pbx.name_any(),
            &types::ALL,
        );
    }

    /// Whether a PBX is still in the watch store (for the probe schedules).
    fn exists(&self) -> probes::Exists {
        match self.pbxes.read().ok().and_then(|s| s.clone()) {
            Some(store) => probes::exists_in(store),
            None => Arc::new(|_, _| false),
        }
    }
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the controller until `shutdown` resolves, for every namespace or
/// only `namespace`.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let ns = namespace.as_deref();
    // Children are watched by our label only: the cluster's other Secrets
    // and ConfigMaps stay out of the operator's memory.
    // Pages of 100: a restart lists every child at once, and a page is held
    // as text and objects together while it is read.
    let owned = watcher::Config::default()
        .labels(&names::managed_selector())
        .page_size(LIST_PAGE);
    // Only spec (generation), label and annotation changes of a PBX trigger
    // a reconcile: not status updates, most of them the operator's own.
    let (pbx_store, pbx_writer) = reflector::store::<WebRtcPbx>();
    let forgetting = ctx.clone();
    let pbx_changes = watcher(
        scoped::<WebRtcPbx>(&client, ns),
        watcher::Config::default().page_size(LIST_PAGE),
    )
    .modify(cache::slim)
    .inspect_ok(move |event| {
        if let watcher::Event::Delete(pbx) = event {
            forgetting.forget(pbx);
        }
    })
    .reflect(pbx_writer)
    .applied_objects()
    .predicate_filter(
        predicates::generation
            .combine(predicates::labels)
            .combine(predicates::annotations),
        Default::default(),
    );
    // Bounded: 500 PBXs created at once must not mean 500 reconciles
    // holding their objects at the same time.
    let controller = Controller::for_stream(pbx_changes, pbx_store).with_config(
        kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY),
    );
    let (secrets, secrets_writer) = reflector::store::<Secret>();
    let (config_maps, config_maps_writer) = reflector::store::<ConfigMap>();
    let (services, services_writer) = reflector::store::<Service>();
    let (stateful_sets, stateful_sets_writer) = reflector::store::<StatefulSet>();
    let (pods, pods_writer) = reflector::store::<Pod>();
    if let Ok(mut children) = ctx.children.write() {
        *children = Some(ChildStores::new(
            secrets,
            config_maps,
            services,
            stateful_sets,
            pods,
        ));
    }
    if let Ok(mut pbxes) = ctx.pbxes.write() {
        *pbxes = Some(controller.store());
    }
    // A user's Secret or ConfigMap changed: re-render the PBXs that use it.
    let store = controller.store();
    let secret_users = move |secret: PartialObjectMeta<Secret>| {
        let name = secret.name_any();
        pbxes_using(&store, secret.namespace(), |p| {
            validate::referenced_secrets(&p.name_any(), &p.spec).contains(&name)
        })
    };
    let store = controller.store();
    let config_map_users = move |cm: PartialObjectMeta<ConfigMap>| {
        let name = cm.name_any();
        pbxes_using(&store, cm.namespace(), |p| {
            p.spec
                .dialplan
                .extra_config_map_ref
                .as_ref()
                .is_some_and(|r| r.name == name)
        })
    };
    // A finished probe run: reconcile that PBX, which writes the result.
    let finished = futures::stream::unfold(ctx.prober.subscribe(), |mut rx| async move {
        rx.recv().await.map(|key| (key, rx))
    });
    let prober = ctx.prober.clone();
    controller
        .trigger_backoff(ResetTimerBackoff::new(
            WatchBackoff::default(),
            Duration::from_secs(10),
        ))
        .reconcile_on(finished)
        // The children: cached whole (only the operator's, by label), and
        // read from the caches instead of GETs. Users' Secrets and
        // ConfigMaps below: metadata only, so no other Secret's data is held.
        .owns_stream(
            watcher(scoped::<Secret>(&client, ns), owned.clone())
                .modify(|s| {
                    cache::slim(s);
                    cache::secret(s);
                })
                .reflect(secrets_writer)
                .touched_objects(),
        )
        .owns_stream(
            watcher(scoped::<ConfigMap>(&client, ns), owned.clone())
                .modify(|c| {
                    cache::slim(c);
                    cache::config_map(c);
                })
                .reflect(config_maps_writer)
                .touched_objects(),
        )
        .owns_stream(
            watcher(scoped::<Service>(&client, ns), owned.clone())
                .modify(|s| {
                    cache::slim(s);
                    cache::service(s);
                })
                .reflect(services_writer)
                .touched_objects(),
        )
        .owns_stream(
            watcher(scoped::<StatefulSet>(&client, ns), owned.clone())
                .modify(|s| {
                    cache::slim(s);
                    cache::stateful_set(s);
                })
                .reflect(stateful_sets_writer)
                .touched_objects(),
        )
        // Pods are owned by the StatefulSet, so they trigger nothing; the
        // watch keeps the cache the scheduler verdicts are read from.
        .owns_stream(
            watcher(scoped::<Pod>(&client, ns), owned)
                .modify(|pod: &mut Pod| {
                    cache::slim(pod);
                    // Only labels and status are read (scheduling verdicts).
                    cache::pod(pod);
                })
                .reflect(pods_writer)
                .touched_objects(),
        )
        .watches_stream(
            watcher(
                scoped::<PartialObjectMeta<Secret>>(&client, ns),
                watcher::Config::default().page_size(LIST_PAGE),
            )
            .touched_objects(),
            secret_users,
        )
        .watches_stream(
            watcher(
                scoped::<PartialObjectMeta<ConfigMap>>(&client, ns),
                watcher::Config::default().page_size(LIST_PAGE),
            )
            .touched_objects(),
            config_map_users,
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(pbx = %obj, "reconciled"),
                // A reconcile queued for a PBX deleted meanwhile: nothing failed.
                Err(kube::runtime::controller::Error::ObjectNotFound(obj)) => {
                    tracing::debug!(pbx = %obj, "gone before its reconcile")
                }
                Err(e) => warn!(error = %e, "reconcile failed"),
            }
        })
        .await;
    // Leadership lost or shutting down: the next leader probes.
    prober.stop_all();
}

/// Backoff of the watch streams, which all share one: 200 ms doubling to
/// 2 s. After an apiserver restart every watch fails once (410 Gone), one
/// after another; kube's default (up to 30 s, reset only after 2 minutes
/// without errors) added those up to minutes without any event, measured
/// in tests/restarts.rs. A persistent error (such as RBAC) still cannot spin.
struct WatchBackoff {
    next: Duration,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self {
            next: Duration::from_millis(200),
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(2));
        Some(now)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        *self = Self::default();
    }
}

/// The PBXs of `namespace` for which `uses` holds (the watch mappers).
fn pbxes_using(
    store: &Store<WebRtcPbx>,
    namespace: Option<String>,
    uses: impl Fn(&WebRtcPbx) -> bool,
) -> Vec<ObjectRef<WebRtcPbx>> {
    store
        .state()
        .into_iter()
        .filter(|p| p.namespace() == namespace && uses(p))
        .map(|p| ObjectRef::from_obj(&*p))
        .collect()
}

fn error_policy(pbx: Arc<WebRtcPbx>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .failures
        .get_or_create(&FailureLabels {
            category: error.category().into(),
        })
        .inc();
    let key = ObjectRef::from_obj(&*pbx);
    let attempt = ctx.failures.lock().map_or(1, |mut f| {
        let n = f.entry(key).or_insert(0);
        *n += 1;
        *n
    });
    let delay = backoff(attempt);
    warn!(pbx = %pbx.name_any(), category = error.category(), error = %error, attempt, retry_in = ?delay, "reconcile failed");
    // Transient: back off, never crash.
    Action::requeue(delay)
}

/// Exponential backoff: 2 s, 4 s, 8 s ... capped at 5 minutes.
fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(2u64.saturating_pow(attempt.min(16)).min(300))
}

/// The scheduler's message when the pod cannot be placed.
fn unschedulable(pod: Option<&Pod>) -> Option<String> {
    let conditions = pod?.status.as_ref()?.conditions.as_ref()?;
    let c = conditions
        .iter()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
    (c.reason.as_deref() == Some("Unschedulable")).then(|| c.message.clone().unwrap_or_default())
}

/// The facts WorkloadReady is decided from: the StatefulSet's counts,
/// another PBX holding the ports, the scheduler's message.
fn workload_facts(
    sts: Option<&StatefulSet>,
    conflict: Option<&ports::Conflict>,
    pod: Option<&Pod>,
) -> status::WorkloadFacts {
    let (ready, wanted, current) = sts
        .map(|s| {
            let st = s.status.as_ref();
            let observed = st.and_then(|st| st.observed_generation) == s.metadata.generation;
            (
                st.and_then(|st| st.ready_replicas).unwrap_or(0),
                s.spec.as_ref().and_then(|sp| sp.replicas).unwrap_or(1),
                observed && st.and_then(|st| st.updated_replicas).unwrap_or(0) >= 1,
            )
        })
        .unwrap_or((0, 1, false));
    status::WorkloadFacts {
        ready,
        wanted,
        current,
        conflict: conflict.map(ports::Conflict::message),
        unschedulable: unschedulable(pod),
    }
}

/// True for an unschedulable pod of an outdated revision: the StatefulSet
/// controller never replaces a pod that is not Running, so a spec fix (e.g.
/// a new nodeSelector) would otherwise need a manual `kubectl delete pod`.
fn stale_pending_pod(pod: Option<&Pod>, sts: Option<&StatefulSet>) -> bool {
    let revision = pod.and_then(|p| p.labels().get("controller-revision-hash").cloned());
    let update = sts.and_then(|s| s.status.as_ref()?.update_revision.clone());
    unschedulable(pod).is_some() && revision.is_some() && update.is_some() && revision != update
}

/// Objects per LIST page of the watches.
const LIST_PAGE: u32 = 100;

/// How soon a reconcile that met a write conflict looks again.
const CONFLICT_RETRY: Duration = Duration::from_millis(500);

/// Reconciles running at once.
const RECONCILE_CONCURRENCY: u16 = 16;

/// How often a PBX whose pod is not ready is looked at again.
const WORKLOAD_RECHECK: Duration = Duration::from_secs(10);

/// What the dereference step fetched.
struct Fetched {
    referenced: Referenced,
    own_secret: Option<Secret>,
    tls_secret: Option<Secret>,
    ca_secret: Option<Secret>,
    /// The names the three Secrets above were read under.
    secret_names: [String; 3],
    /// The caches the other children are read from.
    stores: Option<ChildStores>,
    namespace: String,
    stateful_set: Option<StatefulSet>,
    /// The PBX's pod (a StatefulSet of one).
    pod: Option<Pod>,
    certificate: Option<DynamicObject>,
}

async fn dereference(
    client: &Client,
    stores: Option<&ChildStores>,
    ns: &str,
    pbx: &WebRtcPbx,
) -> Result<Fetched, Error> {
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), ns);
    let name = pbx.name_any();
    let spec = &pbx.spec;
    let mut found = Vec::new();
    for secret in validate::referenced_secrets(&name, spec) {
        if let Some(s) = secrets.get_opt(&secret).await? {
            found.push(s);
        }
    }
    let mut cms = Vec::new();
    if let Some(r) = &spec.dialplan.extra_config_map_ref
        && let Some(cm) = config_maps.get_opt(&r.name).await?
    {
        cms.push(cm);
    }
    let certificate = if spec.tls.mode == TlsMode::CertManager {
        let api = Api::<DynamicObject>::namespaced_with(
            client.clone(),
            ns,
            &apply::certificate_resource(),
        );
        match api.get_opt(&validate::tls_secret_name(&name, spec)).await {
            Ok(c) => c,
            Err(e) if apply::is_missing_type(&e) => None,
            Err(e) => return Err(e.into()),
        }
    } else {
        None
    };
    let secret_names = [
        names::secret_name(&name),
        validate::tls_secret_name(&name, spec),
        names::ca_secret_name(&name),
    ];
    // From the cache when it has them; a miss is confirmed by the apiserver.
    let own = |name: &String| {
        let cached = stores
            .and_then(|s| s.secrets.get(&ObjectRef::new(name).within(ns)))
            .filter(|s| !cache::is_stripped(&s.metadata));
        let secrets = secrets.clone();
        let name = name.clone();
        async move {
            match cached {
                Some(s) => Ok(Some((*s).clone())),
                None => secrets.get_opt(&name).await,
            }
        }
    };
    let (own_secret, tls_secret, ca_secret) = futures::try_join!(
        own(&secret_names[0]),
        own(&secret_names[1]),
        own(&secret_names[2])
    )?;
    Ok(Fetched {
        referenced: Referenced::from_objects(found, cms),
        own_secret,
        tls_secret,
        ca_secret,
        secret_names,
        pod: match stores {
            // A stripped copy is not the PBX's pod (cache::pod): none.
            Some(s) => s
                .pods
                .get(&ObjectRef::new(&names::pod_name(&name)).within(ns))
                .filter(|p| !cache::is_stripped(&p.metadata))
                .map(|p| (*p).clone()),
            None => {
                Api::<Pod>::namespaced(client.clone(), ns)
                    .get_opt(&names::pod_name(&name))
                    .await?
            }
        },
        // A copy the cache stripped is not the PBX's: the apiserver says
        // what is there (apply must see a foreign object to refuse it).
        stateful_set: match stores.map(|s| s.stateful_sets.get(&ObjectRef::new(&name).within(ns))) {
            Some(Some(s)) if !cache::is_stripped(&s.metadata) => Some((*s).clone()),
            Some(None) => None,
            _ => {
                Api::<StatefulSet>::namespaced(client.clone(), ns)
                    .get_opt(&name)
                    .await?
            }
        },
        stores: stores.cloned(),
        namespace: ns.to_string(),
        certificate,
    })
}

impl Fetched {
    /// What the dereference step read of `object`, so apply need not GET it
    /// again: the operator's, TLS and CA Secrets and the StatefulSet, found
    /// or known to be absent.
    fn known(&self, object: &Object) -> apply::Known {
        fn json<T: serde::Serialize>(v: Option<&T>) -> Option<serde_json::Value> {
            v.and_then(|v| serde_json::to_value(v).ok())
        }
        match object {
            Object::Secret(s) => {
                let name = s.metadata.name.as_deref()?;
                let read = [
                    (&self.secret_names[0], &self.own_secret),
                    (&self.secret_names[1], &self.tls_secret),
                    (&self.secret_names[2], &self.ca_secret),
                ];
                let (_, found) = read.into_iter().find(|(n, _)| n.as_str() == name)?;
                Some(json(found.as_ref()))
            }
            Object::StatefulSet(_) => Some(json(self.stateful_set.as_ref())),
            Object::ConfigMap(c) => {
                let stores = self.stores.as_ref()?;
                let name = c.metadata.name.as_deref()?;
                ChildStores::json(&stores.config_maps, &self.namespace, name)
            }
            Object::Service(c) => {
                let stores = self.stores.as_ref()?;
                let name = c.metadata.name.as_deref()?;
                ChildStores::json(&stores.services, &self.namespace, name)
            }
            Object::Certificate(_) => None,
        }
    }
}

fn secret_text(secret: Option<&Secret>, key: &str) -> Option<String> {
    String::from_utf8(validate::secret_bytes(secret?, key)?).ok()
}

/// The certificate step: desired TLS objects, the CertificateReady verdict,
/// the facts for status, and when to look again.
struct CertStep {
    objects: Vec<Object>,
    /// What the probe trusts: the CA a browser would be told to install,
    /// or `None` for the system roots.
    ca_pem: Option<String>,
    verdict: (Verdict, Blocking),
    facts: Option<certs::CertFacts>,
    recheck: Option<Duration>,
}

fn certificate_step(
    v: &ValidatedPbx,
    fetched: &Fetched,
    now: OffsetDateTime,
) -> Result<CertStep, Error> {
    let spec = &v.spec;
    let renew_before = time::Duration::try_from(v.renew_before).unwrap_or(time::Duration::days(30));
    let dns_names = certs::server_names(&spec.domain, &spec.tls.extra_dns_names);
    let served = |secret: Option<&Secret>| {
        certs::check(
            secret_text(secret, TLS_CRT).as_deref(),
            secret_text(secret, TLS_KEY).as_deref(),
            secret_text(secret, CA_CRT).as_deref(),
            &spec.domain,
            now,
            renew_before,
        )
    };
    let recheck_for = |facts: &certs::CertFacts| {
        let at = facts.not_after - renew_before;
        let secs = (at - now).whole_seconds().clamp(60, 3600);
        Duration::from_secs(u64::try_from(secs).unwrap_or(3600))
    };
    match spec.tls.mode {
        TlsMode::SelfSigned => {
            let tls = fetched.tls_secret.as_ref();
            let current = secret_text(tls, TLS_CRT).and_then(|pem| certs::inspect(&pem).ok());
            let ca = fetched.ca_secret.as_ref();
            // An emptied or unreadable NAME-ca is no CA, and one constrained
            // to other names cannot sign these: both mean a new CA.
            let ca_pair = match (secret_text(ca, CA_CRT), secret_text(ca, CA_KEY)) {
                (Some(crt), Some(key))
                    if !key.trim().is_empty() && certs::ca_permits(&crt, &dns_names) =>
                {
                    Some((crt, key))
                }
                _ => None,
            };
            let tls_crt = secret_text(tls, TLS_CRT).unwrap_or_default();
            let due = certs::renewal_due(current.as_ref(), &dns_names, now, renew_before)
                .or_else(|| {
                    ca_pair
                        .is_none()
                        .then_some("the operator CA is missing or unusable")
                })
                .or_else(|| {
                    let signed = ca_pair
                        .as_ref()
                        .is_some_and(|(ca, _)| certs::signed_by(&tls_crt, ca));
                    (!signed).then_some("the certificate is not signed by the operator CA")
                });
            let material = match due {
                None => certs::TlsMaterial {
                    ca_crt: secret_text(ca, CA_CRT).unwrap_or_default(),
                    ca_key: secret_text(ca, CA_KEY).unwrap_or_default(),
                    tls_crt: secret_text(tls, TLS_CRT).unwrap_or_default(),
                    tls_key: secret_text(tls, TLS_KEY).unwrap_or_default(),
                },
                Some(why) => {
                    info!(pbx = %v.name, reason = why, "issuing certificate");
                    let renewed = match &ca_pair {
                        Some((crt, key)) => {
                            certs::renew_server(crt, key, &dns_names, now, certs::generate_key()?)
                                .ok()
                        }
                        None => None,
                    };
                    match renewed {
                        Some(material) => material,
                        None => certs::issue_self_signed(
                            &v.name,
                            &dns_names,
                            now,
                            certs::generate_key()?,
                            certs::generate_key()?,
                        )?,
                    }
                }
            };
            let outcome = certs::check(
                Some(&material.tls_crt),
                Some(&material.tls_key),
                Some(&material.ca_crt),
                &spec.domain,
                now,
                renew_before,
            );
            Ok(CertStep {
                objects: objects::self_signed_secrets(v, &material).to_vec(),
                ca_pem: Some(material.ca_crt.clone()),
                verdict: status::certificate_verdict(&outcome, &spec.domain, true),
                recheck: outcome.facts().map(recheck_for),
                facts: outcome.facts().cloned(),
            })
        }
        TlsMode::Secret => {
            let Some(secret) = fetched.tls_secret.as_ref() else {
                let message = format!(
                    "TLS Secret {} not found in namespace {}: create a kubernetes.io/tls Secret for {}",
                    v.tls_secret_name, v.namespace, spec.domain
                );
                return Ok(CertStep {
                    objects: vec![],
                    ca_pem: None,
                    verdict: status::tls_secret_missing(message),
                    facts: None,
                    recheck: None,
                });
            };
            let outcome = served(Some(secret));
            Ok(CertStep {
                objects: vec![],
                ca_pem: secret_text(Some(secret), CA_CRT),
                verdict: status::certificate_verdict(&outcome, &spec.domain, false),
                recheck: outcome.facts().map(recheck_for),
                facts: outcome.facts().cloned(),
            })
        }
        TlsMode::CertManager => {
            let ready = fetched.certificate.as_ref().and_then(|c| {
                c.data["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .find(|c| c["type"] == "Ready")
                    .map(|c| {
                        (
                            c["status"] == "True",
                            c["message"].as_str().unwrap_or_default().to_string(),
                        )
                    })
            });
            let verdict = match (&ready, fetched.tls_secret.as_ref()) {
                (Some((true, _)), Some(secret)) => {
                    let outcome = served(Some(secret));
                    let v = status::certificate_verdict(&outcome, &spec.domain, true);
                    return Ok(CertStep {
                        objects: vec![],
                        ca_pem: secret_text(Some(secret), CA_CRT),
                        recheck: outcome.facts().map(recheck_for),
                        facts: outcome.facts().cloned(),
                        verdict: v,
                    });
                }
                (Some((false, msg)), _) => {
                    format!("cert-manager has not issued the certificate: {msg}")
                }
                _ if fetched.certificate.is_none() => {
                    "waiting for the cert-manager Certificate (is cert-manager installed?)"
                        .to_string()
                }
                _ => "waiting for cert-manager to issue the certificate".to_string(),
            };
            Ok(CertStep {
                objects: vec![],
                ca_pem: None,
                verdict: status::issuer_not_ready(verdict),
                facts: None,
                recheck: Some(Duration::from_secs(30)),
            })
        }
    }
}

/// Why the probe may not dial the PBX's `probes.connectAddress`, if it may
/// not: allowed are its own Service, pod and node on the WSS port, and what
/// the policy adds.
fn connect_check(
    policy: &crate::policy::Policy,
    v: &ValidatedPbx,
    pod: Option<&Pod>,
) -> Option<String> {
    let connect = &v.spec.probes.connect_address;
    if !v.spec.probes.enabled || connect.is_empty() {
        return None;
    }
    let service = format!("{}.{}.svc", names::wss_service_name(&v.name), v.namespace);
    let own_hosts = [service.clone(), format!("{service}.cluster.local")];
    let own_ips: Vec<std::net::IpAddr> = pod
        .and_then(|p| p.status.as_ref())
        .map(|st| {
            [st.pod_ip.as_deref(), st.host_ip.as_deref()]
                .into_iter()
                .flatten()
                .filter_map(|ip| ip.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    policy.connect_denied(connect, &own_hosts, &own_ips, v.spec.wss.port)
}

async fn reconcile(pbx: Arc<WebRtcPbx>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciles.inc();
    let started = std::time::Instant::now();
    let key = ObjectRef::from_obj(&*pbx);
    let result = reconcile_steps(pbx, ctx.clone()).await;
    if result.is_ok()
        && let Ok(mut failures) = ctx.failures.lock()
    {
        failures.remove(&key);
    }
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_steps(pbx: Arc<WebRtcPbx>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = pbx.namespace().ok_or(Error::NoNamespace)?;
    let name = pbx.name_any();
    let now = ctx.clock.now();
    let client = &ctx.client;
    let stores = ctx.children.read().ok().and_then(|s| s.clone());
    let stores = match stores {
        Some(s) if s.ready().await => Some(s),
        _ => None,
    };
    let fetched = dereference(client, stores.as_ref(), &ns, &pbx).await?;
    let stored = objects::generated_from_secret(fetched.own_secret.as_ref());
    let generated = validate::fill_generated(&pbx.spec, stored, &mut rand::rng());

    let mut components = Vec::new();
    let mut new_status = WebRtcPbxStatus {
        observed_generation: pbx.metadata.generation,
        probes: pbx.status.as_ref().and_then(|s| s.probes.clone()),
        ..WebRtcPbxStatus::default()
    };
    let mut recheck = None;
    let key = ObjectRef::from_obj(&*pbx);
    // An invalid spec keeps the running schedule (and what it finds).
    let mut probe_results = ctx.prober.current(&key);
    let mut waiting_for_workload = false;
    let mut rejection = None;
    let others = ctx
        .pbxes
        .read()
        .ok()
        .and_then(|s| s.as_ref().map(Store::state))
        .unwrap_or_default();
    let conflict = ports::conflict(&pbx, others.iter().map(|p| &**p));
    let checked = validate::validate(&pbx, &fetched.referenced, &generated).and_then(|v| {
        let denied = ctx.policy.check(&v.spec);
        if denied.is_empty() {
            Ok(v)
        } else {
            Err(denied)
        }
    });
    let mut connect_denied = None;
    match checked {
        Err(problems) => {
            // Keep what runs; tell the user what to change; wait for a change.
            components.push(status::config_invalid(&problems));
            components.push(status::certificate_pending());
            components.push(status::workload_verdict(&workload_facts(
                fetched.stateful_set.as_ref(),
                conflict.as_ref(),
                fetched.pod.as_ref(),
            )));
        }
        Ok(validated) => 'applied: {
            let rendered = render::render(&validated);
            let cert = certificate_step(&validated, &fetched, now)?;
            // Certificates first, the StatefulSet last: it mounts them.
            let mut desired = cert.objects;
            desired.extend(rendered.objects);
            let mut written = Vec::new();
            // Writes that cannot succeed until someone acts: reported in
            // status (and Events), never only logged.
            let mut refused: Vec<status::Refusal> = Vec::new();
            // Two stages: what the pod mounts (sent together), then the
            // StatefulSet.
            let (mounted, workload): (Vec<&Object>, Vec<&Object>) = desired
                .iter()
                .partition(|o| !matches!(o, Object::StatefulSet(_)));
            for stage in [mounted, workload] {
                let (ns, fetched) = (&ns, &fetched);
                let sent = stage.into_iter().map(|object| async move {
                    let result = apply::apply(client, ns, object, fetched.known(object)).await;
                    (object, result)
                });
                for (object, result) in futures::future::join_all(sent).await {
                    match result {
                        Ok(apply::Applied::Written) => written.push(object.describe()),
                        Ok(apply::Applied::Unchanged) => {}
                        Ok(apply::Applied::NotOwned) => refused.push(status::Refusal {
                            workload: matches!(object, Object::StatefulSet(_)),
                            not_ours: true,
                            object: object.describe(),
                            message: String::new(),
                        }),
                        Err(kube::Error::Api(s))
                            if apply::is_rejection(&kube::Error::Api(s.clone())) =>
                        {
                            refused.push(status::Refusal {
                                workload: matches!(object, Object::StatefulSet(_)),
                                not_ours: false,
                                object: object.describe(),
                                message: format!("({} {}): {}", s.code, s.reason, s.message),
                            })
                        }
                        // Our Secret changed since the cache saw it (usually our
                        // own write on its way): look again once it has.
                        Err(e) if apply::is_conflict(&e) => {
                            tracing::debug!(pbx = %name, object = %object.describe(), "cache behind; retrying");
                            return Ok(Action::requeue(CONFLICT_RETRY));
                        }
                        // No cert-manager: reported through CertificateReady.
                        Err(e)
                            if matches!(object, Object::Certificate(_))
                                && apply::is_missing_type(&e) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                // The StatefulSet mounts what the first stage writes.
                if !refused.is_empty() {
                    break;
                }
            }
            if !refused.is_empty() {
                let workload = status::workload_verdict(&workload_facts(
                    fetched.stateful_set.as_ref(),
                    conflict.as_ref(),
                    fetched.pod.as_ref(),
                ));
                let [config, workload] =
                    status::refusal_verdicts(&refused, desired.len(), workload);
                let message = config.0.message.clone();
                components.extend([config, cert.verdict, workload]);
                warn!(pbx = %name, namespace = %ns, %message, "children refused");
                rejection = Some(message);
                break 'applied;
            }
            // Orphans: the children in the caches, every time (a child
            // the cache learns of late triggers a reconcile of its own).
            // Certificates are not watched: listed once per generation, as
            // the desired set follows the spec (a new operator's first
            // reconcile of each PBX lists them too).
            let uid = pbx.metadata.uid.clone().unwrap_or_default();
            let mut found = match &stores {
                Some(s) => s.children_of(&ns, &name, &uid),
                None => apply::list_children(client, &ns, &name, &uid).await?,
            };
            let mark: ListMark = (pbx.metadata.uid.clone(), pbx.metadata.generation);
            let listed = ctx.listed_at(&key) == Some(mark.clone());
            if !listed {
                found.extend(apply::list_certificates(client, &ns, &name, &uid).await?);
            }
            let mut pruned = 0;
            // A Secret the spec names as the user's is never pruned.
            let users_secrets = validate::referenced_secrets(&name, &pbx.spec);
            for orphan in apply::orphans(found, &desired) {
                if orphan.kind == "Secret" && users_secrets.contains(&orphan.name) {
                    info!(pbx = %name, secret = %orphan.name, "released (the spec names it as the user's own)");
                    apply::release(client, &ns, &orphan).await?;
                    continue;
                }
                if apply::delete(client, &ns, &orphan).await? {
                    pruned += 1;
                }
            }
            if !listed {
                ctx.set_listed(key.clone(), mark);
            }
            if stale_pending_pod(fetched.pod.as_ref(), fetched.stateful_set.as_ref()) {
                // Not running, so nothing is lost; the StatefulSet recreates it.
                info!(pbx = %name, "replacing the unschedulable pod of an outdated revision");
                Api::<Pod>::namespaced(client.clone(), &ns)
                    .delete(&names::pod_name(&name), &Default::default())
                    .await?;
            }
            if !written.is_empty() || pruned > 0 {
                info!(pbx = %name, namespace = %ns, written = ?written, pruned, "applied");
            }
            components.push(status::config_rendered(desired.len()));
            components.push(cert.verdict);
            let workload = status::workload_verdict(&workload_facts(
                fetched.stateful_set.as_ref(),
                conflict.as_ref(),
                fetched.pod.as_ref(),
            ));
            // Probing starts when the pod is ready; a new plan probes at
            // once. A PBX already probed stays probed while its pod is not
            // ready (a crashed container): the probes then name what a
            // client sees (ConnectionRefused), not a stale True.
            waiting_for_workload = workload.0.status != Tri::True;
            let probing = ctx.prober.current(&key).is_some();
            connect_denied = connect_check(&ctx.policy, &validated, fetched.pod.as_ref());
            let plan = probes::plan(&validated, cert.ca_pem.clone())
                .filter(|_| !waiting_for_workload || probing)
                .filter(|_| connect_denied.is_none())
                .map(|p| probes::Plan {
                    generation: pbx.metadata.generation,
                    ..p
                });
            probe_results = ctx.prober.ensure(&key, plan, &ctx.exists());
            components.push(workload);
            new_status.endpoints = Some(EndpointsStatus {
                wss_url: validated.wss_url(),
            });
            new_status.certificate = cert.facts.map(|f| CertificateStatus {
                not_after: Some(certs::rfc3339(f.not_after)),
                dns_names: f.dns_names,
            });
            recheck = cert.recheck;
        }
    }

    let previous = pbx.status.clone().unwrap_or_default();
    if let Some(why) = connect_denied {
        // Not dialled at all: the probe conditions say why.
        components.push(status::connect_not_allowed(why));
    } else if pbx.spec.probes.enabled {
        let r = probe_results.as_ref();
        components.extend(status::probe_verdicts(
            &pbx.spec.probes,
            [
                r.and_then(|r| r.wss.as_ref()),
                r.and_then(|r| r.register.as_ref()),
                r.and_then(|r| r.echo.as_ref()),
            ],
            waiting_for_workload,
            &previous.conditions,
            ctx.flap_threshold,
        ));
        if let Some((report, at)) = probe_results.as_ref().and_then(|r| r.last.as_ref()) {
            new_status.probes = Some(status::probe_figures(report, certs::rfc3339(*at)));
        }
    } else {
        new_status.probes = None;
    }
    // A pod the scheduler cannot place changes nothing the controller
    // watches: look again while the workload is not ready.
    if components
        .iter()
        .any(|(v, _)| v.type_ == types::WORKLOAD_READY && v.status != Tri::True)
    {
        recheck = Some(recheck.map_or(WORKLOAD_RECHECK, |r: Duration| r.min(WORKLOAD_RECHECK)));
    }
    let verdicts = status::summarize(components);
    let now_time =
        Time(k8s_openapi::jiff::Timestamp::from_second(now.unix_timestamp()).unwrap_or_default());
    new_status.conditions = status::conditions(
        &verdicts,
        &previous.conditions,
        pbx.metadata.generation,
        &now_time,
    );
    ctx.metrics.set_conditions(
        &ns,
        &name,
        new_status
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str())),
    );
    if !status::same_ignoring_time(&previous, &new_status) {
        let api = Api::<WebRtcPbx>::namespaced(client.clone(), &ns);
        let patch = json!({"apiVersion": "pbx.webrtc.io/v1alpha1", "kind": "WebRtcPbx", "status": new_status});
        api.patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        for c in status::events(&previous.conditions, &new_status.conditions) {
            let event = Event {
                type_: if c.status == "False" {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: c.reason.clone(),
                note: Some(
                    format!("{} is {}: {}", c.type_, c.status, c.message)
                        .chars()
                        .take(1000)
                        .collect(),
                ),
                action: "Reconcile".into(),
                secondary: None,
            };
            if let Err(e) = ctx.recorder.publish(&event, &pbx.object_ref(&())).await {
                warn!(error = %e, "cannot publish event");
            }
        }
    }
    if let Some(message) = rejection {
        // After the status: the error policy backs off and counts it.
        return Err(Error::Rejected(message));
    }
    Ok(match recheck {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_backoff_stays_short_and_resets() {
        let mut b = WatchBackoff::default();
        let ms: Vec<u128> = (0..6).map(|_| b.next().unwrap().as_millis()).collect();
        assert_eq!(ms, vec![200, 400, 800, 1600, 2000, 2000]);
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(200)));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let secs: Vec<u64> = [1, 2, 3, 8, 9, 40]
            .iter()
            .map(|a| backoff(*a).as_secs())
            .collect();
        assert_eq!(secs, vec![2, 4, 8, 256, 300, 300]);
    }
}

//! The watches step: what the controller watches (PBXs, their children by
//! label, users' Secrets and ConfigMaps metadata-only, finished probe
//! runs), the caches the other steps read instead of GETs, and the watch
//! streams' backoff.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};

use futures::{StreamExt, TryStreamExt};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Controller;
use kube::runtime::utils::{Backoff, ResetTimerBackoff};
use kube::runtime::{Predicate, WatchStreamExt, predicates, reflector, watcher};
use tracing::warn;

use super::{Context, Run, apply, cache, children, error_policy, reconcile};
use crate::api::WebRtcPbx;
use crate::names::{self};
use crate::validate;

/// The children, read from watch caches instead of GETs. A cache can lag:
/// an operator Secret missing from it is looked up with a GET before
/// anything is generated, and a Secret written from what the cache held
/// carries that resourceVersion, so a stale copy gets a conflict instead of
/// replacing passwords or certificates ([`apply::apply`]).
#[derive(Clone)]
pub struct ChildStores {
    pub(super) secrets: Store<Secret>,
    pub(super) config_maps: Store<ConfigMap>,
    pub(super) services: Store<Service>,
    pub(super) stateful_sets: Store<StatefulSet>,
    pub(super) pods: Store<Pod>,
    /// Which names each PBX has in the caches above (pods apart: the
    /// prune step never deletes one).
    indexes: Arc<Indexes>,
    /// True once every cache above holds its initial list.
    ready: tokio::sync::watch::Receiver<bool>,
}

impl ChildStores {
    /// Waits until every cache holds its initial list: before that, a
    /// missing child would look deleted (and be applied again), e.g. for
    /// every PBX right after a restart. False when a watch ended for good.
    pub(super) async fn ready(&self) -> bool {
        self.ready.clone().wait_for(|r| *r).await.is_ok()
    }

    /// The caches, with their readiness published to [`ChildStores::ready`].
    /// One task waits on the stores: a store's own readiness future wakes
    /// only the task that polled it last, so concurrent reconciles waiting
    /// on it directly would hang (seen in the restart test).
    pub(super) fn new(
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
            indexes: Arc::default(),
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

    /// PBX `pbx`'s children in the caches (no request): the names the
    /// index gives, each checked against its cached object.
    pub(super) fn children_of(&self, ns: &str, pbx: &str, owner_uid: &str) -> Vec<apply::Child> {
        fn of<K: Resource<DynamicType = ()> + Clone + 'static>(
            store: &Store<K>,
            index: &Mutex<children::Index>,
            kind: &'static str,
            (ns, pbx, owner_uid): (&str, &str, &str),
        ) -> Vec<apply::Child> {
            let candidates = index.lock().map(|i| i.names(ns, pbx)).unwrap_or_default();
            candidates
                .into_iter()
                .filter(|name| {
                    store
                        .get(&ObjectRef::new(name).within(ns))
                        .is_some_and(|o| {
                            o.labels().get(names::INSTANCE_LABEL).map(String::as_str) == Some(pbx)
                                && apply::is_child(o.meta(), owner_uid)
                        })
                })
                .map(|name| apply::Child { kind, name })
                .collect()
        }
        let (i, pbx) = (&self.indexes, (ns, pbx, owner_uid));
        let mut found = of(&self.secrets, &i.secrets, "Secret", pbx);
        found.extend(of(&self.config_maps, &i.config_maps, "ConfigMap", pbx));
        found.extend(of(&self.services, &i.services, "Service", pbx));
        found.extend(of(
            &self.stateful_sets,
            &i.stateful_sets,
            "StatefulSet",
            pbx,
        ));
        found
    }

    /// What the cache knows of `name`: absent, or its JSON; unknown (`None`)
    /// when the cached copy was stripped of its content.
    pub(super) fn json<K>(store: &Store<K>, ns: &str, name: &str) -> apply::Known
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

/// The children indexes of [`ChildStores`], one per pruned kind.
#[derive(Default)]
struct Indexes {
    secrets: Mutex<children::Index>,
    config_maps: Mutex<children::Index>,
    services: Mutex<children::Index>,
    stateful_sets: Mutex<children::Index>,
}

/// The index of one kind: the indexes and which of them.
type IndexOf = (Arc<Indexes>, fn(&Indexes) -> &Mutex<children::Index>);

/// The watch of one kind of child: the operator's label only, without
/// managedFields, cut to what `keep` leaves (`cache.rs`), into `writer`'s
/// cache, and then into `index`; yields each object touched.
fn owned_stream<K>(
    client: &Client,
    ns: Option<&str>,
    config: &watcher::Config,
    writer: reflector::store::Writer<K>,
    keep: fn(&mut K),
    index: Option<IndexOf>,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    watcher(scoped::<K>(client, ns), config.clone())
        .modify(move |object| {
            cache::slim(object);
            keep(object);
        })
        .reflect(writer)
        .inspect_ok(move |event| {
            if let Some((indexes, kind)) = &index
                && let Ok(mut index) = kind(indexes).lock()
            {
                index.observe(event);
            }
        })
        .touched_objects()
}

pub(super) fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
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
    // Secrets and ConfigMaps hold up to about 1 MiB each, and a tenant can
    // label any number of them: pages of 100 could take 100 MiB as text and
    // as much again as objects at every (re)list, past the pod's memory
    // limit. Pages of 10 bound that to a few tens of MiB.
    let owned_content = owned.clone().page_size(CONTENT_PAGE);
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
    let stores = ChildStores::new(secrets, config_maps, services, stateful_sets, pods);
    let index =
        |kind: fn(&Indexes) -> &Mutex<children::Index>| Some((stores.indexes.clone(), kind));
    let (secrets_index, config_maps_index, services_index, stateful_sets_index) = (
        index(|i| &i.secrets),
        index(|i| &i.config_maps),
        index(|i| &i.services),
        index(|i| &i.stateful_sets),
    );
    let run = Arc::new(Run {
        ctx: ctx.clone(),
        pbxes: controller.store(),
        children: stores,
    });
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
        .owns_stream(owned_stream(
            &client,
            ns,
            &owned_content,
            secrets_writer,
            cache::secret,
            secrets_index,
        ))
        .owns_stream(owned_stream(
            &client,
            ns,
            &owned_content,
            config_maps_writer,
            cache::config_map,
            config_maps_index,
        ))
        .owns_stream(owned_stream(
            &client,
            ns,
            &owned,
            services_writer,
            cache::service,
            services_index,
        ))
        .owns_stream(owned_stream(
            &client,
            ns,
            &owned_content,
            stateful_sets_writer,
            cache::stateful_set,
            stateful_sets_index,
        ))
        // Pods are owned by the StatefulSet, so they trigger nothing; the
        // watch keeps the cache the scheduler verdicts are read from (only
        // labels and status are kept).
        .owns_stream(owned_stream(
            &client,
            ns,
            &owned_content,
            pods_writer,
            cache::pod,
            None,
        ))
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
        .run(reconcile, error_policy, run)
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
    prober.stop_all().await;
}

/// Backoff of the watch streams, which all share one: 200 ms doubling to
/// 2 s. After an apiserver restart every watch fails once (410 Gone), one
/// after another; kube's default (up to 30 s, reset only after 2 minutes
/// without errors) added those up to minutes without any event, measured
/// in tests/restarts.rs. A persistent error (such as RBAC) still cannot spin.
pub(super) struct WatchBackoff {
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
pub(super) fn pbxes_using(
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

/// Objects per LIST page of the watches.
pub(super) const LIST_PAGE: u32 = 100;

/// Objects per LIST page of the watches of objects with content (Secrets,
/// ConfigMaps), which may be 1 MiB each, and of StatefulSets and pods: a
/// page is held whole as typed objects (a pod template is about 22 kB)
/// before the cache cuts each down, which at a restart's LIST of 500 PBXs
/// was the operator's peak.
pub(super) const CONTENT_PAGE: u32 = 10;

/// Reconciles running at once.
pub(super) const RECONCILE_CONCURRENCY: u16 = 16;

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
}

//! The apply step: server-side apply of the desired objects in their fixed
//! order, skipping any object the cluster already holds as desired, and the
//! pruning of children the spec no longer asks for (found by label and
//! controller reference, in the watch caches or by a LIST).

use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};

use super::dereference::Fetched;
use super::{ChildStores, ListMark, Run, cache};
use crate::api::WebRtcPbx;
use crate::names::{self, FIELD_MANAGER};
use crate::render::Object;
use crate::status::Refusal;
use crate::validate;

/// True when every field of `desired` is present in `live` with the same
/// value: the server holds what we would apply, so applying writes nothing
/// new. Server-added fields (defaults, status, other managers) are ignored.
pub fn contains(live: &Value, desired: &Value) -> bool {
    match (live, desired) {
        (Value::Object(l), Value::Object(d)) => d.iter().all(|(k, dv)| match l.get(k) {
            Some(lv) => contains(lv, dv),
            None => dv.is_null(),
        }),
        (Value::Array(l), Value::Array(d)) => {
            l.len() == d.len() && l.iter().zip(d).all(|(lv, dv)| contains(lv, dv))
        }
        (l, d) => l == d,
    }
}

/// The first path where `live` does not hold what `desired` asks for (the
/// log says why an object was written). For a Secret only the path: its
/// values (passwords, `ca.key`) never reach a log, at any level.
pub fn difference_logged(live: &Value, desired: &Value, secret: bool) -> Option<String> {
    let found = difference(live, desired)?;
    Some(match (secret, found.split_once(" (")) {
        (true, Some((path, _))) => format!("{path} (value redacted)"),
        _ => found,
    })
}

/// The first path where `live` does not hold what `desired` asks for, with
/// both values.
pub fn difference(live: &Value, desired: &Value) -> Option<String> {
    match (live, desired) {
        (Value::Object(l), Value::Object(d)) => d.iter().find_map(|(k, dv)| match l.get(k) {
            Some(lv) => difference(lv, dv).map(|p| format!(".{k}{p}")),
            None if dv.is_null() => None,
            None => Some(format!(".{k} (missing)")),
        }),
        (Value::Array(l), Value::Array(d)) if l.len() == d.len() => l
            .iter()
            .zip(d)
            .enumerate()
            .find_map(|(i, (lv, dv))| difference(lv, dv).map(|p| format!("[{i}]{p}"))),
        (Value::Array(l), Value::Array(d)) => {
            Some(format!(" ({} items, want {})", l.len(), d.len()))
        }
        (l, d) if l == d => None,
        (l, d) => Some(format!(" ({l} != {d})")),
    }
}

/// The cert-manager Certificate resource.
pub fn certificate_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "cert-manager.io",
        "v1",
        "Certificate",
    ))
}

/// The prometheus-operator PodMonitor resource.
pub fn pod_monitor_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "monitoring.coreos.com",
        "v1",
        "PodMonitor",
    ))
}

/// What applying one object did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The cluster already held it: nothing sent.
    Unchanged,
    /// A server-side apply was sent.
    Written,
    /// Nothing sent: an object of that name exists without this PBX's
    /// controller reference. Forced apply would take it over (and a later
    /// prune delete it), so it is reported instead.
    NotOwned,
}

/// What a StatefulSet write needs beyond the object.
pub struct WorkloadWrites<'a> {
    /// Which live specs hold which desired ones.
    pub memo: &'a cache::SpecMemo,
    /// Asked before a write that would replace a running pod; `false`
    /// holds the write back.
    pub may_roll: &'a (dyn Fn() -> bool + Sync),
}

/// Whether writing the spec `desired` over the StatefulSet `live`
/// replaces a running pod: a ready pod, and a pod template the live one
/// does not hold.
fn replaces_running_pod(live: &Value, desired: &Value) -> bool {
    let ready = live["status"]["readyReplicas"].as_i64().unwrap_or(0) > 0;
    ready && !contains(&live["spec"]["template"], &desired["template"])
}

/// The uid of the controller owner `object` names, if any.
fn controller_uid(object: &Value) -> Option<&str> {
    object["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"] == Value::Bool(true))?["uid"]
        .as_str()
}

/// The uid of the controller owner in `meta`, if any (the typed
/// [`controller_uid`]).
fn controller_of(meta: &kube::core::ObjectMeta) -> Option<&str> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.as_str())
}

/// Whether the apiserver refused the write for good (invalid, forbidden,
/// too large, a webhook's no): the user or admin must act, so it becomes a
/// condition. Conflicts, throttling and server errors are retried instead.
/// Returns the apiserver's answer (`(code reason): message`) for one.
pub fn rejection(e: &kube::Error) -> Option<String> {
    match e {
        kube::Error::Api(s) if (400..500).contains(&s.code) && s.code != 409 && s.code != 429 => {
            Some(format!("({} {}): {}", s.code, s.reason, s.message))
        }
        _ => None,
    }
}

/// The live object, when the caller already fetched it in this reconcile:
/// `Some(None)` means it is known not to exist; `None`, not fetched.
pub type Known = Option<Option<Value>>;

/// `desired` as a cached ConfigMap holds it ([`cache::DIGESTED`]): each
/// value replaced by its digest, for the comparison only.
pub fn digested(mut desired: Value) -> Value {
    if let Some(data) = desired.get_mut("data").and_then(Value::as_object_mut) {
        for value in data.values_mut() {
            if let Some(text) = value.as_str() {
                *value = Value::String(cache::digest(text));
            }
        }
    }
    desired
}

/// True when `live` is a cached ConfigMap holding digests.
fn is_digested(live: &Known) -> bool {
    live.as_ref()
        .and_then(Option::as_ref)
        .is_some_and(|l| l["metadata"]["annotations"][cache::DIGESTED].is_string())
}

async fn apply_typed<K>(api: Api<K>, object: &K, known: Known) -> Result<Applied, kube::Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    Ok(apply_read(api, object, known).await?.0)
}

/// [`apply_typed`], with the object as the apiserver showed it when it was
/// read (no `known`) or written: the answer of the GET or of the apply.
async fn apply_read<K>(
    api: Api<K>,
    object: &K,
    known: Known,
) -> Result<(Applied, Option<Value>), kube::Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let to_json = |o: &K| serde_json::to_value(o).map_err(kube::Error::SerdeError);
    let name = object.meta().name.clone().unwrap_or_default();
    let desired = to_json(object)?;
    let desired = if is_digested(&known) {
        digested(desired)
    } else {
        desired
    };
    let (live, read) = match known {
        Some(live) => (live, false),
        None => match api.get_opt(&name).await? {
            Some(live) => (Some(to_json(&live)?), true),
            None => (None, true),
        },
    };
    if let (Some(live), Some(owner)) = (&live, controller_uid(&desired))
        && controller_uid(live) != Some(owner)
    {
        return Ok((Applied::NotOwned, None));
    }
    match &live {
        Some(live) if contains(live, &desired) => {
            return Ok((Applied::Unchanged, read.then(|| live.clone())));
        }
        Some(live) => {
            let secret = desired["kind"] == "Secret";
            tracing::debug!(object = %name, at = ?difference_logged(live, &desired, secret), "drifted")
        }
        None => {}
    }
    let written = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(object),
        )
        .await?;
    Ok((Applied::Written, Some(to_json(&written)?)))
}

/// Applies a StatefulSet. Its cached copy holds a digest of its spec
/// ([`cache::SPEC_DIGEST`]): when `memo` has seen that live spec hold this
/// desired one, only the rest is compared; otherwise the spec is read. What
/// was read or written is remembered when it holds the desired spec.
async fn apply_stateful_set(
    api: Api<StatefulSet>,
    object: &StatefulSet,
    known: Known,
    memo: &cache::SpecMemo,
) -> Result<Applied, kube::Error> {
    let (ns, name) = (
        api.namespace().unwrap_or_default().to_string(),
        object.name_any(),
    );
    let desired = serde_json::to_value(&object.spec).map_err(kube::Error::SerdeError)?;
    let desired_digest = cache::spec_digest(&desired);
    let known = stateful_set_known(&ns, &name, &desired, &desired_digest, known, memo);
    let (applied, seen) = apply_read(api, object, known).await?;
    if let Some(seen) = seen
        && contains(&seen["spec"], &desired)
    {
        memo.record(
            &ns,
            &name,
            desired_digest,
            cache::spec_digest(&seen["spec"]),
        );
    }
    Ok(applied)
}

/// What is known of live StatefulSet `name`: its cached copy with the
/// desired spec (`desired`, of digest `desired_digest`) put in when `memo`
/// has seen its spec hold it, `None` (read it) when the cache cut a spec
/// not known to hold it.
fn stateful_set_known(
    ns: &str,
    name: &str,
    desired: &Value,
    desired_digest: &str,
    known: Known,
    memo: &cache::SpecMemo,
) -> Known {
    match known {
        Some(Some(mut live)) => {
            let live_digest = live["metadata"]["annotations"][cache::SPEC_DIGEST].as_str();
            match live_digest {
                Some(l) if memo.holds(ns, name, desired_digest, l) => {
                    live["spec"] = desired.clone();
                    Some(Some(live))
                }
                // Cut by the cache, and not known to hold it: read it.
                Some(_) => None,
                None => Some(Some(live)),
            }
        }
        other => other,
    }
}

/// The rollout gate, before anything of a PBX is applied: `None` when the
/// StatefulSet would replace a running pod and the budget says wait (then
/// nothing is applied: its new config files would reach the old pod by a
/// reload first); else what is known of the live StatefulSet, read here
/// if need be, for its apply.
async fn rollout_gate(
    client: &Client,
    ns: &str,
    object: &StatefulSet,
    known: Known,
    writes: &WorkloadWrites<'_>,
) -> Result<Option<Known>, kube::Error> {
    let name = object.name_any();
    let desired = serde_json::to_value(&object.spec).map_err(kube::Error::SerdeError)?;
    let digest = cache::spec_digest(&desired);
    let known = match stateful_set_known(ns, &name, &desired, &digest, known, writes.memo) {
        Some(k) => k,
        None => Api::<StatefulSet>::namespaced(client.clone(), ns)
            .get_opt(&name)
            .await?
            .map(|live| serde_json::to_value(live).map_err(kube::Error::SerdeError))
            .transpose()?,
    };
    let waits = known
        .as_ref()
        .is_some_and(|live| replaces_running_pod(live, &desired))
        && !(writes.may_roll)();
    Ok((!waits).then_some(Some(known)))
}

/// The resourceVersion a Secret believed absent is applied with. On create
/// the apiserver ignores it; an existing object never has it (a
/// resourceVersion is the etcd revision of the object's last write, and
/// revision 1 is the empty store), so if one exists after all the apply is
/// refused with 409 instead of replacing it.
pub const CREATE_ONLY: &str = "1";

/// Applies one object in `namespace`; `known` saves the GET when the
/// dereference step already read it. A Secret is written only over the
/// version it was derived from (its generated passwords and certificates
/// come from the live copy), or create-only ([`CREATE_ONLY`]) when it was
/// known absent: if that was stale, the apiserver answers 409
/// ([`is_conflict`]) and nothing is replaced. A StatefulSet is cached
/// without its spec: with `memo`, a pair of spec digests seen to agree
/// skips it and any other pair reads it once ([`cache::SpecMemo`]);
/// `None` compares it with `known`, as the other kinds are.
pub async fn apply(
    client: &Client,
    namespace: &str,
    object: &Object,
    known: Known,
    memo: Option<&cache::SpecMemo>,
) -> Result<Applied, kube::Error> {
    match object {
        Object::Secret(o) => {
            let mut o = o.clone();
            o.metadata.resource_version = match &known {
                Some(Some(live)) => live["metadata"]["resourceVersion"]
                    .as_str()
                    .map(str::to_string),
                Some(None) => Some(CREATE_ONLY.to_string()),
                None => None,
            };
            let create_only = matches!(known, Some(None));
            let api = Api::<Secret>::namespaced(client.clone(), namespace);
            match apply_typed(api.clone(), &o, known).await {
                // Believed absent, but there: a Secret the caches do not
                // hold (not labelled as ours, so never watched) is looked
                // at once, and refused if it is someone else's. One of
                // ours stays a conflict (retried once the cache has it);
                // if its labels were taken off, the cache never would, so
                // they are put back first.
                Err(e) if create_only && is_conflict(&e) => {
                    let name = o.metadata.name.as_deref().unwrap_or_default();
                    match api.get_opt(name).await? {
                        Some(live)
                            if controller_of(&live.metadata) != controller_of(&o.metadata) =>
                        {
                            Ok(Applied::NotOwned)
                        }
                        Some(live)
                            if o.metadata.labels.iter().flatten().any(|(k, v)| {
                                live.metadata.labels.as_ref().and_then(|l| l.get(k)) != Some(v)
                            }) =>
                        {
                            let labels =
                                serde_json::json!({"metadata": {"labels": o.metadata.labels}});
                            api.patch(name, &PatchParams::default(), &Patch::Merge(&labels))
                                .await?;
                            Err(e)
                        }
                        _ => Err(e),
                    }
                }
                other => other,
            }
        }
        Object::ConfigMap(o) => {
            apply_typed(
                Api::<ConfigMap>::namespaced(client.clone(), namespace),
                o,
                known,
            )
            .await
        }
        Object::Service(o) => {
            apply_typed(
                Api::<Service>::namespaced(client.clone(), namespace),
                o,
                known,
            )
            .await
        }
        Object::StatefulSet(o) => {
            let api = Api::<StatefulSet>::namespaced(client.clone(), namespace);
            match memo {
                Some(memo) => apply_stateful_set(api, o, known, memo).await,
                None => apply_typed(api, o, known).await,
            }
        }
        Object::Certificate(o) | Object::PodMonitor(o) => {
            let api = Api::<DynamicObject>::namespaced_with(
                client.clone(),
                namespace,
                &resource(object.kind()),
            );
            apply_typed(api, o, known).await
        }
    }
}

/// What applying the desired objects did.
pub(super) enum Stages {
    /// Every object applied or refused: what was written, what refused.
    Done {
        /// `Kind/name` of each object sent.
        written: Vec<String>,
        /// The objects not written, and why.
        refused: Vec<Refusal>,
    },
    /// Nothing applied: a new pod template for a running pod waits for
    /// the rollout budget ([`super::rollouts`]).
    RolloutWaits,
    /// Our Secret changed since the cache saw it: this object's write
    /// conflicted; look again once the cache has caught up.
    CacheBehind(String),
}

/// Applies `desired` in two stages: what the pod mounts (sent together),
/// then the StatefulSet, which is not sent when something it mounts was
/// refused. Refusals (by the apiserver, or of objects that are not ours)
/// are returned for status, never only logged.
pub(super) async fn apply_stages(
    client: &Client,
    ns: &str,
    desired: &[Object],
    fetched: &Fetched,
    writes: &WorkloadWrites<'_>,
) -> Result<Stages, kube::Error> {
    let mut written = Vec::new();
    let mut refused = Vec::new();
    let mut sts_known = None;
    if let Some(object @ Object::StatefulSet(sts)) =
        desired.iter().find(|o| matches!(o, Object::StatefulSet(_)))
    {
        match rollout_gate(client, ns, sts, fetched.known(object), writes).await? {
            Some(known) => sts_known = Some(known),
            None => return Ok(Stages::RolloutWaits),
        }
    }
    let known = |object: &Object| match (object, &sts_known) {
        (Object::StatefulSet(_), Some(k)) => k.clone(),
        _ => fetched.known(object),
    };
    let (mounted, workload): (Vec<&Object>, Vec<&Object>) = desired
        .iter()
        .partition(|o| !matches!(o, Object::StatefulSet(_)));
    for stage in [mounted, workload] {
        let sent = stage.into_iter().map(|object| async move {
            (
                object,
                apply(client, ns, object, known(object), Some(writes.memo)).await,
            )
        });
        for (object, result) in futures::future::join_all(sent).await {
            let refusal = |not_ours, message| Refusal {
                workload: matches!(object, Object::StatefulSet(_)),
                not_ours,
                object: object.describe(),
                message,
            };
            match result {
                Ok(Applied::Written) => written.push(object.describe()),
                Ok(Applied::Unchanged) => {}
                Ok(Applied::NotOwned) => refused.push(refusal(true, String::new())),
                // No cert-manager: reported through CertificateReady, not
                // as a refusal (the 404 would otherwise read as one).
                Err(e) if matches!(object, Object::Certificate(_)) && is_missing_type(&e) => {}
                // --pod-monitors without prometheus-operator: nothing to
                // scrape with, and nothing the tenant can change.
                Err(e) if matches!(object, Object::PodMonitor(_)) && is_missing_type(&e) => {
                    tracing::warn!(object = %object.describe(), "PodMonitor not written: the monitoring.coreos.com CRDs are not installed");
                }
                Err(e) => match rejection(&e) {
                    Some(answer) => refused.push(refusal(false, answer)),
                    None if is_conflict(&e) => return Ok(Stages::CacheBehind(object.describe())),
                    None => return Err(e),
                },
            }
        }
        if !refused.is_empty() {
            break;
        }
    }
    Ok(Stages::Done { written, refused })
}

/// What a LIST of the unwatched kinds is remembered under: the PBX's uid
/// and generation.
fn list_mark(pbx: &WebRtcPbx) -> ListMark {
    (pbx.metadata.uid.clone(), pbx.metadata.generation)
}

/// True for a PBX no reconcile has written a status for, at its first
/// generation: whatever Certificate or PodMonitor it has was applied for
/// this same spec (by an operator stopped before its status write), so
/// there is nothing to prune and no LIST is sent. Saves two requests per
/// new PBX. Not after a spec change: an earlier spec may have wanted what
/// this one does not.
fn is_unreconciled(pbx: &WebRtcPbx) -> bool {
    pbx.status.is_none() && pbx.metadata.generation == Some(1)
}

/// PBX `pbx`'s children of the kinds that are not watched (Certificates,
/// PodMonitors), listed once per PBX generation in this process: `None`
/// when this process has listed them for this generation already. Sent
/// beside the applies, which it does not depend on.
pub(super) async fn unwatched_once(
    run: &Run,
    pbx: &WebRtcPbx,
    ns: &str,
) -> Result<Option<Vec<Child>>, kube::Error> {
    let key = kube::runtime::reflector::ObjectRef::from_obj(pbx);
    if run.ctx.listed_at(&key) == Some(list_mark(pbx)) {
        return Ok(None);
    }
    if is_unreconciled(pbx) {
        return Ok(Some(Vec::new()));
    }
    let uid = pbx.metadata.uid.clone().unwrap_or_default();
    list_unwatched(&run.ctx.client, ns, &pbx.name_any(), &uid)
        .await
        .map(Some)
}

/// Deletes PBX `pbx`'s children that `desired` no longer holds, found in
/// the caches every time (a child the cache learns of late triggers a
/// reconcile of its own) or by a LIST without caches, and among
/// `unwatched` ([`unwatched_once`]). A Secret the spec names as the user's
/// is released, never deleted. Returns how many were deleted.
pub(super) async fn prune(
    run: &Run,
    pbx: &WebRtcPbx,
    ns: &str,
    desired: &[Object],
    stores: Option<&ChildStores>,
    unwatched: Option<Vec<Child>>,
) -> Result<usize, kube::Error> {
    let client = &run.ctx.client;
    let name = pbx.name_any();
    let uid = pbx.metadata.uid.clone().unwrap_or_default();
    let mut found = match stores {
        Some(s) => s.children_of(ns, &name, &uid),
        None => list_children(client, ns, &name, &uid).await?,
    };
    let listed = unwatched.is_some();
    found.extend(unwatched.into_iter().flatten());
    let mut pruned = 0;
    let users_secrets = validate::referenced_secrets(&name, &pbx.spec);
    for orphan in orphans(found, desired) {
        if orphan.kind == "Secret" && users_secrets.contains(&orphan.name) {
            tracing::info!(pbx = %name, secret = %orphan.name, "released (the spec names it as the user's own)");
            release(client, ns, &orphan).await?;
            continue;
        }
        if delete(client, ns, &orphan).await? {
            pruned += 1;
        }
    }
    if listed {
        let key = kube::runtime::reflector::ObjectRef::from_obj(pbx);
        run.set_listed(key, list_mark(pbx));
    }
    Ok(pruned)
}

/// True when the apiserver refused a write because the object changed since
/// the resourceVersion it carried.
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// True when the error says the resource type does not exist (a CRD that
/// is not installed).
pub fn is_missing_type(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// A child of a PBX found by its labels and controller owner reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    /// Kind, as [`Object::kind`] names it.
    pub kind: &'static str,
    /// Name.
    pub name: String,
}

/// True when `meta` is a live child controlled by the PBX with `owner_uid`.
pub fn is_child(meta: &kube::core::ObjectMeta, owner_uid: &str) -> bool {
    meta.deletion_timestamp.is_none()
        && meta
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.uid == owner_uid && r.controller == Some(true))
}

/// The children `found` that are not among `desired`: the ones to delete.
pub fn orphans(found: Vec<Child>, desired: &[Object]) -> Vec<Child> {
    found
        .into_iter()
        .filter(|c| {
            !desired
                .iter()
                .any(|o| o.kind() == c.kind && o.name() == c.name)
        })
        .collect()
}

/// The API resource of a child kind, as [`Object::kind`] names it.
fn resource(kind: &str) -> ApiResource {
    match kind {
        "Secret" => ApiResource::erase::<Secret>(&()),
        "ConfigMap" => ApiResource::erase::<ConfigMap>(&()),
        "Service" => ApiResource::erase::<Service>(&()),
        "StatefulSet" => ApiResource::erase::<StatefulSet>(&()),
        "PodMonitor" => pod_monitor_resource(),
        _ => certificate_resource(),
    }
}

async fn list_kind(
    client: &Client,
    namespace: &str,
    kind: &'static str,
    pbx: &str,
    owner_uid: &str,
) -> Result<Vec<Child>, kube::Error> {
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &resource(kind));
    let items = api
        .list(&ListParams::default().labels(&names::children_selector(pbx)))
        .await?;
    Ok(items
        .into_iter()
        .filter(|item| is_child(item.meta(), owner_uid))
        .map(|item| Child {
            kind,
            name: item.name_any(),
        })
        .collect())
}

/// PBX `pbx`'s children of other projects' kinds (cert-manager
/// Certificates, prometheus-operator PodMonitors), listed from the
/// apiserver (they are not watched): none of a kind whose CRD is not
/// installed.
pub async fn list_unwatched(
    client: &Client,
    namespace: &str,
    pbx: &str,
    owner_uid: &str,
) -> Result<Vec<Child>, kube::Error> {
    let lists = ["Certificate", "PodMonitor"]
        .map(|kind| list_kind(client, namespace, kind, pbx, owner_uid));
    let mut found = Vec::new();
    for listed in futures::future::join_all(lists).await {
        match listed {
            Err(e) if is_missing_type(&e) => {}
            other => found.extend(other?),
        }
    }
    Ok(found)
}

/// PBX `pbx`'s Secrets, ConfigMaps, Services and StatefulSets, listed from
/// the apiserver (when no watch caches run).
pub async fn list_children(
    client: &Client,
    namespace: &str,
    pbx: &str,
    owner_uid: &str,
) -> Result<Vec<Child>, kube::Error> {
    let mut found = Vec::new();
    for kind in ["Secret", "ConfigMap", "Service", "StatefulSet"] {
        found.extend(list_kind(client, namespace, kind, pbx, owner_uid).await?);
    }
    Ok(found)
}

/// Lets go of a child without deleting it: our owner reference and labels
/// removed, so neither a prune nor the garbage collector deletes it. For a
/// Secret the spec now names as the user's own (e.g. `tls.mode: Secret`
/// with the name the operator's certificate had).
pub async fn release(client: &Client, namespace: &str, child: &Child) -> Result<(), kube::Error> {
    let api =
        Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &resource(child.kind));
    let labels: serde_json::Map<String, Value> = names::labels("")
        .into_keys()
        .map(|k| (k, Value::Null))
        .collect();
    let patch = serde_json::json!({"metadata": {"ownerReferences": null, "labels": labels}});
    match api
        .patch(
            &child.name,
            &kube::api::PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Deletes one child; true when it was there to delete (a cache may still
/// list a child that is already gone).
pub async fn delete(client: &Client, namespace: &str, child: &Child) -> Result<bool, kube::Error> {
    let api =
        Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &resource(child.kind));
    match api.delete(&child.name, &DeleteParams::background()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_digested_config_map_is_unchanged_exactly_when_every_file_is() {
        let desired =
            json!({"kind": "ConfigMap", "data": {"pjsip.conf": "[a]\n", "http.conf": "[b]\n"}});
        let mut cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "a-asterisk", "namespace": "voice",
                "labels": {"app.kubernetes.io/instance": "a"},
                "ownerReferences": [{"apiVersion": "pbx.webrtc.io/v1alpha1", "kind": "WebRtcPbx",
                    "name": "a", "uid": "u", "controller": true}]},
            "data": {"pjsip.conf": "[a]\n", "http.conf": "[b]\n", "theirs": "x"}
        }))
        .unwrap();
        cache::config_map(&mut cm);
        let live = serde_json::to_value(&cm).unwrap();
        assert!(is_digested(&Some(Some(live.clone()))));
        assert!(!contains(&live, &desired), "raw text never equals a digest");
        assert!(contains(&live, &digested(desired.clone())));
        let mut edited = desired.clone();
        edited["data"]["http.conf"] = json!("[b]\nbindport=1\n");
        assert!(!contains(&live, &digested(edited)));
    }

    #[test]
    fn only_a_first_generation_never_given_a_status_skips_the_unwatched_list() {
        let pbx = |generation: i64, status: bool| {
            let mut p: WebRtcPbx = serde_json::from_value(json!({
                "apiVersion": "pbx.webrtc.io/v1alpha1", "kind": "WebRtcPbx",
                "metadata": {"name": "a", "namespace": "voice", "generation": generation},
                "spec": {"domain": "pbx.example.com"}
            }))
            .unwrap();
            if status {
                p.status = Some(Default::default());
            }
            p
        };
        assert!(is_unreconciled(&pbx(1, false)));
        assert!(!is_unreconciled(&pbx(1, true)), "reconciled before");
        assert!(
            !is_unreconciled(&pbx(2, false)),
            "an earlier spec may have wanted other children"
        );
    }

    #[test]
    fn orphans_are_the_children_not_desired() {
        let desired: Vec<Object> = serde_json::from_value::<k8s_openapi::api::core::v1::Service>(
            json!({"metadata": {"name": "a-wss"}}),
        )
        .map(|s| vec![Object::Service(s)])
        .unwrap();
        let child = |kind, name: &str| Child {
            kind,
            name: name.into(),
        };
        let found = vec![
            child("Service", "a-wss"),
            child("Service", "a-rtp"),
            child("ConfigMap", "a-wss"),
        ];
        assert_eq!(
            orphans(found, &desired),
            vec![child("Service", "a-rtp"), child("ConfigMap", "a-wss")]
        );
    }

    #[test]
    fn live_with_server_defaults_contains_desired() {
        let desired = json!({"spec": {"ports": [{"port": 8089, "name": "wss"}], "type": "ClusterIP"}, "metadata": {"name": "a"}});
        let live = json!({
            "spec": {"ports": [{"port": 8089, "name": "wss", "protocol": "TCP", "targetPort": 8089}], "type": "ClusterIP", "clusterIP": "10.96.0.9"},
            "metadata": {"name": "a", "uid": "u", "resourceVersion": "5"},
            "status": {}
        });
        assert!(contains(&live, &desired));
    }

    #[test]
    fn the_log_names_the_first_difference() {
        let desired = json!({"spec": {"template": {"mounts": [{"name": "a"}, {"name": "b", "readOnly": false}]}}});
        let live = json!({"spec": {"template": {"mounts": [{"name": "a"}, {"name": "b"}]}}});
        assert_eq!(
            difference(&live, &desired).as_deref(),
            Some(".spec.template.mounts[1].readOnly (missing)")
        );
        assert_eq!(difference(&desired, &desired), None);
    }

    #[test]
    fn secret_values_never_reach_the_log() {
        let desired = json!({"kind": "Secret", "data": {"ca.key": "c2VjcmV0"}});
        let live = json!({"kind": "Secret", "data": {"ca.key": "b2xk"}});
        let logged = difference_logged(&live, &desired, true).unwrap();
        assert_eq!(logged, ".data.ca.key (value redacted)");
        assert!(
            difference_logged(&live, &desired, false)
                .unwrap()
                .contains("c2VjcmV0")
        );
    }

    #[test]
    fn drift_is_seen() {
        let desired = json!({"spec": {"image": "asterisk:22", "ports": [1, 2]}});
        assert!(!contains(
            &json!({"spec": {"image": "evil:1", "ports": [1, 2]}}),
            &desired
        ));
        assert!(!contains(&json!({"spec": {"ports": [1, 2]}}), &desired));
        assert!(!contains(
            &json!({"spec": {"image": "asterisk:22", "ports": [1]}}),
            &desired
        ));
        assert!(contains(
            &json!({"spec": {"image": "asterisk:22", "ports": [1, 2]}}),
            &desired
        ));
    }
}

//! What the watch caches keep of a child. The child watches select by our
//! managed-by label, which anyone who can create a ConfigMap can also set:
//! a tenant could make the operator hold any amount of data (and die of it
//! on every restart). So a cached object keeps its content only when it is
//! one of a PBX's children by name and controller reference; any other
//! labelled object is cut to the metadata that identifies it, and marked
//! [`STRIPPED`] so a reader that needs content asks the apiserver instead.
//! A PBX's own ConfigMap is only ever compared with what the operator would
//! write, so its cached copy holds a digest of each file ([`DIGESTED`]).
//! A PBX's own StatefulSet keeps its status and replica count; its spec
//! (the pod template, most of a cached PBX) is held as a digest
//! ([`SPEC_DIGEST`]), and [`SpecMemo`] remembers which live spec was seen
//! to hold which desired one, so apply reads the spec only when either
//! changed. [`StatusWrites`] remembers the PBX a status write was based
//! on, so a reconcile that starts before the PBX cache shows that write
//! waits for it instead of writing the status again from the older copy.

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::Resource;
use kube::core::ObjectMeta;

use crate::names::{self, INSTANCE_LABEL};

/// Annotation set (in memory only) on a cached copy whose content was dropped.
pub const STRIPPED: &str = "webrtc-pbx-operator.internal/stripped";

/// Annotation set (in memory only) on a cached ConfigMap whose values are
/// their [`digest`]s: 71 bytes per file instead of the file (about 6 kB a
/// PBX, 3 MB for 500).
pub const DIGESTED: &str = "webrtc-pbx-operator.internal/digested";

/// What a cached ConfigMap value is replaced with.
pub fn digest(value: &str) -> String {
    use sha2::Digest as _;
    format!("sha256:{:x}", sha2::Sha256::digest(value.as_bytes()))
}

/// True when the cached copy holds no content ([`STRIPPED`]).
pub fn is_stripped(meta: &ObjectMeta) -> bool {
    meta.annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(STRIPPED))
}

/// Annotation set (in memory only) on a cached StatefulSet whose spec was
/// cut to its replica count: the [`spec_digest`] of the spec it had.
pub const SPEC_DIGEST: &str = "webrtc-pbx-operator.internal/spec-digest";

/// The digest of a StatefulSet's spec as JSON (the same for a cached copy,
/// a GET and an apply's answer: each is the typed object's JSON).
pub fn spec_digest(spec: &serde_json::Value) -> String {
    digest(&spec.to_string())
}

/// Which live StatefulSet spec was seen to hold which desired one, per
/// StatefulSet: (desired digest, live digest). Both are digests of whole
/// specs, so an entry stays true whatever happens later; a change on
/// either side only makes it miss, and apply reads the spec again.
#[derive(Default)]
pub struct SpecMemo(
    std::sync::Mutex<std::collections::HashMap<(String, String), (String, String)>>,
);

impl SpecMemo {
    /// True when the live spec `live` was seen to hold `desired`.
    pub fn holds(&self, ns: &str, name: &str, desired: &str, live: &str) -> bool {
        self.0.lock().is_ok_and(|m| {
            m.get(&(ns.to_string(), name.to_string()))
                .is_some_and(|(d, l)| d == desired && l == live)
        })
    }

    /// Remembers that the live spec `live` holds `desired` (one entry per
    /// StatefulSet: the last seen).
    pub fn record(&self, ns: &str, name: &str, desired: String, live: String) {
        if let Ok(mut m) = self.0.lock() {
            m.insert((ns.to_string(), name.to_string()), (desired, live));
        }
    }

    /// Forgets a deleted PBX's StatefulSet.
    pub fn forget(&self, ns: &str, name: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(&(ns.to_string(), name.to_string()));
        }
    }

    /// How many StatefulSets it remembers.
    pub fn len(&self) -> usize {
        self.0.lock().map_or(0, |m| m.len())
    }

    /// True when it remembers none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Per PBX, the resourceVersion its last status write was computed from,
/// and when it was sent, until the PBX cache moves past it. A reconcile
/// that starts from that same copy (a child's event right after the
/// write) would find every condition new: it would write the status again
/// with every lastTransitionTime moved to now. At 500 PBXs created at
/// once, 291 of 921 status writes were such.
#[derive(Default)]
pub struct StatusWrites(
    std::sync::Mutex<std::collections::HashMap<(String, String), (String, time::OffsetDateTime)>>,
);

/// How long a status write is waited for: past it, the cache is taken as
/// it is (a watch that stopped delivering must not stop the reconciles).
pub const STATUS_WRITE_WAIT: time::Duration = time::Duration::seconds(10);

impl StatusWrites {
    /// Remembers that a status write computed from the PBX at `base` was
    /// accepted at `at` as `written`. A write that changed nothing
    /// (`written == base`) leaves nothing to wait for.
    pub fn record(
        &self,
        ns: &str,
        name: &str,
        base: &str,
        written: &str,
        at: time::OffsetDateTime,
    ) {
        if base == written {
            return;
        }
        if let Ok(mut m) = self.0.lock() {
            m.insert((ns.to_string(), name.to_string()), (base.to_string(), at));
        }
    }

    /// True when the cached PBX, at `seen`, is still the copy the last
    /// status write was computed from, and that write is recent. Forgets
    /// the write once the cache shows anything else.
    pub fn behind(
        &self,
        ns: &str,
        name: &str,
        seen: Option<&str>,
        now: time::OffsetDateTime,
    ) -> bool {
        let Ok(mut m) = self.0.lock() else {
            return false;
        };
        let key = (ns.to_string(), name.to_string());
        let waiting = m
            .get(&key)
            .is_some_and(|(base, at)| Some(base.as_str()) == seen && now - *at < STATUS_WRITE_WAIT);
        if !waiting {
            m.remove(&key);
        }
        waiting
    }

    /// Forgets a deleted PBX.
    pub fn forget(&self, ns: &str, name: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(&(ns.to_string(), name.to_string()));
        }
    }
}

/// The name of the controller owner of kind `kind` (`WebRtcPbx` in our
/// group, or `StatefulSet`), when the object's instance label names it too.
fn owner(meta: &ObjectMeta, kind: &str) -> Option<String> {
    let owner = meta
        .owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true) && r.kind == kind)?;
    let group_ok = kind != "WebRtcPbx" || owner.api_version.starts_with(crate::api::GROUP);
    let label = meta.labels.as_ref()?.get(INSTANCE_LABEL)?;
    (group_ok && *label == owner.name).then(|| owner.name.clone())
}

/// Drops everything but identity: name, namespace, uid, version, labels,
/// owner references, deletion time (what pruning and readiness read).
fn identity_only(meta: &mut ObjectMeta) {
    *meta = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        uid: meta.uid.take(),
        resource_version: meta.resource_version.take(),
        labels: meta.labels.take(),
        owner_references: meta.owner_references.take(),
        deletion_timestamp: meta.deletion_timestamp.take(),
        annotations: Some([(STRIPPED.to_string(), "true".to_string())].into()),
        ..ObjectMeta::default()
    };
}

fn named_child(meta: &ObjectMeta, names: impl Fn(&str) -> Vec<String>) -> bool {
    match (owner(meta, "WebRtcPbx"), meta.name.as_deref()) {
        (Some(pbx), Some(name)) => names(&pbx).iter().any(|n| n == name),
        _ => false,
    }
}

/// Keeps a Secret whole only when it is a PBX's own, by name.
pub fn secret(s: &mut Secret) {
    let ours = named_child(&s.metadata, |p| {
        vec![
            names::secret_name(p),
            names::tls_secret_name(p),
            names::ca_secret_name(p),
            names::clients_secret_name(p),
        ]
    });
    if !ours {
        identity_only(&mut s.metadata);
        s.data = None;
        s.string_data = None;
    }
}

/// Keeps a ConfigMap, as digests ([`DIGESTED`]), only when it is a PBX's
/// own, by name.
pub fn config_map(c: &mut ConfigMap) {
    if !named_child(&c.metadata, |p| vec![names::config_map_name(p)]) {
        identity_only(&mut c.metadata);
        c.data = None;
        c.binary_data = None;
        return;
    }
    for value in c.data.iter_mut().flat_map(|d| d.values_mut()) {
        *value = digest(value);
    }
    c.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(DIGESTED.into(), "true".into());
}

/// Keeps a Service whole only when it is a PBX's own, by name.
pub fn service(s: &mut Service) {
    let ours = named_child(&s.metadata, |p| {
        vec![names::wss_service_name(p), names::rtp_service_name(p)]
    });
    if !ours {
        identity_only(&mut s.metadata);
        s.spec = None;
        s.status = None;
    }
}

/// Keeps a StatefulSet only when it is a PBX's own, by name: its
/// metadata, status and replica count, and its spec's [`SPEC_DIGEST`]
/// (the pod template alone is about 22 kB a PBX as typed objects).
pub fn stateful_set(s: &mut StatefulSet) {
    if !named_child(&s.metadata, |p| vec![p.to_string()]) {
        identity_only(&mut s.metadata);
        s.spec = None;
        s.status = None;
        return;
    }
    let Some(spec) = s.spec.as_mut() else { return };
    let Ok(json) = serde_json::to_value(&*spec) else {
        return;
    };
    *spec = StatefulSetSpec {
        replicas: spec.replicas,
        ..StatefulSetSpec::default()
    };
    s.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(SPEC_DIGEST.into(), spec_digest(&json));
}

/// A pod keeps its status (scheduling verdicts, addresses) only when it is
/// a PBX's pod (`NAME-0` of the StatefulSet `NAME`); of its spec only the
/// containers' names and ports (a draining pod is probed on the port it
/// was started with).
pub fn pod(p: &mut Pod) {
    p.spec = p.spec.take().map(|s| k8s_openapi::api::core::v1::PodSpec {
        containers: s
            .containers
            .into_iter()
            .filter(|c| c.ports.is_some())
            .map(|c| k8s_openapi::api::core::v1::Container {
                name: c.name,
                ports: c.ports,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    });
    let ours = match (
        owner(&p.metadata, "StatefulSet"),
        p.metadata.name.as_deref(),
    ) {
        (Some(sts), Some(name)) => name == names::pod_name(&sts),
        _ => false,
    };
    if !ours {
        identity_only(&mut p.metadata);
        p.status = None;
        p.spec = None;
    }
}

/// Drops what no cache reads: managedFields (a JSON tree per field
/// manager, often larger than the object's own fields).
pub fn slim<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn meta(name: &str, instance: &str, owner: Option<(&str, &str)>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("voice".into()),
            labels: Some([(INSTANCE_LABEL.to_string(), instance.to_string())].into()),
            annotations: Some([("big".to_string(), "x".repeat(1000))].into()),
            owner_references: owner.map(|(kind, name)| {
                vec![OwnerReference {
                    api_version: if kind == "WebRtcPbx" {
                        "pbx.webrtc.io/v1alpha1".into()
                    } else {
                        "apps/v1".into()
                    },
                    kind: kind.into(),
                    name: name.into(),
                    uid: "u".into(),
                    controller: Some(true),
                    block_owner_deletion: None,
                }]
            }),
            ..ObjectMeta::default()
        }
    }

    fn config_map_of(meta: ObjectMeta) -> ConfigMap {
        ConfigMap {
            metadata: meta,
            data: Some([("pjsip.conf".to_string(), "x".repeat(1 << 20))].into()),
            ..ConfigMap::default()
        }
    }

    #[test]
    fn only_a_pbxs_own_children_keep_their_content() {
        let mut ours = config_map_of(meta("a-asterisk", "a", Some(("WebRtcPbx", "a"))));
        config_map(&mut ours);
        assert!(!is_stripped(&ours.metadata));
        // Its files as digests.
        assert_eq!(
            ours.data.as_ref().unwrap()["pjsip.conf"],
            digest(&"x".repeat(1 << 20))
        );
        assert_eq!(ours.data.as_ref().unwrap()["pjsip.conf"].len(), 71);
        assert!(
            ours.metadata
                .annotations
                .as_ref()
                .unwrap()
                .contains_key(DIGESTED)
        );
        for (name, instance, owner) in [
            ("a-asterisk", "a", None),                      // no owner
            ("junk-1", "a", Some(("WebRtcPbx", "a"))),      // not a child's name
            ("b-asterisk", "a", Some(("WebRtcPbx", "b"))),  // label and owner disagree
            ("a-asterisk", "a", Some(("Deployment", "a"))), // not a PBX
        ] {
            let mut cm = config_map_of(meta(name, instance, owner));
            config_map(&mut cm);
            assert!(cm.data.is_none(), "{name} {owner:?}");
            assert!(is_stripped(&cm.metadata), "{name}");
            assert_eq!(cm.metadata.annotations.as_ref().map(|a| a.len()), Some(1));
            assert_eq!(cm.metadata.name.as_deref(), Some(name));
        }
    }

    #[test]
    fn a_pod_keeps_its_status_only_as_a_pbx_pod() {
        let status = || Some(Default::default());
        let spec = || -> Option<k8s_openapi::api::core::v1::PodSpec> {
            serde_json::from_value(serde_json::json!({"containers": [
                {"name": "asterisk", "image": "x", "ports": [{"name": "wss", "containerPort": 8089}]},
                {"name": "config-reloader", "image": "x"}
            ]}))
            .ok()
        };
        let mut ours = Pod {
            metadata: meta("a-0", "a", Some(("StatefulSet", "a"))),
            spec: spec(),
            status: status(),
        };
        pod(&mut ours);
        assert!(ours.status.is_some());
        // Only the containers' names and ports (a draining pod's WSS port).
        let containers = &ours.spec.as_ref().unwrap().containers;
        assert_eq!(containers.len(), 1);
        assert_eq!(
            (containers[0].name.as_str(), containers[0].image.as_deref()),
            ("asterisk", None)
        );
        assert_eq!(
            containers[0].ports.as_ref().unwrap()[0].container_port,
            8089
        );
        let mut other = Pod {
            metadata: meta("miner", "a", Some(("StatefulSet", "a"))),
            spec: spec(),
            status: status(),
        };
        pod(&mut other);
        assert!(other.status.is_none() && other.spec.is_none() && is_stripped(&other.metadata));
    }

    #[test]
    fn a_pbxs_stateful_set_keeps_its_status_and_replicas_and_a_digest_of_its_spec() {
        use k8s_openapi::api::apps::v1::StatefulSetStatus;
        let spec = StatefulSetSpec {
            replicas: Some(1),
            service_name: Some("a".into()),
            template: k8s_openapi::api::core::v1::PodTemplateSpec {
                metadata: Some(meta("a-0", "a", None)),
                spec: None,
            },
            ..StatefulSetSpec::default()
        };
        let status = StatefulSetStatus {
            ready_replicas: Some(1),
            update_revision: Some("a-1".into()),
            ..StatefulSetStatus::default()
        };
        let of = |owner| StatefulSet {
            metadata: meta("a", "a", owner),
            spec: Some(spec.clone()),
            status: Some(status.clone()),
        };
        let mut ours = of(Some(("WebRtcPbx", "a")));
        stateful_set(&mut ours);
        assert!(!is_stripped(&ours.metadata));
        assert_eq!(ours.status, Some(status.clone()));
        assert_eq!(
            ours.spec,
            Some(StatefulSetSpec {
                replicas: Some(1),
                ..StatefulSetSpec::default()
            })
        );
        let annotations = ours.metadata.annotations.unwrap();
        assert_eq!(
            annotations[SPEC_DIGEST],
            spec_digest(&serde_json::to_value(&spec).unwrap())
        );
        // Another's spec gives another digest.
        let mut edited = spec.clone();
        edited.service_name = Some("b".into());
        assert_ne!(
            annotations[SPEC_DIGEST],
            spec_digest(&serde_json::to_value(&edited).unwrap())
        );
        let mut other = of(Some(("Deployment", "a")));
        stateful_set(&mut other);
        assert!(other.spec.is_none() && other.status.is_none() && is_stripped(&other.metadata));
    }

    #[test]
    fn a_status_write_is_waited_for_until_the_cache_moves_past_its_base() {
        let writes = StatusWrites::default();
        let t0 = time::OffsetDateTime::UNIX_EPOCH;
        let later = |s| t0 + time::Duration::seconds(s);
        assert!(
            !writes.behind("ns", "a", Some("10"), t0),
            "nothing written yet"
        );
        writes.record("ns", "a", "10", "11", t0);
        assert!(writes.behind("ns", "a", Some("10"), later(1)));
        assert!(
            !writes.behind("ns", "b", Some("10"), later(1)),
            "another PBX"
        );
        assert!(
            !writes.behind("ns", "a", Some("11"), later(1)),
            "the cache shows it"
        );
        assert!(
            !writes.behind("ns", "a", Some("10"), later(1)),
            "forgotten once seen past"
        );
        writes.record("ns", "a", "12", "13", t0);
        assert!(
            !writes.behind("ns", "a", Some("12"), later(10)),
            "not waited for past STATUS_WRITE_WAIT"
        );
        writes.record("ns", "a", "14", "14", t0);
        assert!(
            !writes.behind("ns", "a", Some("14"), later(1)),
            "a write that changed nothing"
        );
        writes.record("ns", "a", "15", "16", t0);
        writes.forget("ns", "a");
        assert!(!writes.behind("ns", "a", Some("15"), later(1)));
    }

    #[test]
    fn the_spec_memo_holds_only_the_pair_it_saw() {
        let memo = SpecMemo::default();
        assert!(!memo.holds("ns", "a", "d1", "l1"));
        memo.record("ns", "a", "d1".into(), "l1".into());
        assert!(memo.holds("ns", "a", "d1", "l1"));
        // A new desired spec, an edited live one, another PBX: read again.
        assert!(!memo.holds("ns", "a", "d2", "l1"));
        assert!(!memo.holds("ns", "a", "d1", "l2"));
        assert!(!memo.holds("other", "a", "d1", "l1"));
        memo.record("ns", "a", "d2".into(), "l2".into());
        assert!(!memo.holds("ns", "a", "d1", "l1") && memo.holds("ns", "a", "d2", "l2"));
        assert_eq!(memo.len(), 1);
        memo.forget("ns", "a");
        assert!(memo.is_empty());
    }
}

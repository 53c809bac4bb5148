//! The apply step: server-side apply of the desired objects in their fixed
//! order, skipping any object the cluster already holds as desired, and the
//! pruning of children the spec no longer asks for (found by label).

use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};

use crate::render::Object;
use crate::render::objects::{FIELD_MANAGER, INSTANCE_LABEL};

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
/// log says why an object was written).
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

/// What applying one object did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The cluster already held it: nothing sent.
    Unchanged,
    /// A server-side apply was sent.
    Written,
}

/// The live object, when the caller already fetched it in this reconcile:
/// `Some(None)` means it is known not to exist; `None`, not fetched.
pub type Known = Option<Option<Value>>;

async fn apply_typed<K>(api: Api<K>, object: &K, known: Known) -> Result<Applied, kube::Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let desired = serde_json::to_value(object).map_err(kube::Error::SerdeError)?;
    let live = match known {
        Some(live) => live,
        None => match api.get_opt(&name).await? {
            Some(live) => Some(serde_json::to_value(&live).map_err(kube::Error::SerdeError)?),
            None => None,
        },
    };
    match &live {
        Some(live) if contains(live, &desired) => return Ok(Applied::Unchanged),
        Some(live) => tracing::debug!(object = %name, at = ?difference(live, &desired), "drifted"),
        None => {}
    }
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await?;
    Ok(Applied::Written)
}

/// Applies one object in `namespace`; `known` saves the GET when the
/// dereference step already read it. A Secret is written only over the
/// version it was derived from (its generated passwords and certificates
/// come from the live copy): if that copy was stale, the apiserver answers
/// 409 ([`is_conflict`]) and nothing is replaced.
pub async fn apply(
    client: &Client,
    namespace: &str,
    object: &Object,
    known: Known,
) -> Result<Applied, kube::Error> {
    match object {
        Object::Secret(o) => {
            let mut o = o.clone();
            o.metadata.resource_version = known
                .as_ref()
                .and_then(|live| live.as_ref()?["metadata"]["resourceVersion"].as_str())
                .map(str::to_string);
            apply_typed(
                Api::<Secret>::namespaced(client.clone(), namespace),
                &o,
                known,
            )
            .await
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
            apply_typed(
                Api::<StatefulSet>::namespaced(client.clone(), namespace),
                o,
                known,
            )
            .await
        }
        Object::Certificate(o) => {
            let api = Api::<DynamicObject>::namespaced_with(
                client.clone(),
                namespace,
                &certificate_resource(),
            );
            apply_typed(api, o, known).await
        }
    }
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

async fn prune_kind<K>(
    api: Api<K>,
    selector: &str,
    owner_uid: &str,
    keep: &[String],
) -> Result<usize, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut deleted = 0;
    for item in api.list(&ListParams::default().labels(selector)).await? {
        let owned = item
            .owner_references()
            .iter()
            .any(|r| r.uid == owner_uid && r.controller == Some(true));
        let name = item.name_any();
        if owned && !keep.contains(&name) && item.meta().deletion_timestamp.is_none() {
            api.delete(&name, &DeleteParams::background()).await?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Deletes the children of PBX `pbx` (owner `owner_uid`) that are not among
/// `desired`, e.g. the RTP Service after a switch to HostNetwork. Returns
/// how many were deleted.
pub async fn prune(
    client: &Client,
    namespace: &str,
    pbx: &str,
    owner_uid: &str,
    desired: &[Object],
) -> Result<usize, kube::Error> {
    let selector = format!("{INSTANCE_LABEL}={pbx},app.kubernetes.io/managed-by={FIELD_MANAGER}");
    let names = |kind: &str| -> Vec<String> {
        desired
            .iter()
            .filter(|o| o.kind() == kind)
            .map(|o| o.name().to_string())
            .collect()
    };
    let c = client.clone();
    let mut deleted = 0;
    deleted += prune_kind(
        Api::<Secret>::namespaced(c.clone(), namespace),
        &selector,
        owner_uid,
        &names("Secret"),
    )
    .await?;
    deleted += prune_kind(
        Api::<ConfigMap>::namespaced(c.clone(), namespace),
        &selector,
        owner_uid,
        &names("ConfigMap"),
    )
    .await?;
    deleted += prune_kind(
        Api::<Service>::namespaced(c.clone(), namespace),
        &selector,
        owner_uid,
        &names("Service"),
    )
    .await?;
    deleted += prune_kind(
        Api::<StatefulSet>::namespaced(c.clone(), namespace),
        &selector,
        owner_uid,
        &names("StatefulSet"),
    )
    .await?;
    let certs = Api::<DynamicObject>::namespaced_with(c, namespace, &certificate_resource());
    match prune_kind(certs, &selector, owner_uid, &names("Certificate")).await {
        Ok(n) => deleted += n,
        Err(e) if is_missing_type(&e) => {}
        Err(e) => return Err(e),
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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

//! The dereference step: everything a reconcile reads before it decides,
//! from the caches where they hold it and from the apiserver otherwise, and
//! the facts read off the pod and the StatefulSet.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, DynamicObject};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};

use super::{ChildStores, apply, cache};
use crate::api::{TlsMode, WebRtcPbx};
use crate::names;
use crate::ports;
use crate::render::Object;
use crate::status;
use crate::validate::{self, Referenced};

/// The scheduler's message when the pod cannot be placed.
pub(super) fn unschedulable(pod: Option<&Pod>) -> Option<String> {
    let conditions = pod?.status.as_ref()?.conditions.as_ref()?;
    let c = conditions
        .iter()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
    (c.reason.as_deref() == Some("Unschedulable")).then(|| c.message.clone().unwrap_or_default())
}

/// The facts WorkloadReady is decided from: the StatefulSet's counts,
/// another PBX holding the ports, the scheduler's message.
pub(super) fn workload_facts(
    sts: Option<&StatefulSet>,
    conflict: Option<&ports::Conflict>,
    pod: Option<&Pod>,
    active_calls: Option<u64>,
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
        draining: pod
            .and_then(|p| p.metadata.deletion_timestamp.as_ref())
            .map(|deadline| status::Draining {
                active_calls,
                deadline: Some(deadline.0.to_string()),
            }),
    }
}

/// Where a draining pod serves WSS (its own address and the port it was
/// started with, which a spec change may have moved): the probe dials it
/// there, since the Service drops a terminating pod, and so reads its call
/// count while it drains.
pub(super) fn draining_address(pod: Option<&Pod>) -> Option<String> {
    let pod = pod.filter(|p| p.metadata.deletion_timestamp.is_some())?;
    let ip = pod.status.as_ref()?.pod_ip.clone()?;
    let port = pod
        .spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some("wss"))?
        .container_port;
    Some(if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    })
}

/// True for an unschedulable pod of an outdated revision: the StatefulSet
/// controller never replaces a pod that is not Running, so a spec fix (e.g.
/// a new nodeSelector) would otherwise need a manual `kubectl delete pod`.
pub(super) fn stale_pending_pod(pod: Option<&Pod>, sts: Option<&StatefulSet>) -> bool {
    let revision = pod.and_then(|p| p.labels().get("controller-revision-hash").cloned());
    let update = sts.and_then(|s| s.status.as_ref()?.update_revision.clone());
    unschedulable(pod).is_some() && revision.is_some() && update.is_some() && revision != update
}

/// What the dereference step fetched.
pub(super) struct Fetched {
    pub(super) referenced: Referenced,
    pub(super) own_secret: Option<Secret>,
    pub(super) tls_secret: Option<Secret>,
    pub(super) ca_secret: Option<Secret>,
    /// The names the three Secrets above were read under.
    pub(super) secret_names: [String; 3],
    /// The caches the other children are read from.
    pub(super) stores: Option<ChildStores>,
    pub(super) namespace: String,
    pub(super) stateful_set: Option<StatefulSet>,
    /// The PBX's pod (a StatefulSet of one).
    pub(super) pod: Option<Pod>,
    pub(super) certificate: Option<DynamicObject>,
}

pub(super) async fn dereference(
    client: &Client,
    stores: Option<&ChildStores>,
    ns: &str,
    pbx: &WebRtcPbx,
) -> Result<Fetched, kube::Error> {
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
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    let secret_names = [
        names::secret_name(&name),
        validate::tls_secret_name(&name, spec),
        names::ca_secret_name(&name),
    ];
    // From the cache when it has them. A miss of a Secret the operator
    // generates is taken as absent without a GET: apply writes it
    // create-only (`apply::CREATE_ONLY`), so a copy the cache has not seen
    // yet is refused, never replaced. Any other miss (the TLS Secret of
    // cert-manager or of the user) is confirmed by the apiserver.
    let self_signed = spec.tls.mode == TlsMode::SelfSigned;
    let own = |name: &String, generated: bool| {
        let cached = stores.map(|s| s.secrets.get(&ObjectRef::new(name).within(ns)));
        let secrets = secrets.clone();
        let name = name.clone();
        async move {
            match cached {
                Some(Some(s)) if !cache::is_stripped(&s.metadata) => Ok(Some((*s).clone())),
                Some(None) if generated => Ok(None),
                _ => secrets.get_opt(&name).await,
            }
        }
    };
    let (own_secret, tls_secret, ca_secret) = futures::try_join!(
        own(&secret_names[0], true),
        own(&secret_names[1], self_signed),
        own(&secret_names[2], self_signed)
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
    pub(super) fn known(&self, object: &Object) -> apply::Known {
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
                match read.into_iter().find(|(n, _)| n.as_str() == name) {
                    Some((_, found)) => Some(json(found.as_ref())),
                    // The clients Secret: the cache holds it whole (cache::secret).
                    None => {
                        ChildStores::json(&self.stores.as_ref()?.secrets, &self.namespace, name)
                    }
                }
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
            Object::Certificate(_) | Object::PodMonitor(_) => None,
        }
    }
}

pub(super) fn secret_text(secret: Option<&Secret>, key: &str) -> Option<String> {
    String::from_utf8(validate::secret_bytes(secret?, key)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_draining_pod_is_dialled_where_it_was_started() {
        let pod = |deleting: bool, ip: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "a-0", "deletionTimestamp": deleting.then_some("2026-12-06T18:00:00Z")},
                "spec": {"containers": [
                    {"name": "config-reloader"},
                    {"name": "asterisk", "ports": [{"name": "ws", "containerPort": 8088}, {"name": "wss", "containerPort": 8091}]}
                ]},
                "status": {"podIP": ip}
            }))
            .unwrap()
        };
        assert_eq!(
            draining_address(Some(&pod(true, "10.0.0.5"))).as_deref(),
            Some("10.0.0.5:8091")
        );
        assert_eq!(
            draining_address(Some(&pod(true, "fd00::5"))).as_deref(),
            Some("[fd00::5]:8091")
        );
        assert_eq!(draining_address(Some(&pod(false, "10.0.0.5"))), None);
        assert_eq!(draining_address(None), None);
    }
}

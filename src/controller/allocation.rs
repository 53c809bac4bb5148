//! The allocate step's I/O: the port ledger is one ConfigMap beside the
//! operator's Lease, keyed by PBX uid. Every write carries the
//! resourceVersion it was computed from, so two writers (two reconciles,
//! or two operators that both believe they lead) can never hand out the
//! same port: the loser re-reads and places again. This process also
//! serializes its own placements, and keeps the ledger it last read, so a
//! reconcile that needs no new port costs no request. What to allocate is
//! [`crate::allocate::place`]'s (pure).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::allocate::{
    Allocation, Entry, HOLD_MARGIN_SECONDS, Ledger, Pools, held_key, is_held_key, place,
};
use crate::api::WebRtcPbx;
use crate::names::FIELD_MANAGER;

/// Writes lost to another writer before giving up (the reconcile retries).
const ATTEMPTS: usize = 8;

/// How long the ports of a PBX deleted while no operator watched stay
/// held (its drain timeout is unknown by then: the default's).
const SWEPT_HOLD_SECONDS: i64 = 300 + HOLD_MARGIN_SECONDS;

/// The ledger as last read.
struct Loaded {
    /// `None`: the ConfigMap does not exist yet.
    resource_version: Option<String>,
    ledger: Arc<Ledger>,
}

/// Hands out and frees host ports, through the ledger ConfigMap.
pub struct Allocator {
    pools: Pools,
    namespace: String,
    name: String,
    loaded: tokio::sync::Mutex<Option<Loaded>>,
}

impl Allocator {
    /// An allocator keeping its ledger in ConfigMap `namespace/name`.
    pub fn new(pools: Pools, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            pools,
            namespace: namespace.into(),
            name: name.into(),
            loaded: tokio::sync::Mutex::new(None),
        }
    }

    fn api(&self, client: &Client) -> Api<ConfigMap> {
        Api::namespaced(client.clone(), &self.namespace)
    }

    async fn load(&self, client: &Client) -> Result<Loaded, kube::Error> {
        let cm = self.api(client).get_opt(&self.name).await?;
        Ok(self.loaded_from(cm))
    }

    fn loaded_from(&self, cm: Option<ConfigMap>) -> Loaded {
        let Some(cm) = cm else {
            return Loaded {
                resource_version: None,
                ledger: Arc::default(),
            };
        };
        let (ledger, bad) = Ledger::from_data(&cm.data.clone().unwrap_or_default());
        if !bad.is_empty() {
            warn!(configmap = %self.name, entries = ?bad, "port ledger entries that do not parse are ignored");
        }
        Loaded {
            resource_version: cm.resource_version(),
            ledger: Arc::new(ledger),
        }
    }

    /// What `pbx` holds from the pools, allocating what it needs and
    /// releasing what it no longer needs; and the whole ledger (for port
    /// conflicts). `others`: the PBXs the caller knows; `now`: Unix time.
    pub async fn ensure(
        &self,
        client: &Client,
        pbx: &WebRtcPbx,
        others: &[Arc<WebRtcPbx>],
        now: i64,
    ) -> Result<(Allocation, Arc<Ledger>), kube::Error> {
        let Some(uid) = pbx.metadata.uid.clone() else {
            return Ok((Allocation::default(), Arc::default()));
        };
        let mut loaded = self.loaded.lock().await;
        for _ in 0..ATTEMPTS {
            let current = match loaded.take() {
                Some(l) => l,
                None => self.load(client).await?,
            };
            let placed = place(
                &self.pools,
                &current.ledger,
                pbx,
                others.iter().map(|p| &**p),
                now,
            );
            let (allocation, entry) = (placed.allocation(), placed.entry);
            if current.ledger.entries.get(&uid) == entry.as_ref() {
                let ledger = current.ledger.clone();
                *loaded = Some(current);
                return Ok((allocation, ledger));
            }
            // Said as what happened: a write may only give ports up.
            let before = current.ledger.entries.get(&uid);
            let gained = entry.as_ref().is_some_and(|e| {
                before.is_none_or(|b| {
                    (e.wss.is_some() && e.wss != b.wss) || (e.rtp.is_some() && e.rtp != b.rtp)
                })
            });
            let mut changes = BTreeMap::from([(uid.clone(), entry.clone())]);
            changes.extend(placed.released.into_iter().map(|(k, e)| (k, Some(e))));
            // With the write: expired holds go, and the entries of PBXs
            // deleted while no operator watched become holds.
            for (key, e) in current.ledger.entries.iter() {
                if !e.holds(now) {
                    changes.insert(key.clone(), None);
                }
            }
            for stale in self.stale(client, &current.ledger, others).await {
                if let Some(e) = current.ledger.entries.get(&stale) {
                    let held = e.held(now, SWEPT_HOLD_SECONDS);
                    changes.insert(held_key(&stale, "swept"), Some(held));
                }
                changes.insert(stale, None);
            }
            match self.write(client, &current, &changes).await? {
                Some(written) => {
                    let pbx = entry.as_ref().map(|e| &e.pbx);
                    if gained {
                        info!(pbx = ?pbx, uid = %uid, wss = ?allocation.wss, rtp = ?allocation.rtp, "host ports allocated");
                    } else {
                        info!(uid = %uid, wss = ?allocation.wss, rtp = ?allocation.rtp, "host port ledger updated: ports given up are held while the pod drains");
                    }
                    let ledger = written.ledger.clone();
                    *loaded = Some(written);
                    return Ok((allocation, ledger));
                }
                // Another writer was first: read again and place again.
                None => continue,
            }
        }
        Err(conflict_error(&self.name))
    }

    /// Releases what the PBX with `uid` holds (it was deleted): held for
    /// `hold` seconds from `now`, while its pod drains.
    pub async fn release(
        &self,
        client: &Client,
        uid: &str,
        hold: i64,
        now: i64,
    ) -> Result<(), kube::Error> {
        let mut loaded = self.loaded.lock().await;
        for _ in 0..ATTEMPTS {
            let current = match loaded.take() {
                Some(l) => l,
                None => self.load(client).await?,
            };
            let Some(entry) = current.ledger.entries.get(uid).cloned() else {
                *loaded = Some(current);
                return Ok(());
            };
            let changes = BTreeMap::from([
                (uid.to_string(), None),
                (held_key(uid, "deleted"), Some(entry.held(now, hold))),
            ]);
            if let Some(written) = self.write(client, &current, &changes).await? {
                info!(pbx = %entry.pbx, uid, hold, "host ports released, held while the pod drains");
                *loaded = Some(written);
                return Ok(());
            }
        }
        Err(conflict_error(&self.name))
    }

    /// Entries whose PBX the caller does not know and the apiserver no
    /// longer has (under that uid).
    async fn stale(
        &self,
        client: &Client,
        ledger: &Ledger,
        others: &[Arc<WebRtcPbx>],
    ) -> Vec<String> {
        let known: BTreeSet<&str> = others
            .iter()
            .filter_map(|p| p.metadata.uid.as_deref())
            .collect();
        let mut stale = Vec::new();
        for (uid, entry) in &ledger.entries {
            if known.contains(uid.as_str()) || is_held_key(uid) {
                continue;
            }
            let Some((ns, name)) = entry.pbx.split_once('/') else {
                continue;
            };
            let api: Api<WebRtcPbx> = Api::namespaced(client.clone(), ns);
            // Any doubt (an error, a PBX not yet in the cache) keeps it.
            if let Ok(found) = api.get_opt(name).await
                && found.as_ref().and_then(|p| p.metadata.uid.as_deref()) != Some(uid.as_str())
            {
                stale.push(uid.clone());
            }
        }
        stale
    }

    /// Applies `changes` (uid -> entry, `None` removes it) on top of the
    /// ledger `current` was read at. `None`: another writer was first.
    async fn write(
        &self,
        client: &Client,
        current: &Loaded,
        changes: &BTreeMap<String, Option<Entry>>,
    ) -> Result<Option<Loaded>, kube::Error> {
        let mut ledger = (*current.ledger).clone();
        for (uid, entry) in changes {
            match entry {
                Some(e) => ledger.entries.insert(uid.clone(), e.clone()),
                None => ledger.entries.remove(uid),
            };
        }
        let api = self.api(client);
        let result = match &current.resource_version {
            None => {
                let cm = ConfigMap {
                    metadata: kube::api::ObjectMeta {
                        name: Some(self.name.clone()),
                        namespace: Some(self.namespace.clone()),
                        ..Default::default()
                    },
                    data: Some(
                        ledger
                            .entries
                            .keys()
                            .filter_map(|uid| Some((uid.clone(), ledger.data_of(uid)?)))
                            .collect(),
                    ),
                    ..Default::default()
                };
                let pp = PostParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                };
                api.create(&pp, &cm).await
            }
            Some(rv) => {
                let data: serde_json::Map<String, Value> = changes
                    .keys()
                    .map(|uid| {
                        (
                            uid.clone(),
                            ledger.data_of(uid).map_or(Value::Null, Value::String),
                        )
                    })
                    .collect();
                // The resourceVersion makes the patch conditional.
                let patch = json!({"metadata": {"resourceVersion": rv}, "data": data});
                api.patch(
                    &self.name,
                    &PatchParams {
                        field_manager: Some(FIELD_MANAGER.into()),
                        ..Default::default()
                    },
                    &Patch::Merge(&patch),
                )
                .await
            }
        };
        match result {
            Ok(cm) => Ok(Some(self.loaded_from(Some(cm)))),
            // 409: changed since read (or created meanwhile).
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
            // Deleted since read: create it again from what this process knows.
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn conflict_error(name: &str) -> kube::Error {
    kube::Error::Api(
        kube::core::Status::failure(
            &format!("port ledger ConfigMap {name} kept changing under every write"),
            "Conflict",
        )
        .with_code(409)
        .boxed(),
    )
}

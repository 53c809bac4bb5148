//! The controller (the imperative shell): watches WebRtcPbx and its children
//! ([`watches`]) and runs the driver steps for each PBX: [`dereference`] ->
//! validate and policy (pure) -> render (pure) -> [`certificate`] ->
//! [`apply`] -> [`update_status`], folding in what the probe scheduler
//! ([`probes`]) found. Everything it decides comes from the pure modules;
//! these files only fetch, write, requeue and report. This file holds the
//! shared Context, the error type and the reconcile that calls the steps.

pub mod allocation;
pub mod apply;
pub mod cache;
mod certificate;
pub mod children;
pub mod client;
mod dereference;
pub mod events;
pub mod leader;
pub mod probes;
pub mod rollouts;
mod update_status;
mod watches;

pub use watches::{ChildStores, run};

use certificate::certificate_step;
use dereference::{Fetched, dereference, draining_address, stale_pending_pod, workload_facts};
use update_status::Outcome;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use time::OffsetDateTime;
use tracing::{info, warn};

use crate::api::{CertificateStatus, EndpointsStatus, WebRtcPbx};
use crate::certs;
use crate::names::{self, FIELD_MANAGER};
use crate::ports;
use crate::render;
use crate::render::objects;
use crate::status::{self, Blocking, Tri, Verdict};
use crate::telemetry::Metrics;
use crate::telemetry::metrics::FailureLabels;
use crate::validate::{self, ValidatedPbx};

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

/// Reconcile failures, one variant per driver step, so logs and metrics
/// (`webrtc_pbx_reconcile_failures_total{category}`) say which step failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object has no namespace (WebRtcPbx is namespaced).
    #[error("WebRtcPbx has no namespace")]
    NoNamespace,
    /// Reading the PBX's Secrets, ConfigMap, pod or StatefulSet failed.
    #[error("dereference: {0}")]
    Dereference(#[source] kube::Error),
    /// Reading or writing the port ledger failed.
    #[error("allocate: {0}")]
    Allocate(#[source] kube::Error),
    /// A certificate could not be issued.
    #[error("certificate: {0}")]
    Certificate(#[from] certs::CertError),
    /// Writing a child failed (transiently: a refusal is [`Error::Rejected`]).
    #[error("apply: {0}")]
    Apply(#[source] kube::Error),
    /// Finding or deleting orphaned children failed.
    #[error("prune: {0}")]
    Prune(#[source] kube::Error),
    /// The status patch failed.
    #[error("update status: {0}")]
    UpdateStatus(#[source] kube::Error),
    /// A child was refused (by the apiserver, or as not ours); the status
    /// says so, and the reconcile backs off.
    #[error("{0}")]
    Rejected(String),
}

impl Error {
    /// A stable category: the step that failed.
    pub fn category(&self) -> &'static str {
        match self {
            Error::NoNamespace => "invalid_object",
            Error::Dereference(_) => "dereference",
            Error::Allocate(_) => "allocate",
            Error::Certificate(_) => "certificate",
            Error::Apply(_) => "apply",
            Error::Prune(_) => "prune",
            Error::UpdateStatus(_) => "update_status",
            Error::Rejected(_) => "rejected",
        }
    }
}

/// What lives as long as the process: built whole once, before the first
/// [`run`], and shared by every leadership term.
pub struct Context {
    /// The client.
    pub client: Client,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Where Events go.
    pub events: events::Publisher,
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
    /// Write a PodMonitor per PBX (prometheus-operator scrapes its
    /// Asterisk), with these extra labels (what a Prometheus selects on).
    pub pod_monitors: Option<std::collections::BTreeMap<String, String>>,
    /// Which live StatefulSet specs hold which desired ones: the cache
    /// keeps only their digests.
    pub spec_memo: cache::SpecMemo,
    /// The status writes the PBX cache has not shown yet.
    pub status_writes: cache::StatusWrites,
    /// Host ports for HostNetwork PBXs that leave them out.
    pub allocator: Arc<allocation::Allocator>,
    /// How many PBXs may replace their pods at once.
    pub rollouts: rollouts::Rollouts,
}

/// PBXs replacing their pods at once unless the operator is told otherwise.
pub const DEFAULT_MAX_ROLLING: usize = 5;

/// The port ledger ConfigMap's name unless the operator is told otherwise.
pub const DEFAULT_LEDGER: &str = "webrtc-pbx-operator-ports";

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
        Self {
            events: events::Publisher::new(
                client.clone(),
                FIELD_MANAGER,
                std::env::var("POD_NAME").ok(),
            ),
            client,
            clock,
            prober: Arc::new(probes::Prober::new(probe_concurrency, metrics.clone())),
            metrics,
            failures: std::sync::Mutex::new(std::collections::HashMap::new()),
            listed: std::sync::Mutex::new(std::collections::HashMap::new()),
            flap_threshold: status::DEFAULT_FLAP_THRESHOLD,
            policy: crate::policy::Policy::default(),
            pod_monitors: None,
            spec_memo: cache::SpecMemo::default(),
            status_writes: cache::StatusWrites::default(),
            allocator: Arc::new(allocation::Allocator::new(
                crate::allocate::Pools::default(),
                "default",
                DEFAULT_LEDGER,
            )),
            rollouts: rollouts::Rollouts::new(DEFAULT_MAX_ROLLING),
        }
    }

    /// The same context, letting at most `limit` PBXs replace their pods
    /// at once (0: no limit).
    pub fn with_max_rolling(mut self, limit: usize) -> Self {
        self.rollouts = rollouts::Rollouts::new(limit);
        self
    }

    /// The same context, allocating host ports from `pools` and keeping
    /// the ledger in ConfigMap `namespace/name`.
    pub fn with_allocator(
        mut self,
        pools: crate::allocate::Pools,
        namespace: &str,
        name: &str,
    ) -> Self {
        self.allocator = Arc::new(allocation::Allocator::new(pools, namespace, name));
        self
    }

    /// The same context under `policy`.
    pub fn with_policy(mut self, policy: crate::policy::Policy) -> Self {
        self.policy = policy;
        self
    }

    /// The same context, writing a PodMonitor per PBX with `labels` when
    /// given.
    pub fn with_pod_monitors(
        mut self,
        labels: Option<std::collections::BTreeMap<String, String>>,
    ) -> Self {
        self.pod_monitors = labels;
        self
    }

    fn listed_at(&self, key: &ObjectRef<WebRtcPbx>) -> Option<ListMark> {
        self.listed.lock().ok()?.get(key).cloned()
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
        let ns = pbx.namespace().unwrap_or_default();
        self.spec_memo.forget(&ns, &pbx.name_any());
        self.status_writes.forget(&ns, &pbx.name_any());
        self.metrics.forget_pbx(&ns, &pbx.name_any());
        if let Some(uid) = pbx.uid() {
            let (allocator, client) = (self.allocator.clone(), self.client.clone());
            let (hold, now) = (
                crate::allocate::hold_seconds(pbx),
                self.clock.now().unix_timestamp(),
            );
            // Off the watch stream; a failure leaves the entry to the
            // sweep of the next allocation.
            tokio::spawn(async move {
                if let Err(e) = allocator.release(&client, &uid, hold, now).await {
                    warn!(%uid, error = %e, "freeing host ports failed; the next allocation sweeps them");
                }
            });
        }
    }
}

/// One run of the controller (a leadership term): the long-lived
/// [`Context`] and the watch caches this run made, built whole by [`run`]
/// before its first reconcile.
pub struct Run {
    /// The long-lived state.
    pub ctx: Arc<Context>,
    /// Every PBX the controller watches (for port conflicts).
    pub pbxes: Store<WebRtcPbx>,
    /// The watched children without generated state.
    pub children: ChildStores,
}

impl Run {
    fn set_listed(&self, key: ObjectRef<WebRtcPbx>, mark: ListMark) {
        let Ok(mut listed) = self.ctx.listed.lock() else {
            return;
        };
        listed.insert(key, mark);
        // Forget deleted PBXs now and then, so the map stays the store's size.
        if listed.len() > 2 * self.pbxes.state().len() + 64 {
            listed.retain(|k, _| self.pbxes.get(k).is_some());
        }
    }

    /// Whether a PBX is still in the watch store (for the probe schedules).
    fn exists(&self) -> probes::Exists {
        probes::exists_in(self.pbxes.clone())
    }
}

fn error_policy(pbx: Arc<WebRtcPbx>, error: &Error, run: Arc<Run>) -> Action {
    let ctx = &run.ctx;
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

/// How soon a PBX waiting for a port from a full pool looks again.
const POOL_RETRY: Duration = Duration::from_secs(20);

/// How soon a reconcile that met a write conflict looks again.
const CONFLICT_RETRY: Duration = Duration::from_millis(500);

/// How soon a reconcile that found the PBX cache behind its own status
/// write looks again (the watch event is usually milliseconds away).
const STATUS_WRITE_RETRY: Duration = Duration::from_millis(250);

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
    policy.connect_denied(connect, &own_hosts, &own_ips, v.wss_port)
}

async fn reconcile(pbx: Arc<WebRtcPbx>, run: Arc<Run>) -> Result<Action, Error> {
    let ctx = &run.ctx;
    ctx.metrics.reconciles.inc();
    let started = std::time::Instant::now();
    let key = ObjectRef::from_obj(&*pbx);
    let result = reconcile_steps(pbx, &run).await;
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

/// Calls up at the PBX's last probe run.
fn active_calls(pbx: &WebRtcPbx) -> Option<u64> {
    pbx.status
        .as_ref()?
        .probes
        .as_ref()?
        .asterisk
        .as_ref()?
        .active_calls
}

/// The driver: dereference -> validate -> build and apply -> update_status.
async fn reconcile_steps(pbx: Arc<WebRtcPbx>, run: &Run) -> Result<Action, Error> {
    let ctx = &run.ctx;
    let ns = pbx.namespace().ok_or(Error::NoNamespace)?;
    let now = ctx.clock.now();
    let seen = pbx.metadata.resource_version.as_deref();
    if ctx.status_writes.behind(&ns, &pbx.name_any(), seen, now) {
        return Ok(Action::requeue(STATUS_WRITE_RETRY));
    }
    let stores = run.children.ready().await.then_some(&run.children);
    let fetched = dereference(&ctx.client, stores, &ns, &pbx)
        .await
        .map_err(Error::Dereference)?;
    let stored = objects::generated_from_secret(fetched.own_secret.as_ref());
    let mut generated = validate::fill_generated(&pbx.spec, stored, &mut rand::rng());
    let others = run.pbxes.state();
    let (allocation, ledger) = ctx
        .allocator
        .ensure(&ctx.client, &pbx, &others, now.unix_timestamp())
        .await
        .map_err(Error::Allocate)?;
    let short = allocation.shortage.is_some();
    generated.ports = allocation;
    let conflict = ports::conflict(&pbx, others.iter().map(|p| &**p), &ledger);
    // The workload as the caches show it, whatever this reconcile writes.
    let calls = active_calls(&pbx);
    let workload = status::workload_verdict(&workload_facts(
        fetched.stateful_set.as_ref(),
        conflict.as_ref(),
        fetched.pod.as_ref(),
        calls,
    ));
    ctx.metrics.set_draining(
        &ns,
        &pbx.name_any(),
        workload.0.reason == status::reasons::DRAINING,
        calls,
    );
    let checked =
        validate::validate(&pbx, &fetched.referenced, &generated).and_then(|v| ctx.policy.admit(v));
    let mut outcome = match checked {
        Err(problems) => Outcome::invalid(&problems, workload, run, &pbx),
        Ok(validated) => {
            let applied = build_and_apply(run, &pbx, &validated, &fetched, workload, now).await?;
            match applied {
                Some(outcome) => outcome,
                // Our Secret changed since the cache saw it (usually our own
                // write on its way): look again once it has.
                None => return Ok(Action::requeue(CONFLICT_RETRY)),
            }
        }
    };
    let rejection = outcome.rejection.take();
    let recheck = update_status::update_status(ctx, &pbx, outcome, now).await?;
    if let Some(message) = rejection {
        // After the status: the error policy backs off and counts it.
        return Err(Error::Rejected(message));
    }
    Ok(match recheck {
        Some(d) => Action::requeue(d),
        // A full pool frees ports only when another PBX goes: look again.
        None if short => Action::requeue(POOL_RETRY),
        None => Action::await_change(),
    })
}

/// Render and certificate (build), apply, prune, and the probe schedule
/// that follows. `None`: the caches are behind one of our own writes.
async fn build_and_apply(
    run: &Run,
    pbx: &WebRtcPbx,
    validated: &ValidatedPbx,
    fetched: &Fetched,
    workload: (Verdict, Blocking),
    now: OffsetDateTime,
) -> Result<Option<Outcome>, Error> {
    let ctx = &run.ctx;
    let (ns, name) = (&validated.namespace, &validated.name);
    let rendered = render::render(validated);
    let cert = certificate_step(validated, fetched, now)?;
    // Certificates first, the StatefulSet last: it mounts them.
    let mut desired = cert.objects;
    desired.extend(rendered.objects);
    if let Some(labels) = &ctx.pod_monitors {
        desired.push(render::Object::PodMonitor(render::objects::pod_monitor(
            validated, labels,
        )));
    }
    let key = format!("{ns}/{name}");
    let may_roll = || {
        let rolling = rollouts::rolling(run.children.stateful_sets.state().iter().map(|s| &**s));
        let allowed = ctx
            .rollouts
            .try_start(&key, &rolling, std::time::Instant::now());
        if !allowed {
            tracing::debug!(pbx = %name, namespace = %ns, rolling = rolling.len(), "a new pod template waits: other PBXs are replacing their pods (--max-rolling-pbxs)");
        }
        allowed
    };
    let writes = apply::WorkloadWrites {
        memo: &ctx.spec_memo,
        may_roll: &may_roll,
    };
    // The unwatched kinds are listed beside the applies: a new PBX waits
    // for one round trip less.
    let (applied, unwatched) = futures::join!(
        apply::apply_stages(&ctx.client, ns, &desired, fetched, &writes),
        apply::unwatched_once(run, pbx, ns)
    );
    let (written, refused, deferred) = match applied {
        Ok(apply::Stages::Done { written, refused }) => (written, refused, false),
        Ok(apply::Stages::RolloutWaits) => (vec![], vec![], true),
        Ok(apply::Stages::CacheBehind(object)) => {
            tracing::debug!(pbx = %name, %object, "cache behind; retrying");
            return Ok(None);
        }
        Err(e) => return Err(Error::Apply(e)),
    };
    if !refused.is_empty() {
        let [config, workload] = status::refusal_verdicts(&refused, desired.len(), workload);
        let message = config.0.message.clone();
        warn!(pbx = %name, namespace = %ns, %message, "children refused");
        let mut outcome = Outcome::kept(vec![config, cert.verdict, workload], run, pbx);
        outcome.rejection = Some(message);
        return Ok(Some(outcome));
    }
    let unwatched = unwatched.map_err(Error::Prune)?;
    let pruned = apply::prune(run, pbx, ns, &desired, fetched.stores.as_ref(), unwatched)
        .await
        .map_err(Error::Prune)?;
    if stale_pending_pod(fetched.pod.as_ref(), fetched.stateful_set.as_ref()) {
        // Not running, so nothing is lost; the StatefulSet recreates it.
        info!(pbx = %name, "replacing the unschedulable pod of an outdated revision");
        Api::<Pod>::namespaced(ctx.client.clone(), ns)
            .delete(&names::pod_name(name), &Default::default())
            .await
            .map_err(Error::Apply)?;
    }
    if !written.is_empty() || pruned > 0 {
        info!(pbx = %name, namespace = %ns, written = ?written, pruned, "applied");
    }
    // Probing starts when the pod is ready; a new plan probes at once. A
    // PBX already probed stays probed while its pod is not ready (a crashed
    // container): the probes then name what a client sees
    // (ConnectionRefused), not a stale True.
    let key = ObjectRef::from_obj(pbx);
    let draining = draining_address(fetched.pod.as_ref());
    let waiting_for_workload = workload.0.status != Tri::True;
    let probing = ctx.prober.current(&key).is_some();
    let connect_denied = connect_check(&ctx.policy, validated, fetched.pod.as_ref());
    let plan = probes::plan(validated, cert.ca_pem.clone())
        .filter(|_| !waiting_for_workload || probing)
        .filter(|_| connect_denied.is_none())
        .map(|mut p| {
            if let Some(address) = draining.clone() {
                // A draining pod is asked only what it carries: a probe
                // call would be one more call for Asterisk to wait out
                // (refused ones linger in its count too).
                p.request.target.connect_to = Some(address);
                p.request.echo = None;
                p.request.user_call = None;
            }
            probes::Plan {
                generation: pbx.metadata.generation,
                ..p
            }
        });
    Ok(Some(Outcome {
        components: vec![
            status::config_rendered(desired.len()),
            cert.verdict,
            workload,
        ],
        endpoints: Some(EndpointsStatus {
            wss_url: validated.wss_url(),
            phone_url: Some(crate::clients::phone_url(validated)),
            wss_port: Some(validated.wss_port),
            rtp_port_range: Some(validated.rtp_ports),
        }),
        certificate: cert.facts.map(|f| CertificateStatus {
            not_after: Some(certs::rfc3339(f.not_after)),
            dns_names: f.dns_names,
        }),
        recheck: match (cert.recheck, deferred) {
            (Some(d), true) => Some(d.min(rollouts::RETRY)),
            (None, true) => Some(rollouts::RETRY),
            (recheck, false) => recheck,
        },
        probe_results: ctx.prober.ensure(&key, plan, &run.exists()),
        awaiting: waiting_for_workload.then_some(if draining.is_some() {
            status::Awaiting::Drain
        } else {
            status::Awaiting::Workload
        }),
        connect_denied,
        rejection: None,
        rollout_queued: deferred,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let secs: Vec<u64> = [1, 2, 3, 8, 9, 40]
            .iter()
            .map(|a| backoff(*a).as_secs())
            .collect();
        assert_eq!(secs, vec![2, 4, 8, 256, 300, 300]);
    }
}

//! The probe scheduler (shell): runs the probe engine against each PBX on
//! its `spec.probes.interval` with jitter, under one global concurrency
//! limit, and hands every finished run to the reconciler, which alone turns
//! it into status (probe -> status -> patch). A new plan (spec change,
//! certificate change, workload became ready) re-probes once the run in
//! flight has ended; a PBX that is gone from the store is never probed
//! again. A schedule is stopped, never cut mid-run: a run cut off drops its
//! call without a BYE, and Asterisk holds such a call until its RTP times
//! out (30 s), keeping a draining pod alive that long.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use rand::Rng;
use time::OffsetDateTime;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info};

use crate::api::WebRtcPbx;
use crate::names;
use crate::probe::{self, asterisk_metrics, echo, register, transport, user_call};
use crate::status::Probed;
use crate::telemetry::Metrics;
use crate::validate::{CALLEE_USERNAME, METRICS_USERNAME, PROBE_USERNAME, ValidatedPbx};

/// Probe runs in flight across all PBXs, by default.
pub const DEFAULT_CONCURRENCY: usize = 32;
/// Echo loss above this percentage is HighLoss.
pub const MAX_LOSS_PERCENT: f64 = 5.0;
/// Median echo round trip above this is HighLatency (ms).
pub const MAX_RTT_MS: f64 = 400.0;
/// How long a stopped schedule's run in flight may go on before it is cut:
/// a probe call of the usual few seconds ends with its BYE, a call of
/// minutes (echoCall.duration allows 10m) does not hold up the new plan or
/// a shutdown.
const FINISH_WITHIN: Duration = Duration::from_secs(15);

/// What one PBX's probe runs do; a different plan restarts the schedule
/// with an immediate run.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The PBX's UID: a PBX deleted and created again is a new schedule.
    pub uid: String,
    /// The spec generation the plan was made from.
    pub generation: Option<i64>,
    /// The probe request (the echo's media address is found per run).
    pub request: probe::Request,
    /// Time between runs.
    pub interval: Duration,
}

/// The probe plan for a validated PBX (pure). `ca_pem` is what a browser
/// would be told to trust (the operator's CA for SelfSigned, the Secret's
/// ca.crt otherwise); `None` means the system roots.
pub fn plan(pbx: &ValidatedPbx, ca_pem: Option<String>) -> Option<Plan> {
    let probes = &pbx.spec.probes;
    if !probes.enabled {
        return None;
    }
    let url = url::Url::parse(&pbx.wss_url()).ok()?;
    let (timeout, interval) = (pbx.probe_timeout, pbx.probe_interval);
    // In the cluster: the WSS Service; SNI, Host and the certificate check
    // still use spec.domain.
    let connect_to = if probes.connect_address.is_empty() {
        format!(
            "{}.{}.svc:{}",
            names::wss_service_name(&pbx.name),
            pbx.namespace,
            pbx.wss_port
        )
    } else {
        probes.connect_address.clone()
    };
    let user_call = pbx
        .callee_password
        .as_ref()
        .map(|password| user_call::UserCallOptions {
            callee: register::Account {
                domain: pbx.spec.domain.clone(),
                user: CALLEE_USERNAME.into(),
                password: password.clone(),
            },
            extension: CALLEE_USERNAME.into(),
            duration: pbx.user_call_duration,
            timeout,
            media_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            callee_media_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            max_loss_percent: MAX_LOSS_PERCENT,
            max_rtt_ms: MAX_RTT_MS,
            min_mos: probes.min_mos,
        });
    let account = (probes.register.enabled || probes.echo_call.enabled || user_call.is_some())
        .then(|| register::Account {
            domain: pbx.spec.domain.clone(),
            user: PROBE_USERNAME.into(),
            password: pbx.probe_password.clone(),
        });
    let echo = probes.echo_call.enabled.then(|| echo::EchoOptions {
        extension: pbx.spec.dialplan.echo_extension.clone(),
        duration: pbx.echo_duration,
        timeout,
        media_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        max_loss_percent: MAX_LOSS_PERCENT,
        max_rtt_ms: MAX_RTT_MS,
        min_mos: probes.min_mos,
    });
    Some(Plan {
        uid: pbx.uid.clone().unwrap_or_default(),
        generation: None,
        request: probe::Request {
            target: transport::Target {
                url,
                connect_to: Some(connect_to),
                ca_pem,
                insecure: false,
                timeout,
            },
            account,
            echo,
            user_call,
            metrics: Some(asterisk_metrics::Access {
                path: crate::render::METRICS_PATH.into(),
                user: METRICS_USERNAME.into(),
                password: pbx.metrics_password.clone(),
            }),
        },
        interval,
    })
}

/// What the runs of one plan found so far.
#[derive(Debug, Clone, Default)]
pub struct Results {
    /// The WSS check.
    pub wss: Option<Probed>,
    /// The REGISTER check.
    pub register: Option<Probed>,
    /// The echo-call check.
    pub echo: Option<Probed>,
    /// The user-call check.
    pub user_call: Option<Probed>,
    /// The last report and when it finished.
    pub last: Option<(probe::Report, OffsetDateTime)>,
    /// Runs finished.
    pub runs: u64,
}

impl Results {
    /// The state after one more run.
    fn record(&mut self, report: probe::Report, at: OffsetDateTime) {
        let next = |prev: &Option<Probed>, check: Option<&probe::Check>| {
            check.map(|c| prev.clone().unwrap_or_default().after(c))
        };
        self.wss = next(&self.wss, Some(&report.wss));
        self.register = next(&self.register, report.register.as_ref());
        self.echo = next(&self.echo, report.echo.as_ref());
        self.user_call = next(&self.user_call, report.user_call.as_ref());
        self.last = Some((report, at));
        self.runs += 1;
    }
}

struct Schedule {
    plan: Plan,
    task: JoinHandle<()>,
    /// Set to stop the task after its run in flight.
    stop: watch::Sender<bool>,
    results: Arc<Mutex<Results>>,
}

impl Schedule {
    /// Stops the schedule after its run in flight; its task, to await.
    fn stop(self) -> JoinHandle<()> {
        self.stop.send_replace(true);
        self.task
    }
}

/// Whether a schedule was told to stop (or dropped).
fn stopped(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}

/// Awaits `task` for at most [`FINISH_WITHIN`]; then cuts it.
async fn finish(mut task: JoinHandle<()>) {
    if tokio::time::timeout(FINISH_WITHIN, &mut task)
        .await
        .is_err()
    {
        task.abort();
    }
}

/// What a new schedule's task needs to know of stopping: the previous
/// plan's task, to let it end first, and its own stop signal.
struct Stopping {
    previous: Option<JoinHandle<()>>,
    stop: watch::Receiver<bool>,
}

/// Checks whether a PBX still exists with the given UID (the store lookup,
/// injected so the scheduler needs no client).
pub type Exists = Arc<dyn Fn(&ObjectRef<WebRtcPbx>, &str) -> bool + Send + Sync>;

/// The schedules of every probed PBX.
pub struct Prober {
    limit: Arc<Semaphore>,
    /// Slots one namespace may hold at once, and each namespace's count: a
    /// tenant whose PBXs stall cannot take every slot from the others.
    per_namespace: usize,
    namespaces: Mutex<HashMap<String, Arc<Semaphore>>>,
    schedules: Mutex<HashMap<ObjectRef<WebRtcPbx>, Schedule>>,
    /// Finished runs are announced here; the controller reconciles the PBX.
    finished: Mutex<Option<mpsc::UnboundedSender<ObjectRef<WebRtcPbx>>>>,
    metrics: Arc<Metrics>,
}

impl Prober {
    /// A scheduler running at most `concurrency` probes at once.
    pub fn new(concurrency: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            limit: Arc::new(Semaphore::new(concurrency.max(1))),
            per_namespace: (concurrency / 2).max(1),
            namespaces: Mutex::new(HashMap::new()),
            schedules: Mutex::new(HashMap::new()),
            finished: Mutex::new(None),
            metrics,
        }
    }

    /// A new stream of finished runs for a controller run (replaces the previous).
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<ObjectRef<WebRtcPbx>> {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut finished) = self.finished.lock() {
            *finished = Some(tx);
        }
        rx
    }

    /// Makes `key`'s schedule follow `plan` (`None`: stop probing it) and
    /// returns what its runs found. The same plan keeps the schedule.
    pub fn ensure(
        self: &Arc<Self>,
        key: &ObjectRef<WebRtcPbx>,
        plan: Option<Plan>,
        exists: &Exists,
    ) -> Option<Results> {
        let Ok(mut schedules) = self.schedules.lock() else {
            return None;
        };
        let Some(plan) = plan else {
            if let Some(old) = schedules.remove(key) {
                tokio::spawn(finish(old.stop()));
                self.metrics
                    .forget_probe(key.namespace.as_deref().unwrap_or(""), &key.name);
            }
            return None;
        };
        if let Some(s) = schedules.get(key)
            && s.plan == plan
            && !s.task.is_finished()
        {
            return s.results.lock().ok().map(|r| r.clone());
        }
        // Streaks survive a plan change (a password change is not an outage);
        // a new PBX (another UID) starts afresh.
        let old = schedules.remove(key);
        let results = old
            .as_ref()
            .filter(|s| s.plan.uid == plan.uid)
            .map(|s| s.results.clone())
            .unwrap_or_default();
        let previous = old.map(|s| {
            info!(pbx = %key, "probe plan changed: probing once the run in flight ends");
            s.stop()
        });
        let (stop, stopping) = watch::channel(false);
        let task = tokio::spawn(self.clone().probe_loop(
            key.clone(),
            plan.clone(),
            results.clone(),
            exists.clone(),
            Stopping {
                previous,
                stop: stopping,
            },
        ));
        let current = results.lock().ok().map(|r| r.clone());
        schedules.insert(
            key.clone(),
            Schedule {
                plan,
                task,
                stop,
                results,
            },
        );
        current
    }

    /// What `key`'s runs found, without touching its schedule.
    pub fn current(&self, key: &ObjectRef<WebRtcPbx>) -> Option<Results> {
        let schedules = self.schedules.lock().ok()?;
        let s = schedules.get(key)?;
        s.results.lock().ok().map(|r| r.clone())
    }

    /// Stops every schedule (leadership lost, shutdown); returns once the
    /// runs in flight have ended (or were cut, [`FINISH_WITHIN`]).
    pub async fn stop_all(&self) {
        let tasks: Vec<JoinHandle<()>> = match self.schedules.lock() {
            Ok(mut schedules) => schedules.drain().map(|(_, s)| s.stop()).collect(),
            Err(_) => return,
        };
        futures::future::join_all(tasks.into_iter().map(finish)).await;
    }

    /// The share of probe slots of `namespace`.
    fn namespace_limit(&self, namespace: &str) -> Arc<Semaphore> {
        let Ok(mut namespaces) = self.namespaces.lock() else {
            return Arc::new(Semaphore::new(self.per_namespace));
        };
        // Namespaces nobody waits on or holds are forgotten, so the map
        // stays as large as the namespaces being probed.
        if namespaces.len() > 1024 {
            let full = self.per_namespace;
            namespaces.retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() < full);
        }
        namespaces
            .entry(namespace.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_namespace)))
            .clone()
    }

    /// PBXs with a running schedule.
    pub fn scheduled(&self) -> usize {
        self.schedules.lock().map_or(0, |s| s.len())
    }

    async fn probe_loop(
        self: Arc<Self>,
        key: ObjectRef<WebRtcPbx>,
        plan: Plan,
        results: Arc<Mutex<Results>>,
        exists: Exists,
        stopping: Stopping,
    ) {
        let Stopping { previous, mut stop } = stopping;
        // The previous plan's run in flight ends first: one run at a time
        // per PBX, and its call hangs up properly.
        if let Some(previous) = previous {
            finish(previous).await;
        }
        let mut wait = Duration::ZERO;
        let (mut passed_once, mut failed_in_a_row) = (false, 0u32);
        loop {
            // Look at the store every second, so a deleted PBX is not probed
            // again even with a long interval.
            let mut waited = Duration::ZERO;
            while waited < wait {
                let step = (wait - waited).min(Duration::from_secs(1));
                tokio::select! {
                    () = tokio::time::sleep(step) => {}
                    // Told to stop, or dropped: between runs, at once.
                    _ = stop.changed() => return,
                }
                waited += step;
                if !exists(&key, &plan.uid) {
                    break;
                }
            }
            if !exists(&key, &plan.uid) {
                debug!(pbx = %key, "PBX gone: probes stop");
                if let Ok(mut schedules) = self.schedules.lock()
                    && schedules.get(&key).is_some_and(|s| s.plan == plan)
                {
                    schedules.remove(&key);
                }
                self.metrics
                    .forget_probe(key.namespace.as_deref().unwrap_or(""), &key.name);
                return;
            }
            // The namespace's share first, then a slot: waiting for the
            // share holds no slot another namespace could use.
            let slots = async {
                let share = self
                    .namespace_limit(key.namespace.as_deref().unwrap_or(""))
                    .acquire_owned()
                    .await
                    .ok()?;
                let permit = self.limit.clone().acquire_owned().await.ok()?;
                Some((share, permit))
            };
            let slots = tokio::select! {
                slots = slots => slots,
                _ = stop.changed() => None,
            };
            let Some((share, permit)) = slots else {
                return;
            };
            if stopped(&stop) {
                return;
            }
            let started = std::time::Instant::now();
            let report = run_once(&plan.request).await;
            let seconds = started.elapsed().as_secs_f64();
            drop(permit);
            drop(share);
            // A stopped schedule's last run is the old plan's: not reported.
            if stopped(&stop) {
                return;
            }
            let at = OffsetDateTime::now_utc();
            self.metrics.observe_probe(
                key.namespace.as_deref().unwrap_or(""),
                &key.name,
                &report,
                seconds,
            );
            debug!(pbx = %key, ok = report.ok, wss = %report.wss.reason, "probe finished");
            let ok = report.ok;
            if let Ok(mut r) = results.lock() {
                r.record(report, at);
            }
            passed_once |= ok;
            failed_in_a_row = if ok { 0 } else { failed_in_a_row + 1 };
            if let Ok(finished) = self.finished.lock()
                && let Some(tx) = finished.as_ref()
            {
                let _ = tx.send(key.clone());
            }
            wait = jittered(
                next_wait(plan.interval, passed_once, failed_in_a_row),
                &mut rand::rng(),
            );
        }
    }
}

/// The wait before the next run. A PBX that has not passed since the plan
/// started is starting: retry after 0.25, 0.5, 1, 2 ... s up to the
/// interval, so Ready follows soon after Asterisk listens (its pod is Ready
/// a moment before kube-proxy routes its Service to it: the first run
/// usually meets a refused connection). A failure of a PBX that
/// passed before is confirmed after half an interval, so an outage shows
/// within 1.5 intervals while one bad run still does not flip a condition.
fn next_wait(interval: Duration, passed_once: bool, failed_in_a_row: u32) -> Duration {
    match (passed_once, failed_in_a_row) {
        (_, 0) => interval,
        (false, n) => Duration::from_millis(250u64 << (n - 1).min(16)).min(interval),
        (true, _) => interval / 2,
    }
}

/// `interval` +- 10 %, so PBXs created together do not probe together.
fn jittered(interval: Duration, rng: &mut impl Rng) -> Duration {
    let spread = interval.as_secs_f64() * 0.1;
    Duration::from_secs_f64((interval.as_secs_f64() + rng.random_range(-spread..=spread)).max(0.0))
}

/// One probe run; the calls use the local address that routes to the PBX.
async fn run_once(request: &probe::Request) -> probe::Report {
    let mut request = request.clone();
    if request.echo.is_some() || request.user_call.is_some() {
        let dial = request.target.connect_to.clone().unwrap_or_default();
        let found = tokio::task::spawn_blocking(move || transport::route_source(&dial))
            .await
            .ok()
            .flatten();
        if let Some(ip) = found {
            if let Some(echo) = request.echo.as_mut() {
                echo.media_ip = ip;
            }
            if let Some(call) = request.user_call.as_mut() {
                call.media_ip = ip;
                call.callee_media_ip = ip;
            }
        }
    }
    probe::run_bounded(&request).await
}

/// The store lookup for [`Exists`].
pub fn exists_in(store: kube::runtime::reflector::Store<WebRtcPbx>) -> Exists {
    Arc::new(move |key, uid| {
        store.get(key).is_some_and(|p| {
            p.uid().as_deref() == Some(uid) && p.metadata.deletion_timestamp.is_none()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::WebRtcPbxSpec;
    use crate::validate::Generated;
    use std::time::Instant;

    fn validated(probes: serde_json::Value) -> ValidatedPbx {
        let spec: WebRtcPbxSpec = serde_json::from_value(serde_json::json!({
            "domain": "pbx.acme.example",
            "tls": {"mode": "SelfSigned"},
            "probes": probes,
        }))
        .unwrap();
        let mut pbx = WebRtcPbx::new("acme", spec);
        pbx.metadata.namespace = Some("voice".into());
        pbx.metadata.uid = Some("u1".into());
        let generated = Generated {
            probe_password: "probe-secret".into(),
            metrics_password: "metrics-secret".into(),
            ports: crate::allocate::place_all(&Default::default(), std::slice::from_ref(&pbx))
                .remove(0),
            ..Default::default()
        };
        crate::validate::validate(&pbx, &Default::default(), &generated).unwrap()
    }

    /// A server that accepts and never answers, recording when each
    /// connection came and when the prober let go of it.
    async fn silent_server() -> (u16, Arc<Mutex<Vec<(Instant, Option<Instant>)>>>) {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let i = {
                    let mut log = log.lock().unwrap();
                    log.push((Instant::now(), None));
                    log.len() - 1
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                    log.lock().unwrap()[i].1 = Some(Instant::now());
                });
            }
        });
        (port, seen)
    }

    fn silent_plan(port: u16, interval: u64) -> Plan {
        Plan {
            uid: "u1".into(),
            generation: None,
            request: probe::Request {
                target: transport::Target {
                    url: url::Url::parse(&format!("wss://pbx.test:{port}/ws")).unwrap(),
                    connect_to: Some(format!("127.0.0.1:{port}")),
                    ca_pem: None,
                    insecure: true,
                    timeout: Duration::from_secs(2),
                },
                account: None,
                echo: None,
                user_call: None,
                metrics: None,
            },
            interval: Duration::from_secs(interval),
        }
    }

    async fn until(what: &str, check: impl Fn() -> bool) {
        let start = Instant::now();
        while !check() {
            assert!(start.elapsed() < Duration::from_secs(10), "not {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A run cut off drops its call without a BYE (Asterisk holds it until
    /// its RTP times out, and a draining pod with it); a plan change and a
    /// stop let the run in flight end on its own instead.
    #[tokio::test]
    async fn a_new_plan_or_a_stop_waits_for_the_run_in_flight() {
        let (port, seen) = silent_server().await;
        let prober = Arc::new(Prober::new(4, Arc::new(Metrics::default())));
        let exists: Exists = Arc::new(|_, _| true);
        let key = ObjectRef::<WebRtcPbx>::new("acme").within("voice");
        let count = || seen.lock().unwrap().len();
        prober.ensure(&key, Some(silent_plan(port, 5)), &exists);
        until("the first run connected", || count() == 1).await;
        let changed = Instant::now();
        prober.ensure(&key, Some(silent_plan(port, 6)), &exists);
        until("the new plan's run connected", || count() == 2).await;
        let log = seen.lock().unwrap().clone();
        let first_closed = log[0].1.expect("the first run ended before the next began");
        assert!(
            first_closed.duration_since(changed) > Duration::from_millis(1500),
            "the run in flight was cut {:?} after the plan change (its timeout is 2 s)",
            first_closed.duration_since(changed)
        );
        assert!(log[1].0 >= first_closed, "two runs at once: {log:?}");
        // The new plan's run is in flight: a stop returns once it has ended.
        let stopping = Instant::now();
        prober.stop_all().await;
        let waited = stopping.elapsed();
        until("the last run's connection closed", || {
            seen.lock().unwrap()[1].1.is_some()
        })
        .await;
        let log = seen.lock().unwrap().clone();
        let ran = log[1].1.unwrap().duration_since(log[1].0);
        assert!(ran > Duration::from_millis(1500), "cut after {ran:?}");
        assert!(
            waited > Duration::from_millis(1000),
            "stop_all waited {waited:?}"
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(count(), 2, "a stopped schedule ran again");
        assert_eq!(prober.scheduled(), 0);
    }

    #[test]
    fn plan_dials_the_service_and_checks_the_domain() {
        let p = plan(&validated(serde_json::json!({})), Some("CA".into())).unwrap();
        let t = &p.request.target;
        assert_eq!(t.url.as_str(), "wss://pbx.acme.example:8089/ws");
        assert_eq!(t.connect_to.as_deref(), Some("acme-wss.voice.svc:8089"));
        assert_eq!(t.ca_pem.as_deref(), Some("CA"));
        assert!(!t.insecure);
        let account = p.request.account.as_ref().unwrap();
        assert_eq!(account.user, PROBE_USERNAME);
        assert_eq!(account.password, "probe-secret");
        assert_eq!(p.request.echo.as_ref().unwrap().extension, "*43");
        assert_eq!(p.interval, Duration::from_secs(60));
    }

    #[test]
    fn plan_follows_the_toggles() {
        let p = plan(
            &validated(serde_json::json!({
                "connectAddress": "127.0.0.1:18089",
                "interval": "5s", "timeout": "2s",
                "register": {"enabled": false}, "echoCall": {"enabled": false}
            })),
            None,
        )
        .unwrap();
        assert_eq!(
            p.request.target.connect_to.as_deref(),
            Some("127.0.0.1:18089")
        );
        assert_eq!(p.request.target.timeout, Duration::from_secs(2));
        assert!(p.request.account.is_none() && p.request.echo.is_none());
        assert!(p.request.user_call.is_none());
        assert!(plan(&validated(serde_json::json!({"enabled": false})), None).is_none());
    }

    #[test]
    fn the_user_call_probe_calls_the_callee_as_the_probe_user() {
        let spec: WebRtcPbxSpec = serde_json::from_value(serde_json::json!({
            "domain": "pbx.acme.example",
            "probes": {"register": {"enabled": false}, "echoCall": {"enabled": false},
                       "userCall": {"enabled": true, "duration": "20s"}},
        }))
        .unwrap();
        let pbx = WebRtcPbx::new("acme", spec);
        let generated = Generated {
            probe_password: "probe-secret".into(),
            metrics_password: "metrics-secret".into(),
            callee_password: "callee-secret".into(),
            ports: crate::allocate::place_all(&Default::default(), std::slice::from_ref(&pbx))
                .remove(0),
            ..Default::default()
        };
        let validated = crate::validate::validate(&pbx, &Default::default(), &generated).unwrap();
        let p = plan(&validated, None).unwrap();
        // The caller still needs its account, with REGISTER and echo off.
        assert_eq!(p.request.account.as_ref().unwrap().user, PROBE_USERNAME);
        let call = p.request.user_call.as_ref().unwrap();
        assert_eq!(call.callee.user, CALLEE_USERNAME);
        assert_eq!(call.callee.password, "callee-secret");
        assert_eq!(call.extension, CALLEE_USERNAME);
        assert_eq!(call.duration, Duration::from_secs(20));
        // Off, there is no callee at all.
        assert!(
            plan(&self::validated(serde_json::json!({})), None)
                .unwrap()
                .request
                .user_call
                .is_none()
        );
    }

    #[test]
    fn starting_pbxs_are_retried_soon_and_outages_confirmed_in_half_an_interval() {
        let i = Duration::from_secs(60);
        let waits: Vec<u128> = (1..=10)
            .map(|n| next_wait(i, false, n).as_millis())
            .collect();
        assert_eq!(
            waits,
            vec![250, 500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]
        );
        assert_eq!(next_wait(i, true, 1), Duration::from_secs(30));
        assert_eq!(next_wait(i, true, 0), i);
        assert_eq!(next_wait(i, false, 0), i);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let mut rng = rand::rng();
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(60), &mut rng).as_secs_f64();
            assert!((54.0..=66.0).contains(&d), "{d}");
        }
    }

    #[test]
    fn streaks_count_failures_and_reset_on_a_pass() {
        let check = |ok: bool, reason: &str| probe::Check {
            ok,
            reason: reason.into(),
            message: reason.into(),
        };
        let report = |wss: probe::Check, register: Option<probe::Check>| probe::Report {
            url: String::new(),
            dialled: String::new(),
            timings: Default::default(),
            wss,
            failed_phase: None,
            certificate: None,
            register,
            register_result: None,
            echo: None,
            echo_result: None,
            user_call: None,
            user_call_result: None,
            asterisk: None,
            asterisk_error: None,
            ok: false,
        };
        let at = OffsetDateTime::UNIX_EPOCH;
        let mut r = Results::default();
        r.record(report(check(false, "ConnectionRefused"), None), at);
        r.record(report(check(false, "ConnectionRefused"), None), at);
        assert_eq!(r.wss.as_ref().unwrap().failures_in_a_row, 2);
        assert!(r.register.is_none());
        r.record(
            report(check(true, "Connected"), Some(check(true, "Registered"))),
            at,
        );
        assert_eq!(r.wss.as_ref().unwrap().failures_in_a_row, 0);
        assert!(r.register.as_ref().unwrap().ok);
        assert_eq!(r.runs, 3);
    }
}

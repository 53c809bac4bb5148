//! The operator's Prometheus metrics: reconciles, failures by error
//! category, reconcile duration, per-PBX condition gauges, leadership, API
//! requests, and probe figures named like blackbox_exporter's. Served by
//! [`crate::telemetry::server`].

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a failure counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// The error's stable category.
    pub category: String,
}

/// Labels of the API request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// GET, WATCH (a GET with watch=true), POST, PATCH, PUT or DELETE.
    pub method: String,
    /// The resource, with its subresource: `secrets`, `leases`,
    /// `webrtcpbxes/status` ...
    pub resource: String,
}

/// The condition gauges, `webrtc_pbx_condition{namespace,name,type,status}`
/// (kube-state-metrics' shape: one series per status, the current one 1),
/// kept as each PBX's conditions and expanded only when scraped. As a
/// `Family` the 18 series of each PBX were 18 entries of four label
/// strings: 9000 at 500 PBXs, 3 MB of the operator's heap, and a table
/// that grew by copying itself during a restart (heaptrack).
#[derive(Debug, Default)]
pub struct ConditionGauges(std::sync::RwLock<ConditionsByPbx>);

/// Per PBX (namespace, name): each condition type and its status, when it
/// is one of [`CONDITION_STATUSES`].
type ConditionsByPbx =
    std::collections::BTreeMap<(String, String), Vec<(String, Option<&'static str>)>>;

/// The statuses each condition has a series for, in the order encoded.
const CONDITION_STATUSES: [&str; 3] = ["True", "False", "Unknown"];

impl ConditionGauges {
    /// Records every condition of PBX `namespace/name`, in place of what
    /// it had (a condition no longer in status loses its series too).
    fn set<'a>(
        &self,
        namespace: &str,
        name: &str,
        conditions: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        let current = conditions
            .into_iter()
            .map(|(type_, status)| {
                // Any other status marks none of the three.
                let at = CONDITION_STATUSES.iter().find(|s| **s == status);
                (type_.to_string(), at.copied())
            })
            .collect();
        if let Ok(mut m) = self.0.write() {
            m.insert((namespace.to_string(), name.to_string()), current);
        }
    }

    fn forget(&self, namespace: &str, name: &str) {
        if let Ok(mut m) = self.0.write() {
            m.remove(&(namespace.to_string(), name.to_string()));
        }
    }

    fn clear(&self) {
        if let Ok(mut m) = self.0.write() {
            m.clear();
        }
    }
}

impl prometheus_client::collector::Collector for ConditionGauges {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let Ok(m) = self.0.read() else {
            return Ok(());
        };
        let mut metric = encoder.encode_descriptor(
            "condition",
            "1 for each PBX condition's current status",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for ((namespace, name), conditions) in m.iter() {
            for (type_, current) in conditions {
                for status in CONDITION_STATUSES {
                    let labels = [
                        ("namespace", namespace.as_str()),
                        ("name", name.as_str()),
                        ("type", type_.as_str()),
                        ("status", status),
                    ];
                    metric
                        .encode_family(&labels)?
                        .encode_gauge(&i64::from(*current == Some(status)))?;
                }
            }
        }
        Ok(())
    }
}

/// Labels of a per-PBX probe gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PbxLabels {
    /// PBX namespace.
    pub namespace: String,
    /// PBX name.
    pub name: String,
}

/// Labels of a per-PBX, per-phase probe gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// PBX namespace.
    pub namespace: String,
    /// PBX name.
    pub name: String,
    /// dns, connect, tls, upgrade, register, echo_rtt.
    pub phase: String,
}

/// Labels of a per-PBX, per-check probe gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    /// PBX namespace.
    pub namespace: String,
    /// PBX name.
    pub name: String,
    /// wss, register, echo, user_call.
    pub check: String,
}

/// Labels of the probe phase histogram (all PBXs together).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseOnly {
    /// connect, tls, upgrade, register, echo_rtt.
    pub phase: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The probe metrics (no prefix: the names follow blackbox_exporter's).
pub struct ProbeMetrics {
    /// 1 when every check of the last run passed.
    pub success: Family<PbxLabels, Gauge>,
    /// 1 per check (wss, register, echo, user_call) that passed in the last run.
    pub check_success: Family<CheckLabels, Gauge>,
    /// Wall time of the last run, seconds.
    pub duration: Family<PbxLabels, FloatGauge>,
    /// Phase times of the last run, seconds.
    pub phase_duration: Family<PhaseLabels, FloatGauge>,
    /// notAfter of the served certificate, Unix seconds.
    pub ssl_earliest_cert_expiry: Family<PbxLabels, FloatGauge>,
    /// Echo loss of the last run, 0..1.
    pub echo_loss_ratio: Family<PbxLabels, FloatGauge>,
    /// Echo jitter of the last run, seconds.
    pub echo_jitter: Family<PbxLabels, FloatGauge>,
    /// E-model MOS estimate of the last echo call (1-4.5).
    pub echo_mos: Family<PbxLabels, FloatGauge>,
    /// Phase times of every run, seconds.
    pub phase_histogram: Family<PhaseOnly, Histogram, fn() -> Histogram>,
    /// Asterisk's own figures at the last run (its res_prometheus), one
    /// gauge per entry of [`ASTERISK_FACTS`].
    pub asterisk: [Family<PbxLabels, Gauge>; 5],
    /// 1 when the last run could read Asterisk's metrics.
    pub asterisk_up: Family<PbxLabels, Gauge>,
}

/// The Asterisk facts: `webrtc_pbx_asterisk_NAME` and its help.
pub const ASTERISK_FACTS: [(&str, &str); 5] = [
    (
        "active_calls",
        "Calls up on the PBX's Asterisk at the last probe run (before the probe's own call)",
    ),
    (
        "active_channels",
        "Channels up on the PBX's Asterisk at the last probe run",
    ),
    (
        "endpoints",
        "Endpoints configured on the PBX's Asterisk (the probe's left out)",
    ),
    (
        "endpoints_online",
        "Endpoints with a registered contact on the PBX's Asterisk (the probe's left out)",
    ),
    (
        "uptime_seconds",
        "Seconds since the PBX's Asterisk started, at the last probe run",
    ),
];

impl Default for ProbeMetrics {
    fn default() -> Self {
        Self {
            success: Family::default(),
            check_success: Family::default(),
            duration: Family::default(),
            phase_duration: Family::default(),
            ssl_earliest_cert_expiry: Family::default(),
            echo_loss_ratio: Family::default(),
            echo_jitter: Family::default(),
            echo_mos: Family::default(),
            // 0.5 ms .. 16 s: loopback handshakes to long echo calls.
            phase_histogram: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            asterisk: Default::default(),
            asterisk_up: Family::default(),
        }
    }
}

/// Phases the probe gauges and the histogram carry.
const PHASES: [&str; 10] = [
    "dns",
    "connect",
    "tls",
    "upgrade",
    "register",
    "echo_rtt",
    "invite",
    "ice",
    "dtls",
    "first_echo",
];
const CHECKS: [&str; 4] = ["wss", "register", "echo", "user_call"];

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    /// Reconciles started.
    pub reconciles: Counter,
    /// Reconcile failures by category.
    pub failures: Family<FailureLabels, Counter>,
    /// Reconcile duration in seconds.
    pub duration: Histogram,
    /// 1 for each PBX condition's current status, 0 for the others.
    conditions: std::sync::Arc<ConditionGauges>,
    /// 1 while this instance holds the leader lease.
    pub leader: Gauge,
    /// Probe runs finished.
    pub probe_runs: Counter,
    /// Requests to the apiserver, by method.
    pub api_requests: Family<RequestLabels, Counter>,
    /// Probe figures.
    pub probe: ProbeMetrics,
    /// Calls up on each PBX whose pod drains (present only then).
    draining: Family<PbxLabels, Gauge>,
    ready: AtomicBool,
    /// The length of the last encoding: the next one starts that large.
    encoded_len: AtomicUsize,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = Registry::default();
        let probe = ProbeMetrics::default();
        root.register(
            "probe_success",
            "1 when every check of the last probe run passed",
            probe.success.clone(),
        );
        root.register(
            "probe_check_success",
            "1 per check (wss, register, echo, user_call) that passed in the last probe run",
            probe.check_success.clone(),
        );
        root.register(
            "probe_duration_seconds",
            "Wall time of the last probe run",
            probe.duration.clone(),
        );
        root.register(
            "probe_phase_duration_seconds",
            "Phase times of the last probe run (dns, connect, tls, upgrade, register, echo_rtt; the echo call's setup: invite, ice, dtls, first_echo)",
            probe.phase_duration.clone(),
        );
        root.register(
            "probe_ssl_earliest_cert_expiry",
            "notAfter of the served certificate, Unix seconds",
            probe.ssl_earliest_cert_expiry.clone(),
        );
        root.register(
            "probe_echo_loss_ratio",
            "Echo-call packet loss of the last probe run (0..1)",
            probe.echo_loss_ratio.clone(),
        );
        root.register(
            "probe_echo_jitter_seconds",
            "Echo-call interarrival jitter of the last probe run",
            probe.echo_jitter.clone(),
        );
        root.register(
            "probe_echo_mos",
            "ITU-T G.107 E-model MOS estimate of the last probe run's echo call (1-4.5)",
            probe.echo_mos.clone(),
        );
        root.register(
            "probe_phase_seconds",
            "Phase times of every probe run, all PBXs",
            probe.phase_histogram.clone(),
        );
        let probe_runs = Counter::default();
        let registry = root.sub_registry_with_prefix("webrtc_pbx");
        registry.register("probe_runs", "Probe runs finished", probe_runs.clone());
        for ((fact, help), family) in ASTERISK_FACTS.iter().zip(&probe.asterisk) {
            registry.register(format!("asterisk_{fact}"), *help, family.clone());
        }
        registry.register(
            "asterisk_metrics_up",
            "1 when the last probe run could read the PBX's Asterisk metrics",
            probe.asterisk_up.clone(),
        );
        let api_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "api_requests",
            "Requests to the Kubernetes apiserver, by method",
            api_requests.clone(),
        );
        let reconciles = Counter::default();
        let failures = Family::<FailureLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        let conditions = std::sync::Arc::new(ConditionGauges::default());
        let leader = Gauge::default();
        registry.register("reconciles", "Reconciles started", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Reconcile failures by error category",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            duration.clone(),
        );
        registry.register_collector(Box::new(conditions.clone()));
        let draining = Family::<PbxLabels, Gauge>::default();
        registry.register(
            "draining_active_calls",
            "Calls up (at the last probe run) on a PBX whose pod is being replaced and waits for them; absent when not draining",
            draining.clone(),
        );
        registry.register(
            "leader",
            "1 while this instance holds the leader lease",
            leader.clone(),
        );
        Self {
            registry: root,
            reconciles,
            failures,
            duration,
            conditions,
            leader,
            probe_runs,
            api_requests,
            probe,
            draining,
            ready: AtomicBool::new(false),
            encoded_len: AtomicUsize::new(0),
        }
    }
}

impl Metrics {
    /// Records a PBX's conditions: its current status 1, the others 0.
    pub fn set_conditions<'a>(
        &self,
        namespace: &str,
        name: &str,
        conditions: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        self.conditions.set(namespace, name, conditions);
    }

    /// Records whether PBX `namespace/name` drains, with its calls.
    pub fn set_draining(&self, namespace: &str, name: &str, draining: bool, calls: Option<u64>) {
        let pbx = PbxLabels {
            namespace: namespace.into(),
            name: name.into(),
        };
        if draining {
            let calls = calls.map_or(0, |c| i64::try_from(c).unwrap_or(i64::MAX));
            self.draining.get_or_create(&pbx).set(calls);
        } else {
            self.draining.remove(&pbx);
        }
    }

    /// Records a finished probe run of PBX `namespace/name`.
    pub fn observe_probe(
        &self,
        namespace: &str,
        name: &str,
        report: &crate::probe::Report,
        duration_seconds: f64,
    ) {
        self.probe_runs.inc();
        let pbx = PbxLabels {
            namespace: namespace.into(),
            name: name.into(),
        };
        let labelled = |phase: &str| PhaseLabels {
            namespace: namespace.into(),
            name: name.into(),
            phase: phase.into(),
        };
        let p = &self.probe;
        p.success.get_or_create(&pbx).set(i64::from(report.ok));
        p.duration.get_or_create(&pbx).set(duration_seconds);
        let checks = [
            Some(&report.wss),
            report.register.as_ref(),
            report.echo.as_ref(),
            report.user_call.as_ref(),
        ];
        for (check, result) in CHECKS.iter().zip(checks) {
            let labels = CheckLabels {
                namespace: namespace.into(),
                name: name.into(),
                check: (*check).into(),
            };
            match result {
                Some(c) => {
                    p.check_success.get_or_create(&labels).set(i64::from(c.ok));
                }
                None => {
                    p.check_success.remove(&labels);
                }
            }
        }
        let t = &report.timings;
        let register = report
            .register_result
            .as_ref()
            .and_then(|r| r.round_trip_ms);
        let echo = report.echo_result.as_ref();
        let values = [
            t.dns_ms,
            t.connect_ms,
            t.tls_ms,
            t.upgrade_ms,
            register,
            echo.and_then(|e| e.rtt_median_ms),
            echo.and_then(|e| e.phases.invite_ms),
            echo.and_then(|e| e.phases.ice_ms),
            echo.and_then(|e| e.phases.dtls_ms),
            echo.and_then(|e| e.phases.first_echo_ms),
        ];
        for (phase, ms) in PHASES.iter().zip(values) {
            match ms {
                Some(ms) => {
                    p.phase_duration
                        .get_or_create(&labelled(phase))
                        .set(ms / 1000.0);
                    p.phase_histogram
                        .get_or_create(&PhaseOnly {
                            phase: (*phase).into(),
                        })
                        .observe(ms / 1000.0);
                }
                None => {
                    p.phase_duration.remove(&labelled(phase));
                }
            }
        }
        match &report.certificate {
            Some(c) => {
                p.ssl_earliest_cert_expiry
                    .get_or_create(&pbx)
                    .set(c.not_after_unix as f64);
            }
            None => {
                p.ssl_earliest_cert_expiry.remove(&pbx);
            }
        }
        match echo {
            Some(e) => {
                p.echo_loss_ratio
                    .get_or_create(&pbx)
                    .set(e.loss_percent.unwrap_or(100.0) / 100.0);
                p.echo_jitter
                    .get_or_create(&pbx)
                    .set(e.jitter_ms.unwrap_or_default() / 1000.0);
                match e.mos {
                    Some(mos) => {
                        p.echo_mos.get_or_create(&pbx).set(mos);
                    }
                    None => {
                        p.echo_mos.remove(&pbx);
                    }
                }
            }
            None => {
                p.echo_loss_ratio.remove(&pbx);
                p.echo_jitter.remove(&pbx);
                p.echo_mos.remove(&pbx);
            }
        }
        match &report.asterisk {
            Some(a) => {
                let values = [
                    a.active_calls,
                    a.active_channels,
                    a.endpoints,
                    a.endpoints_online,
                    a.uptime_seconds,
                ];
                for (family, value) in p.asterisk.iter().zip(values) {
                    family
                        .get_or_create(&pbx)
                        .set(i64::try_from(value).unwrap_or(i64::MAX));
                }
            }
            None => {
                for family in &p.asterisk {
                    family.remove(&pbx);
                }
            }
        }
        if report.asterisk.is_some() || report.asterisk_error.is_some() {
            p.asterisk_up
                .get_or_create(&pbx)
                .set(i64::from(report.asterisk.is_some()));
        } else {
            p.asterisk_up.remove(&pbx);
        }
    }

    /// Drops every series of a deleted PBX: its conditions and its probe
    /// figures.
    pub fn forget_pbx(&self, namespace: &str, name: &str) {
        self.conditions.forget(namespace, name);
        self.set_draining(namespace, name, false, None);
        self.forget_probe(namespace, name);
    }

    /// Drops every per-PBX series (conditions and probe figures): for an
    /// instance that stopped leading and no longer watches any PBX.
    pub fn forget_all_pbxs(&self) {
        self.conditions.clear();
        self.draining.clear();
        let p = &self.probe;
        p.success.clear();
        p.check_success.clear();
        p.duration.clear();
        p.phase_duration.clear();
        p.ssl_earliest_cert_expiry.clear();
        p.echo_loss_ratio.clear();
        p.echo_jitter.clear();
        p.echo_mos.clear();
        p.asterisk_up.clear();
        for family in &p.asterisk {
            family.clear();
        }
    }

    /// Drops the probe series of a PBX that is no longer probed.
    pub fn forget_probe(&self, namespace: &str, name: &str) {
        let pbx = PbxLabels {
            namespace: namespace.into(),
            name: name.into(),
        };
        let p = &self.probe;
        p.success.remove(&pbx);
        p.duration.remove(&pbx);
        p.ssl_earliest_cert_expiry.remove(&pbx);
        p.echo_loss_ratio.remove(&pbx);
        p.echo_jitter.remove(&pbx);
        p.echo_mos.remove(&pbx);
        p.asterisk_up.remove(&pbx);
        for family in &p.asterisk {
            family.remove(&pbx);
        }
        for phase in PHASES {
            p.phase_duration.remove(&PhaseLabels {
                namespace: namespace.into(),
                name: name.into(),
                phase: phase.into(),
            });
        }
        for check in CHECKS {
            p.check_success.remove(&CheckLabels {
                namespace: namespace.into(),
                name: name.into(),
                check: check.into(),
            });
        }
    }

    /// Marks the operator ready (its watches run or it stands by as a follower).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// True once marked ready (`/readyz`).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        // With 500 PBXs the text is about a megabyte: grown by doubling it
        // would take up to twice that, and a copy at each step, at every
        // scrape (heaptrack: 1.9 MB of a restart's peak).
        let last = self.encoded_len.load(Ordering::Relaxed);
        let mut out = String::with_capacity(last + last / 8);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        self.encoded_len.store(out.len(), Ordering::Relaxed);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_draining_call_count_exists_only_while_a_pbx_drains() {
        let m = Metrics::default();
        let series = r#"webrtc_pbx_draining_active_calls{namespace="voice",name="acme"}"#;
        m.set_draining("voice", "acme", true, Some(2));
        assert!(m.encode().contains(&format!("{series} 2")));
        m.set_draining("voice", "acme", true, None);
        assert!(m.encode().contains(&format!("{series} 0")));
        m.set_draining("voice", "acme", false, Some(2));
        assert!(!m.encode().contains(series));
        m.set_draining("voice", "acme", true, Some(1));
        m.forget_pbx("voice", "acme");
        assert!(!m.encode().contains(series));
    }

    #[test]
    fn probe_series_follow_the_last_run_and_go_with_the_pbx() {
        let m = Metrics::default();
        let check = |ok: bool, reason: &str| crate::probe::Check {
            ok,
            reason: reason.into(),
            message: String::new(),
        };
        let report = crate::probe::Report {
            url: "wss://pbx.acme.example:8089/ws".into(),
            dialled: "127.0.0.1:8089".into(),
            timings: crate::probe::transport::Timings {
                dns_ms: Some(0.1),
                connect_ms: Some(0.5),
                tls_ms: Some(2.0),
                upgrade_ms: Some(1.0),
            },
            wss: check(true, "Connected"),
            failed_phase: None,
            certificate: Some(crate::probe::transport::ServedCertificate {
                subject: "CN=x".into(),
                dns_names: vec![],
                not_after: String::new(),
                days_to_expiry: 90,
                not_after_unix: 1_900_000_000,
            }),
            register: Some(check(false, "AuthenticationFailed")),
            register_result: None,
            echo: None,
            echo_result: None,
            user_call: None,
            user_call_result: None,
            asterisk: Some(crate::probe::asterisk_metrics::AsteriskFacts {
                active_calls: 3,
                active_channels: 5,
                endpoints: 10,
                endpoints_online: 4,
                uptime_seconds: 120,
            }),
            asterisk_error: None,
            ok: false,
        };
        m.observe_probe("voice", "acme", &report, 0.25);
        let text = m.encode();
        for line in [
            r#"probe_success{namespace="voice",name="acme"} 0"#,
            r#"probe_check_success{namespace="voice",name="acme",check="wss"} 1"#,
            r#"probe_check_success{namespace="voice",name="acme",check="register"} 0"#,
            r#"probe_phase_duration_seconds{namespace="voice",name="acme",phase="tls"} 0.002"#,
            r#"probe_ssl_earliest_cert_expiry{namespace="voice",name="acme"} 1900000000"#,
            r#"probe_duration_seconds{namespace="voice",name="acme"} 0.25"#,
            "webrtc_pbx_probe_runs_total 1",
            r#"webrtc_pbx_asterisk_active_calls{namespace="voice",name="acme"} 3"#,
            r#"webrtc_pbx_asterisk_endpoints_online{namespace="voice",name="acme"} 4"#,
            r#"webrtc_pbx_asterisk_uptime_seconds{namespace="voice",name="acme"} 120"#,
            r#"webrtc_pbx_asterisk_metrics_up{namespace="voice",name="acme"} 1"#,
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        assert!(!text.contains(r#"check="echo""#), "{text}");
        m.forget_probe("voice", "acme");
        let text = m.encode();
        assert!(!text.contains(r#"name="acme""#), "{text}");
        // An instance that stops leading drops every PBX's series.
        m.observe_probe("voice", "acme", &report, 0.25);
        m.set_conditions("voice", "acme", [("Ready", "True")]);
        m.forget_all_pbxs();
        let text = m.encode();
        assert!(!text.contains(r#"name="acme""#), "{text}");
    }

    #[test]
    fn condition_gauges_mark_only_the_current_status() {
        let m = Metrics::default();
        m.set_conditions("voice", "acme", [("Ready", "False")]);
        m.set_conditions("voice", "acme", [("Ready", "True")]);
        m.failures
            .get_or_create(&FailureLabels {
                category: "api".into(),
            })
            .inc();
        let text = m.encode();
        assert!(text.contains(r#"webrtc_pbx_condition{namespace="voice",name="acme",type="Ready",status="True"} 1"#), "{text}");
        assert!(text.contains(r#"webrtc_pbx_condition{namespace="voice",name="acme",type="Ready",status="False"} 0"#), "{text}");
        assert!(
            text.contains(r#"webrtc_pbx_reconcile_failures_total{category="api"} 1"#),
            "{text}"
        );
        assert!(text.contains("# HELP webrtc_pbx_condition 1 for each PBX condition's current status\n# TYPE webrtc_pbx_condition gauge\n"), "{text}");
        // Status is the whole set: a condition no longer in it loses its
        // series, and a deleted PBX loses all of them.
        m.set_conditions(
            "voice",
            "acme",
            [("Ready", "Unknown"), ("ConfigRendered", "True")],
        );
        m.set_conditions("voice", "other", [("Ready", "True")]);
        m.set_conditions("voice", "acme", [("ConfigRendered", "False")]);
        let series: Vec<String> = m
            .encode()
            .lines()
            .filter(|l| l.starts_with("webrtc_pbx_condition{"))
            .map(String::from)
            .collect();
        assert_eq!(
            series,
            [
                r#"webrtc_pbx_condition{namespace="voice",name="acme",type="ConfigRendered",status="True"} 0"#,
                r#"webrtc_pbx_condition{namespace="voice",name="acme",type="ConfigRendered",status="False"} 1"#,
                r#"webrtc_pbx_condition{namespace="voice",name="acme",type="ConfigRendered",status="Unknown"} 0"#,
                r#"webrtc_pbx_condition{namespace="voice",name="other",type="Ready",status="True"} 1"#,
                r#"webrtc_pbx_condition{namespace="voice",name="other",type="Ready",status="False"} 0"#,
                r#"webrtc_pbx_condition{namespace="voice",name="other",type="Ready",status="Unknown"} 0"#,
            ]
        );
        m.forget_pbx("voice", "acme");
        assert!(!m.encode().contains(r#"name="acme""#));
    }
}

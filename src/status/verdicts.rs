//! Facts become verdicts, one builder per source (operator-rs style):
//! validation problems, certificate outcomes, the workload, refusals of
//! the apiserver, the probe's checks. Plain facts in, no controller types.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::{Blocking, Tri, Verdict, reasons, types};
use crate::api::{AsteriskFigures, DirectionFigures, ProbeFigures, ProbesSpec, UserCallFigures};
use crate::certs::Outcome;
use crate::probe;
use crate::validate::Problem;

/// The ConfigRendered reason of a problem with the input.
pub fn problem_reason(problem: &Problem) -> &'static str {
    match problem {
        Problem::InvalidSpec { .. } => reasons::INVALID_SPEC,
        Problem::SecretNotFound { .. } | Problem::SecretKeyMissing { .. } => {
            reasons::SECRET_NOT_FOUND
        }
        Problem::ConfigMapNotFound { .. } => reasons::CONFIG_MAP_NOT_FOUND,
        Problem::PolicyDenied { .. } => reasons::POLICY_DENIED,
    }
}

/// ConfigRendered for input that cannot be rendered: the first problem's
/// reason, every problem in the message; the user must act.
pub fn config_invalid(problems: &[Problem]) -> (Verdict, Blocking) {
    let message = problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let reason = problems
        .first()
        .map_or(reasons::INVALID_SPEC, problem_reason);
    (
        Verdict::new(types::CONFIG_RENDERED, Tri::False, reason, message),
        Blocking::NeedsUser,
    )
}

/// ConfigRendered when `objects` children were rendered.
pub fn config_rendered(objects: usize) -> (Verdict, Blocking) {
    (
        Verdict::new(
            types::CONFIG_RENDERED,
            Tri::True,
            reasons::RENDERED,
            format!("{objects} objects rendered"),
        ),
        Blocking::Waiting,
    )
}

/// A child that was not written: the apiserver refused it, or an object of
/// its name is not the PBX's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// It is the StatefulSet (WorkloadReady), not what it mounts (ConfigRendered).
    pub workload: bool,
    /// An object of that name exists without the PBX's controller reference.
    pub not_ours: bool,
    /// `Kind/name`.
    pub object: String,
    /// The apiserver's answer (`(code reason): message`), for a refusal.
    pub message: String,
}

impl Refusal {
    fn reason(&self) -> &'static str {
        if self.not_ours {
            reasons::OWNERSHIP_CONFLICT
        } else {
            reasons::APPLY_REJECTED
        }
    }

    fn text(&self) -> String {
        if self.not_ours {
            format!(
                "{} exists and was not created for this WebRtcPbx: the operator does not take over objects it does not own; delete or rename it",
                self.object
            )
        } else {
            format!("the apiserver refused {} {}", self.object, self.message)
        }
    }
}

/// ConfigRendered and WorkloadReady when children were refused: each
/// False with the first refusal's reason and every refusal of its kind in
/// the message; otherwise True with `rendered` objects, and `workload`.
pub fn refusal_verdicts(
    refused: &[Refusal],
    rendered: usize,
    workload: (Verdict, Blocking),
) -> [(Verdict, Blocking); 2] {
    let of = |sts: bool| refused.iter().filter(move |r| r.workload == sts);
    let joined = |sts: bool| of(sts).map(Refusal::text).collect::<Vec<_>>().join("; ");
    let config = match of(false).next() {
        Some(first) => (
            Verdict::new(
                types::CONFIG_RENDERED,
                Tri::False,
                first.reason(),
                joined(false),
            ),
            Blocking::NeedsUser,
        ),
        None => config_rendered(rendered),
    };
    let workload = match of(true).next() {
        Some(first) => (
            Verdict::new(
                types::WORKLOAD_READY,
                Tri::False,
                first.reason(),
                joined(true),
            ),
            Blocking::NeedsUser,
        ),
        None => workload,
    };
    [config, workload]
}

/// The CertificateReady reason of a served certificate's outcome.
pub fn certificate_reason(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Ready(_) => reasons::CERTIFICATE_VALID,
        Outcome::ExpiringSoon(_) => reasons::EXPIRING_SOON,
        Outcome::Expired(_) => reasons::EXPIRED,
        Outcome::NotYetValid(_) => reasons::NOT_YET_VALID,
        Outcome::KeyMismatch => reasons::KEY_MISMATCH,
        Outcome::DomainNotCovered { .. } => reasons::DOMAIN_NOT_COVERED,
        Outcome::ChainIncomplete { .. } => reasons::CHAIN_INCOMPLETE,
        Outcome::Invalid(_) => reasons::INVALID_CERTIFICATE,
    }
}

/// CertificateReady of a served certificate for `domain`. When the
/// operator renews it (`renewing_is_ours`) a fault waits for the operator;
/// otherwise for the user.
pub fn certificate_verdict(
    outcome: &Outcome,
    domain: &str,
    renewing_is_ours: bool,
) -> (Verdict, Blocking) {
    let blocking = if renewing_is_ours {
        Blocking::Waiting
    } else {
        Blocking::NeedsUser
    };
    let status = if matches!(outcome, Outcome::Ready(_)) {
        Tri::True
    } else {
        Tri::False
    };
    (
        Verdict::new(
            types::CERTIFICATE_READY,
            status,
            certificate_reason(outcome),
            outcome.message(domain),
        ),
        blocking,
    )
}

/// CertificateReady while the spec is invalid.
pub fn certificate_pending() -> (Verdict, Blocking) {
    (
        Verdict::new(
            types::CERTIFICATE_READY,
            Tri::Unknown,
            reasons::CERTIFICATE_PENDING,
            "waiting for a valid spec",
        ),
        Blocking::Waiting,
    )
}

/// CertificateReady when the user's TLS Secret is missing.
pub fn tls_secret_missing(message: String) -> (Verdict, Blocking) {
    (
        Verdict::new(
            types::CERTIFICATE_READY,
            Tri::False,
            reasons::SECRET_NOT_FOUND,
            message,
        ),
        Blocking::NeedsUser,
    )
}

/// CertificateReady while cert-manager has not issued the certificate.
pub fn issuer_not_ready(message: String) -> (Verdict, Blocking) {
    (
        Verdict::new(
            types::CERTIFICATE_READY,
            Tri::False,
            reasons::ISSUER_NOT_READY,
            message,
        ),
        Blocking::Waiting,
    )
}

/// What WorkloadReady is decided from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadFacts {
    /// Pods ready.
    pub ready: i32,
    /// Pods wanted.
    pub wanted: i32,
    /// The StatefulSet observed its generation and a pod runs its revision.
    pub current: bool,
    /// Another PBX holding the host ports on every allowed node (its message).
    pub conflict: Option<String>,
    /// The scheduler's message when it cannot place the pod.
    pub unschedulable: Option<String>,
    /// The pod is being replaced and drains its calls.
    pub draining: Option<Draining>,
}

/// A pod draining before it is replaced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Draining {
    /// Calls up at the last probe run (unknown without one).
    pub active_calls: Option<u64>,
    /// When the kubelet stops it at the latest (RFC 3339).
    pub deadline: Option<String>,
}

impl Draining {
    /// What WorkloadReady says.
    pub fn message(&self) -> String {
        let calls = match self.active_calls {
            Some(1) => "1 call active".to_string(),
            Some(n) => format!("{n} calls active"),
            None => "active calls unknown".to_string(),
        };
        let until = self
            .deadline
            .as_ref()
            .map_or(String::new(), |d| format!(", at the latest until {d}"));
        format!(
            "the pod is being replaced and drains: it takes no new calls and ends with its last call ({calls} at the last probe run{until}, spec.drain.timeout)"
        )
    }
}

/// WorkloadReady. Only a pod the scheduler cannot place is blocked by
/// another PBX (PortConflict, the user's to resolve); the rest is waiting.
pub fn workload_verdict(f: &WorkloadFacts) -> (Verdict, Blocking) {
    let counts = format!("{}/{} pods ready", f.ready, f.wanted);
    let verdict =
        |status, reason, message| Verdict::new(types::WORKLOAD_READY, status, reason, message);
    if let Some(d) = &f.draining {
        return (
            verdict(Tri::False, reasons::DRAINING, d.message()),
            Blocking::Waiting,
        );
    }
    if f.ready >= f.wanted && f.current {
        return (
            verdict(Tri::True, reasons::PODS_READY, counts),
            Blocking::Waiting,
        );
    }
    match (&f.conflict, &f.unschedulable) {
        (Some(c), Some(scheduler)) => (
            verdict(
                Tri::False,
                reasons::PORT_CONFLICT,
                format!("{counts}: {c} (scheduler: {scheduler})"),
            ),
            Blocking::NeedsUser,
        ),
        (None, Some(scheduler)) => (
            verdict(
                Tri::False,
                reasons::PODS_NOT_READY,
                format!("{counts}: {scheduler}"),
            ),
            Blocking::Waiting,
        ),
        (_, None) => (
            verdict(Tri::False, reasons::PODS_NOT_READY, counts),
            Blocking::Waiting,
        ),
    }
}

/// WssReachable when the probe may not dial `probes.connectAddress`.
pub fn connect_not_allowed(why: String) -> (Verdict, Blocking) {
    (
        Verdict::new(
            types::WSS_REACHABLE,
            Tri::False,
            reasons::CONNECT_ADDRESS_NOT_ALLOWED,
            why,
        ),
        Blocking::NeedsUser,
    )
}

/// Why a probe check has nothing to show while the workload is not ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Awaiting {
    /// The pod is not ready (yet): probing starts when it is.
    Workload,
    /// The pod drains: it is asked what it carries, and no probe call is
    /// placed there (one more call for it to wait out).
    Drain,
}

impl Awaiting {
    fn message(self) -> &'static str {
        match self {
            Awaiting::Workload => "probes start when WorkloadReady is True",
            Awaiting::Drain => {
                "no probe call while the pod drains (it would be one more call to wait for); the new pod is probed when it is ready"
            }
        }
    }
}

/// The probe conditions `spec` asks for, from what the schedule found of
/// the WSS, REGISTER, echo and user-call checks. A check with no result
/// while the workload is not ready (`awaiting`) waits (AwaitingProbe).
pub fn probe_verdicts(
    spec: &ProbesSpec,
    [wss, register, echo, user_call]: [Option<&Probed>; 4],
    awaiting: Option<Awaiting>,
    previous: &[Condition],
    threshold: u32,
) -> Vec<(Verdict, Blocking)> {
    let wanted = [
        (types::WSS_REACHABLE, true, wss),
        (types::SIP_REGISTERED, spec.register.enabled, register),
        (types::ECHO_CALL_HEALTHY, spec.echo_call.enabled, echo),
        (types::USER_CALL_HEALTHY, spec.user_call.enabled, user_call),
    ];
    wanted
        .into_iter()
        .filter(|(_, enabled, _)| *enabled)
        .map(|(type_, _, probed)| match (probed, awaiting) {
            (None, Some(why)) => (
                Verdict::new(type_, Tri::Unknown, reasons::AWAITING_PROBE, why.message()),
                Blocking::Waiting,
            ),
            _ => probe_verdict(
                type_,
                probed,
                previous.iter().find(|c| c.type_ == type_),
                threshold,
            ),
        })
        .collect()
}

/// One probed check as the scheduler remembers it between runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Probed {
    /// The last run passed.
    pub ok: bool,
    /// The last run's reason (a probe engine reason).
    pub reason: String,
    /// The last run's message.
    pub message: String,
    /// Runs in a row that did not pass (0 after a pass).
    pub failures_in_a_row: u32,
}

impl Probed {
    /// The next state after a run that found `check`.
    pub fn after(&self, check: &probe::Check) -> Probed {
        Probed {
            ok: check.ok,
            reason: check.reason.clone(),
            message: check.message.clone(),
            failures_in_a_row: if check.ok {
                0
            } else {
                self.failures_in_a_row.saturating_add(1)
            },
        }
    }
}

/// The condition of one probed check, with flap control: a True condition
/// stays True (saying so) until `threshold` runs in a row failed, and turns
/// True again after one pass. A check that was not attempted because an
/// earlier one failed is Unknown, not False: its own fault is not known.
pub fn probe_verdict(
    type_: &'static str,
    probed: Option<&Probed>,
    previous: Option<&Condition>,
    threshold: u32,
) -> (Verdict, Blocking) {
    let Some(p) = probed else {
        return (
            Verdict::new(
                type_,
                Tri::Unknown,
                reasons::AWAITING_PROBE,
                "no probe has finished yet",
            ),
            Blocking::Waiting,
        );
    };
    if p.ok {
        return (
            Verdict::new(type_, Tri::True, &p.reason, p.message.clone()),
            Blocking::Waiting,
        );
    }
    let n = p.failures_in_a_row;
    if let Some(prev) = previous.filter(|c| c.status == "True" && n < threshold) {
        // One bad run is not an outage: keep True, but say what was seen.
        let message = format!(
            "last probe failed ({}: {}); {n} of {threshold} failures in a row before this turns False",
            p.reason, p.message
        );
        return (
            Verdict::new(type_, Tri::True, &prev.reason, message),
            Blocking::Waiting,
        );
    }
    let message = if n > 1 {
        format!("{} (failed {n} probes in a row)", p.message)
    } else {
        p.message.clone()
    };
    if p.reason == reasons::NOT_ATTEMPTED {
        (
            Verdict::new(type_, Tri::Unknown, &p.reason, message),
            Blocking::Waiting,
        )
    } else {
        (
            Verdict::new(type_, Tri::False, &p.reason, message),
            Blocking::NeedsUser,
        )
    }
}

/// The figures of a probe run for `status.probes`; `time` is RFC 3339.
pub fn probe_figures(report: &probe::Report, time: String) -> ProbeFigures {
    // Two decimals: enough for people, and no patch for noise in the 4th.
    let round = |v: Option<f64>| v.map(|v| (v * 100.0).round() / 100.0);
    let echo = report.echo_result.as_ref();
    ProbeFigures {
        time: Some(time),
        connect_ms: round(report.timings.connect_ms),
        tls_ms: round(report.timings.tls_ms),
        upgrade_ms: round(report.timings.upgrade_ms),
        register_ms: round(
            report
                .register_result
                .as_ref()
                .and_then(|r| r.round_trip_ms),
        ),
        echo_round_trip_ms: round(echo.and_then(|e| e.rtt_median_ms)),
        loss_percent: round(echo.and_then(|e| e.loss_percent)),
        jitter_ms: round(echo.and_then(|e| e.jitter_ms)),
        mos: round(echo.and_then(|e| e.mos)),
        r_factor: round(echo.and_then(|e| e.r_factor)),
        invite_ms: round(echo.and_then(|e| e.phases.invite_ms)),
        ice_ms: round(echo.and_then(|e| e.phases.ice_ms)),
        dtls_ms: round(echo.and_then(|e| e.phases.dtls_ms)),
        first_echo_ms: round(echo.and_then(|e| e.phases.first_echo_ms)),
        asterisk: asterisk_figures(report),
        user_call: report.user_call_result.as_ref().map(|u| {
            let way = |w: &probe::user_call::WayFigures| DirectionFigures {
                packets_sent: w.sent,
                packets_received: w.received,
                loss_percent: round(w.loss_percent),
                delay_ms: round(w.delay_median_ms),
                jitter_ms: round(w.jitter_ms),
            };
            UserCallFigures {
                setup_ms: round(u.setup_ms),
                round_trip_ms: round(u.round_trip_ms),
                mos: round(u.mos),
                caller_to_callee: Some(way(&u.caller_to_callee)),
                callee_to_caller: Some(way(&u.callee_to_caller)),
            }
        }),
    }
}

fn asterisk_figures(report: &probe::Report) -> Option<AsteriskFigures> {
    if let Some(a) = &report.asterisk {
        return Some(AsteriskFigures {
            active_calls: Some(a.active_calls),
            active_channels: Some(a.active_channels),
            endpoints: Some(a.endpoints),
            endpoints_online: Some(a.endpoints_online),
            uptime_seconds: Some(a.uptime_seconds),
            error: None,
        });
    }
    // Bounded: the sentence may quote what a (hostile) server sent.
    report.asterisk_error.as_ref().map(|e| AsteriskFigures {
        error: Some(e.chars().take(300).collect()),
        ..AsteriskFigures::default()
    })
}

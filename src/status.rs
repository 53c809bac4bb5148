//! The status step (pure): observed facts become Kubernetes conditions.
//! Types and reasons are constants so every writer and reader (tests, Argo CD
//! health checks) spells them one way. `lastTransitionTime` is kept unless a
//! condition's status flips, and [`same_ignoring_time`] lets the controller
//! skip a patch when only timestamps would differ.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::{ProbeFigures, ProbesSpec, WebRtcPbxStatus};
use crate::certs::Outcome;
use crate::probe;
use crate::validate::Problem;

/// Condition types.
pub mod types {
    /// The configuration was rendered from a valid spec.
    pub const CONFIG_RENDERED: &str = "ConfigRendered";
    /// The serving certificate is usable.
    pub const CERTIFICATE_READY: &str = "CertificateReady";
    /// The Asterisk pod is running and ready.
    pub const WORKLOAD_READY: &str = "WorkloadReady";
    /// The WSS probe connected.
    pub const WSS_REACHABLE: &str = "WssReachable";
    /// The REGISTER probe succeeded.
    pub const SIP_REGISTERED: &str = "SipRegistered";
    /// The echo-call probe heard its audio back.
    pub const ECHO_CALL_HEALTHY: &str = "EchoCallHealthy";
    /// Summary: everything above that is enabled is True.
    pub const READY: &str = "Ready";
    /// kstatus: the controller is working towards the desired state.
    pub const RECONCILING: &str = "Reconciling";
    /// kstatus: progress is blocked until the user changes something.
    pub const STALLED: &str = "Stalled";
    /// Every type above.
    pub const ALL: [&str; 9] = [
        CONFIG_RENDERED,
        CERTIFICATE_READY,
        WORKLOAD_READY,
        WSS_REACHABLE,
        SIP_REGISTERED,
        ECHO_CALL_HEALTHY,
        READY,
        RECONCILING,
        STALLED,
    ];
}

/// Condition reasons.
pub mod reasons {
    /// The spec has a value the operator cannot use.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// A referenced Secret or key is missing.
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// A referenced ConfigMap or key is missing.
    pub const CONFIG_MAP_NOT_FOUND: &str = "ConfigMapNotFound";
    /// Rendering succeeded.
    pub const RENDERED: &str = "Rendered";
    /// The certificate is valid for the domain.
    pub const CERTIFICATE_VALID: &str = "CertificateValid";
    /// The certificate expires within renewBefore.
    pub const EXPIRING_SOON: &str = "ExpiringSoon";
    /// The certificate has expired.
    pub const EXPIRED: &str = "Expired";
    /// The certificate is not valid yet.
    pub const NOT_YET_VALID: &str = "NotYetValid";
    /// tls.key does not match tls.crt.
    pub const KEY_MISMATCH: &str = "KeyMismatch";
    /// The certificate does not cover spec.domain.
    pub const DOMAIN_NOT_COVERED: &str = "DomainNotCovered";
    /// An intermediate certificate is missing.
    pub const CHAIN_INCOMPLETE: &str = "ChainIncomplete";
    /// The certificate Secret is missing keys or does not parse.
    pub const INVALID_CERTIFICATE: &str = "InvalidCertificate";
    /// The certificate Secret does not exist yet.
    pub const CERTIFICATE_PENDING: &str = "CertificatePending";
    /// cert-manager has not issued the Certificate (yet).
    pub const ISSUER_NOT_READY: &str = "IssuerNotReady";
    /// The pod is running and ready.
    pub const PODS_READY: &str = "PodsReady";
    /// The pod is not (yet) ready.
    pub const PODS_NOT_READY: &str = "PodsNotReady";
    /// Another PBX uses the same host ports on the same nodes.
    pub const PORT_CONFLICT: &str = "PortConflict";
    /// The apiserver refused a child the operator applied (its message follows).
    pub const APPLY_REJECTED: &str = "ApplyRejected";
    /// A child's name is taken by an object the operator did not create.
    pub const OWNERSHIP_CONFLICT: &str = "OwnershipConflict";
    /// The operator's policy does not allow what the spec asks for.
    pub const POLICY_DENIED: &str = "PolicyDenied";
    /// `probes.connectAddress` points where the operator may not dial.
    pub const CONNECT_ADDRESS_NOT_ALLOWED: &str = "ConnectAddressNotAllowed";
    /// Every enabled check passed.
    pub const READY: &str = "Ready";
    /// Something the summary depends on is not ready.
    pub const NOT_READY: &str = "NotReady";
    /// Work towards the spec is in progress.
    pub const PROGRESSING: &str = "Progressing";
    /// Nothing left to do.
    pub const SETTLED: &str = "Settled";
    /// The user must change something before progress can continue.
    pub const USER_ACTION_REQUIRED: &str = "UserActionRequired";
    /// No probe has finished since the operator started probing this PBX.
    pub const AWAITING_PROBE: &str = "AwaitingProbe";
    /// The probe did not run this check because an earlier one failed.
    pub const NOT_ATTEMPTED: &str = crate::probe::NOT_ATTEMPTED;
}

/// Failed probe runs in a row before a True probe condition turns False.
pub const DEFAULT_FLAP_THRESHOLD: u32 = 2;

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
}

/// WorkloadReady. Only a pod the scheduler cannot place is blocked by
/// another PBX (PortConflict, the user's to resolve); the rest is waiting.
pub fn workload_verdict(f: &WorkloadFacts) -> (Verdict, Blocking) {
    let counts = format!("{}/{} pods ready", f.ready, f.wanted);
    let verdict =
        |status, reason, message| Verdict::new(types::WORKLOAD_READY, status, reason, message);
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

/// The probe conditions `spec` asks for, from what the schedule found of
/// the WSS, REGISTER and echo checks. Before the first run, and while the
/// workload is not ready, they wait (AwaitingProbe).
pub fn probe_verdicts(
    spec: &ProbesSpec,
    [wss, register, echo]: [Option<&Probed>; 3],
    waiting_for_workload: bool,
    previous: &[Condition],
    threshold: u32,
) -> Vec<(Verdict, Blocking)> {
    let wanted = [
        (types::WSS_REACHABLE, true, wss),
        (types::SIP_REGISTERED, spec.register.enabled, register),
        (types::ECHO_CALL_HEALTHY, spec.echo_call.enabled, echo),
    ];
    wanted
        .into_iter()
        .filter(|(_, enabled, _)| *enabled)
        .map(|(type_, _, probed)| match probed {
            None if waiting_for_workload => (
                Verdict::new(
                    type_,
                    Tri::Unknown,
                    reasons::AWAITING_PROBE,
                    "probes start when WorkloadReady is True",
                ),
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
    }
}

/// A condition before its timestamps are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Condition type.
    pub type_: &'static str,
    /// True, False or Unknown.
    pub status: Tri,
    /// Reason (a constant of [`reasons`] or a probe reason).
    pub reason: String,
    /// What happened and what to do.
    pub message: String,
}

/// A condition status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tri {
    /// "True"
    True,
    /// "False"
    False,
    /// "Unknown"
    Unknown,
}

impl Tri {
    fn as_str(self) -> &'static str {
        match self {
            Tri::True => "True",
            Tri::False => "False",
            Tri::Unknown => "Unknown",
        }
    }
}

impl Verdict {
    /// A verdict.
    pub fn new(type_: &'static str, status: Tri, reason: &str, message: impl Into<String>) -> Self {
        Self {
            type_,
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Whether a failed verdict needs the user (Stalled) or only time (Reconciling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocking {
    /// Waiting: the controller or the cluster will get there.
    Waiting,
    /// Stuck until the user changes the spec or a referenced object.
    NeedsUser,
}

/// Adds Ready, Reconciling and Stalled (kstatus) to the component verdicts.
/// `blocking` classifies each non-True component verdict.
pub fn summarize(components: Vec<(Verdict, Blocking)>) -> Vec<Verdict> {
    let failing: Vec<&(Verdict, Blocking)> = components
        .iter()
        .filter(|(v, _)| v.status != Tri::True)
        .collect();
    let stalled: Vec<&Verdict> = failing
        .iter()
        .filter(|(_, b)| *b == Blocking::NeedsUser)
        .map(|(v, _)| v)
        .collect();
    let ready = if failing.is_empty() {
        Verdict::new(
            types::READY,
            Tri::True,
            reasons::READY,
            "every enabled check passed",
        )
    } else {
        let parts: Vec<String> = failing
            .iter()
            .map(|(v, _)| format!("{} ({}): {}", v.type_, v.reason, v.message))
            .collect();
        Verdict::new(
            types::READY,
            Tri::False,
            reasons::NOT_READY,
            parts.join("; "),
        )
    };
    let stalled_v = match stalled.first() {
        Some(v) => Verdict::new(
            types::STALLED,
            Tri::True,
            reasons::USER_ACTION_REQUIRED,
            format!("{}: {}", v.type_, v.message),
        ),
        None => Verdict::new(
            types::STALLED,
            Tri::False,
            reasons::SETTLED,
            "nothing blocks progress",
        ),
    };
    let reconciling = if !failing.is_empty() && stalled.is_empty() {
        let waiting: Vec<&str> = failing.iter().map(|(v, _)| v.type_).collect();
        Verdict::new(
            types::RECONCILING,
            Tri::True,
            reasons::PROGRESSING,
            format!("waiting for {}", waiting.join(", ")),
        )
    } else {
        Verdict::new(
            types::RECONCILING,
            Tri::False,
            reasons::SETTLED,
            "no work in progress",
        )
    };
    let mut out: Vec<Verdict> = components.into_iter().map(|(v, _)| v).collect();
    out.extend([ready, reconciling, stalled_v]);
    out
}

/// Turns verdicts into conditions, keeping each previous
/// `lastTransitionTime` unless that condition's status flipped.
pub fn conditions(
    verdicts: &[Verdict],
    previous: &[Condition],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    verdicts
        .iter()
        .map(|v| {
            let prev = previous.iter().find(|c| c.type_ == v.type_);
            let last_transition_time = match prev {
                Some(p) if p.status == v.status.as_str() => p.last_transition_time.clone(),
                _ => now.clone(),
            };
            Condition {
                type_: v.type_.into(),
                status: v.status.as_str().into(),
                reason: v.reason.clone(),
                message: v.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// True when two statuses differ at most in condition timestamps: then no
/// patch is sent.
pub fn same_ignoring_time(a: &WebRtcPbxStatus, b: &WebRtcPbxStatus) -> bool {
    let strip = |s: &WebRtcPbxStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = Time(Default::default());
        }
        s.conditions.sort_by(|x, y| x.type_.cmp(&y.type_));
        s
    };
    strip(a) == strip(b)
}

/// The conditions worth an Event: a change (status or reason) of a
/// condition already reported, and, on a PBX's first status, the faults a
/// user must fix (when Stalled). Reconciling and Stalled only restate the
/// others. A healthy PBX thus records PodsReady and Ready, not one Event
/// per condition appearing: at scale every Event is a write.
pub fn events<'a>(previous: &[Condition], current: &'a [Condition]) -> Vec<&'a Condition> {
    let stalled = current
        .iter()
        .any(|c| c.type_ == types::STALLED && c.status == "True");
    current
        .iter()
        .filter(|c| c.type_ != types::RECONCILING && c.type_ != types::STALLED)
        .filter(|c| match previous.iter().find(|p| p.type_ == c.type_) {
            Some(p) => p.status != c.status || p.reason != c.reason,
            None => stalled && c.status == "False" && c.type_ != types::READY,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workload_is_ready_waiting_or_blocked_by_another_pbx() {
        let facts =
            |ready, current, conflict: Option<&str>, scheduler: Option<&str>| WorkloadFacts {
                ready,
                wanted: 1,
                current,
                conflict: conflict.map(Into::into),
                unschedulable: scheduler.map(Into::into),
            };
        let (v, b) = workload_verdict(&facts(1, true, None, None));
        assert_eq!(
            (v.status, v.reason.as_str(), b),
            (Tri::True, reasons::PODS_READY, Blocking::Waiting)
        );
        // Ready but of an old revision: still rolling.
        let (v, _) = workload_verdict(&facts(1, false, None, None));
        assert_eq!(v.reason, reasons::PODS_NOT_READY);
        let (v, b) = workload_verdict(&facts(0, true, Some("b holds 8089"), Some("0/1 nodes")));
        assert_eq!(
            (v.reason.as_str(), b),
            (reasons::PORT_CONFLICT, Blocking::NeedsUser)
        );
        assert!(
            v.message.contains("b holds 8089") && v.message.contains("0/1 nodes"),
            "{}",
            v.message
        );
        // A conflict the scheduler does not (yet) feel is not blocking.
        let (v, b) = workload_verdict(&facts(0, true, Some("b holds 8089"), None));
        assert_eq!(
            (v.reason.as_str(), b),
            (reasons::PODS_NOT_READY, Blocking::Waiting)
        );
    }

    #[test]
    fn refusals_name_every_object_under_its_condition() {
        let refusal = |workload, not_ours, object: &str| Refusal {
            workload,
            not_ours,
            object: object.into(),
            message: "(403 Forbidden): exceeded quota".into(),
        };
        let ready = workload_verdict(&WorkloadFacts {
            ready: 1,
            wanted: 1,
            current: true,
            ..Default::default()
        });
        let [config, workload] = refusal_verdicts(
            &[
                refusal(false, false, "ConfigMap/a-asterisk"),
                refusal(false, true, "Secret/a-tls"),
            ],
            7,
            ready.clone(),
        );
        assert_eq!(config.0.reason, reasons::APPLY_REJECTED);
        assert!(
            config
                .0
                .message
                .contains("ConfigMap/a-asterisk (403 Forbidden): exceeded quota"),
            "{}",
            config.0.message
        );
        assert!(
            config
                .0
                .message
                .contains("Secret/a-tls exists and was not created"),
            "{}",
            config.0.message
        );
        assert_eq!(workload, ready);
        let [config, workload] =
            refusal_verdicts(&[refusal(true, true, "StatefulSet/a")], 7, ready);
        assert_eq!(
            (config.0.status, config.0.message.as_str()),
            (Tri::True, "7 objects rendered")
        );
        assert_eq!(
            (workload.0.reason.as_str(), workload.1),
            (reasons::OWNERSHIP_CONFLICT, Blocking::NeedsUser)
        );
    }

    #[test]
    fn every_input_problem_and_certificate_outcome_has_its_reason() {
        let field = || ("f".to_string(), "m".to_string());
        let problems = [
            (
                Problem::InvalidSpec {
                    field: field().0,
                    message: field().1,
                },
                reasons::INVALID_SPEC,
            ),
            (
                Problem::PolicyDenied {
                    field: field().0,
                    message: field().1,
                },
                reasons::POLICY_DENIED,
            ),
            (
                Problem::SecretNotFound {
                    name: "s".into(),
                    namespace: "n".into(),
                    field: "f".into(),
                },
                reasons::SECRET_NOT_FOUND,
            ),
            (
                Problem::SecretKeyMissing {
                    name: "s".into(),
                    key: "k".into(),
                    field: "f".into(),
                },
                reasons::SECRET_NOT_FOUND,
            ),
            (
                Problem::ConfigMapNotFound {
                    name: "c".into(),
                    key: "k".into(),
                    namespace: "n".into(),
                    field: "f".into(),
                },
                reasons::CONFIG_MAP_NOT_FOUND,
            ),
        ];
        for (p, reason) in &problems {
            assert_eq!(problem_reason(p), *reason);
        }
        let (v, b) = config_invalid(&[problems[1].0.clone(), problems[0].0.clone()]);
        assert_eq!(
            (v.reason.as_str(), b),
            (reasons::POLICY_DENIED, Blocking::NeedsUser)
        );
        assert_eq!(v.message, "spec.f: m; spec.f: m");
        for (o, reason) in [
            (Outcome::KeyMismatch, reasons::KEY_MISMATCH),
            (Outcome::Invalid("x".into()), reasons::INVALID_CERTIFICATE),
            (
                Outcome::ChainIncomplete {
                    missing_issuer: "i".into(),
                },
                reasons::CHAIN_INCOMPLETE,
            ),
            (
                Outcome::DomainNotCovered {
                    domain: "d".into(),
                    dns_names: vec![],
                },
                reasons::DOMAIN_NOT_COVERED,
            ),
        ] {
            assert_eq!(certificate_reason(&o), reason);
            let (v, b) = certificate_verdict(&o, "d", false);
            assert_eq!((v.status, b), (Tri::False, Blocking::NeedsUser));
            assert_eq!(certificate_verdict(&o, "d", true).1, Blocking::Waiting);
        }
    }

    #[test]
    fn probe_conditions_wait_for_the_workload_and_follow_the_toggles() {
        let mut spec = ProbesSpec::default();
        spec.echo_call.enabled = false;
        let waiting = probe_verdicts(&spec, [None, None, None], true, &[], DEFAULT_FLAP_THRESHOLD);
        let types: Vec<_> = waiting.iter().map(|(v, _)| v.type_).collect();
        assert_eq!(types, [types::WSS_REACHABLE, types::SIP_REGISTERED]);
        assert!(
            waiting
                .iter()
                .all(|(v, _)| v.reason == reasons::AWAITING_PROBE && v.status == Tri::Unknown)
        );
        let ok = Probed {
            ok: true,
            reason: "Connected".into(),
            message: "open".into(),
            failures_in_a_row: 0,
        };
        let found = probe_verdicts(
            &spec,
            [Some(&ok), None, None],
            false,
            &[],
            DEFAULT_FLAP_THRESHOLD,
        );
        assert_eq!(
            (found[0].0.status, found[0].0.reason.as_str()),
            (Tri::True, "Connected")
        );
        assert_eq!(found[1].0.reason, reasons::AWAITING_PROBE);
        let (v, b) = connect_not_allowed("no".into());
        assert_eq!(
            (v.type_, v.status, b),
            (types::WSS_REACHABLE, Tri::False, Blocking::NeedsUser)
        );
    }

    fn time(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    fn ok(t: &'static str) -> (Verdict, Blocking) {
        (Verdict::new(t, Tri::True, "Fine", "ok"), Blocking::Waiting)
    }

    #[test]
    fn ready_only_when_every_component_is_true() {
        let all = summarize(vec![ok(types::CONFIG_RENDERED), ok(types::WORKLOAD_READY)]);
        let get = |vs: &[Verdict], t: &str| vs.iter().find(|v| v.type_ == t).unwrap().clone();
        assert_eq!(get(&all, types::READY).status, Tri::True);
        assert_eq!(get(&all, types::RECONCILING).status, Tri::False);
        assert_eq!(get(&all, types::STALLED).status, Tri::False);

        let waiting = summarize(vec![
            ok(types::CONFIG_RENDERED),
            (
                Verdict::new(
                    types::WORKLOAD_READY,
                    Tri::False,
                    reasons::PODS_NOT_READY,
                    "0/1",
                ),
                Blocking::Waiting,
            ),
        ]);
        assert_eq!(get(&waiting, types::READY).status, Tri::False);
        assert_eq!(get(&waiting, types::RECONCILING).status, Tri::True);
        assert_eq!(get(&waiting, types::STALLED).status, Tri::False);

        let stuck = summarize(vec![
            (
                Verdict::new(
                    types::CONFIG_RENDERED,
                    Tri::False,
                    reasons::SECRET_NOT_FOUND,
                    "Secret x",
                ),
                Blocking::NeedsUser,
            ),
            (
                Verdict::new(
                    types::WORKLOAD_READY,
                    Tri::Unknown,
                    reasons::PODS_NOT_READY,
                    "?",
                ),
                Blocking::Waiting,
            ),
        ]);
        assert_eq!(get(&stuck, types::STALLED).status, Tri::True);
        assert_eq!(get(&stuck, types::RECONCILING).status, Tri::False);
        assert!(get(&stuck, types::READY).message.contains("SecretNotFound"));
    }

    #[test]
    fn transition_time_kept_unless_status_flips() {
        let v = vec![Verdict::new(
            types::READY,
            Tri::False,
            reasons::NOT_READY,
            "a",
        )];
        let first = conditions(&v, &[], Some(1), &time(100));
        let v2 = vec![Verdict::new(
            types::READY,
            Tri::False,
            reasons::NOT_READY,
            "b",
        )];
        let second = conditions(&v2, &first, Some(2), &time(200));
        assert_eq!(second[0].last_transition_time, time(100));
        assert_eq!(second[0].observed_generation, Some(2));
        let v3 = vec![Verdict::new(types::READY, Tri::True, reasons::READY, "c")];
        let third = conditions(&v3, &second, Some(2), &time(300));
        assert_eq!(third[0].last_transition_time, time(300));
        assert_eq!(events(&second, &third).len(), 1);
        assert!(events(&first, &second).is_empty());
    }

    fn probed(ok: bool, reason: &str, failures_in_a_row: u32) -> Probed {
        Probed {
            ok,
            reason: reason.into(),
            message: format!("{reason} happened"),
            failures_in_a_row,
        }
    }

    fn condition(status: &str, reason: &str) -> Condition {
        conditions(
            &[Verdict::new(
                types::WSS_REACHABLE,
                match status {
                    "True" => Tri::True,
                    _ => Tri::False,
                },
                reason,
                "",
            )],
            &[],
            None,
            &time(1),
        )
        .remove(0)
    }

    #[test]
    fn a_probe_condition_flips_after_two_failures_and_back_after_one_pass() {
        let up = condition("True", "Connected");
        let t = types::WSS_REACHABLE;
        // First failure: still True, and the message says what was seen.
        let (v, b) = probe_verdict(
            t,
            Some(&probed(false, "ConnectionRefused", 1)),
            Some(&up),
            2,
        );
        assert_eq!((v.status, v.reason.as_str()), (Tri::True, "Connected"));
        assert!(
            v.message.contains("ConnectionRefused") && v.message.contains("1 of 2"),
            "{}",
            v.message
        );
        assert_eq!(b, Blocking::Waiting);
        // Second: False with the probe's reason, naming the streak.
        let (v, b) = probe_verdict(
            t,
            Some(&probed(false, "ConnectionRefused", 2)),
            Some(&up),
            2,
        );
        assert_eq!(
            (v.status, v.reason.as_str()),
            (Tri::False, "ConnectionRefused")
        );
        assert!(
            v.message.contains("failed 2 probes in a row"),
            "{}",
            v.message
        );
        assert_eq!(b, Blocking::NeedsUser);
        // Down stays down on a failure; one pass brings it back.
        let down = condition("False", "ConnectionRefused");
        let (v, _) = probe_verdict(t, Some(&probed(false, "ConnectTimeout", 3)), Some(&down), 2);
        assert_eq!(
            (v.status, v.reason.as_str()),
            (Tri::False, "ConnectTimeout")
        );
        let (v, _) = probe_verdict(t, Some(&probed(true, "Connected", 0)), Some(&down), 2);
        assert_eq!(v.status, Tri::True);
        // Never up: the first failure is False at once (nothing to flap).
        let (v, _) = probe_verdict(t, Some(&probed(false, "CertificateUntrusted", 1)), None, 2);
        assert_eq!(v.status, Tri::False);
        // Skipped because an earlier check failed: Unknown, not a fault of its own.
        let (v, b) = probe_verdict(
            t,
            Some(&probed(false, reasons::NOT_ATTEMPTED, 2)),
            Some(&up),
            2,
        );
        assert_eq!((v.status, b), (Tri::Unknown, Blocking::Waiting));
        // Nothing probed yet.
        let (v, _) = probe_verdict(t, None, None, 2);
        assert_eq!(
            (v.status, v.reason.as_str()),
            (Tri::Unknown, reasons::AWAITING_PROBE)
        );
    }

    #[test]
    fn streaks_follow_the_checks() {
        let check = |ok: bool| crate::probe::Check {
            ok,
            reason: "R".into(),
            message: "m".into(),
        };
        let a = Probed::default().after(&check(false)).after(&check(false));
        assert_eq!(a.failures_in_a_row, 2);
        assert_eq!(a.after(&check(true)).failures_in_a_row, 0);
    }

    #[test]
    fn events_record_changes_and_first_faults_only() {
        let at = time(1);
        let conds = |vs: &[(&'static str, Tri, &str)]| {
            let verdicts: Vec<Verdict> = vs
                .iter()
                .map(|(t, s, r)| Verdict::new(t, *s, r, ""))
                .collect();
            conditions(&verdicts, &[], None, &at)
        };
        let first = conds(&[
            (types::CONFIG_RENDERED, Tri::True, reasons::RENDERED),
            (types::WORKLOAD_READY, Tri::False, reasons::PODS_NOT_READY),
            (types::READY, Tri::False, reasons::NOT_READY),
            (types::RECONCILING, Tri::True, reasons::PROGRESSING),
            (types::STALLED, Tri::False, reasons::SETTLED),
        ]);
        assert!(
            events(&[], &first).is_empty(),
            "a PBX on its way: no Events"
        );
        let ready = conds(&[
            (types::CONFIG_RENDERED, Tri::True, reasons::RENDERED),
            (types::WORKLOAD_READY, Tri::True, reasons::PODS_READY),
            (types::READY, Tri::True, reasons::READY),
            (types::RECONCILING, Tri::False, reasons::SETTLED),
            (types::STALLED, Tri::False, reasons::SETTLED),
        ]);
        let types: Vec<&str> = events(&first, &ready)
            .iter()
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(types, vec![types::WORKLOAD_READY, types::READY]);
        let stuck = conds(&[
            (
                types::CONFIG_RENDERED,
                Tri::False,
                reasons::SECRET_NOT_FOUND,
            ),
            (types::READY, Tri::False, reasons::NOT_READY),
            (types::STALLED, Tri::True, reasons::USER_ACTION_REQUIRED),
        ]);
        let types: Vec<&str> = events(&[], &stuck)
            .iter()
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(
            types,
            vec![types::CONFIG_RENDERED],
            "a fault on first sight"
        );
    }

    #[test]
    fn timestamps_alone_do_not_make_a_patch() {
        let v = vec![Verdict::new(types::READY, Tri::True, reasons::READY, "x")];
        let a = WebRtcPbxStatus {
            conditions: conditions(&v, &[], Some(1), &time(1)),
            ..Default::default()
        };
        let b = WebRtcPbxStatus {
            conditions: conditions(&v, &[], Some(1), &time(2)),
            ..Default::default()
        };
        assert!(same_ignoring_time(&a, &b));
        let c = WebRtcPbxStatus {
            observed_generation: Some(2),
            ..b.clone()
        };
        assert!(!same_ignoring_time(&a, &c));
    }
}

//! The status step (pure): observed facts become Kubernetes conditions.
//! Types and reasons are constants so every writer and reader (tests, Argo CD
//! health checks) spells them one way. `lastTransitionTime` is kept unless a
//! condition's status flips, and [`same_ignoring_time`] lets the controller
//! skip a patch when only timestamps would differ.
//!
//! This file holds the condition machinery (types, reasons, verdicts,
//! summary, timestamps, Events); [`verdicts`] turns each source's facts
//! (validation, certificates, the workload, refusals, probes) into its
//! verdicts, one builder per source.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::WebRtcPbxStatus;

mod verdicts;
pub use verdicts::*;

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
    /// The user-call probe carried audio both ways between two probe users.
    pub const USER_CALL_HEALTHY: &str = "UserCallHealthy";
    /// Summary: everything above that is enabled is True.
    pub const READY: &str = "Ready";
    /// kstatus: the controller is working towards the desired state.
    pub const RECONCILING: &str = "Reconciling";
    /// kstatus: progress is blocked until the user changes something.
    pub const STALLED: &str = "Stalled";
    /// Every type above.
    pub const ALL: [&str; 10] = [
        CONFIG_RENDERED,
        CERTIFICATE_READY,
        WORKLOAD_READY,
        WSS_REACHABLE,
        SIP_REGISTERED,
        ECHO_CALL_HEALTHY,
        USER_CALL_HEALTHY,
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
    /// The pod is being replaced and lets its calls end first.
    pub const DRAINING: &str = "Draining";
    /// A new pod template waits while other PBXs replace their pods.
    pub const ROLLOUT_QUEUED: &str = "RolloutQueued";
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

/// Reconciling for a PBX whose new pod template waits for the rollout
/// budget (`--max-rolling-pbxs`, at most `limit` PBXs at once): the running
/// pod keeps serving, so Ready is left as it is, but the spec has not
/// reached the pod yet. Stalled keeps its say: a user must act first.
pub fn rollout_queued(mut verdicts: Vec<Verdict>, limit: usize) -> Vec<Verdict> {
    let stalled = verdicts
        .iter()
        .any(|v| v.type_ == types::STALLED && v.status == Tri::True);
    let note = format!(
        "a new pod template waits for its turn: other PBXs are replacing their pods, at most {limit} at once (--max-rolling-pbxs); the running pod serves until then"
    );
    if let Some(r) = verdicts.iter_mut().find(|v| v.type_ == types::RECONCILING)
        && !stalled
    {
        *r = match r.status {
            Tri::True => Verdict::new(
                types::RECONCILING,
                Tri::True,
                &r.reason,
                format!("{}; {note}", r.message),
            ),
            _ => Verdict::new(types::RECONCILING, Tri::True, reasons::ROLLOUT_QUEUED, note),
        };
    }
    verdicts
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
/// others. A healthy PBX thus records WorkloadReady and Ready, not one Event
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
mod tests;

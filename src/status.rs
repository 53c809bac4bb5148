//! The status step (pure): observed facts become Kubernetes conditions.
//! Types and reasons are constants so every writer and reader (tests, Argo CD
//! health checks) spells them one way. `lastTransitionTime` is kept unless a
//! condition's status flips, and [`same_ignoring_time`] lets the controller
//! skip a patch when only timestamps would differ.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::WebRtcPbxStatus;

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

/// The conditions whose status changed from `previous` (for Events).
pub fn transitions<'a>(previous: &[Condition], current: &'a [Condition]) -> Vec<&'a Condition> {
    current
        .iter()
        .filter(|c| {
            previous
                .iter()
                .find(|p| p.type_ == c.type_)
                .is_none_or(|p| p.status != c.status || p.reason != c.reason)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(transitions(&second, &third).len(), 1);
        assert!(transitions(&first, &second).is_empty());
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

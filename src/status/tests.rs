//! Unit tests of the condition machinery and of every verdict builder.

use super::*;
use crate::api::ProbesSpec;
use crate::certs::Outcome;
use crate::validate::Problem;

#[test]
fn the_workload_is_ready_waiting_or_blocked_by_another_pbx() {
    let facts = |ready, current, conflict: Option<&str>, scheduler: Option<&str>| WorkloadFacts {
        ready,
        wanted: 1,
        current,
        conflict: conflict.map(Into::into),
        unschedulable: scheduler.map(Into::into),
        draining: None,
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
    // A pod being replaced drains, ready or not, and says how long.
    let draining = |calls| WorkloadFacts {
        draining: Some(Draining {
            active_calls: calls,
            deadline: Some("2026-12-06T18:00:00Z".into()),
        }),
        ..facts(1, true, None, None)
    };
    let (v, b) = workload_verdict(&draining(Some(2)));
    assert_eq!(
        (v.status, v.reason.as_str(), b),
        (Tri::False, reasons::DRAINING, Blocking::Waiting)
    );
    assert!(
        v.message.contains("2 calls active") && v.message.contains("until 2026-12-06T18:00:00Z"),
        "{}",
        v.message
    );
    assert!(
        workload_verdict(&draining(Some(1)))
            .0
            .message
            .contains("1 call active")
    );
    assert!(
        workload_verdict(&draining(None))
            .0
            .message
            .contains("active calls unknown")
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
    let [config, workload] = refusal_verdicts(&[refusal(true, true, "StatefulSet/a")], 7, ready);
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
    let waiting = probe_verdicts(
        &spec,
        [None; 4],
        Some(Awaiting::Workload),
        &[],
        DEFAULT_FLAP_THRESHOLD,
    );
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
        [Some(&ok), None, None, None],
        None,
        &[],
        DEFAULT_FLAP_THRESHOLD,
    );
    assert_eq!(
        (found[0].0.status, found[0].0.reason.as_str()),
        (Tri::True, "Connected")
    );
    assert_eq!(found[1].0.reason, reasons::AWAITING_PROBE);
    // A draining pod is asked what it carries, and no call is placed: the
    // call checks say so, not that probing waits for a ready pod.
    spec.echo_call.enabled = true;
    let draining = probe_verdicts(
        &spec,
        [Some(&ok), Some(&ok), None, None],
        Some(Awaiting::Drain),
        &[],
        DEFAULT_FLAP_THRESHOLD,
    );
    let echo = &draining[2].0;
    assert_eq!(
        (echo.type_, echo.status, echo.reason.as_str()),
        (
            types::ECHO_CALL_HEALTHY,
            Tri::Unknown,
            reasons::AWAITING_PROBE
        )
    );
    assert!(echo.message.contains("while the pod drains"), "{echo:?}");
    assert_eq!(draining[0].0.reason, "Connected");
    // The user call is off by default; on, it is one more condition.
    spec.user_call.enabled = true;
    let failed = Probed {
        ok: false,
        reason: "OneWayAudio".into(),
        message: "one-way audio".into(),
        failures_in_a_row: 2,
    };
    let calling = probe_verdicts(
        &spec,
        [Some(&ok), Some(&ok), None, Some(&failed)],
        None,
        &[],
        DEFAULT_FLAP_THRESHOLD,
    );
    let last = calling.last().unwrap();
    assert_eq!(
        (last.0.type_, last.0.status, last.0.reason.as_str(), last.1),
        (
            types::USER_CALL_HEALTHY,
            Tri::False,
            "OneWayAudio",
            Blocking::NeedsUser
        )
    );
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

fn pods_not_ready() -> (Verdict, Blocking) {
    (
        Verdict::new(
            types::WORKLOAD_READY,
            Tri::False,
            reasons::PODS_NOT_READY,
            "0/1",
        ),
        Blocking::Waiting,
    )
}

#[test]
fn ready_only_when_every_component_is_true() {
    let all = summarize(vec![ok(types::CONFIG_RENDERED), ok(types::WORKLOAD_READY)]);
    let get = |vs: &[Verdict], t: &str| vs.iter().find(|v| v.type_ == t).unwrap().clone();
    assert_eq!(get(&all, types::READY).status, Tri::True);
    assert_eq!(get(&all, types::RECONCILING).status, Tri::False);
    assert_eq!(get(&all, types::STALLED).status, Tri::False);

    let waiting = summarize(vec![ok(types::CONFIG_RENDERED), pods_not_ready()]);
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
fn a_queued_rollout_is_reconciling_and_leaves_ready_alone() {
    let get = |vs: &[Verdict], t: &str| vs.iter().find(|v| v.type_ == t).unwrap().clone();
    let healthy = summarize(vec![ok(types::CONFIG_RENDERED), ok(types::WORKLOAD_READY)]);
    let queued = rollout_queued(healthy.clone(), 5);
    assert_eq!(get(&queued, types::READY), get(&healthy, types::READY));
    let r = get(&queued, types::RECONCILING);
    assert_eq!(
        (r.status, r.reason.as_str()),
        (Tri::True, reasons::ROLLOUT_QUEUED)
    );
    assert!(
        r.message.contains("at most 5 at once (--max-rolling-pbxs)"),
        "{r:?}"
    );
    // Already reconciling: the note joins what it waits for.
    let waiting = summarize(vec![pods_not_ready()]);
    let r = get(&rollout_queued(waiting, 5), types::RECONCILING);
    assert_eq!(r.reason, reasons::PROGRESSING);
    assert!(
        r.message
            .starts_with("waiting for WorkloadReady; a new pod template waits"),
        "{r:?}"
    );
    // Stalled: the user acts first; nothing said of the queue.
    let stuck = summarize(vec![(
        Verdict::new(
            types::CONFIG_RENDERED,
            Tri::False,
            reasons::INVALID_SPEC,
            "x",
        ),
        Blocking::NeedsUser,
    )]);
    assert_eq!(rollout_queued(stuck.clone(), 5), stuck);
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

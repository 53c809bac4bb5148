//! The probe engine, independent of Kubernetes: it tells a PBX admin whether
//! browsers can reach the PBX (WSS), register (REGISTER) and hear audio (a
//! WebRTC echo call, and a call between two users), naming the fault when
//! not. Used by the `probe` command
//! and by the operator's probe scheduler.

pub mod asterisk_metrics;
pub mod digest;
pub mod echo;
mod media;
pub mod quality;
pub mod register;
pub mod session;
pub mod sip;
pub mod step;
pub mod transport;
pub mod user_call;

#[cfg(test)]
mod test_server;

use std::fmt::Write as _;

use serde::Serialize;

pub use step::{Check, NOT_ATTEMPTED, Step};

/// What to probe.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Where and how to connect.
    pub target: transport::Target,
    /// Who registers (the REGISTER check runs when given).
    pub account: Option<register::Account>,
    /// The echo call (needs `account`).
    pub echo: Option<echo::EchoOptions>,
    /// A call from `account` to a second user (needs `account`).
    pub user_call: Option<user_call::UserCallOptions>,
    /// Read Asterisk's own metrics with these credentials.
    pub metrics: Option<asterisk_metrics::Access>,
}

/// Everything one probe run found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The URL probed.
    pub url: String,
    /// Where it dialled.
    pub dialled: String,
    /// Phase timings.
    pub timings: transport::Timings,
    /// The WSS check.
    pub wss: Check,
    /// The phase the WSS check failed in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_phase: Option<transport::Phase>,
    /// The served certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<transport::ServedCertificate>,
    /// The REGISTER check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub register: Option<Check>,
    /// REGISTER figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub register_result: Option<register::RegisterResult>,
    /// The echo-call check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub echo: Option<Check>,
    /// Echo-call figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub echo_result: Option<echo::EchoResult>,
    /// The user-call check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_call: Option<Check>,
    /// User-call figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_call_result: Option<user_call::UserCallResult>,
    /// What Asterisk's own metrics said (read after REGISTER, before the
    /// echo call, so the probe's call is not counted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asterisk: Option<asterisk_metrics::AsteriskFacts>,
    /// Why Asterisk's metrics could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asterisk_error: Option<String>,
    /// Every requested check passed.
    pub ok: bool,
}

/// The longest one run of `request` may take: every step's time limit
/// (connect, TLS, upgrade, two REGISTERs, INVITE, BYE) plus the call, and
/// for a user call its steps (the callee's connect, TLS, upgrade and
/// REGISTER, the caller's INVITE, the media setup, BYE, the callee's
/// unregistering) plus its call.
pub fn budget(request: &Request) -> std::time::Duration {
    let t = request.target.timeout;
    let zero = std::time::Duration::ZERO;
    t * 8
        + request.echo.as_ref().map_or(zero, |e| e.duration)
        + request
            .user_call
            .as_ref()
            .map_or(zero, |u| t * 12 + u.duration)
}

/// Reason of a run cut off at its [`budget`].
pub const RUN_TIMEOUT: &str = "ProbeRunTimeout";

/// Runs the requested checks, cut off at [`budget`]: a PBX that keeps the
/// probe busy (the probed server may be hostile) holds it no longer.
pub async fn run_bounded(request: &Request) -> Report {
    let budget = budget(request);
    match tokio::time::timeout(budget, run(request)).await {
        Ok(report) => report,
        Err(_) => {
            let mut report = new_report(request);
            let cut_off = Check {
                ok: false,
                reason: RUN_TIMEOUT.into(),
                message: format!(
                    "the probe run did not finish within {budget:?} (every step's time limit plus the call) and was cut off"
                ),
            };
            report.register = request.account.as_ref().map(|_| cut_off.clone());
            report.echo = request.echo.as_ref().map(|_| cut_off.clone());
            report.user_call = request.user_call.as_ref().map(|_| cut_off.clone());
            report.wss = cut_off;
            report
        }
    }
}

fn new_report(request: &Request) -> Report {
    let target = &request.target;
    let dialled = target.connect_to.clone().unwrap_or_else(|| {
        format!(
            "{}:{}",
            target.url.host_str().unwrap_or_default(),
            target.url.port_or_known_default().unwrap_or(443)
        )
    });
    Report {
        url: target.url.to_string(),
        dialled,
        timings: transport::Timings::default(),
        wss: Check {
            ok: false,
            reason: String::new(),
            message: String::new(),
        },
        failed_phase: None,
        certificate: None,
        register: None,
        register_result: None,
        echo: None,
        echo_result: None,
        user_call: None,
        user_call_result: None,
        asterisk: None,
        asterisk_error: None,
        ok: false,
    }
}

/// Runs the requested checks: each step in turn, the next only when the
/// one before passed.
pub async fn run(request: &Request) -> Report {
    let target = &request.target;
    let mut report = new_report(request);
    let (wss, ws) = transport::step(target).await;
    report.wss = wss.check;
    report.timings = wss.figures.timings;
    report.failed_phase = wss.figures.failed_phase;
    report.certificate = wss.figures.certificate;
    let Some(mut ws) = ws else {
        let skipped = || Check::not_attempted("the WebSocket did not open");
        report.register = request.account.as_ref().map(|_| skipped());
        report.echo = request.echo.as_ref().map(|_| skipped());
        report.user_call = request.user_call.as_ref().map(|_| skipped());
        return report;
    };
    if let Some(account) = &request.account {
        let register = register::step(&mut ws, account, target.timeout).await;
        let registered = register.check.ok;
        report.register = Some(register.check);
        report.register_result = Some(register.figures);
        read_asterisk_metrics(request, &mut report).await;
        if let Some(options) = &request.echo {
            if registered {
                let echo = echo::step(&mut ws, account, options).await;
                report.echo = Some(echo.check);
                report.echo_result = Some(echo.figures);
            } else {
                // The INVITE would fail the same way: name the real cause.
                report.echo = Some(Check::not_attempted(
                    "REGISTER failed, so no call was placed",
                ));
            }
        }
        if let Some(options) = &request.user_call {
            if registered {
                let call = user_call::step(&mut ws, account, target, options).await;
                report.user_call = Some(call.check);
                report.user_call_result = Some(call.figures);
            } else {
                report.user_call = Some(Check::not_attempted(
                    "REGISTER failed, so no call was placed",
                ));
            }
        }
    }
    if request.account.is_none() {
        read_asterisk_metrics(request, &mut report).await;
    }
    let _ = ws.close(None).await;
    report.ok = report.wss.ok
        && report.register.as_ref().is_none_or(|c| c.ok)
        && report.echo.as_ref().is_none_or(|c| c.ok)
        && report.user_call.as_ref().is_none_or(|c| c.ok);
    report
}

/// Asterisk's own metrics, when asked for; a failure is recorded, never a
/// failed check (a custom image may lack res_prometheus).
async fn read_asterisk_metrics(request: &Request, report: &mut Report) {
    let Some(access) = &request.metrics else {
        return;
    };
    let probe_users: Vec<&str> = request
        .account
        .iter()
        .map(|a| a.user.as_str())
        .chain(request.user_call.iter().map(|u| u.callee.user.as_str()))
        .collect();
    match asterisk_metrics::fetch(&request.target, access, &probe_users).await {
        Ok(facts) => report.asterisk = Some(facts),
        Err(message) => report.asterisk_error = Some(message),
    }
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1} ms"))
        .unwrap_or_else(|| "-".into())
}

/// The report as a table for people: one line per phase.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "probe {} (dialling {})", report.url, report.dialled);
    let t = &report.timings;
    let failed = report.failed_phase;
    let line = |out: &mut String, name: &str, ms: Option<f64>, phase: transport::Phase| {
        let verdict = match (ms, failed) {
            (Some(_), _) => "ok".to_string(),
            (None, Some(p)) if p == phase => {
                format!("FAIL {}: {}", report.wss.reason, report.wss.message)
            }
            _ => "-".to_string(),
        };
        let _ = writeln!(out, "  {name:<10} {:>10}  {verdict}", fmt_ms(ms));
    };
    line(&mut out, "dns", t.dns_ms, transport::Phase::Dns);
    line(&mut out, "connect", t.connect_ms, transport::Phase::Connect);
    line(&mut out, "tls", t.tls_ms, transport::Phase::Tls);
    line(&mut out, "upgrade", t.upgrade_ms, transport::Phase::Upgrade);
    if let Some(c) = &report.certificate {
        let _ = writeln!(
            out,
            "  {:<10} {:>10}  {} [{}] expires {} ({} days)",
            "cert",
            "",
            c.subject,
            c.dns_names.join(", "),
            c.not_after,
            c.days_to_expiry
        );
    }
    let check_line = |out: &mut String, name: &str, check: Option<&Check>, ms: Option<f64>| {
        if let Some(c) = check {
            let verdict = if c.ok {
                format!("ok {}", c.message)
            } else {
                format!("FAIL {}: {}", c.reason, c.message)
            };
            let _ = writeln!(out, "  {name:<10} {:>10}  {verdict}", fmt_ms(ms));
        }
    };
    check_line(
        &mut out,
        "register",
        report.register.as_ref(),
        report
            .register_result
            .as_ref()
            .and_then(|r| r.round_trip_ms),
    );
    check_line(
        &mut out,
        "echo",
        report.echo.as_ref(),
        report.echo_result.as_ref().and_then(|r| r.rtt_median_ms),
    );
    if let Some(r) = &report.echo_result {
        let p = &r.phases;
        let _ = writeln!(
            out,
            "  {:<10} {:>10}  invite {}, ice {}, dtls {}, first echo {}",
            "setup",
            fmt_ms(r.setup_ms),
            fmt_ms(p.invite_ms),
            fmt_ms(p.ice_ms),
            fmt_ms(p.dtls_ms),
            fmt_ms(p.first_echo_ms)
        );
        if let (Some(mos), Some(r_factor)) = (r.mos, r.r_factor) {
            let _ = writeln!(
                out,
                "  {:<10} {:>10}  E-model R {r_factor:.1}",
                "mos",
                format!("{mos:.2}")
            );
        }
    }
    check_line(
        &mut out,
        "user call",
        report.user_call.as_ref(),
        report
            .user_call_result
            .as_ref()
            .and_then(|r| r.round_trip_ms),
    );
    if let Some(a) = &report.asterisk {
        let _ = writeln!(
            out,
            "  {:<10} {:>10}  {} channels, {} of {} endpoints online, up {} s",
            "calls",
            a.active_calls,
            a.active_channels,
            a.endpoints_online,
            a.endpoints,
            a.uptime_seconds
        );
    }
    if let Some(e) = &report.asterisk_error {
        let _ = writeln!(out, "  {:<10} {:>10}  {e}", "metrics", "-");
    }
    let _ = writeln!(out, "result: {}", if report.ok { "PASS" } else { "FAIL" });
    out
}

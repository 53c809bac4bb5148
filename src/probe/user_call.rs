//! The user-call probe: the probe user calls a second probe user through
//! the dialplan, both legs WebRTC (str0m: ICE, DTLS-SRTP, PCMU 20 ms), and
//! each end sends sequence-numbered audio to the other. Both ends run in
//! this process on one clock, so each direction is measured on its own:
//! packets, loss, one-way delay and jitter, and a silent direction is
//! named (OneWayAudio) instead of averaged away.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::Serialize;
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::media::Mid;

use super::echo::{Leg, audio_offer, fix_connection_address, media_end, ms_between};
use super::media::{self, Media};
use super::quality;
use super::register::{self, Account};
use super::session::{InviteError, Session};
use super::sip::Message;
use super::step::{Check, Step};
use super::transport::{self, Target, Wss};

/// Frames one end may send in a call of `duration` (with slack): the most
/// sequence numbers the other end accepts.
fn frame_limit(duration: Duration) -> usize {
    usize::try_from(duration.as_millis() / 20).unwrap_or(usize::MAX) + 100
}

/// What to call and when to judge.
#[derive(Debug, Clone, PartialEq)]
pub struct UserCallOptions {
    /// The second probe user, the callee (registers on a WebSocket of its own).
    pub callee: Account,
    /// What the caller dials to reach the callee.
    pub extension: String,
    /// How long both ends send audio.
    pub duration: Duration,
    /// Limit of each setup phase (WSS, REGISTER, INVITE, ICE, DTLS).
    pub timeout: Duration,
    /// Local address of the caller's media.
    pub media_ip: IpAddr,
    /// Local address of the callee's media.
    pub callee_media_ip: IpAddr,
    /// Loss above this in either direction, percent, is HighLoss.
    pub max_loss_percent: f64,
    /// Round trip (one way there plus one way back) above this, ms, is HighLatency.
    pub max_rtt_ms: f64,
    /// An E-model MOS below this in either direction is PoorCallQuality.
    pub min_mos: f64,
}

/// One end of the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum End {
    /// The probe user that dials.
    Caller,
    /// The probe user that answers.
    Callee,
}

/// One direction of the call's audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Way {
    /// Caller to callee.
    CallerToCallee,
    /// Callee to caller.
    CalleeToCaller,
}

impl Way {
    fn describe(self) -> &'static str {
        match self {
            Way::CallerToCallee => "caller to callee",
            Way::CalleeToCaller => "callee to caller",
        }
    }
}

/// How the user call ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "reason")]
pub enum UserCallOutcome {
    /// Audio flowed both ways.
    Healthy,
    /// The callee could not open its WebSocket or register.
    CalleeNotRegistered {
        /// The failed step's reason and message.
        detail: String,
    },
    /// The caller's INVITE got a final error.
    CallRejected {
        /// Status code.
        status: u16,
    },
    /// The caller's INVITE was answered, but not by the callee.
    CalleeNotReached,
    /// No final answer to the INVITE in time.
    Timeout,
    /// A WebSocket closed during setup.
    TransportClosed,
    /// No ICE connectivity between one end and the PBX.
    IceFailed {
        /// The end that had none.
        end: End,
    },
    /// ICE connected, DTLS-SRTP did not, at one end.
    DtlsFailed {
        /// The end whose handshake failed.
        end: End,
    },
    /// Connected, but no audio arrived in either direction.
    NoMediaReceived,
    /// Audio of another call arrived in this one.
    CrossTalk,
    /// Audio flowed one way only.
    OneWayAudio {
        /// The direction that stayed silent.
        silent: Way,
    },
    /// One end's call dropped at this second.
    CallDropped {
        /// The end that saw it.
        end: End,
        /// Seconds after its media started.
        at_second: f64,
    },
    /// Too much loss in one direction.
    HighLoss {
        /// The worse direction.
        way: Way,
    },
    /// Round trip too long.
    HighLatency,
    /// The E-model's MOS estimate below the threshold.
    PoorCallQuality,
}

impl UserCallOutcome {
    /// The UserCallHealthy reason.
    pub fn reason(&self) -> &'static str {
        match self {
            UserCallOutcome::Healthy => "Healthy",
            UserCallOutcome::CalleeNotRegistered { .. } => "CalleeNotRegistered",
            UserCallOutcome::CallRejected { .. } => "CallRejected",
            UserCallOutcome::CalleeNotReached => "CalleeNotReached",
            UserCallOutcome::Timeout => "Timeout",
            UserCallOutcome::TransportClosed => "TransportClosed",
            UserCallOutcome::IceFailed { .. } => "IceFailed",
            UserCallOutcome::DtlsFailed { .. } => "DtlsFailed",
            UserCallOutcome::NoMediaReceived => "NoMediaReceived",
            UserCallOutcome::CrossTalk => "CrossTalk",
            UserCallOutcome::OneWayAudio { .. } => "OneWayAudio",
            UserCallOutcome::CallDropped { .. } => "CallDropped",
            UserCallOutcome::HighLoss { .. } => "HighLoss",
            UserCallOutcome::HighLatency => "HighLatency",
            UserCallOutcome::PoorCallQuality => "PoorCallQuality",
        }
    }
}

/// What one direction of the call measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WayFigures {
    /// Packets sent while both ends were connected.
    pub sent: u32,
    /// Of those, packets received (each once).
    pub received: u32,
    /// Loss, percent of sent.
    pub loss_percent: Option<f64>,
    /// Median one-way delay, ms.
    pub delay_median_ms: Option<f64>,
    /// 95th percentile one-way delay, ms.
    pub delay_p95_ms: Option<f64>,
    /// Interarrival jitter (RFC 3550), ms.
    pub jitter_ms: Option<f64>,
}

impl From<media::Figures> for WayFigures {
    fn from(f: media::Figures) -> Self {
        Self {
            sent: f.sent,
            received: f.received,
            loss_percent: f.loss_percent,
            delay_median_ms: f.delay_median_ms,
            delay_p95_ms: f.delay_p95_ms,
            jitter_ms: f.jitter_ms,
        }
    }
}

/// What the user call measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserCallResult {
    /// The outcome.
    pub outcome: UserCallOutcome,
    /// The caller's INVITE to its 200 OK (the callee answering included), ms.
    pub invite_ms: Option<f64>,
    /// The caller's INVITE to both ends' DTLS-SRTP up, ms.
    pub setup_ms: Option<f64>,
    /// Audio from caller to callee.
    pub caller_to_callee: WayFigures,
    /// Audio from callee to caller.
    pub callee_to_caller: WayFigures,
    /// Median delay there plus median delay back, ms.
    pub round_trip_ms: Option<f64>,
    /// Marked packets of another call that arrived at either end.
    pub foreign_packets: u32,
    /// E-model R of the worse direction.
    pub r_factor: Option<f64>,
    /// E-model MOS of the worse direction (1-4.5).
    pub mos: Option<f64>,
}

impl UserCallResult {
    fn failed(outcome: UserCallOutcome) -> Self {
        Self {
            outcome,
            invite_ms: None,
            setup_ms: None,
            caller_to_callee: WayFigures::default(),
            callee_to_caller: WayFigures::default(),
            round_trip_ms: None,
            foreign_packets: 0,
            r_factor: None,
            mos: None,
        }
    }

    fn way(&self, way: Way) -> &WayFigures {
        match way {
            Way::CallerToCallee => &self.caller_to_callee,
            Way::CalleeToCaller => &self.callee_to_caller,
        }
    }

    /// What happened, for people: the fault and where to look.
    pub fn message(&self, options: &UserCallOptions) -> String {
        let v = |v: Option<f64>| v.unwrap_or_default();
        let callee = &options.callee.user;
        let figures = |w: Way| {
            let f = self.way(w);
            format!(
                "{} {}/{} packets, loss {:.1} %, delay {:.1} ms, jitter {:.1} ms",
                w.describe(),
                f.received,
                f.sent,
                v(f.loss_percent),
                v(f.delay_median_ms),
                v(f.jitter_ms)
            )
        };
        match &self.outcome {
            UserCallOutcome::Healthy => format!(
                "call to {callee} carried audio both ways: {}; {}",
                figures(Way::CallerToCallee),
                figures(Way::CalleeToCaller)
            ),
            UserCallOutcome::CalleeNotRegistered { detail } => {
                format!("the callee {callee} could not register: {detail}")
            }
            UserCallOutcome::CallRejected { status: 488 } => {
                "488 Not Acceptable Here: a WebRTC offer between the PBX and a probe user was refused (webrtc=yes, DTLS-SRTP, PCMU)".into()
            }
            UserCallOutcome::CallRejected { status } => format!(
                "the call to {} answered {status}: the dialplan does not reach the callee, or the callee is not registered",
                options.extension
            ),
            UserCallOutcome::CalleeNotReached => format!(
                "the call to {} was answered, but the callee {callee} never received it: the dialplan answers the extension itself",
                options.extension
            ),
            UserCallOutcome::Timeout => format!(
                "no final answer to the INVITE of {} in time (the PBX did not reach the callee)",
                options.extension
            ),
            UserCallOutcome::TransportClosed => "a WebSocket closed during the call's setup".into(),
            UserCallOutcome::IceFailed { end } => format!(
                "no ICE connectivity between the {} and the PBX's media within {} s: the RTP ports (UDP, rtp.portRange) are closed, or NAT hides the PBX (network.externalAddress)",
                end_name(*end),
                options.timeout.as_secs()
            ),
            UserCallOutcome::DtlsFailed { end } => format!(
                "ICE connected but the DTLS-SRTP handshake of the {} failed",
                end_name(*end)
            ),
            UserCallOutcome::NoMediaReceived => {
                "the call connected but no audio arrived in either direction: the PBX bridges the call without media".into()
            }
            UserCallOutcome::CrossTalk => format!(
                "{} packets of another call arrived in this one: the PBX crossed media between calls (RTP ports shared by two PBXs on one host?)",
                self.foreign_packets
            ),
            UserCallOutcome::OneWayAudio { silent } => format!(
                "one-way audio: nothing arrived from {} ({}/{} packets) while the other way carried audio: NAT (network.externalAddress, localNetworks) or a firewall dropping RTP one way",
                silent.describe(),
                self.way(*silent).received,
                self.way(*silent).sent
            ),
            UserCallOutcome::CallDropped { end, at_second } => format!(
                "the call dropped at second {at_second:.0} at the {}: a NAT or firewall timeout (sip.keepAliveInterval) or the PBX hung up",
                end_name(*end)
            ),
            UserCallOutcome::HighLoss { way } => format!(
                "{:.1} % of packets lost from {} (limit {} %)",
                v(self.way(*way).loss_percent),
                way.describe(),
                options.max_loss_percent
            ),
            UserCallOutcome::HighLatency => format!(
                "round trip {:.1} ms between the two users (limit {} ms)",
                v(self.round_trip_ms),
                options.max_rtt_ms
            ),
            UserCallOutcome::PoorCallQuality => format!(
                "estimated MOS {:.2} (E-model R {:.0}) below {}: {}; {}",
                v(self.mos),
                v(self.r_factor),
                options.min_mos,
                figures(Way::CallerToCallee),
                figures(Way::CalleeToCaller)
            ),
        }
    }
}

fn end_name(end: End) -> &'static str {
    match end {
        End::Caller => "caller",
        End::Callee => "callee",
    }
}

/// What each end of a connected call brought back, for [`judge`].
struct Ends<'a> {
    caller: &'a Media,
    callee: &'a Media,
    caller_dropped: Option<f64>,
    callee_dropped: Option<f64>,
}

/// The verdict and figures of a connected call (pure). Packets count from
/// the moment both ends were connected: before that the PBX has no leg to
/// forward them to.
fn judge(
    ends: &Ends<'_>,
    setup: Instant,
    answered: Instant,
    opts: &UserCallOptions,
) -> UserCallResult {
    let both_up = ends.caller.dtls_connected.zip(ends.callee.dtls_connected);
    let since = both_up.map(|(a, b)| a.max(b));
    let from = |sent_at: &[Instant]| -> usize {
        since.map_or(sent_at.len(), |t| sent_at.partition_point(|s| *s < t))
    };
    let way = |sender: &Media, receiver: &Media| {
        let skip = from(&sender.sent_at);
        let shifted: Vec<(u32, Instant)> = receiver
            .arrivals
            .iter()
            .filter_map(|&(seq, at)| {
                let index = (seq as usize).checked_sub(skip)?;
                Some((u32::try_from(index).ok()?, at))
            })
            .collect();
        media::direction(&sender.sent_at[skip..], &shifted)
    };
    let forward = way(ends.caller, ends.callee);
    let backward = way(ends.callee, ends.caller);
    let round_trip = forward
        .delay_median_ms
        .zip(backward.delay_median_ms)
        .map(|(a, b)| a + b);
    let rate = |f: &media::Figures| {
        round_trip.zip(f.loss_percent).map(|(rtt, loss)| {
            quality::rate(rtt, loss, f.jitter_ms.unwrap_or(0.0), quality::Codec::Pcmu)
        })
    };
    let worse = match (rate(&forward), rate(&backward)) {
        (Some(a), Some(b)) => Some(if a.mos <= b.mos { a } else { b }),
        (a, b) => a.or(b),
    };
    let loss = |f: &media::Figures| f.loss_percent.unwrap_or(0.0);
    let (lossier, lossier_figures) = if loss(&backward) > loss(&forward) {
        (Way::CalleeToCaller, &backward)
    } else {
        (Way::CallerToCallee, &forward)
    };
    let foreign = ends.caller.foreign_packets + ends.callee.foreign_packets;
    let outcome = if let Some(at_second) = ends.caller_dropped {
        UserCallOutcome::CallDropped {
            end: End::Caller,
            at_second,
        }
    } else if let Some(at_second) = ends.callee_dropped {
        UserCallOutcome::CallDropped {
            end: End::Callee,
            at_second,
        }
    } else if ends.caller.ice_connected.is_none() {
        UserCallOutcome::IceFailed { end: End::Caller }
    } else if ends.callee.ice_connected.is_none() {
        UserCallOutcome::IceFailed { end: End::Callee }
    } else if ends.caller.dtls_connected.is_none() {
        UserCallOutcome::DtlsFailed { end: End::Caller }
    } else if ends.callee.dtls_connected.is_none() {
        UserCallOutcome::DtlsFailed { end: End::Callee }
    } else if foreign > 0 {
        UserCallOutcome::CrossTalk
    } else if forward.received == 0 && backward.received == 0 {
        UserCallOutcome::NoMediaReceived
    } else if forward.received == 0 {
        UserCallOutcome::OneWayAudio {
            silent: Way::CallerToCallee,
        }
    } else if backward.received == 0 {
        UserCallOutcome::OneWayAudio {
            silent: Way::CalleeToCaller,
        }
    } else if loss(lossier_figures) > opts.max_loss_percent {
        UserCallOutcome::HighLoss { way: lossier }
    } else if round_trip.unwrap_or(0.0) > opts.max_rtt_ms {
        UserCallOutcome::HighLatency
    } else if worse.is_some_and(|q| q.mos < opts.min_mos) {
        UserCallOutcome::PoorCallQuality
    } else {
        UserCallOutcome::Healthy
    };
    UserCallResult {
        outcome,
        invite_ms: Some(ms_between(setup, answered)),
        setup_ms: since.map(|t| ms_between(setup, t)),
        caller_to_callee: forward.into(),
        callee_to_caller: backward.into(),
        round_trip_ms: round_trip,
        foreign_packets: foreign,
        r_factor: worse.map(|q| q.r_factor),
        mos: worse.map(|q| q.mos),
    }
}

/// The `a=mid` of the first audio m-line of `sdp`.
fn audio_mid(sdp: &str) -> Option<Mid> {
    let audio = sdp.split("\nm=").find(|m| m.starts_with("audio "))?;
    audio
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("a=mid:"))
        .map(Mid::from)
}

/// The callee's side of the setup: waits for the PBX's INVITE, answers
/// its WebRTC offer with 200 OK. Returns the INVITE and the media line.
async fn answer(
    session: &mut Session<'_>,
    rtc: &mut str0m::Rtc,
    local: std::net::SocketAddr,
    user: &str,
) -> Result<(Message, Mid), UserCallOutcome> {
    let invite = session
        .wait_request("INVITE")
        .await
        .map_err(|_| UserCallOutcome::Timeout)?;
    // The PBX's WebRTC offer, answered the way a browser would.
    let accepted = SdpOffer::from_sdp_string(&invite.body)
        .ok()
        .and_then(|offer| rtc.sdp_api().accept_offer(offer).ok())
        .and_then(|answer| {
            let mid = audio_mid(&invite.body).filter(|mid| rtc.media(*mid).is_some())?;
            Some((answer, mid))
        });
    let Some((answer, mid)) = accepted else {
        session.reply(&invite, 488, "Not Acceptable Here").await;
        return Err(UserCallOutcome::CallRejected { status: 488 });
    };
    let sdp = fix_connection_address(&answer.to_sdp_string(), local);
    session.accept(&invite, user, &sdp).await;
    Ok((invite, mid))
}

/// Places the user call: the caller on `caller_ws` (open, idle), the
/// callee on a WebSocket of its own to `target`.
pub async fn call(
    caller_ws: &mut Wss,
    caller: &Account,
    target: &Target,
    opts: &UserCallOptions,
) -> UserCallResult {
    let (wss, callee_ws) = transport::step(target).await;
    let Some(mut callee_ws) = callee_ws else {
        return UserCallResult::failed(UserCallOutcome::CalleeNotRegistered {
            detail: format!("WebSocket: {}: {}", wss.check.reason, wss.check.message),
        });
    };
    let mut callee_session = Session::new(&mut callee_ws, opts.timeout);
    let (registered, _) = register::bind(&mut callee_session, &opts.callee, 60).await;
    if registered != register::Outcome::Registered {
        return UserCallResult::failed(UserCallOutcome::CalleeNotRegistered {
            detail: format!(
                "REGISTER: {}: {}",
                registered.reason(),
                registered.message(&opts.callee)
            ),
        });
    }
    let result = connected_call(caller_ws, caller, &mut callee_session, opts).await;
    let _ = register::bind(&mut callee_session, &opts.callee, 0).await;
    drop(callee_session);
    let _ = callee_ws.close(None).await;
    result
}

/// The call between a caller on `caller_ws` and a registered callee.
async fn connected_call(
    caller_ws: &mut Wss,
    caller: &Account,
    callee_session: &mut Session<'_>,
    opts: &UserCallOptions,
) -> UserCallResult {
    let start = Instant::now();
    let Some((caller_socket, caller_local, mut caller_rtc)) = media_end(opts.media_ip, start).await
    else {
        return UserCallResult::failed(UserCallOutcome::IceFailed { end: End::Caller });
    };
    let Some((callee_socket, callee_local, mut callee_rtc)) =
        media_end(opts.callee_media_ip, start).await
    else {
        return UserCallResult::failed(UserCallOutcome::IceFailed { end: End::Callee });
    };
    let Some((caller_mid, offer_sdp, pending)) = audio_offer(&mut caller_rtc, caller_local) else {
        return UserCallResult::failed(UserCallOutcome::CallRejected { status: 0 });
    };

    let mut caller_session = Session::new(caller_ws, opts.timeout);
    let setup = Instant::now();
    // Both sides of the setup at once: the PBX answers the caller only
    // after the callee answered it.
    let mut answered_by_callee = None;
    let invited = {
        let callee = answer(
            &mut *callee_session,
            &mut callee_rtc,
            callee_local,
            &opts.callee.user,
        );
        let caller_invite = caller_session.invite(caller, &opts.extension, &offer_sdp);
        tokio::pin!(callee, caller_invite);
        loop {
            tokio::select! {
                r = &mut callee, if answered_by_callee.is_none() => answered_by_callee = Some(r),
                r = &mut caller_invite => break r,
            }
        }
    };
    let answered = Instant::now();
    // The callee refusing the PBX's offer says more than what the PBX then
    // answered the caller.
    if let Some(Err(refused @ UserCallOutcome::CallRejected { .. })) = &answered_by_callee {
        if let Ok((invite, response)) = &invited {
            caller_session.bye(invite, response).await;
        }
        return UserCallResult::failed(refused.clone());
    }
    let (invite, response) = match invited {
        Ok(call) => call,
        Err(InviteError::Timeout) => return UserCallResult::failed(UserCallOutcome::Timeout),
        Err(InviteError::Closed) => {
            return UserCallResult::failed(UserCallOutcome::TransportClosed);
        }
        Err(InviteError::Rejected(status)) => {
            return UserCallResult::failed(UserCallOutcome::CallRejected { status });
        }
    };
    let callee_mid = match answered_by_callee {
        Some(Ok((_, mid))) => mid,
        Some(Err(outcome)) => {
            caller_session.bye(&invite, &response).await;
            return UserCallResult::failed(outcome);
        }
        None => {
            caller_session.bye(&invite, &response).await;
            return UserCallResult::failed(UserCallOutcome::CalleeNotReached);
        }
    };
    let status = response.status().unwrap_or(0);
    let accepted = SdpAnswer::from_sdp_string(&response.body)
        .ok()
        .is_some_and(|a| caller_rtc.sdp_api().accept_answer(pending, a).is_ok());
    if !accepted {
        caller_session.bye(&invite, &response).await;
        return UserCallResult::failed(UserCallOutcome::CallRejected { status });
    }

    // One call, one id: both ends mark their packets with it.
    let call_id: [u8; 4] = rand::random();
    let (mut caller_media, mut callee_media) = (Media::for_call(call_id), Media::for_call(call_id));
    let limit = Some(frame_limit(opts.duration));
    let (caller_dropped, callee_dropped) = tokio::join!(
        Leg {
            rtc: &mut caller_rtc,
            socket: &caller_socket,
            local: caller_local,
            mid: caller_mid,
            session: &mut caller_session,
            media: &mut caller_media,
        }
        .media_loop(opts.timeout, opts.duration, limit),
        Leg {
            rtc: &mut callee_rtc,
            socket: &callee_socket,
            local: callee_local,
            mid: callee_mid,
            session: &mut *callee_session,
            media: &mut callee_media,
        }
        .media_loop(opts.timeout, opts.duration, limit),
    );
    // The caller hangs up; the PBX passes the BYE on to the callee.
    let hang_up = async {
        if caller_dropped.is_none() {
            caller_session.bye(&invite, &response).await;
        }
    };
    let passed_on = async {
        if callee_dropped.is_none()
            && let Ok(bye) = callee_session.wait_request("BYE").await
        {
            callee_session.reply(&bye, 200, "OK").await;
        }
    };
    tokio::join!(hang_up, passed_on);
    let ends = Ends {
        caller: &caller_media,
        callee: &callee_media,
        caller_dropped,
        callee_dropped,
    };
    judge(&ends, setup, answered, opts)
}

/// The user-call step: [`call`], and its UserCallHealthy verdict.
pub async fn step(
    caller_ws: &mut Wss,
    caller: &Account,
    target: &Target,
    options: &UserCallOptions,
) -> Step<UserCallResult> {
    let figures = call(caller_ws, caller, target, options).await;
    let check = Check {
        ok: figures.outcome == UserCallOutcome::Healthy,
        reason: figures.outcome.reason().into(),
        message: figures.message(options),
    };
    Step { check, figures }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> UserCallOptions {
        UserCallOptions {
            callee: Account {
                domain: "pbx.example".into(),
                user: "wpbx-probe-callee".into(),
                password: "pw".into(),
            },
            extension: "wpbx-probe-callee".into(),
            duration: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            media_ip: IpAddr::from([127, 0, 0, 1]),
            callee_media_ip: IpAddr::from([127, 0, 0, 1]),
            max_loss_percent: 5.0,
            max_rtt_ms: 400.0,
            min_mos: 3.6,
        }
    }

    /// An end connected at `up` that sent `frames` frames 20 ms apart from
    /// `up` on, and received the other end's `arrived` sequence numbers
    /// `delay_ms` after they were sent by `other` (its send times).
    fn end(up: Instant, frames: u32) -> Media {
        let mut m = Media {
            ice_connected: Some(up),
            dtls_connected: Some(up),
            ..Media::default()
        };
        for i in 0..frames {
            m.sent_at
                .push(up + Duration::from_millis(20 * u64::from(i)));
        }
        m
    }

    fn ends<'a>(caller: &'a Media, callee: &'a Media) -> Ends<'a> {
        Ends {
            caller,
            callee,
            caller_dropped: None,
            callee_dropped: None,
        }
    }

    fn receive(
        receiver: &mut Media,
        sender: &Media,
        seqs: impl Iterator<Item = u32>,
        delay_ms: u64,
    ) {
        for seq in seqs {
            let packet = sender.mark(seq);
            let at = sender.sent_at[seq as usize] + Duration::from_millis(delay_ms);
            receiver.on_packet(&packet, at, 1000);
        }
    }

    #[test]
    fn each_direction_is_measured_on_its_own_and_a_silent_one_is_named() {
        let t0 = Instant::now();
        let mut caller = end(t0, 50);
        let mut callee = end(t0, 50);
        receive(&mut callee, &caller.clone_sent(), 0..50, 10);
        receive(&mut caller, &callee.clone_sent(), 0..50, 30);
        let call = ends(&caller, &callee);
        let healthy = judge(&call, t0, t0, &options());
        assert_eq!(healthy.outcome, UserCallOutcome::Healthy);
        assert_eq!(healthy.caller_to_callee.received, 50);
        assert!(
            healthy
                .caller_to_callee
                .delay_median_ms
                .is_some_and(|d| (d - 10.0).abs() < 0.5)
        );
        assert!(
            healthy
                .callee_to_caller
                .delay_median_ms
                .is_some_and(|d| (d - 30.0).abs() < 0.5)
        );
        assert!(
            healthy
                .round_trip_ms
                .is_some_and(|d| (d - 40.0).abs() < 1.0)
        );
        assert!(healthy.message(&options()).contains("both ways"));

        // Nothing from the callee reaches the caller.
        let mut deaf = end(t0, 50);
        deaf.arrivals.clear();
        let call = ends(&deaf, &callee);
        let one_way = judge(&call, t0, t0, &options());
        assert_eq!(
            one_way.outcome,
            UserCallOutcome::OneWayAudio {
                silent: Way::CalleeToCaller
            }
        );
        assert_eq!(one_way.outcome.reason(), "OneWayAudio");
        assert!(
            one_way
                .message(&options())
                .contains("from callee to caller (0/50")
        );
    }

    #[test]
    fn the_audio_mid_is_read_from_the_offer() {
        let sdp = "v=0\r\ns=-\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:v\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=rtcp-mux\r\na=mid:audio0\r\n";
        assert_eq!(audio_mid(sdp), Some(Mid::from("audio0")));
        assert_eq!(audio_mid("v=0\r\nm=audio 9 RTP/AVP 0\r\n"), None);
    }

    #[test]
    fn packets_sent_before_both_ends_connected_are_not_loss() {
        let t0 = Instant::now();
        let late = t0 + Duration::from_millis(100);
        // The callee was up 100 ms (5 frames) before the caller: the PBX had
        // nowhere to send those 5.
        let mut callee = end(t0, 55);
        let mut caller = end(late, 50);
        receive(&mut callee, &caller.clone_sent(), 0..50, 5);
        receive(&mut caller, &callee.clone_sent(), 5..55, 5);
        let call = ends(&caller, &callee);
        let r = judge(&call, t0, t0, &options());
        assert_eq!(r.outcome, UserCallOutcome::Healthy, "{r:?}");
        assert_eq!(
            (r.callee_to_caller.sent, r.callee_to_caller.received),
            (50, 50)
        );
        assert_eq!(r.callee_to_caller.loss_percent, Some(0.0));
    }

    #[test]
    fn loss_one_way_is_high_loss_of_that_way_and_a_drop_names_its_end() {
        let t0 = Instant::now();
        let mut caller = end(t0, 100);
        let mut callee = end(t0, 100);
        receive(
            &mut callee,
            &caller.clone_sent(),
            (0..100).filter(|s| s % 10 != 0),
            5,
        );
        receive(&mut caller, &callee.clone_sent(), 0..100, 5);
        let mut call = ends(&caller, &callee);
        let r = judge(&call, t0, t0, &options());
        assert_eq!(
            r.outcome,
            UserCallOutcome::HighLoss {
                way: Way::CallerToCallee
            }
        );
        assert!(
            r.message(&options())
                .contains("10.0 % of packets lost from caller to callee")
        );
        // One packet of another call at the caller: crossed media.
        let mut crossed = end(t0, 100);
        receive(&mut crossed, &callee.clone_sent(), 0..100, 5);
        crossed.on_packet(&Media::for_call(*b"else").mark(3), t0, 1000);
        let r = judge(&ends(&crossed, &callee), t0, t0, &options());
        assert_eq!(
            (r.outcome.clone(), r.foreign_packets),
            (UserCallOutcome::CrossTalk, 1)
        );
        call.callee_dropped = Some(31.0);
        let dropped = judge(&call, t0, t0, &options());
        assert_eq!(
            dropped.outcome,
            UserCallOutcome::CallDropped {
                end: End::Callee,
                at_second: 31.0
            }
        );
    }

    impl Media {
        fn clone_sent(&self) -> Media {
            Media {
                sent_at: self.sent_at.clone(),
                ..Media::for_call(self.call)
            }
        }
    }
}

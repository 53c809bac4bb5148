//! The echo-call probe: INVITE the echo extension with a WebRTC offer
//! (str0m: ICE host candidate, DTLS-SRTP, rtcp-mux, PCMU 20 ms), send audio
//! whose payload carries a sequence number, and measure what comes back:
//! round trip, loss, jitter (RFC 3550), and when media or the dialog stopped.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use str0m::change::SdpAnswer;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;

use super::media::{Figures, Media, direction};
use super::quality;
use super::register::Account;
use super::session::{InviteError, Session};
use super::step::{Check, Step};

/// PCMU at 8 kHz, 20 ms.
const FRAME: Duration = Duration::from_millis(20);
const SAMPLES: u64 = 160;
const PCMU: u8 = 0;

/// What to call and when to judge.
#[derive(Debug, Clone, PartialEq)]
pub struct EchoOptions {
    /// The echo extension.
    pub extension: String,
    /// How long to send audio.
    pub duration: Duration,
    /// Limit of call setup (SIP, ICE, DTLS).
    pub timeout: Duration,
    /// Local address for the media socket and host candidate.
    pub media_ip: IpAddr,
    /// Loss above this, percent, is HighLoss.
    pub max_loss_percent: f64,
    /// Median round trip above this, ms, is HighLatency.
    pub max_rtt_ms: f64,
    /// An E-model MOS below this is PoorCallQuality ([`quality`]).
    pub min_mos: f64,
}

/// How the echo call ended.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "reason")]
pub enum EchoOutcome {
    /// Audio came back.
    Healthy,
    /// The INVITE got a final error.
    CallRejected {
        /// Status code.
        status: u16,
    },
    /// No ICE connectivity (RTP ports closed, NAT).
    IceFailed,
    /// ICE connected but DTLS-SRTP did not.
    DtlsFailed,
    /// Connected, but nothing came back.
    NoMediaReceived,
    /// Media arrived, but not our echoed audio.
    OneWayAudio,
    /// Audio of another call arrived in this one.
    CrossTalk,
    /// Media or the dialog stopped at this second.
    CallDropped {
        /// Seconds after media started.
        at_second: f64,
    },
    /// Too much loss.
    HighLoss,
    /// Round trip too long.
    HighLatency,
    /// The E-model's MOS estimate below the threshold.
    PoorCallQuality,
    /// No final answer to the INVITE in time.
    Timeout,
    /// The WebSocket closed.
    TransportClosed,
}

impl EchoOutcome {
    /// The EchoCallHealthy reason.
    pub fn reason(&self) -> &'static str {
        match self {
            EchoOutcome::Healthy => "Healthy",
            EchoOutcome::CallRejected { .. } => "CallRejected",
            EchoOutcome::IceFailed => "IceFailed",
            EchoOutcome::DtlsFailed => "DtlsFailed",
            EchoOutcome::NoMediaReceived => "NoMediaReceived",
            EchoOutcome::OneWayAudio => "OneWayAudio",
            EchoOutcome::CrossTalk => "CrossTalk",
            EchoOutcome::CallDropped { .. } => "CallDropped",
            EchoOutcome::HighLoss => "HighLoss",
            EchoOutcome::HighLatency => "HighLatency",
            EchoOutcome::PoorCallQuality => "PoorCallQuality",
            EchoOutcome::Timeout => "Timeout",
            EchoOutcome::TransportClosed => "TransportClosed",
        }
    }
}

/// What the echo call measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EchoResult {
    /// The outcome.
    pub outcome: EchoOutcome,
    /// INVITE to media flowing, ms.
    pub setup_ms: Option<f64>,
    /// Packets sent.
    pub sent: u32,
    /// Our packets that came back.
    pub echoed: u32,
    /// Marked packets of another call that arrived in this one.
    pub foreign_packets: u32,
    /// Loss, percent of sent.
    pub loss_percent: Option<f64>,
    /// Median round trip, ms.
    pub rtt_median_ms: Option<f64>,
    /// 95th percentile round trip, ms.
    pub rtt_p95_ms: Option<f64>,
    /// Interarrival jitter (RFC 3550), ms.
    pub jitter_ms: Option<f64>,
    /// E-model transmission rating R of the call ([`quality`]).
    pub r_factor: Option<f64>,
    /// E-model MOS estimate of the call (1-4.5).
    pub mos: Option<f64>,
    /// How long each phase of the call's setup took.
    pub phases: CallPhases,
}

/// The call's setup, phase by phase, milliseconds: a slow setup points at
/// its phase (SIP, ICE, DTLS, the PBX's media path).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct CallPhases {
    /// INVITE sent to its 200 OK (the digest challenge included).
    pub invite_ms: Option<f64>,
    /// 200 OK to ICE connected.
    pub ice_ms: Option<f64>,
    /// ICE connected to DTLS-SRTP done.
    pub dtls_ms: Option<f64>,
    /// DTLS done to the first of our packets echoed back.
    pub first_echo_ms: Option<f64>,
}

impl EchoResult {
    /// What happened, for people: the seeds' fault and where to look.
    pub fn message(&self, options: &EchoOptions) -> String {
        let ms = |v: Option<f64>| v.unwrap_or_default();
        match &self.outcome {
            EchoOutcome::Healthy => format!(
                "{}/{} packets echoed, round trip {:.1} ms",
                self.echoed,
                self.sent,
                ms(self.rtt_median_ms)
            ),
            EchoOutcome::CallRejected { status: 488 } => {
                "the echo extension answered 488 Not Acceptable Here: the endpoint refuses a WebRTC offer (webrtc=yes, DTLS-SRTP, a codec the browser has)".into()
            }
            EchoOutcome::CallRejected { status } => {
                format!("the echo extension answered {status}")
            }
            EchoOutcome::IceFailed => format!(
                "no ICE connectivity to the PBX's media within {} s: the RTP ports (UDP, rtp.portRange) are closed by a firewall, or NAT hides the PBX (network.externalAddress)",
                options.timeout.as_secs()
            ),
            EchoOutcome::DtlsFailed => {
                "ICE connected but the DTLS-SRTP handshake failed: browsers will have no audio".into()
            }
            EchoOutcome::NoMediaReceived => format!(
                "the call connected but no audio came back ({} packets sent)",
                self.sent
            ),
            EchoOutcome::OneWayAudio => {
                "audio arrived but not the echo of ours: one-way audio (NAT: network.externalAddress, localNetworks)".into()
            }
            EchoOutcome::CrossTalk => format!(
                "{} packets of another call arrived in this one: the PBX crossed media between calls (RTP ports shared by two PBXs on one host?)",
                self.foreign_packets
            ),
            EchoOutcome::CallDropped { at_second } => format!(
                "the call dropped at second {at_second:.0}: a NAT or firewall timeout (sip.keepAliveInterval) or the PBX hung up"
            ),
            EchoOutcome::HighLoss => format!(
                "{:.1} % of packets lost (limit {} %)",
                ms(self.loss_percent),
                options.max_loss_percent
            ),
            EchoOutcome::HighLatency => format!(
                "round trip {:.1} ms (limit {} ms)",
                ms(self.rtt_median_ms),
                options.max_rtt_ms
            ),
            EchoOutcome::PoorCallQuality => format!(
                "estimated MOS {:.2} (E-model R {:.0}) below {}: round trip {:.1} ms, loss {:.1} %, jitter {:.1} ms",
                ms(self.mos),
                ms(self.r_factor),
                options.min_mos,
                ms(self.rtt_median_ms),
                ms(self.loss_percent),
                ms(self.jitter_ms)
            ),
            EchoOutcome::Timeout => "no final answer to the INVITE in time".into(),
            EchoOutcome::TransportClosed => "the WebSocket closed during the call".into(),
        }
    }

    fn failed(outcome: EchoOutcome) -> Self {
        Self {
            outcome,
            setup_ms: None,
            sent: 0,
            echoed: 0,
            foreign_packets: 0,
            loss_percent: None,
            rtt_median_ms: None,
            rtt_p95_ms: None,
            jitter_ms: None,
            r_factor: None,
            mos: None,
            phases: CallPhases::default(),
        }
    }
}

/// WebRTC stacks offer `c=IN IP4 0.0.0.0` and port 9; Asterisk reads that
/// as hold and sends nothing. Put the real host candidate there.
pub(super) fn fix_connection_address(sdp: &str, addr: SocketAddr) -> String {
    sdp.lines()
        .map(|l| {
            if l.starts_with("c=IN IP4 0.0.0.0") {
                format!("c=IN IP4 {}", addr.ip())
            } else if let Some(rest) = l.strip_prefix("m=audio 9 ") {
                format!("m=audio {} {rest}", addr.port())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n")
        + "\r\n"
}

/// One end of a WebRTC call: a UDP socket on `ip` and a str0m instance
/// with that socket's host candidate (PCMU only, no reordering buffer).
pub(super) async fn media_end(ip: IpAddr, start: Instant) -> Option<(UdpSocket, SocketAddr, Rtc)> {
    let socket = UdpSocket::bind((ip, 0)).await.ok()?;
    let local = socket.local_addr().ok()?;
    let mut rtc = Rtc::builder()
        .clear_codecs()
        .enable_pcmu(true, false)
        // Each packet as it arrives: str0m's default holds up to 15 audio
        // packets behind a gap, which under loss added up to 300 ms to the
        // round trip and jitter the probe measures (and to its MOS).
        .set_reordering_size_audio(0)
        .build(start);
    rtc.add_local_candidate(Candidate::host(local, "udp").ok()?);
    Some((socket, local, rtc))
}

/// The caller's WebRTC offer of one audio line (sendrecv), its host
/// candidate in place of the 0.0.0.0 str0m writes: the media line, the
/// SDP to send and the offer awaiting its answer.
pub(super) fn audio_offer(
    rtc: &mut Rtc,
    local: SocketAddr,
) -> Option<(Mid, String, str0m::change::SdpPendingOffer)> {
    let mut changes = rtc.sdp_api();
    let mid = changes.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
    let (offer, pending) = changes.apply()?;
    Some((
        mid,
        fix_connection_address(&offer.to_sdp_string(), local),
        pending,
    ))
}

/// Places the echo call on an open, idle SIP WebSocket.
pub async fn call(
    ws: &mut super::transport::Wss,
    account: &Account,
    opts: &EchoOptions,
) -> EchoResult {
    let Some((socket, local, mut rtc)) = media_end(opts.media_ip, Instant::now()).await else {
        return EchoResult::failed(EchoOutcome::IceFailed);
    };
    let Some((mid, offer_sdp, pending)) = audio_offer(&mut rtc, local) else {
        return EchoResult::failed(EchoOutcome::CallRejected { status: 0 });
    };

    let mut session = Session::new(ws, opts.timeout);
    let setup = Instant::now();
    let (last_invite, response) = match session.invite(account, &opts.extension, &offer_sdp).await {
        Ok(call) => call,
        Err(InviteError::Timeout) => return EchoResult::failed(EchoOutcome::Timeout),
        Err(InviteError::Closed) => return EchoResult::failed(EchoOutcome::TransportClosed),
        Err(InviteError::Rejected(status)) => {
            return EchoResult::failed(EchoOutcome::CallRejected { status });
        }
    };
    let answered = Instant::now();
    let status = response.status().unwrap_or(0);
    let answer = match SdpAnswer::from_sdp_string(&response.body) {
        Ok(a) => a,
        Err(_) => return EchoResult::failed(EchoOutcome::CallRejected { status }),
    };
    if rtc.sdp_api().accept_answer(pending, answer).is_err() {
        session.bye(&last_invite, &response).await;
        return EchoResult::failed(EchoOutcome::CallRejected { status });
    }

    let mut media = Media::for_call(rand::random());
    let call = Leg {
        rtc: &mut rtc,
        socket: &socket,
        local,
        mid,
        session: &mut session,
        media: &mut media,
    };
    let dropped = call.media_loop(opts.timeout, opts.duration, None).await;
    if dropped.is_none() {
        session.bye(&last_invite, &response).await;
    }
    let outcome = dropped.map(|at_second| EchoOutcome::CallDropped { at_second });
    result(&media, outcome, setup, answered, opts)
}

/// The echo call's verdict and figures from what its media measured.
fn result(
    media: &Media,
    outcome: Option<EchoOutcome>,
    setup: Instant,
    answered: Instant,
    opts: &EchoOptions,
) -> EchoResult {
    // Both ends of the direction are the probe: the delay is a round trip.
    let Figures {
        sent,
        received: echoed,
        loss_percent: loss,
        delay_median_ms: median,
        delay_p95_ms: p95,
        jitter_ms: jitter,
    } = direction(&media.sent_at, &media.arrivals);
    let rated = median
        .zip(loss)
        .map(|(rtt, loss)| quality::rate(rtt, loss, jitter.unwrap_or(0.0), quality::Codec::Pcmu));
    let outcome = outcome.unwrap_or_else(|| {
        if media.ice_connected.is_none() {
            EchoOutcome::IceFailed
        } else if media.dtls_connected.is_none() {
            EchoOutcome::DtlsFailed
        } else if media.foreign_packets > 0 {
            EchoOutcome::CrossTalk
        } else if echoed == 0 && media.other_packets > 0 {
            EchoOutcome::OneWayAudio
        } else if echoed == 0 {
            EchoOutcome::NoMediaReceived
        } else if loss.unwrap_or(0.0) > opts.max_loss_percent {
            EchoOutcome::HighLoss
        } else if median.unwrap_or(0.0) > opts.max_rtt_ms {
            EchoOutcome::HighLatency
        } else if rated.is_some_and(|q| q.mos < opts.min_mos) {
            EchoOutcome::PoorCallQuality
        } else {
            EchoOutcome::Healthy
        }
    });
    EchoResult {
        outcome,
        setup_ms: media.dtls_connected.map(|t| ms_between(setup, t)),
        sent,
        echoed,
        foreign_packets: media.foreign_packets,
        loss_percent: loss,
        rtt_median_ms: median,
        rtt_p95_ms: p95,
        jitter_ms: jitter,
        r_factor: rated.map(|q| q.r_factor),
        mos: rated.map(|q| q.mos),
        phases: CallPhases {
            invite_ms: Some(ms_between(setup, answered)),
            ice_ms: media.ice_connected.map(|t| ms_between(answered, t)),
            dtls_ms: media
                .ice_connected
                .zip(media.dtls_connected)
                .map(|(ice, dtls)| ms_between(ice, dtls)),
            first_echo_ms: media
                .dtls_connected
                .zip(media.first_arrival)
                .map(|(dtls, echo)| ms_between(dtls, echo)),
        },
    }
}

/// Milliseconds from `from` to `to` (0 when `to` is earlier).
pub(super) fn ms_between(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1000.0
}

/// One end of a connected call, as the media loop drives it.
pub(super) struct Leg<'a, 's> {
    pub(super) rtc: &'a mut Rtc,
    pub(super) socket: &'a UdpSocket,
    pub(super) local: SocketAddr,
    pub(super) mid: Mid,
    pub(super) session: &'a mut Session<'s>,
    pub(super) media: &'a mut Media,
}

impl Leg<'_, '_> {
    /// Drives str0m from the socket and the clock: sends `duration` of
    /// sequence-numbered frames once DTLS is up (`timeout` after the start
    /// at most) and records what arrives, marked packets with a sequence
    /// number below `peer_limit` (default: what this end sent, as an echo
    /// can only return that). Returns the second the call dropped at, when
    /// it did (ICE lost, a BYE, the WebSocket closed, arrivals stopped).
    pub(super) async fn media_loop(
        self,
        timeout: Duration,
        duration: Duration,
        peer_limit: Option<usize>,
    ) -> Option<f64> {
        let Leg {
            rtc,
            socket,
            local,
            mid,
            session,
            media,
        } = self;
        let setup_deadline = Instant::now() + timeout;
        let mut media_end: Option<Instant> = None;
        let mut next_frame = Instant::now();
        // The SIP WebSocket is read at most every WS_POLL: each read walks
        // TLS and tungstenite even when nothing came (5 % of a call's CPU when
        // read on every packet). A BYE or OPTIONS waits at most that long.
        let mut next_ws = Instant::now();
        let mut buf = vec![0u8; 2000];
        loop {
            // Drain str0m's output until it wants to wait.
            let wait_until = loop {
                match rtc.poll_output() {
                    Ok(Output::Transmit(t)) => {
                        let _ = socket.send_to(&t.contents, t.destination).await;
                    }
                    Ok(Output::Timeout(t)) => break t,
                    Ok(Output::Event(e)) => match e {
                        Event::IceConnectionStateChange(
                            IceConnectionState::Connected | IceConnectionState::Completed,
                        ) => {
                            media.ice_connected.get_or_insert_with(Instant::now);
                        }
                        Event::IceConnectionStateChange(IceConnectionState::Disconnected)
                            if media.dtls_connected.is_some() =>
                        {
                            return Some(media.seconds_at(Instant::now()));
                        }
                        Event::Connected => {
                            media.dtls_connected = Some(Instant::now());
                            media_end = Some(Instant::now() + duration);
                            next_frame = on_frame_grid(Instant::now());
                        }
                        Event::MediaData(data) => {
                            let limit = peer_limit.unwrap_or(media.sent_at.len());
                            media.on_packet(&data.data, Instant::now(), limit);
                        }
                        _ => {}
                    },
                    Err(_) => return None,
                }
            };
            let now = Instant::now();
            match media_end {
                None if now >= setup_deadline => return None,
                Some(end) if now >= end + Duration::from_millis(500) => {
                    // Arrivals stopped long before the end: the call dropped.
                    if let Some(last) = media.last_arrival
                        && end.duration_since(last) > Duration::from_secs(3)
                    {
                        return Some(media.seconds_at(last));
                    }
                    return None;
                }
                _ => {}
            }
            // Woken only when something is due: str0m's timeout, the next frame,
            // the end of setup or of the call (no polling tick).
            let check_at = match media_end {
                None => setup_deadline,
                Some(end) => end + Duration::from_millis(500),
            };
            let mut deadline = wait_until.min(check_at);
            if let Some(end) = media_end
                && now < end
            {
                if now >= next_frame {
                    let seq = u32::try_from(media.sent_at.len()).unwrap_or(u32::MAX);
                    let mut payload = vec![0xffu8; SAMPLES as usize];
                    let mark = media.mark(seq);
                    payload[..mark.len()].copy_from_slice(&mark);
                    media.sent_at.push(now);
                    let rtp_time = MediaTime::new(u64::from(seq) * SAMPLES, Frequency::EIGHT_KHZ);
                    if let Some(writer) = rtc.writer(mid) {
                        let _ = writer.write(Pt::new_with_value(PCMU), now, rtp_time, payload);
                    }
                    next_frame += FRAME;
                    continue;
                }
                // During the call str0m's future timers (feedback, NACK and
                // pause checks, RTCP reports, ICE consent) are served at the
                // next wake the call has anyway, the frame clock's every 20 ms
                // or an arrival, not by wakes of their own: each wake
                // of a thread costs more than the work it does. What str0m
                // wants now (packetizing a frame) is served at once.
                deadline = if wait_until > now {
                    check_at.min(next_frame)
                } else {
                    deadline.min(next_frame)
                };
            }
            let ws_due = now >= next_ws;
            if !ws_due {
                deadline = deadline.min(next_ws);
            }
            let sleep = tokio::time::sleep_until(deadline.into());
            tokio::select! {
                received = socket.recv_from(&mut buf) => {
                    if let Ok((n, source)) = received
                        && let Ok(contents) = buf[..n].try_into()
                    {
                        let input = Input::Receive(Instant::now(), Receive { proto: Protocol::Udp, source, destination: local, contents });
                        let _ = rtc.handle_input(input);
                    }
                }
                message = session.recv(), if ws_due => {
                    match message {
                        Some(m) if m.method() == Some("BYE") => {
                            session.reply(&m, 200, "OK").await;
                            return Some(media.seconds_at(Instant::now()));
                        }
                        // An ACK has no answer (the callee's ACK of its 200 OK).
                        Some(m) if m.method() == Some("ACK") => {}
                        Some(m) if m.method().is_some() => session.reply(&m, 200, "OK").await,
                        Some(_) => {}
                        None => return Some(media.seconds_at(Instant::now())),
                    }
                }
                () = sleep => {}
            }
            // str0m's timeout handling is its costliest step: only once what
            // str0m asked for is due, not at every wake of our own frame clock.
            let now = Instant::now();
            if now >= wait_until {
                let _ = rtc.handle_input(Input::Timeout(now));
            }
            if ws_due {
                next_ws = now + WS_POLL;
            }
        }
    }
}

/// The first frame time at or after `now` on one 20 ms grid shared by every
/// call of the process: concurrent calls send their frames in the same
/// wake of the runtime (one timer expiry serving them all), not each in a
/// wake of its own.
fn on_frame_grid(now: Instant) -> Instant {
    static GRID: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let origin = *GRID.get_or_init(|| now);
    let frame = FRAME.as_nanos();
    let into = now.saturating_duration_since(origin).as_nanos() % frame;
    if into == 0 {
        now
    } else {
        // Below 20 ms, so it fits.
        now + Duration::from_nanos(u64::try_from(frame - into).unwrap_or(0))
    }
}

/// How often the media loop reads the SIP WebSocket.
const WS_POLL: Duration = Duration::from_millis(100);

/// The echo-call step: [`call`], and its EchoCall verdict.
pub async fn step(
    ws: &mut super::transport::Wss,
    account: &Account,
    options: &EchoOptions,
) -> Step<EchoResult> {
    let figures = call(ws, account, options).await;
    let check = Check {
        ok: figures.outcome == EchoOutcome::Healthy,
        reason: figures.outcome.reason().into(),
        message: figures.message(options),
    };
    Step { check, figures }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_starting_apart_send_on_one_frame_grid() {
        let first = Instant::now();
        let a = on_frame_grid(first);
        for offset_ms in [1, 7, 19, 20, 33, 1000] {
            let later = first + Duration::from_millis(offset_ms);
            let b = on_frame_grid(later);
            assert!(b >= later && b < later + FRAME, "{offset_ms} ms");
            let apart = b.duration_since(a).as_nanos();
            assert_eq!(apart % FRAME.as_nanos(), 0, "{offset_ms} ms");
        }
    }
}

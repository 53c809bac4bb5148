//! A call's media bookkeeping: our sequence-numbered packets sent, the
//! sequence-numbered packets received (each once, in arrival order), and
//! when ICE, DTLS and the first arrival happened. [`direction`] turns one
//! direction of a call (what one end sent, what the other received) into
//! its figures: for the echo call both ends are the probe (a round trip),
//! for the user call one end is each probe user (one way). Times are
//! passed in; the verdicts are the steps' ([`super::echo`],
//! [`super::user_call`]).

use std::time::Instant;

/// Marks our packets in the PCMU payload (then the call's id and the
/// sequence number).
pub(super) const MAGIC: [u8; 4] = *b"WPBX";
/// Bytes of the mark: MAGIC, the call's id, the sequence number.
pub(super) const MARK_LEN: usize = 12;

/// What the media of one end of a call measured so far.
#[derive(Default)]
pub(super) struct Media {
    pub(super) ice_connected: Option<Instant>,
    pub(super) dtls_connected: Option<Instant>,
    /// When each of our packets was sent, by sequence number.
    pub(super) sent_at: Vec<Instant>,
    /// Marked packets received, each sequence number once, in arrival order.
    pub(super) arrivals: Vec<(u32, Instant)>,
    /// Per sequence number: whether it arrived.
    pub(super) seen: Vec<bool>,
    /// This call's id, in every packet it marks: packets of another call
    /// (a PBX that crosses media between calls) are told apart.
    pub(super) call: [u8; 4],
    /// Packets that were not a first arrival of a marked packet.
    pub(super) other_packets: u32,
    /// Marked packets of another call.
    pub(super) foreign_packets: u32,
    pub(super) first_arrival: Option<Instant>,
    pub(super) last_arrival: Option<Instant>,
}

impl Media {
    /// An end of call `call` (its id), nothing sent or received yet.
    pub(super) fn for_call(call: [u8; 4]) -> Self {
        Self {
            call,
            ..Self::default()
        }
    }

    /// The mark of packet `seq` of this call, to start its payload.
    pub(super) fn mark(&self, seq: u32) -> [u8; MARK_LEN] {
        let mut mark = [0u8; MARK_LEN];
        mark[..4].copy_from_slice(&MAGIC);
        mark[4..8].copy_from_slice(&self.call);
        mark[8..].copy_from_slice(&seq.to_be_bytes());
        mark
    }

    /// Seconds since media started (DTLS-SRTP up) until `now`, 0 before.
    pub(super) fn seconds_at(&self, now: Instant) -> f64 {
        self.dtls_connected
            .map(|t| now.saturating_duration_since(t).as_secs_f64())
            .unwrap_or(0.0)
    }

    /// Counts one received packet: a marked one with a sequence number
    /// below `limit`, the first time, is an arrival; anything else is
    /// counted apart. The limit keeps a PBX that sends (or repeats) packets
    /// without end from growing the samples past what could have been sent.
    pub(super) fn on_packet(&mut self, data: &[u8], now: Instant, limit: usize) {
        if data.len() < MARK_LEN || data[..4] != MAGIC {
            self.other_packets += 1;
            return;
        }
        if data[4..8] != self.call {
            self.other_packets += 1;
            self.foreign_packets += 1;
            return;
        }
        let seq = u32::from_be_bytes([data[8], data[9], data[10], data[11]]);
        let index = seq as usize;
        if index >= limit {
            self.other_packets += 1;
            return;
        }
        if self.seen.len() <= index {
            self.seen.resize(index + 1, false);
        }
        if std::mem::replace(&mut self.seen[index], true) {
            self.other_packets += 1;
            return;
        }
        self.arrivals.push((seq, now));
        self.first_arrival.get_or_insert(now);
        self.last_arrival = Some(now);
    }
}

/// The figures of one direction: `sent_at` is what one end sent (by
/// sequence number), `arrivals` what the other end received of it.
pub(super) fn direction(sent_at: &[Instant], arrivals: &[(u32, Instant)]) -> Figures {
    let mut delays = Vec::with_capacity(arrivals.len());
    let mut jitter = 0.0;
    let mut last_transit: Option<f64> = None;
    for &(seq, at) in arrivals {
        let Some(sent) = sent_at.get(seq as usize) else {
            continue;
        };
        // Signed: the two ends' clocks are one, but an arrival recorded
        // before its send time was stamped must not wrap.
        let transit = if at >= *sent {
            at.duration_since(*sent).as_secs_f64() * 1000.0
        } else {
            -(sent.duration_since(at).as_secs_f64() * 1000.0)
        };
        delays.push(transit.max(0.0));
        // RFC 3550 6.4.1, in milliseconds of transit time.
        if let Some(last) = last_transit {
            jitter += ((transit - last).abs() - jitter) / 16.0;
        }
        last_transit = Some(transit);
    }
    let sent = u32::try_from(sent_at.len()).unwrap_or(u32::MAX);
    let received = u32::try_from(delays.len()).unwrap_or(u32::MAX);
    delays.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        delays
            .get(((delays.len() as f64 - 1.0) * p).round() as usize)
            .copied()
    };
    Figures {
        sent,
        received,
        loss_percent: (sent > 0)
            .then(|| 100.0 * f64::from(sent.saturating_sub(received)) / f64::from(sent)),
        delay_median_ms: pct(0.5),
        delay_p95_ms: pct(0.95),
        jitter_ms: (received > 1).then_some(jitter),
    }
}

/// The figures of one direction of a call ([`direction`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Figures {
    /// Packets sent.
    pub(super) sent: u32,
    /// Of those, packets received (each once).
    pub(super) received: u32,
    /// Loss, percent of sent.
    pub(super) loss_percent: Option<f64>,
    /// Median delay from send to arrival, ms.
    pub(super) delay_median_ms: Option<f64>,
    /// 95th percentile of that delay, ms.
    pub(super) delay_p95_ms: Option<f64>,
    /// Interarrival jitter (RFC 3550), ms.
    pub(super) jitter_ms: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn marked(seq: u32) -> Vec<u8> {
        Media::default().mark(seq).to_vec()
    }

    #[test]
    fn a_packet_received_many_times_is_one_sample() {
        let mut media = Media::default();
        let epoch = Instant::now();
        media.sent_at.push(epoch);
        for _ in 0..1000 {
            media.on_packet(&marked(0), Instant::now(), media.sent_at.len());
        }
        assert_eq!(media.arrivals.len(), 1);
        assert_eq!(media.other_packets, 999);
        // A sequence number past the limit is no sample either.
        media.on_packet(&marked(7), Instant::now(), 1);
        assert_eq!(media.arrivals.len(), 1);
        assert_eq!(media.other_packets, 1000);
        assert_eq!(direction(&media.sent_at, &media.arrivals).received, 1);
        assert_eq!(media.foreign_packets, 0);
    }

    #[test]
    fn packets_of_another_call_are_foreign_not_samples() {
        let mut media = Media::for_call(*b"call");
        media.sent_at.push(Instant::now());
        let other = Media::for_call(*b"else");
        media.on_packet(&other.mark(0), Instant::now(), 1);
        assert_eq!((media.arrivals.len(), media.foreign_packets), (0, 1));
        let own = media.mark(0);
        media.on_packet(&own, Instant::now(), 1);
        assert_eq!((media.arrivals.len(), media.foreign_packets), (1, 1));
    }

    #[test]
    fn figures_count_loss_and_rank_delays() {
        let epoch = Instant::now();
        let sent_at = vec![epoch; 4];
        let arrivals: Vec<(u32, Instant)> = [0u32, 2, 3]
            .iter()
            .map(|&seq| (seq, epoch + Duration::from_millis(10 * u64::from(seq + 1))))
            .collect();
        let f = direction(&sent_at, &arrivals);
        assert_eq!((f.sent, f.received), (4, 3));
        assert_eq!(f.loss_percent, Some(25.0));
        assert!(
            f.delay_median_ms.is_some_and(|m| (m - 30.0).abs() < 0.5),
            "{:?}",
            f.delay_median_ms
        );
        assert!(f.jitter_ms.is_some_and(|j| j > 0.0));
    }

    #[test]
    fn nothing_sent_has_no_loss_figure_and_nothing_received_no_delay() {
        let none = direction(&[], &[]);
        assert_eq!((none.sent, none.received, none.loss_percent), (0, 0, None));
        let silent = direction(&[Instant::now(); 10], &[]);
        assert_eq!(silent.loss_percent, Some(100.0));
        assert_eq!((silent.delay_median_ms, silent.jitter_ms), (None, None));
    }
}

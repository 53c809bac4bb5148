//! The echo call's media bookkeeping: our sequence-numbered packets sent
//! and echoed, one round-trip sample per packet sent, RFC 3550 jitter, and
//! when ICE, DTLS and the first echo happened. Arrival times are passed in; the
//! verdict is the echo step's ([`super::echo`]).

use std::time::Instant;

/// Marks our packets in the PCMU payload (then the sequence number).
pub(super) const MAGIC: [u8; 4] = *b"WPBX";

/// What the media of one call measured so far.
#[derive(Default)]
pub(super) struct Media {
    pub(super) ice_connected: Option<Instant>,
    pub(super) dtls_connected: Option<Instant>,
    pub(super) sent_at: Vec<Instant>,
    pub(super) rtts: Vec<f64>,
    /// Per packet sent: whether its echo arrived.
    pub(super) echoed: Vec<bool>,
    pub(super) other_packets: u32,
    pub(super) jitter: f64,
    pub(super) last_transit: Option<f64>,
    pub(super) first_echo: Option<Instant>,
    pub(super) last_echo: Option<Instant>,
}

impl Media {
    /// Seconds since media started (DTLS-SRTP up), 0 before.
    pub(super) fn seconds(&self) -> f64 {
        self.dtls_connected
            .map(|t| t.elapsed().as_secs_f64())
            .unwrap_or(0.0)
    }

    /// Counts one received packet: ours (and once) is a round-trip
    /// sample and a jitter step; anything else is counted apart.
    pub(super) fn on_packet(&mut self, data: &[u8], now: Instant, epoch: Instant) {
        if data.len() < 8 || data[..4] != MAGIC {
            self.other_packets += 1;
            return;
        }
        let seq = u32::from_be_bytes([data[4], data[5], data[6], data[7]]) as usize;
        let Some(sent) = self.sent_at.get(seq) else {
            return;
        };
        // One sample per packet sent: a PBX that echoes a packet many times
        // (hostile or broken) cannot grow the samples past what was sent.
        if self.echoed.len() < self.sent_at.len() {
            self.echoed.resize(self.sent_at.len(), false);
        }
        if std::mem::replace(&mut self.echoed[seq], true) {
            self.other_packets += 1;
            return;
        }
        self.rtts
            .push(now.duration_since(*sent).as_secs_f64() * 1000.0);
        self.first_echo.get_or_insert(now);
        self.last_echo = Some(now);
        // RFC 3550 6.4.1, in milliseconds of transit time.
        let transit = now.duration_since(epoch).as_secs_f64() * 1000.0
            - sent.duration_since(epoch).as_secs_f64() * 1000.0;
        if let Some(last) = self.last_transit {
            self.jitter += ((transit - last).abs() - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
    }

    /// Sent, echoed, loss, round trip and jitter so far.
    pub(super) fn figures(&self) -> Figures {
        let sent = u32::try_from(self.sent_at.len()).unwrap_or(u32::MAX);
        let echoed = u32::try_from(self.rtts.len()).unwrap_or(u32::MAX);
        let mut rtts = self.rtts.clone();
        rtts.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            rtts.get(((rtts.len() as f64 - 1.0) * p).round() as usize)
                .copied()
        };
        Figures {
            sent,
            echoed,
            loss_percent: (sent > 0)
                .then(|| 100.0 * f64::from(sent.saturating_sub(echoed)) / f64::from(sent)),
            rtt_median_ms: pct(0.5),
            rtt_p95_ms: pct(0.95),
            jitter_ms: (echoed > 1).then_some(self.jitter),
        }
    }
}

/// The figures of [`Media::figures`].
pub(super) struct Figures {
    /// Packets sent.
    pub(super) sent: u32,
    /// Our packets that came back (each once).
    pub(super) echoed: u32,
    /// Loss, percent of sent.
    pub(super) loss_percent: Option<f64>,
    /// Median round trip, ms.
    pub(super) rtt_median_ms: Option<f64>,
    /// 95th percentile round trip, ms.
    pub(super) rtt_p95_ms: Option<f64>,
    /// Interarrival jitter (RFC 3550), ms.
    pub(super) jitter_ms: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_echoed_many_times_is_one_sample() {
        let mut media = Media::default();
        let epoch = Instant::now();
        media.sent_at.push(epoch);
        let mut packet = MAGIC.to_vec();
        packet.extend(0u32.to_be_bytes());
        for _ in 0..1000 {
            media.on_packet(&packet, Instant::now(), epoch);
        }
        assert_eq!(media.rtts.len(), 1);
        assert_eq!(media.other_packets, 999);
        // A sequence number never sent is no sample either.
        packet[4..8].copy_from_slice(&7u32.to_be_bytes());
        media.on_packet(&packet, Instant::now(), epoch);
        assert_eq!(media.rtts.len(), 1);
    }

    #[test]
    fn figures_count_loss_and_rank_round_trips() {
        let mut media = Media::default();
        let epoch = Instant::now();
        for _ in 0..4 {
            media.sent_at.push(epoch);
        }
        for seq in [0u32, 2, 3] {
            let mut packet = MAGIC.to_vec();
            packet.extend(seq.to_be_bytes());
            media.on_packet(
                &packet,
                epoch + std::time::Duration::from_millis(10 * u64::from(seq + 1)),
                epoch,
            );
        }
        let f = media.figures();
        assert_eq!((f.sent, f.echoed), (4, 3));
        assert_eq!(f.loss_percent, Some(25.0));
        assert!(
            f.rtt_median_ms.is_some_and(|m| (m - 30.0).abs() < 0.5),
            "{:?}",
            f.rtt_median_ms
        );
        assert!(f.jitter_ms.is_some());
    }
}

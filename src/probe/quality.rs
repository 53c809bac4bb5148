//! Call quality as people read it: the ITU-T G.107 E-model's transmission
//! rating R and its MOS estimate, from what the echo call measured (round
//! trip, loss, jitter) and the codec. Pure.
//!
//! The formula, in the simplified form of Cole and Rosenbluth ("Voice over
//! IP performance monitoring", 2001), which keeps G.107's defaults:
//!
//! - `R = 93.2 - Id - Ie_eff` (G.107's default `R0 - Is`, advantage `A = 0`);
//! - one-way mouth-to-ear delay `Ta = rtt / 2 + 2 * jitter + frame`: half
//!   the measured round trip, a jitter buffer of twice the interarrival
//!   jitter, and one packetization frame (20 ms);
//! - delay impairment `Id = 0.024 Ta + 0.11 (Ta - 177.3) H(Ta - 177.3)`;
//! - effective equipment impairment (G.107 7.2, random loss, `BurstR = 1`)
//!   `Ie_eff = Ie + (95 - Ie) Ppl / (Ppl + Bpl)`, `Ppl` in percent;
//! - `MOS = 1 + 0.035 R + 7e-6 R (R - 60) (100 - R)` for `0 < R < 100`
//!   (1 below, 4.5 above), G.107 Annex B.
//!
//! Codec values: PCMU is G.711 with packet-loss concealment (browsers
//! conceal loss), `Ie = 0`, `Bpl = 25.1` (G.113 Appendix I). G.113 lists no
//! values for Opus; it is rated as G.711 with concealment (`Ie = 0`,
//! `Bpl = 25.1`), an assumption that errs low for wideband Opus.

/// The codec of a call, for its equipment impairment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// G.711 mu-law (what the echo probe sends).
    Pcmu,
    /// Opus (see the module docs for the values assumed).
    Opus,
}

impl Codec {
    /// Equipment impairment `Ie` and packet-loss robustness `Bpl`.
    fn impairment(self) -> (f64, f64) {
        match self {
            Codec::Pcmu | Codec::Opus => (0.0, 25.1),
        }
    }
}

/// Packetization of one frame, milliseconds (20 ms in the probe and in
/// browsers' defaults).
const FRAME_MS: f64 = 20.0;

/// The MOS below which `spec.probes.minMos` defaults to PoorCallQuality.
pub const DEFAULT_MIN_MOS: f64 = 3.6;

/// What the E-model made of one call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quality {
    /// Transmission rating R (0-100; 93.2 is a perfect narrowband call).
    pub r_factor: f64,
    /// Mean opinion score estimate (1-4.5).
    pub mos: f64,
}

/// The E-model's rating of a call with round trip `rtt_ms`, loss
/// `loss_percent` and interarrival jitter `jitter_ms` in `codec`.
pub fn rate(rtt_ms: f64, loss_percent: f64, jitter_ms: f64, codec: Codec) -> Quality {
    let rtt = rtt_ms.max(0.0);
    let jitter = jitter_ms.max(0.0);
    let loss = loss_percent.clamp(0.0, 100.0);
    let ta = rtt / 2.0 + 2.0 * jitter + FRAME_MS;
    let id = 0.024 * ta + if ta > 177.3 { 0.11 * (ta - 177.3) } else { 0.0 };
    let (ie, bpl) = codec.impairment();
    let ie_eff = ie + (95.0 - ie) * loss / (loss + bpl);
    let r = (93.2 - id - ie_eff).clamp(0.0, 100.0);
    Quality {
        r_factor: r,
        mos: mos(r),
    }
}

/// G.107 Annex B: MOS from R.
pub fn mos(r: f64) -> f64 {
    if r <= 0.0 {
        1.0
    } else if r >= 100.0 {
        4.5
    } else {
        1.0 + 0.035 * r + 7.0e-6 * r * (r - 60.0) * (100.0 - r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 0.01
    }

    #[test]
    fn annex_b_maps_r_to_mos_at_its_landmarks() {
        // G.107 Annex B / G.109's user satisfaction bands.
        assert!(close(mos(93.2), 4.41), "{}", mos(93.2));
        assert!(close(mos(80.0), 4.02), "{}", mos(80.0));
        assert!(close(mos(70.0), 3.60), "{}", mos(70.0));
        assert!(close(mos(60.0), 3.10), "{}", mos(60.0));
        assert!(close(mos(50.0), 2.58), "{}", mos(50.0));
        assert_eq!(mos(-3.0), 1.0);
        assert_eq!(mos(120.0), 4.5);
    }

    #[test]
    fn a_clean_loopback_call_rates_near_the_narrowband_ceiling() {
        // Loopback: 1 ms round trip, no loss, 0.5 ms jitter.
        let q = rate(1.0, 0.0, 0.5, Codec::Pcmu);
        // Ta = 0.5 + 1 + 20 = 21.5 ms; Id = 0.516.
        assert!(close(q.r_factor, 92.684), "{q:?}");
        assert!(q.mos > 4.39 && q.mos < 4.42, "{q:?}");
    }

    #[test]
    fn loss_and_delay_lower_the_rating_as_g107_says() {
        // 5 % random loss with concealment: Ie_eff = 95 * 5 / 30.1 = 15.78.
        let lossy = rate(1.0, 5.0, 0.0, Codec::Pcmu);
        assert!(close(lossy.r_factor, 93.2 - 0.492 - 15.781), "{lossy:?}");
        // 400 ms round trip: Ta = 220 ms, past the 177.3 ms knee.
        let slow = rate(400.0, 0.0, 0.0, Codec::Pcmu);
        let id = 0.024 * 220.0 + 0.11 * (220.0 - 177.3);
        assert!(close(slow.r_factor, 93.2 - id), "{slow:?}");
        // Both below the default threshold only when bad enough.
        assert!(lossy.mos > DEFAULT_MIN_MOS);
        assert!(rate(300.0, 10.0, 30.0, Codec::Pcmu).mos < DEFAULT_MIN_MOS);
        // Everything lost: the floor.
        assert!(rate(1.0, 100.0, 0.0, Codec::Opus).mos < 1.5);
    }
}

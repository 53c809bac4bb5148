//! The port allocation step (pure): a HostNetwork PBX that leaves
//! `wss.port` or `rtp.portRange` out gets them from the operator's pools.
//! Allocations live in a [`Ledger`] (one ConfigMap beside the operator's
//! Lease, written with a resourceVersion precondition by
//! `controller::allocation`), so they survive restarts and leader changes
//! and two PBXs created in the same second never get the same port. Every
//! allocation is disjoint from every other HostNetwork PBX's ports, pinned
//! or allocated, whatever nodes they select: simple, and never wrong.
//!
//! Ports a PBX gives up (it was deleted, or pinned its own) stay held for
//! its drain timeout: the old pod keeps them while its calls end, and RTP
//! ports are not declared to the scheduler, so only the ledger keeps a new
//! PBX off them. Held entries are keyed `UID.PART` and carry the Unix time
//! they expire.

use std::collections::BTreeMap;

use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use crate::api::{NetworkMode, PortRange, WebRtcPbx};

/// Where allocations come from (operator flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pools {
    /// WSS (TCP) ports.
    pub wss: PortRange,
    /// RTP (UDP) ports, handed out in blocks of `rtp_block` ports.
    pub rtp: PortRange,
    /// Ports per RTP block (two per call leg's RTP and RTCP at most).
    pub rtp_block: u16,
}

impl Default for Pools {
    /// WSS 8089-8999, RTP 10000-59999 in blocks of 100 (500 PBXs).
    fn default() -> Self {
        Self {
            wss: PortRange {
                start: 8089,
                end: 8999,
            },
            rtp: PortRange {
                start: 10000,
                end: 59999,
            },
            rtp_block: 100,
        }
    }
}

impl Pools {
    /// Why these pools cannot work, if they cannot.
    pub fn problem(&self) -> Option<String> {
        let overlap = self.wss.start <= self.rtp.end && self.rtp.start <= self.wss.end;
        if self.wss.is_empty() || self.rtp.is_empty() {
            Some("a port pool is empty (start after end)".into())
        } else if overlap {
            Some(format!(
                "the WSS pool {} and the RTP pool {} overlap",
                show(self.wss),
                show(self.rtp)
            ))
        } else if self.rtp_block == 0 || u32::from(self.rtp_block) > self.rtp.len() {
            Some(format!(
                "RTP blocks of {} ports do not fit the RTP pool {}",
                self.rtp_block,
                show(self.rtp)
            ))
        } else {
            None
        }
    }
}

/// `start-end`.
pub fn show(range: PortRange) -> String {
    format!("{}-{}", range.start, range.end)
}

/// What one PBX holds from the pools.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// `namespace/name`, for people reading the ConfigMap.
    pub pbx: String,
    /// The allocated WSS port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wss: Option<i32>,
    /// The allocated RTP block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtp: Option<PortRange>,
    /// Given up, but held until this Unix time (a draining pod may still
    /// use it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_until: Option<i64>,
}

impl Entry {
    fn is_empty(&self) -> bool {
        self.wss.is_none() && self.rtp.is_none()
    }

    /// Whether it still keeps its ports from others at `now`.
    pub fn holds(&self, now: i64) -> bool {
        self.held_until.is_none_or(|t| t > now)
    }

    /// These ports, given up at `now` and held for `hold` seconds.
    pub fn held(&self, now: i64, hold: i64) -> Entry {
        Entry {
            held_until: Some(now.saturating_add(hold)),
            ..self.clone()
        }
    }
}

/// The ledger key of a held entry.
pub fn held_key(uid: &str, part: &str) -> String {
    format!("{uid}.{part}")
}

/// Whether a ledger key names a held entry (uids hold no `.`).
pub fn is_held_key(key: &str) -> bool {
    key.contains('.')
}

/// How long a PBX's ports stay held after it gives them up: its drain
/// timeout and the grace period's margin.
pub fn hold_seconds(pbx: &WebRtcPbx) -> i64 {
    let drain = crate::validate::parse_duration(&pbx.spec.drain.timeout)
        .unwrap_or(std::time::Duration::from_secs(300));
    i64::try_from(drain.as_secs())
        .unwrap_or(i64::MAX / 4)
        .saturating_add(HOLD_MARGIN_SECONDS)
}

/// Beyond the drain timeout: the pod's own stop and the kubelet's.
pub const HOLD_MARGIN_SECONDS: i64 = 30;

/// Every allocation, by PBX uid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    /// By uid.
    pub entries: BTreeMap<String, Entry>,
}

impl Ledger {
    /// Reads a ConfigMap's data; an entry that does not parse is skipped
    /// and named (it holds nothing, so its ports may be handed out again).
    pub fn from_data(data: &BTreeMap<String, String>) -> (Self, Vec<String>) {
        let mut entries = BTreeMap::new();
        let mut bad = Vec::new();
        for (uid, text) in data {
            match serde_json::from_str::<Entry>(text) {
                Ok(e) => {
                    entries.insert(uid.clone(), e);
                }
                Err(_) => bad.push(uid.clone()),
            }
        }
        (Self { entries }, bad)
    }

    /// The entry of `uid` serialized as it is stored (`None`: no entry).
    pub fn data_of(&self, uid: &str) -> Option<String> {
        let entry = self.entries.get(uid)?;
        serde_json::to_string(entry).ok()
    }
}

/// What a PBX holds from the pools, or why it holds nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocation {
    /// The allocated WSS port, when the spec leaves it out.
    pub wss: Option<i32>,
    /// The allocated RTP block, when the spec leaves it out.
    pub rtp: Option<PortRange>,
    /// Why a needed port could not be allocated (the pool is full).
    pub shortage: Option<String>,
}

impl From<&Entry> for Allocation {
    fn from(e: &Entry) -> Self {
        Self {
            wss: e.wss,
            rtp: e.rtp,
            shortage: None,
        }
    }
}

/// Which ports the pools must give this PBX.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Needs {
    /// HostNetwork without `wss.port`.
    pub wss: bool,
    /// HostNetwork without `rtp.portRange`.
    pub rtp: bool,
}

impl Needs {
    /// What `pbx` needs from the pools.
    pub fn of(pbx: &WebRtcPbx) -> Self {
        let host = pbx.spec.network.mode == NetworkMode::HostNetwork;
        Self {
            wss: host && pbx.spec.wss.port.is_none(),
            rtp: host && pbx.spec.rtp.port_range.is_none(),
        }
    }

    /// Nothing needed.
    pub fn none(&self) -> bool {
        !self.wss && !self.rtp
    }
}

/// The host ports `pbx` holds: pinned in its spec, else allocated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostPorts {
    /// TCP: WSS and plain WS.
    pub tcp: Vec<i32>,
    /// UDP: the RTP range.
    pub udp: Option<PortRange>,
}

/// The host ports of a HostNetwork `pbx` (none for other modes).
pub fn host_ports(pbx: &WebRtcPbx, ledger: &Ledger) -> HostPorts {
    if pbx.spec.network.mode != NetworkMode::HostNetwork {
        return HostPorts::default();
    }
    let entry = pbx
        .metadata
        .uid
        .as_ref()
        .and_then(|u| ledger.entries.get(u));
    let wss = pbx.spec.wss.port.or(entry.and_then(|e| e.wss));
    HostPorts {
        tcp: wss.into_iter().chain(pbx.spec.wss.ws_port).collect(),
        udp: pbx.spec.rtp.port_range.or(entry.and_then(|e| e.rtp)),
    }
}

fn overlaps(a: PortRange, b: PortRange) -> bool {
    a.start <= b.end && b.start <= a.end
}

/// Where `pbx` stands in the ledger: the entry it should hold, which
/// needed part the pools could not give, and what it gives up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// The entry under its uid (`None`: it should hold nothing).
    pub entry: Option<Entry>,
    /// Why a needed part has no port.
    pub shortage: Option<String>,
    /// What it gives up, held for its drain timeout, by key.
    pub released: Vec<(String, Entry)>,
}

impl Placement {
    /// What the PBX holds, for validation.
    pub fn allocation(&self) -> Allocation {
        Allocation {
            shortage: self.shortage.clone(),
            ..self
                .entry
                .as_ref()
                .map(Allocation::from)
                .unwrap_or_default()
        }
    }
}

/// The entry `pbx` should hold at `now` given the ledger and the other
/// PBXs: what it holds and still needs is kept (ports never move under a
/// running PBX); what it needs and lacks is the lowest free port or block
/// (ports held by anyone else are not free); what it no longer needs is
/// released, held for its drain timeout.
pub fn place<'a>(
    pools: &Pools,
    ledger: &Ledger,
    pbx: &WebRtcPbx,
    others: impl IntoIterator<Item = &'a WebRtcPbx>,
    now: i64,
) -> Placement {
    let uid = pbx.metadata.uid.clone().unwrap_or_default();
    let needs = Needs::of(pbx);
    let held = match ledger.entries.get(&uid) {
        Some(e) => e.clone(),
        // Most PBXs: nothing held, nothing needed; no scan of the others.
        None if needs.none() => return Placement::default(),
        None => Entry::default(),
    };
    let mut tcp: Vec<i32> = pbx.spec.wss.ws_port.into_iter().collect();
    let mut udp: Vec<PortRange> = Vec::new();
    for other in others {
        if other.metadata.uid.as_deref() == Some(uid.as_str()) {
            continue;
        }
        // Pinned ports; allocated ones come from the ledger below, also
        // for PBXs the caller's cache does not show yet.
        let pinned = host_ports(other, &Ledger::default());
        tcp.extend(pinned.tcp);
        udp.extend(pinned.udp);
    }
    for (other, entry) in &ledger.entries {
        if *other != uid && entry.holds(now) {
            tcp.extend(entry.wss);
            udp.extend(entry.rtp);
        }
    }
    let mut entry = Entry {
        pbx: format!("{}/{}", pbx.namespace().unwrap_or_default(), pbx.name_any()),
        wss: None,
        rtp: None,
        held_until: None,
    };
    let mut shortage = None;
    if needs.wss {
        let own_rtp = pbx.spec.rtp.port_range.or(held.rtp);
        entry.wss = held.wss.or_else(|| {
            (pools.wss.start..=pools.wss.end)
                .find(|p| !tcp.contains(p) && !own_rtp.is_some_and(|r| r.contains(*p)))
        });
        if entry.wss.is_none() {
            shortage = Some(format!(
                "every port of the operator's WSS pool {} is taken (by other PBXs, or this one's rtp.portRange): set wss.port, or ask the operator's admin to widen the pool (--wss-port-pool)",
                show(pools.wss)
            ));
        }
    }
    if needs.rtp {
        let own_tcp: Vec<i32> = pbx
            .spec
            .wss
            .port
            .or(entry.wss)
            .into_iter()
            .chain(pbx.spec.wss.ws_port)
            .collect();
        let block = i32::from(pools.rtp_block.max(1));
        entry.rtp = held.rtp.or_else(|| {
            (pools.rtp.start..=pools.rtp.end - block + 1)
                .step_by(usize::from(pools.rtp_block.max(1)))
                .map(|start| PortRange {
                    start,
                    end: start + block - 1,
                })
                .find(|b| {
                    !udp.iter().any(|u| overlaps(*u, *b)) && !own_tcp.iter().any(|p| b.contains(*p))
                })
        });
        if entry.rtp.is_none() {
            shortage = Some(format!(
                "every {}-port block of the operator's RTP pool {} is taken: set rtp.portRange, or ask the operator's admin to widen the pool (--rtp-port-pool)",
                pools.rtp_block,
                show(pools.rtp)
            ));
        }
    }
    let hold = hold_seconds(pbx);
    let mut released = Vec::new();
    if let Some(wss) = held.wss.filter(|_| !needs.wss) {
        let e = Entry {
            wss: Some(wss),
            rtp: None,
            ..entry.clone()
        };
        released.push((held_key(&uid, &format!("wss{wss}")), e.held(now, hold)));
    }
    if let Some(rtp) = held.rtp.filter(|_| !needs.rtp) {
        let e = Entry {
            wss: None,
            rtp: Some(rtp),
            ..entry.clone()
        };
        released.push((
            held_key(&uid, &format!("rtp{}", rtp.start)),
            e.held(now, hold),
        ));
    }
    Placement {
        entry: (!entry.is_empty()).then_some(entry),
        shortage,
        released,
    }
}

/// Allocations for a set of PBXs in order, each disjoint from the ones
/// before (the offline `render` command and fixtures: no ledger exists).
pub fn place_all(pools: &Pools, pbxes: &[WebRtcPbx]) -> Vec<Allocation> {
    let mut ledger = Ledger::default();
    pbxes
        .iter()
        .enumerate()
        .map(|(i, pbx)| {
            let mut keyed = pbx.clone();
            keyed.metadata.uid = Some(format!("{i}"));
            let placed = place(pools, &ledger, &keyed, pbxes, 0);
            if let Some(e) = &placed.entry {
                ledger.entries.insert(format!("{i}"), e.clone());
            }
            placed.allocation()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pbx(name: &str, spec: serde_json::Value) -> WebRtcPbx {
        serde_json::from_value(json!({
            "apiVersion": "pbx.webrtc.io/v1alpha1", "kind": "WebRtcPbx",
            "metadata": {"name": name, "namespace": "voice", "uid": format!("uid-{name}")},
            "spec": spec
        }))
        .unwrap()
    }

    const NOW: i64 = 1_000_000;

    fn small() -> Pools {
        Pools {
            wss: PortRange {
                start: 9000,
                end: 9002,
            },
            rtp: PortRange {
                start: 20000,
                end: 20299,
            },
            rtp_block: 100,
        }
    }

    /// Places `pbx` and records it, as the controller would.
    fn admit(ledger: &mut Ledger, pools: &Pools, p: &WebRtcPbx, all: &[WebRtcPbx]) -> Entry {
        let placed = place(pools, ledger, p, all, NOW);
        assert_eq!((placed.shortage, placed.released), (None, vec![]));
        let entry = placed.entry.unwrap();
        ledger
            .entries
            .insert(p.metadata.uid.clone().unwrap(), entry.clone());
        entry
    }

    #[test]
    fn ports_are_lowest_free_skip_pinned_and_stay_put() {
        let pools = small();
        let pinned = pbx(
            "pinned",
            json!({"domain": "p.test", "wss": {"port": 9000}, "rtp": {"portRange": {"start": 20050, "end": 20060}}}),
        );
        let a = pbx("a", json!({"domain": "a.test"}));
        let b = pbx("b", json!({"domain": "b.test", "wss": {"wsPort": 9002}}));
        let all = [pinned.clone(), a.clone(), b.clone()];
        let mut ledger = Ledger::default();
        let ea = admit(&mut ledger, &pools, &a, &all);
        assert_eq!(ea.wss, Some(9001), "9000 is pinned by another PBX");
        assert_eq!(
            ea.rtp.map(show).as_deref(),
            Some("20100-20199"),
            "the first block overlaps a pinned range"
        );
        assert_eq!(ea.pbx, "voice/a");
        let pb = place(&pools, &ledger, &b, &all, NOW);
        assert_eq!(pb.entry.as_ref().and_then(|e| e.wss), None);
        assert!(pb.shortage.unwrap().contains("WSS pool 9000-9002"));
        assert_eq!(
            pb.entry.and_then(|e| e.rtp).map(show).as_deref(),
            Some("20200-20299")
        );
        // Placing again, with any others, keeps what is held.
        assert_eq!(place(&pools, &ledger, &a, [], NOW).entry, Some(ea.clone()));
        assert_eq!(host_ports(&a, &ledger).tcp, vec![9001]);
    }

    #[test]
    fn pinning_or_leaving_host_network_drops_the_allocation() {
        let pools = small();
        let a = pbx("a", json!({"domain": "a.test"}));
        let mut ledger = Ledger::default();
        admit(&mut ledger, &pools, &a, std::slice::from_ref(&a));
        let pinned_wss = pbx(
            "a",
            json!({"domain": "a.test", "wss": {"port": 9500}, "drain": {"timeout": "1m"}}),
        );
        let placed = place(&pools, &ledger, &pinned_wss, [], NOW);
        let entry = placed.entry.unwrap();
        assert_eq!(entry.wss, None);
        assert_eq!(
            entry.rtp.map(show).as_deref(),
            Some("20000-20099"),
            "the RTP block is kept"
        );
        // The WSS port given up is held for the drain timeout and margin.
        let (key, held) = &placed.released[0];
        assert_eq!(key, "uid-a.wss9000");
        assert_eq!(
            (held.wss, held.held_until),
            (Some(9000), Some(NOW + 60 + HOLD_MARGIN_SECONDS))
        );
        let service = pbx(
            "a",
            json!({"domain": "a.test", "network": {"mode": "Service"}}),
        );
        let placed = place(&pools, &ledger, &service, [], NOW);
        assert_eq!((placed.entry, placed.released.len()), (None, 2));
    }

    #[test]
    fn held_ports_are_not_free_until_they_expire() {
        let pools = small();
        let mut ledger = Ledger::default();
        let gone = Entry {
            pbx: "voice/gone".into(),
            wss: Some(9000),
            rtp: Some(PortRange {
                start: 20000,
                end: 20099,
            }),
            held_until: Some(NOW + 10),
        };
        ledger.entries.insert(held_key("uid-gone", "all"), gone);
        let a = pbx("a", json!({"domain": "a.test"}));
        let held = place(&pools, &ledger, &a, [], NOW).entry.unwrap();
        assert_eq!(
            (held.wss, held.rtp.map(|r| r.start)),
            (Some(9001), Some(20100))
        );
        let expired = place(&pools, &ledger, &a, [], NOW + 10).entry.unwrap();
        assert_eq!(
            (expired.wss, expired.rtp.map(|r| r.start)),
            (Some(9000), Some(20000))
        );
        assert!(is_held_key("uid-gone.all") && !is_held_key("uid-a"));
    }

    #[test]
    fn a_pbx_pinned_inside_the_pools_is_avoided_and_its_own_ports_too() {
        let pools = small();
        // Its own WS port is in the WSS pool; its own pinned RTP range
        // covers the next WSS candidate.
        let a = pbx(
            "a",
            json!({"domain": "a.test", "wss": {"wsPort": 9000}, "rtp": {"portRange": {"start": 9001, "end": 9001}}}),
        );
        let placed = place(&pools, &Ledger::default(), &a, [], NOW);
        assert_eq!(
            (placed.entry.unwrap().wss, placed.shortage),
            (Some(9002), None)
        );
    }

    #[test]
    fn ledger_data_round_trips_and_bad_entries_are_named() {
        let pools = small();
        let a = pbx("a", json!({"domain": "a.test"}));
        let mut ledger = Ledger::default();
        admit(&mut ledger, &pools, &a, std::slice::from_ref(&a));
        let text = ledger.data_of("uid-a").unwrap();
        assert_eq!(
            text,
            r#"{"pbx":"voice/a","wss":9000,"rtp":{"start":20000,"end":20099}}"#
        );
        let data = BTreeMap::from([
            ("uid-a".to_string(), text),
            ("uid-x".to_string(), "not json".to_string()),
        ]);
        let (read, bad) = Ledger::from_data(&data);
        assert_eq!(read, ledger);
        assert_eq!(bad, vec!["uid-x"]);
    }

    #[test]
    fn pools_that_cannot_work_are_named() {
        assert_eq!(Pools::default().problem(), None);
        let mut p = small();
        p.rtp.start = 9002;
        assert!(p.problem().unwrap().contains("overlap"));
        let mut p = small();
        p.rtp_block = 301;
        assert!(p.problem().unwrap().contains("do not fit"));
    }
}

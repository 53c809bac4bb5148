//! Host-port conflicts between PBXs (pure): in HostNetwork mode a PBX's WSS
//! port and RTP range are the node's ports. The WSS (and WS) ports are
//! declared to the scheduler as host ports; RTP ranges cannot be, so
//! HostNetwork PBXs share a node only when every port differs: a PBX whose
//! ports overlap those of an older HostNetwork PBX that may run on the same
//! nodes is blocked by it. Finds the first. Ports allocated by the operator
//! (from the [`Ledger`]) count as the PBX's own; they never overlap each
//! other, only a port pinned later can overlap them.

use kube::ResourceExt;

use crate::allocate::{Ledger, host_ports};
use crate::api::{NetworkMode, WebRtcPbx};

/// Another PBX whose host ports overlap this one's on shared nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// namespace/name of the other PBX.
    pub other: String,
    /// The overlapping ports, for the message.
    pub ports: Vec<String>,
}

impl Conflict {
    /// What to tell the user.
    pub fn message(&self) -> String {
        format!(
            "WebRtcPbx {} may run on the same nodes and holds host ports {}: \
             give this PBX other ports (wss.port, rtp.portRange), a nodeSelector for other nodes, \
             or network.mode Service",
            self.other,
            self.ports.join(", ")
        )
    }
}

/// True when the node selectors could select the same node (no label key
/// with different required values).
fn may_share_nodes(a: &WebRtcPbx, b: &WebRtcPbx) -> bool {
    a.spec
        .node_selector
        .iter()
        .all(|(k, v)| b.spec.node_selector.get(k).is_none_or(|w| w == v))
}

/// The PBX created first (name order breaks ties) keeps its ports.
fn older(a: &WebRtcPbx, b: &WebRtcPbx) -> bool {
    let key = |p: &WebRtcPbx| (p.creation_timestamp(), p.namespace(), p.name_any());
    key(a) < key(b)
}

/// The first older PBX among `others` that blocks `this`.
pub fn conflict<'a>(
    this: &WebRtcPbx,
    others: impl IntoIterator<Item = &'a WebRtcPbx>,
    ledger: &Ledger,
) -> Option<Conflict> {
    if this.spec.network.mode != NetworkMode::HostNetwork {
        return None;
    }
    let mine = host_ports(this, ledger);
    others.into_iter().find_map(|other| {
        let same = other.uid() == this.uid()
            && other.name_any() == this.name_any()
            && other.namespace() == this.namespace();
        if same
            || other.spec.network.mode != NetworkMode::HostNetwork
            || !older(other, this)
            || !may_share_nodes(this, other)
        {
            return None;
        }
        let theirs = host_ports(other, ledger);
        let mut ports: Vec<String> = mine
            .tcp
            .iter()
            .filter(|p| theirs.tcp.contains(p))
            .map(|p| format!("{p}/TCP"))
            .collect();
        if let (Some(a), Some(b)) = (mine.udp, theirs.udp) {
            let (lo, hi) = (a.start.max(b.start), a.end.min(b.end));
            if lo <= hi {
                ports.push(format!("{lo}-{hi}/UDP"));
            }
        }
        (!ports.is_empty()).then(|| Conflict {
            other: format!(
                "{}/{}",
                other.namespace().unwrap_or_default(),
                other.name_any()
            ),
            ports,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pbx(name: &str, created: &str, spec: serde_json::Value) -> WebRtcPbx {
        serde_json::from_value(json!({
            "apiVersion": "pbx.webrtc.io/v1alpha1", "kind": "WebRtcPbx",
            "metadata": {"name": name, "namespace": "voice", "creationTimestamp": created, "uid": name},
            "spec": spec
        }))
        .unwrap()
    }

    fn pinned(domain: &str) -> serde_json::Value {
        json!({"domain": domain, "wss": {"port": 8089}, "rtp": {"portRange": {"start": 10000, "end": 20000}}})
    }

    #[test]
    fn a_port_pinned_later_over_an_allocated_one_is_the_conflict() {
        let allocated = pbx("a", "2026-01-01T00:00:00Z", json!({"domain": "a.test"}));
        let late = pbx("b", "2026-01-02T00:00:00Z", pinned("b.test"));
        let mut ledger = Ledger::default();
        let placed = crate::allocate::place(
            &crate::allocate::Pools::default(),
            &ledger,
            &allocated,
            [],
            0,
        );
        ledger.entries.insert("a".into(), placed.entry.unwrap());
        let c = conflict(&late, [&allocated], &ledger).unwrap();
        assert_eq!(c.ports, vec!["8089/TCP", "10000-10099/UDP"]);
        assert_eq!(conflict(&allocated, [&late], &ledger), None);
    }

    #[test]
    fn newer_overlapping_pbx_is_blocked_by_the_older() {
        let a = pbx("a", "2026-01-01T00:00:00Z", pinned("a.test"));
        let b = pbx(
            "b",
            "2026-01-02T00:00:00Z",
            json!({"domain": "b.test", "wss": {"port": 8089}, "rtp": {"portRange": {"start": 15000, "end": 25000}}}),
        );
        let c = conflict(&b, [&a, &b], &Ledger::default()).unwrap();
        assert_eq!(c.other, "voice/a");
        assert_eq!(c.ports, vec!["8089/TCP", "15000-20000/UDP"]);
        assert!(c.message().contains("voice/a"));
        assert_eq!(
            conflict(&a, [&a, &b], &Ledger::default()),
            None,
            "the older one keeps running"
        );
    }

    #[test]
    fn disjoint_ports_nodes_or_modes_do_not_conflict() {
        let a = pbx("a", "2026-01-01T00:00:00Z", pinned("a.test"));
        let ports = pbx(
            "b",
            "2026-01-02T00:00:00Z",
            json!({"domain": "b.test", "wss": {"port": 9443}, "rtp": {"portRange": {"start": 30000, "end": 31000}}}),
        );
        assert_eq!(conflict(&ports, [&a], &Ledger::default()), None);
        let nodes_a = pbx(
            "na",
            "2026-01-01T00:00:00Z",
            json!({"domain": "a.test", "wss": {"port": 8089}, "nodeSelector": {"pool": "x"}}),
        );
        let nodes_b = pbx(
            "nb",
            "2026-01-02T00:00:00Z",
            json!({"domain": "b.test", "wss": {"port": 8089}, "nodeSelector": {"pool": "y"}}),
        );
        assert_eq!(conflict(&nodes_b, [&nodes_a], &Ledger::default()), None);
        let svc = pbx(
            "s",
            "2026-01-02T00:00:00Z",
            json!({"domain": "s.test", "network": {"mode": "Service"}, "rtp": {"portRange": {"start": 10000, "end": 10010}}}),
        );
        assert_eq!(conflict(&svc, [&a], &Ledger::default()), None);
    }
}

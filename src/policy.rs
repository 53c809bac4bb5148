//! The policy step: what the operator's admin lets a tenant's WebRtcPbx ask
//! for. A WebRtcPbx author is a tenant, not an admin, yet the spec chooses
//! the image the pod runs, whether it shares a node's network, which nodes
//! it lands on, and where the operator's probe dials. The admin sets the
//! bounds with operator flags; a spec outside them is refused with a
//! condition (`PolicyDenied`) and nothing is applied. Pure: the caller
//! passes the spec and the addresses it knows.

use std::net::IpAddr;

use crate::api::{NetworkMode, WebRtcPbxSpec};
use crate::validate::{Problem, ValidatedPbx};

/// The image repository the project publishes Asterisk under.
pub const PROJECT_IMAGES: &str = "ghcr.io/webrtc-pbx-operator/";

/// Operator-level bounds on what a WebRtcPbx may ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Images a PBX may run: a repository (`registry/org/name`, any tag or
    /// digest) or a prefix ending in `/` (every repository below it).
    /// Empty: any image.
    pub allowed_images: Vec<String>,
    /// Whether `network.mode: HostNetwork` (a pod on the node's network,
    /// binding its ports) is allowed.
    pub allow_host_network: bool,
    /// Node labels a PBX may select on: `key` (any value) or `key=value`.
    /// Empty: any node selector.
    pub allowed_node_selectors: Vec<String>,
    /// Where `probes.connectAddress` may point besides the PBX's own
    /// Service, pod and node (on its WSS port): CIDRs (any port) or
    /// `host:port`.
    pub probe_connect_allow: Vec<String>,
}

impl Default for Policy {
    /// The project's images only; host network and any node allowed (the
    /// recommended mode); probes dial only the PBX itself.
    fn default() -> Self {
        Self {
            allowed_images: vec![PROJECT_IMAGES.into()],
            allow_host_network: true,
            allowed_node_selectors: vec![],
            probe_connect_allow: vec![],
        }
    }
}

/// The repository of an image reference: without `@digest` and `:tag`.
fn repository(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    match image.rsplit_once(':') {
        // A colon after the last `/` is a tag; before it, a registry port.
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => image,
    }
}

fn image_allowed(image: &str, entry: &str) -> bool {
    if entry.ends_with('/') {
        image.starts_with(entry)
    } else {
        repository(image) == entry
    }
}

impl Policy {
    /// `pbx` when the policy allows its spec, or what it does not allow.
    pub fn admit(&self, pbx: ValidatedPbx) -> Result<ValidatedPbx, Vec<Problem>> {
        let denied = self.check(&pbx.spec);
        if denied.is_empty() {
            Ok(pbx)
        } else {
            Err(denied)
        }
    }

    /// What the spec asks for beyond the policy (empty: within it).
    pub fn check(&self, spec: &WebRtcPbxSpec) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut denied = |field: &str, message: String| {
            problems.push(Problem::PolicyDenied {
                field: field.into(),
                message,
            })
        };
        if !self.allowed_images.is_empty()
            && !self
                .allowed_images
                .iter()
                .any(|e| image_allowed(&spec.image, e))
        {
            denied(
                "image",
                format!(
                    "{} is not among the images this operator may run ({}); ask the operator's admin to allow it (--allowed-image)",
                    spec.image,
                    self.allowed_images.join(", ")
                ),
            );
        }
        if !self.allow_host_network && spec.network.mode == NetworkMode::HostNetwork {
            denied(
                "network.mode",
                "HostNetwork is not allowed by this operator (--allow-host-network=false): use mode Service".into(),
            );
        }
        if !self.allowed_node_selectors.is_empty() {
            for (key, value) in &spec.node_selector {
                let pair = format!("{key}={value}");
                if !self
                    .allowed_node_selectors
                    .iter()
                    .any(|e| e == key || *e == pair)
                {
                    denied(
                        "nodeSelector",
                        format!(
                            "{pair} is not among the node labels a PBX may select ({}); ask the operator's admin (--allowed-node-selector)",
                            self.allowed_node_selectors.join(", ")
                        ),
                    );
                }
            }
        }
        problems
    }

    /// Why the probe may not dial `connect_address` (`host:port`), if it
    /// may not. `own_hosts` are the PBX's own Service names; `own_ips` its
    /// pod and node addresses, allowed on `wss_port` only (so a spec cannot
    /// point the operator at other ports of a node, such as the kubelet's).
    pub fn connect_denied(
        &self,
        connect_address: &str,
        own_hosts: &[String],
        own_ips: &[IpAddr],
        wss_port: i32,
    ) -> Option<String> {
        // An address that does not parse is not the PBX's own either: only
        // an exact allowlist entry lets it through (never fail open).
        let (host, port) = connect_address
            .rsplit_once(':')
            .map_or((connect_address, None), |(h, p)| (h, p.parse::<i32>().ok()));
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip = host.parse::<IpAddr>().ok();
        let own = own_hosts.iter().any(|h| h == host) || ip.is_some_and(|ip| own_ips.contains(&ip));
        if own && port == Some(wss_port) {
            return None;
        }
        let allowed =
            self.probe_connect_allow
                .iter()
                .any(|entry| match (ip, entry.split_once('/')) {
                    (Some(ip), Some((net, len))) => in_cidr(ip, net, len),
                    _ => entry == connect_address,
                });
        (!allowed).then(|| {
            format!(
                "probes.connectAddress {connect_address} is not this PBX's own Service, pod or node address on its WSS port {wss_port}: the operator does not dial other targets unless its admin allows them (--probe-connect-allow)"
            )
        })
    }
}

fn in_cidr(ip: IpAddr, net: &str, len: &str) -> bool {
    let (Ok(net), Ok(len)) = (net.parse::<IpAddr>(), len.parse::<u32>()) else {
        return false;
    };
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) if len <= 32 => {
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) if len <= 128 => {
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(patch: serde_json::Value) -> WebRtcPbxSpec {
        let mut base = serde_json::json!({"domain": "pbx.test"});
        if let (Some(b), Some(p)) = (base.as_object_mut(), patch.as_object()) {
            b.extend(p.clone());
        }
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn images_are_matched_by_repository_not_by_text() {
        let p = Policy::default();
        assert!(p.check(&spec(serde_json::json!({}))).is_empty());
        let strict = Policy {
            allowed_images: vec!["registry.local:5000/voice/asterisk".into()],
            ..Policy::default()
        };
        for ok in [
            "registry.local:5000/voice/asterisk",
            "registry.local:5000/voice/asterisk:22",
            "registry.local:5000/voice/asterisk@sha256:00",
        ] {
            assert!(image_allowed(ok, &strict.allowed_images[0]), "{ok}");
        }
        for bad in [
            "registry.local:5000/voice/asterisk-evil:1",
            "registry.local:5000/voice/asteriskx",
            "evil.example/registry.local:5000/voice/asterisk",
        ] {
            assert!(!image_allowed(bad, &strict.allowed_images[0]), "{bad}");
        }
        let denied = p.check(&spec(
            serde_json::json!({"image": "docker.io/evil/miner:1"}),
        ));
        assert_eq!(denied.len(), 1);
        assert!(
            denied[0].to_string().contains("--allowed-image"),
            "{}",
            denied[0]
        );
    }

    #[test]
    fn host_network_and_node_selectors_follow_the_flags() {
        let p = Policy {
            allow_host_network: false,
            allowed_node_selectors: vec!["voice".into(), "zone=a".into()],
            ..Policy::default()
        };
        let s = spec(serde_json::json!({"nodeSelector": {"voice": "x", "zone": "b"}}));
        let fields: Vec<String> = p.check(&s).iter().map(ToString::to_string).collect();
        assert_eq!(fields.len(), 2, "{fields:?}");
        assert!(fields[0].starts_with("spec.network.mode"), "{fields:?}");
        assert!(fields[1].contains("zone=b"), "{fields:?}");
        let s = spec(
            serde_json::json!({"network": {"mode": "Service"}, "nodeSelector": {"zone": "a"}}),
        );
        assert!(p.check(&s).is_empty());
    }

    #[test]
    fn the_probe_dials_the_pbx_itself_or_what_the_admin_allows() {
        let own_hosts = vec!["a-wss.voice.svc".to_string()];
        let own_ips: Vec<IpAddr> = vec!["10.0.0.5".parse().unwrap()];
        let p = Policy::default();
        assert_eq!(
            p.connect_denied("a-wss.voice.svc:8089", &own_hosts, &own_ips, 8089),
            None
        );
        assert_eq!(
            p.connect_denied("10.0.0.5:8089", &own_hosts, &own_ips, 8089),
            None
        );
        // Another port of the node, another host, a name: refused.
        for bad in [
            "10.0.0.5:10250",
            "10.0.0.6:8089",
            "169.254.169.254:80",
            "db.internal:5432",
        ] {
            let why = p.connect_denied(bad, &own_hosts, &own_ips, 8089);
            assert!(
                why.is_some_and(|w| w.contains("--probe-connect-allow")),
                "{bad}"
            );
        }
        let allowing = Policy {
            probe_connect_allow: vec!["127.0.0.0/8".into(), "edge.example:443".into()],
            ..Policy::default()
        };
        assert_eq!(
            allowing.connect_denied("127.0.0.1:18089", &[], &[], 8089),
            None
        );
        assert_eq!(
            allowing.connect_denied("edge.example:443", &[], &[], 8089),
            None
        );
        assert!(
            allowing
                .connect_denied("128.0.0.1:18089", &[], &[], 8089)
                .is_some()
        );
        // What does not parse as host:port is refused, not waved through.
        for odd in ["10.0.0.5", "10.0.0.5:http", "a-wss.voice.svc:", ""] {
            assert!(
                p.connect_denied(odd, &own_hosts, &own_ips, 8089).is_some(),
                "{odd:?}"
            );
        }
    }
}

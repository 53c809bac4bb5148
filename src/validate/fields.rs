//! The rules for single values: bounds of durations, text that must fit on
//! one line of an Asterisk configuration file, DNS names, extensions,
//! networks, Secret values, and the schema rules the apiserver enforces,
//! repeated for input that never passed admission. Used by the validate
//! step ([`super::validate`]).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;

use super::{Problem, Referenced};
use crate::api::{SecretKeyRef, TlsMode, WebRtcPbxSpec};

/// Accepted ranges of the durations (the same bounds as the CRD's rules).
pub(super) const PROBE_INTERVAL: (Duration, Duration) =
    (Duration::from_secs(5), Duration::from_secs(86400));
/// Probe step time limit: a stalled PBX holds a probe slot this long at most.
pub const PROBE_TIMEOUT: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(60));
pub(super) const ECHO_DURATION: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(600));
/// Renewal window of operator-issued certificates: at most two thirds of
/// their 90-day lifetime, or every reconcile would renew.
pub const RENEW_BEFORE: (Duration, Duration) =
    (Duration::from_secs(3600), Duration::from_secs(1440 * 3600));

/// Bounds of drain.timeout.
pub const DRAIN_TIMEOUT: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(24 * 3600));

/// Longest password or TURN credential accepted from a Secret.
pub(super) const MAX_SECRET_TEXT: usize = 256;

/// Why `value` cannot be one value on one line of an Asterisk
/// configuration file, if it cannot: a control character (CR or LF would
/// start a new line, hence a new `[section]`, `#include` or `key = value`),
/// whitespace Asterisk strips from the ends, or too many bytes. `;` is safe:
/// the renderer escapes it.
pub fn text_problem(value: &str, max_len: usize) -> Option<String> {
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Some(format!(
            "contains the control character U+{:04X}: configuration values are one line of printable text",
            u32::from(c)
        ));
    }
    if value.len() > max_len {
        return Some(format!("is {} bytes long, at most {max_len}", value.len()));
    }
    if value.trim() != value {
        return Some("starts or ends with whitespace, which Asterisk strips".into());
    }
    None
}

/// True for a lowercase DNS name (RFC 1123 labels, at most 253 bytes), or,
/// with `wildcard`, such a name below `*.`.
pub fn is_dns_name(name: &str, wildcard: bool) -> bool {
    let name = match name.strip_prefix("*.") {
        Some(rest) if wildcard => rest,
        _ => name,
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    !name.is_empty() && name.len() <= 253 && name.split('.').all(label_ok)
}

/// True for `1001`, `*43`, `+4930123`: what the CRD allows as an extension.
pub(super) fn is_extension(s: &str) -> bool {
    (1..=16).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'*' | b'#' | b'+'))
}

/// True for `host[:port]` with a host of letters, digits, `.` and `-`.
pub(super) fn is_host_port(s: &str) -> bool {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
}

/// True for an IPv4 or IPv6 network in CIDR notation.
pub(super) fn is_cidr(s: &str) -> bool {
    let Some((ip, len)) = s.split_once('/') else {
        return false;
    };
    match (ip.parse::<std::net::IpAddr>(), len.parse::<u8>()) {
        (Ok(std::net::IpAddr::V4(_)), Ok(l)) => l <= 32,
        (Ok(std::net::IpAddr::V6(_)), Ok(l)) => l <= 128,
        _ => false,
    }
}

/// The name rules the CRD enforces on `metadata.name`: the children's names
/// and labels must be valid too.
pub(super) fn check_name(name: &str, problems: &mut Vec<Problem>) {
    let mut invalid = |message: String| {
        problems.push(Problem::InvalidSpec {
            field: "metadata.name".into(),
            message,
        })
    };
    let starts_with_letter = name.bytes().next().is_some_and(|b| b.is_ascii_lowercase());
    if !starts_with_letter || !is_dns_name(name, false) || name.contains('.') {
        invalid(format!(
            "{name:?} must start with a lowercase letter and hold only lowercase letters, digits and '-': it names the PBX's Services"
        ));
    }
    if name.len() > MAX_NAME {
        invalid(format!(
            "{name:?} is {} characters, at most {MAX_NAME}: the pods' controller-revision-hash label adds 11 to a limit of 63",
            name.len()
        ));
    }
}

/// Longest PBX name: `NAME-` plus a 10-character revision hash is a label (63).
pub const MAX_NAME: usize = 52;

/// The rules the apiserver also enforces, repeated for input that never
/// passed admission (the offline `render` command, an apiserver without CEL).
pub(super) fn check_spec(
    spec: &WebRtcPbxSpec,
    wss_port: Option<i32>,
    range: Option<crate::api::PortRange>,
    problems: &mut Vec<Problem>,
) {
    let mut invalid = |field: &str, message: String| {
        problems.push(Problem::InvalidSpec {
            field: field.into(),
            message,
        })
    };
    if let Some(range) = range {
        if range.start > range.end {
            invalid(
                "rtp.portRange",
                format!("start {} is greater than end {}", range.start, range.end),
            );
        }
        for (field, port) in [("wss.port", wss_port), ("wss.wsPort", spec.wss.ws_port)] {
            if let Some(port) = port.filter(|p| range.contains(*p)) {
                invalid(
                    field,
                    format!(
                        "{port} lies inside rtp.portRange {}-{}",
                        range.start, range.end
                    ),
                );
            }
        }
    }
    if wss_port.is_some() && spec.wss.ws_port == wss_port {
        invalid("wss.wsPort", "equals wss.port".into());
    }
    // NaN fails the range too.
    if !(1.0..=4.5).contains(&spec.probes.min_mos) {
        invalid(
            "probes.minMos",
            format!(
                "is {}: a MOS is between 1 and 4.5 (4.41 is a perfect narrowband call)",
                spec.probes.min_mos
            ),
        );
    }
    if let Some(range) = range.filter(|r| r.len() > 200)
        && spec.network.mode == crate::api::NetworkMode::Service
    {
        invalid(
            "rtp.portRange",
            format!(
                "{} ports in Service mode: a Service cannot carry a port range; use at most 200 ports or mode HostNetwork",
                range.len()
            ),
        );
    }
    let mut seen = BTreeMap::new();
    for (i, u) in spec.users.iter().enumerate() {
        if let Some(first) = seen.insert(u.extension.as_str(), i) {
            invalid(
                &format!("users[{i}].extension"),
                format!("{} is also users[{first}].extension", u.extension),
            );
        }
        if u.extension == spec.dialplan.echo_extension {
            invalid(
                &format!("users[{i}].extension"),
                format!("{} is the echo extension", u.extension),
            );
        }
    }
    if !is_dns_name(&spec.domain, false) {
        invalid(
            "domain",
            format!(
                "{:?} must be a lowercase DNS name such as pbx.example.com",
                spec.domain
            ),
        );
    }
    if spec.image.is_empty()
        || spec.image.len() > 512
        || spec
            .image
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        invalid(
            "image",
            "must be an image reference of at most 512 characters without spaces or control characters".into(),
        );
    }
    if spec.wss.bind_address.parse::<std::net::IpAddr>().is_err() {
        invalid(
            "wss.bindAddress",
            format!("{:?} is not an IP address", spec.wss.bind_address),
        );
    }
    if let Some(ext) = &spec.network.external_address
        && ext.parse::<std::net::IpAddr>().is_err()
    {
        invalid(
            "network.externalAddress",
            format!("{ext:?} is not an IP address"),
        );
    }
    for (i, net) in spec.network.local_networks.iter().enumerate() {
        if !is_cidr(net) {
            invalid(
                &format!("network.localNetworks[{i}]"),
                format!("{net:?} is not a CIDR such as 10.0.0.0/8"),
            );
        }
    }
    for (i, s) in spec.rtp.ice.stun_servers.iter().enumerate() {
        if !s.strip_prefix("stun:").is_some_and(is_host_port) {
            invalid(
                &format!("rtp.ice.stunServers[{i}]"),
                format!("{s:?} must look like stun:stun.example.net:3478"),
            );
        }
    }
    for (i, t) in spec.rtp.ice.turn_servers.iter().enumerate() {
        let rest = t.url.strip_prefix("turn:");
        let host = rest.map(|r| r.strip_suffix("?transport=udp").unwrap_or(r));
        if !host.is_some_and(is_host_port) {
            invalid(
                &format!("rtp.ice.turnServers[{i}].url"),
                format!(
                    "{:?} must look like turn:turn.example.net:3478 (Asterisk relays over UDP only: turns: and ?transport=tcp are not supported)",
                    t.url
                ),
            );
        }
    }
    for (i, n) in spec.tls.extra_dns_names.iter().enumerate() {
        // A name whose last label starts with a digit reads as an IP
        // address (what rcgen would issue as an IP SAN, never matching).
        let tld_ok = n
            .rsplit('.')
            .next()
            .is_some_and(|l| l.starts_with(|c: char| c.is_ascii_lowercase()));
        if !is_dns_name(n, true) || !tld_ok {
            invalid(
                &format!("tls.extraDnsNames[{i}]"),
                format!(
                    "{n:?} must be a lowercase DNS name such as sip.example.com or *.example.com (IP addresses are not supported)"
                ),
            );
        }
    }
    if !is_extension(&spec.dialplan.echo_extension) {
        invalid(
            "dialplan.echoExtension",
            "must be 1-16 digits (optionally * # +), such as *43".into(),
        );
    }
    for (i, u) in spec.users.iter().enumerate() {
        if !is_extension(&u.extension) {
            invalid(
                &format!("users[{i}].extension"),
                format!(
                    "{:?} must be 1-16 digits (optionally * # +), such as 1001",
                    u.extension
                ),
            );
        }
        if let Some(name) = &u.display_name {
            let why = text_problem(name, 64).or_else(|| {
                name.contains(['"', '\\', '<', '>'])
                    .then(|| "contains a double quote, backslash or angle bracket".to_string())
            });
            if let Some(why) = why {
                invalid(
                    &format!("users[{i}].displayName"),
                    format!("{name:?} {why}"),
                );
            }
        }
    }
    match spec.tls.mode {
        TlsMode::Secret if spec.tls.secret_name.as_deref().unwrap_or("").is_empty() => invalid(
            "tls.secretName",
            "tls.mode Secret needs tls.secretName".into(),
        ),
        TlsMode::CertManager if spec.tls.issuer_ref.is_none() => invalid(
            "tls.issuerRef",
            "tls.mode CertManager needs tls.issuerRef".into(),
        ),
        _ => {}
    }
}

pub(super) fn duration_field(
    field: &str,
    value: &str,
    (min, max): (Duration, Duration),
    problems: &mut Vec<Problem>,
) -> Option<Duration> {
    match parse_duration(value) {
        Ok(d) if d < min || d > max => {
            problems.push(Problem::InvalidSpec {
                field: field.into(),
                message: format!("{value} is outside {min:?} to {max:?}"),
            });
            None
        }
        Ok(d) => Some(d),
        Err(message) => {
            problems.push(Problem::InvalidSpec {
                field: field.into(),
                message,
            });
            None
        }
    }
}

pub(super) fn secret_value(
    referenced: &Referenced,
    r: &SecretKeyRef,
    namespace: &str,
    field: &str,
    problems: &mut Vec<Problem>,
) -> Option<String> {
    let Some(secret) = referenced.secrets.get(&r.name) else {
        problems.push(Problem::SecretNotFound {
            name: r.name.clone(),
            namespace: namespace.into(),
            field: field.into(),
        });
        return None;
    };
    let Some(bytes) = secret_bytes(secret, &r.key) else {
        problems.push(Problem::SecretKeyMissing {
            name: r.name.clone(),
            key: r.key.clone(),
            field: field.into(),
        });
        return None;
    };
    match String::from_utf8(bytes) {
        // A trailing newline from `kubectl create secret --from-file` is not part of the password.
        Ok(s) => Some(s.trim_end_matches(['\n', '\r']).to_string()),
        Err(_) => {
            problems.push(Problem::InvalidSpec {
                field: field.into(),
                message: format!("Secret {} key {} is not UTF-8 text", r.name, r.key),
            });
            None
        }
    }
}

/// The value of `key` in a Secret (`data`, or `stringData` in a manifest
/// that never reached an apiserver).
pub fn secret_bytes(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()?
                .get(key)
                .map(|s| s.clone().into_bytes())
        })
}

/// Parses a Go-style duration (`90s`, `1m30s`, `720h`, `250ms`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration such as 30s, 1m30s or 720h");
    if text.is_empty() {
        return Err(bad());
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let number: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += Duration::from_secs_f64(number * seconds);
    }
    Ok(total)
}

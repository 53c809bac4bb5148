//! Reads Asterisk's own metrics (res_prometheus on the WSS port, behind
//! basic auth) during a probe run: live calls and channels, endpoints
//! online, uptime. What a PBX admin asks first ("how many calls are up?")
//! and what a drain waits on. One HTTPS GET and a pure parser; the probed
//! server may be hostile, so only numbers leave this module, and the reply
//! is read up to a size limit within the step's time limit.

use std::time::Duration;

use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::transport::{self, Target};

/// The largest reply read: res_prometheus writes about 450 bytes per
/// endpoint, so this holds several thousand users.
pub const MAX_REPLY_BYTES: u64 = 4 * 1024 * 1024;

/// Where Asterisk's metrics are and who reads them.
#[derive(Clone, PartialEq, Eq)]
pub struct Access {
    /// HTTP path on the target's host and port, e.g. `/metrics`.
    pub path: String,
    /// Basic-auth user.
    pub user: String,
    /// Basic-auth password.
    pub password: String,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("path", &self.path)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What Asterisk reported about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AsteriskFacts {
    /// Calls up (`asterisk_calls_count`).
    pub active_calls: u64,
    /// Channels up (`asterisk_channels_count`; a call has one or two).
    pub active_channels: u64,
    /// Configured endpoints, the probe's own left out.
    pub endpoints: u64,
    /// Endpoints with a registered contact (state online), the probe's own
    /// left out.
    pub endpoints_online: u64,
    /// Seconds since Asterisk started.
    pub uptime_seconds: u64,
}

/// Fetches and parses the metrics from the target's host and port, leaving out
/// the endpoints `ignore` (the probes' own).
/// The error is a sentence for status and logs.
pub async fn fetch(
    target: &Target,
    access: &Access,
    ignore: &[&str],
) -> Result<AsteriskFacts, String> {
    let path = &access.path;
    let (mut tls, _, _) = transport::open_tls(target)
        .await
        .map_err(|(failure, _)| format!("Asterisk's metrics were not reachable: {failure}"))?;
    let host = target.url.host_str().unwrap_or_default();
    let port = target.url.port_or_known_default().unwrap_or(443);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Basic {}\r\nConnection: close\r\n\r\n",
        BASE64_STANDARD.encode(format!("{}:{}", access.user, access.password))
    );
    let exchange = async {
        tls.write_all(request.as_bytes()).await?;
        let mut reply = Vec::new();
        (&mut tls)
            .take(MAX_REPLY_BYTES)
            .read_to_end(&mut reply)
            .await?;
        Ok::<_, std::io::Error>(reply)
    };
    let reply = match tokio::time::timeout(target.timeout, exchange).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err("Asterisk closed the metrics connection without a reply".into());
        }
        Ok(Err(e)) => return Err(format!("reading Asterisk's metrics failed: {e}")),
        Err(_) => return Err(timed_out(target.timeout)),
    };
    let text = String::from_utf8_lossy(&reply);
    let (status, body) = split_reply(&text)?;
    match status {
        200 => Ok(parse(body, ignore)),
        401 | 403 => Err(format!(
            "Asterisk refused the metrics credentials ({status}): prometheus.conf and the operator's Secret disagree"
        )),
        404 => Err(format!(
            "Asterisk does not serve {path} (404): res_prometheus is not loaded (a custom spec.image without asterisk-modules?)"
        )),
        other => Err(format!("Asterisk answered {path} with HTTP {other}")),
    }
}

fn timed_out(limit: Duration) -> String {
    format!(
        "Asterisk's metrics did not arrive within {} ms",
        limit.as_millis()
    )
}

/// The status code and body of an HTTP/1.1 reply read to its end.
fn split_reply(text: &str) -> Result<(u16, &str), String> {
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "Asterisk's metrics reply had no header end".to_string())?;
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| "Asterisk's metrics reply had no HTTP status line".to_string())?;
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    });
    let body = match length {
        Some(n) if n <= body.len() && body.is_char_boundary(n) => &body[..n],
        _ => body,
    };
    Ok((status, body))
}

/// The facts in a Prometheus text exposition from res_prometheus (pure).
/// Unknown and malformed lines are ignored: the numbers that are there
/// still count.
pub fn parse(text: &str, ignore: &[&str]) -> AsteriskFacts {
    let mut facts = AsteriskFacts::default();
    let ignored: Vec<String> = ignore
        .iter()
        .map(|endpoint| format!("resource=\"{endpoint}\""))
        .collect();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        // Counts: negative, fractional or NaN values from a hostile server
        // become 0 rather than wrapping.
        let count = if value.is_finite() && value >= 0.0 {
            value.min(u64::MAX as f64) as u64
        } else {
            0
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        match name {
            "asterisk_calls_count" => facts.active_calls = count,
            "asterisk_channels_count" => facts.active_channels = count,
            "asterisk_core_uptime_seconds" => facts.uptime_seconds = count,
            "asterisk_endpoints_state" if !ignored.iter().any(|i| labels.contains(i)) => {
                facts.endpoints += 1;
                // 0 unknown, 1 offline, 2 online.
                if count == 2 {
                    facts.endpoints_online += 1;
                }
            }
            _ => {}
        }
    }
    facts
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as Asterisk 22.10.1's res_prometheus wrote them, with the
    /// probe registered and one call up.
    const SCRAPE: &str = "# HELP asterisk_channels_count Current channel count.\n\
# TYPE asterisk_channels_count gauge\n\
asterisk_channels_count{eid=\"02:fc:00:00:00:01\"} 2\n\
asterisk_calls_count{eid=\"02:fc:00:00:00:01\"} 1\n\
asterisk_calls_sum{eid=\"02:fc:00:00:00:01\"} 7\n\
asterisk_endpoints_count{eid=\"02:fc:00:00:00:01\"} 3\n\
asterisk_endpoints_state{eid=\"02:fc:00:00:00:01\",id=\"PJSIP/1001\",tech=\"PJSIP\",resource=\"1001\"} 2\n\
asterisk_endpoints_state{eid=\"02:fc:00:00:00:01\",id=\"PJSIP/1002\",tech=\"PJSIP\",resource=\"1002\"} 1\n\
asterisk_endpoints_state{eid=\"02:fc:00:00:00:01\",id=\"PJSIP/wpbx-probe\",tech=\"PJSIP\",resource=\"wpbx-probe\"} 2\n\
asterisk_endpoints_state{eid=\"02:fc:00:00:00:01\",id=\"PJSIP/wpbx-probe-callee\",tech=\"PJSIP\",resource=\"wpbx-probe-callee\"} 1\n\
asterisk_core_uptime_seconds{eid=\"02:fc:00:00:00:01\"} 3601\n";

    #[test]
    fn reads_calls_channels_endpoints_and_uptime_leaving_the_probe_out() {
        assert_eq!(
            parse(SCRAPE, &["wpbx-probe", "wpbx-probe-callee"]),
            AsteriskFacts {
                active_calls: 1,
                active_channels: 2,
                endpoints: 2,
                endpoints_online: 1,
                uptime_seconds: 3601,
            }
        );
    }

    #[test]
    fn hostile_values_become_zero_and_junk_is_ignored() {
        let text = "asterisk_calls_count -5\nasterisk_channels_count NaN\n\
                    asterisk_core_uptime_seconds 1e400\ngarbage\n{{{ 1\n";
        let facts = parse(text, &["p"]);
        assert_eq!(facts.active_calls, 0);
        assert_eq!(facts.active_channels, 0);
        assert_eq!(facts.uptime_seconds, 0);
    }

    #[test]
    fn replies_are_split_at_their_content_length() {
        let reply = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabcdeXYZ";
        assert_eq!(split_reply(reply), Ok((200, "abcde")));
        assert_eq!(
            split_reply("HTTP/1.1 401 Unauthorized\r\n\r\n"),
            Ok((401, ""))
        );
        assert!(split_reply("nonsense").is_err());
    }
}

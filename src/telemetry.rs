//! Telemetry of the running operator: Prometheus metrics (reconciles,
//! failures by error category, reconcile duration, per-PBX condition gauges,
//! leadership) and the small HTTP endpoint serving `/healthz`, `/readyz` and
//! `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Labels of a failure counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// The error's stable category.
    pub category: String,
}

/// Labels of a condition gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionLabels {
    /// PBX namespace.
    pub namespace: String,
    /// PBX name.
    pub name: String,
    /// Condition type (a raw identifier: the label is `type`).
    pub r#type: String,
    /// "True", "False" or "Unknown".
    pub status: String,
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    /// Reconciles started.
    pub reconciles: Counter,
    /// Reconcile failures by category.
    pub failures: Family<FailureLabels, Counter>,
    /// Reconcile duration in seconds.
    pub duration: Histogram,
    /// 1 for each PBX condition's current status, 0 for the others.
    pub conditions: Family<ConditionLabels, Gauge>,
    /// 1 while this instance holds the leader lease.
    pub leader: Gauge,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("webrtc_pbx");
        let reconciles = Counter::default();
        let failures = Family::<FailureLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        let conditions = Family::<ConditionLabels, Gauge>::default();
        let leader = Gauge::default();
        registry.register("reconciles", "Reconciles started", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Reconcile failures by error category",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            duration.clone(),
        );
        registry.register(
            "condition",
            "1 for each PBX condition's current status",
            conditions.clone(),
        );
        registry.register(
            "leader",
            "1 while this instance holds the leader lease",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            duration,
            conditions,
            leader,
            ready: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    /// Records a PBX's conditions: its current status 1, the others 0.
    pub fn set_conditions<'a>(
        &self,
        namespace: &str,
        name: &str,
        conditions: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        for (type_, status) in conditions {
            for candidate in ["True", "False", "Unknown"] {
                let labels = ConditionLabels {
                    namespace: namespace.into(),
                    name: name.into(),
                    r#type: type_.into(),
                    status: candidate.into(),
                };
                self.conditions
                    .get_or_create(&labels)
                    .set(i64::from(candidate == status));
            }
        }
    }

    /// Marks the operator ready (its watches run or it stands by as a follower).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `listener` until dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            // Read the request head (bounded); the body, if any, is ignored.
            while len < buf.len() {
                match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    stream.read(&mut buf[len..]),
                )
                .await
                {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => len += n,
                }
                if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            let (status, content_type, body) = match path {
                "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
                "/readyz" if metrics.ready.load(Ordering::SeqCst) => {
                    ("200 OK", "text/plain", "ok\n".to_string())
                }
                "/readyz" => (
                    "503 Service Unavailable",
                    "text/plain",
                    "starting\n".to_string(),
                ),
                "/metrics" => (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    metrics.encode(),
                ),
                _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_gauges_mark_only_the_current_status() {
        let m = Metrics::default();
        m.set_conditions("voice", "acme", [("Ready", "False")]);
        m.set_conditions("voice", "acme", [("Ready", "True")]);
        m.failures
            .get_or_create(&FailureLabels {
                category: "api".into(),
            })
            .inc();
        let text = m.encode();
        assert!(text.contains(r#"webrtc_pbx_condition{namespace="voice",name="acme",type="Ready",status="True"} 1"#), "{text}");
        assert!(text.contains(r#"webrtc_pbx_condition{namespace="voice",name="acme",type="Ready",status="False"} 0"#), "{text}");
        assert!(
            text.contains(r#"webrtc_pbx_reconcile_failures_total{category="api"} 1"#),
            "{text}"
        );
    }
}

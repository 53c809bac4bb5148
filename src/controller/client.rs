//! The operator's Kubernetes client: kubeconfig or in-cluster, with a layer
//! counting every request by method and resource into
//! `webrtc_pbx_api_requests_total`.

use std::sync::Arc;

use crate::telemetry::metrics::{Metrics, RequestLabels};

/// The resource a request path addresses (`/api/v1/namespaces/NS/secrets/X`
/// is `secrets`; a status write is `webrtcpbxes/status`).
pub fn resource_of(path: &str) -> String {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    // After /api/VERSION or /apis/GROUP/VERSION, and after namespaces/NS
    // unless the namespaces themselves are addressed.
    let mut rest = match segments.first() {
        Some(&"api") => segments.get(2..),
        Some(&"apis") => segments.get(3..),
        _ => None,
    }
    .unwrap_or_default();
    if rest.first() == Some(&"namespaces") && rest.len() > 2 {
        rest = &rest[2..];
    }
    match rest {
        [resource, _, sub, ..] => format!("{resource}/{sub}"),
        [resource, ..] => (*resource).to_string(),
        [] => "other".to_string(),
    }
}

/// A client (kubeconfig or in-cluster) that counts its requests into
/// `webrtc_pbx_api_requests_total`, so the operator's load on the apiserver
/// is visible (and measured by the scale benchmark).
pub async fn counted_client(metrics: Arc<Metrics>) -> Result<kube::Client, kube::Error> {
    let config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    let count =
        tower::util::MapRequestLayer::new(move |request: http::Request<kube::client::Body>| {
            let watch = request
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
            let method = if watch {
                "WATCH".to_string()
            } else {
                request.method().as_str().to_string()
            };
            let resource = resource_of(request.uri().path());
            metrics
                .api_requests
                .get_or_create(&RequestLabels { method, resource })
                .inc();
            request
        });
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&count)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_resource() {
        let cases = [
            ("/api/v1/namespaces/pbx/secrets/a-ca", "secrets"),
            ("/api/v1/namespaces/pbx/secrets", "secrets"),
            ("/api/v1/secrets", "secrets"),
            ("/api/v1/namespaces/pbx", "namespaces"),
            (
                "/apis/coordination.k8s.io/v1/namespaces/ops/leases/wpbx",
                "leases",
            ),
            (
                "/apis/pbx.webrtc.io/v1alpha1/namespaces/pbx/webrtcpbxes/a/status",
                "webrtcpbxes/status",
            ),
            ("/apis/events.k8s.io/v1/namespaces/pbx/events", "events"),
            ("/version", "other"),
        ];
        for (path, resource) in cases {
            assert_eq!(resource_of(path), resource, "{path}");
        }
    }
}

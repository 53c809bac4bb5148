//! A control plane without cert-manager's CRD (the shared one of
//! `tests/cluster` has it installed by a controller test), so this test
//! has a binary and a control plane of its own.

use harness::fixture::Pbx;
use harness::inprocess::{condition, start_with, wait_condition};
use serde_json::json;
use webrtc_pbx_operator::controller::Context;

#[tokio::test]
async fn without_cert_manager_a_cert_manager_pbx_waits_and_is_not_refused() {
    // The Certificate's 404 is CertificateReady's to report, not a refusal.
    let r = start_with("hostile-no-certmgr", Context::new).await;
    r.create(
        Pbx::new(
            "cm",
            json!({"domain": "cm.hostile.test",
        "tls": {"mode": "CertManager", "issuerRef": {"name": "le", "kind": "ClusterIssuer"}}}),
        )
        .quiet(),
    )
    .await;
    wait_condition(
        &r,
        "cm",
        "CertificateReady",
        "False",
        Some("IssuerNotReady"),
    )
    .await;
    let (_, _, message) = condition(&r, "cm", "CertificateReady").await.unwrap();
    assert!(message.contains("is cert-manager installed?"), "{message}");
    let (status, reason, message) = condition(&r, "cm", "ConfigRendered").await.unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "Rendered"),
        "{message}"
    );
    r.stop().await;
}

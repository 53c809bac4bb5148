//! The certificate step: in SelfSigned mode the operator CA and the
//! server certificate, issued or renewed when due; in the other modes the
//! served certificate inspected. Its outcome, the facts for status and when
//! to look again.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use time::OffsetDateTime;
use tracing::info;

use super::Error;
use super::dereference::{Fetched, secret_text};
use crate::api::TlsMode;
use crate::certs::{self, CA_CRT, CA_KEY, TLS_CRT, TLS_KEY};
use crate::render::Object;
use crate::render::objects;
use crate::status::{self, Blocking, Verdict};
use crate::validate::ValidatedPbx;

/// The certificate step: desired TLS objects, the CertificateReady verdict,
/// the facts for status, and when to look again.
pub(super) struct CertStep {
    pub(super) objects: Vec<Object>,
    /// What the probe trusts: the CA a browser would be told to install,
    /// or `None` for the system roots.
    pub(super) ca_pem: Option<String>,
    pub(super) verdict: (Verdict, Blocking),
    pub(super) facts: Option<certs::CertFacts>,
    pub(super) recheck: Option<Duration>,
}

pub(super) fn certificate_step(
    v: &ValidatedPbx,
    fetched: &Fetched,
    now: OffsetDateTime,
) -> Result<CertStep, Error> {
    let spec = &v.spec;
    let renew_before = time::Duration::try_from(v.renew_before).unwrap_or(time::Duration::days(30));
    let dns_names = certs::server_names(&spec.domain, &spec.tls.extra_dns_names);
    let served = |secret: Option<&Secret>| {
        certs::check(
            secret_text(secret, TLS_CRT).as_deref(),
            secret_text(secret, TLS_KEY).as_deref(),
            secret_text(secret, CA_CRT).as_deref(),
            &spec.domain,
            now,
            renew_before,
        )
    };
    let recheck_for = |facts: &certs::CertFacts| {
        let at = facts.not_after - renew_before;
        let secs = (at - now).whole_seconds().clamp(60, 3600);
        Duration::from_secs(u64::try_from(secs).unwrap_or(3600))
    };
    match spec.tls.mode {
        TlsMode::SelfSigned => {
            let tls = fetched.tls_secret.as_ref();
            let tls_crt = secret_text(tls, TLS_CRT).unwrap_or_default();
            let current = certs::inspect(&tls_crt).ok();
            let ca = fetched.ca_secret.as_ref();
            // An emptied or unreadable NAME-ca is no CA, and one constrained
            // to other names cannot sign these: both mean a new CA.
            let ca_pair = match (secret_text(ca, CA_CRT), secret_text(ca, CA_KEY)) {
                (Some(crt), Some(key))
                    if !key.trim().is_empty() && certs::ca_permits(&crt, &dns_names) =>
                {
                    Some((crt, key))
                }
                _ => None,
            };
            let due = certs::renewal_due(current.as_ref(), &dns_names, now, renew_before)
                .or_else(|| {
                    ca_pair
                        .is_none()
                        .then_some("the operator CA is missing or unusable")
                })
                .or_else(|| {
                    let signed = ca_pair
                        .as_ref()
                        .is_some_and(|(ca, _)| certs::signed_by(&tls_crt, ca));
                    (!signed).then_some("the certificate is not signed by the operator CA")
                });
            let material = match due {
                None => certs::TlsMaterial {
                    ca_crt: secret_text(ca, CA_CRT).unwrap_or_default(),
                    ca_key: secret_text(ca, CA_KEY).unwrap_or_default(),
                    tls_crt: tls_crt.clone(),
                    tls_key: secret_text(tls, TLS_KEY).unwrap_or_default(),
                },
                Some(why) => {
                    info!(pbx = %v.name, reason = why, "issuing certificate");
                    let renewed = match &ca_pair {
                        Some((crt, key)) => {
                            certs::renew_server(crt, key, &dns_names, now, certs::generate_key()?)
                                .ok()
                        }
                        None => None,
                    };
                    match renewed {
                        Some(material) => material,
                        None => certs::issue_self_signed(
                            &v.name,
                            &dns_names,
                            now,
                            certs::generate_key()?,
                            certs::generate_key()?,
                        )?,
                    }
                }
            };
            let outcome = certs::check(
                Some(&material.tls_crt),
                Some(&material.tls_key),
                Some(&material.ca_crt),
                &spec.domain,
                now,
                renew_before,
            );
            Ok(CertStep {
                objects: objects::self_signed_secrets(v, &material).to_vec(),
                ca_pem: Some(material.ca_crt.clone()),
                verdict: status::certificate_verdict(&outcome, &spec.domain, true),
                recheck: outcome.facts().map(recheck_for),
                facts: outcome.facts().cloned(),
            })
        }
        TlsMode::Secret => {
            let Some(secret) = fetched.tls_secret.as_ref() else {
                let message = format!(
                    "TLS Secret {} not found in namespace {}: create a kubernetes.io/tls Secret for {}",
                    v.tls_secret_name, v.namespace, spec.domain
                );
                return Ok(CertStep {
                    objects: vec![],
                    ca_pem: None,
                    verdict: status::tls_secret_missing(message),
                    facts: None,
                    recheck: None,
                });
            };
            let outcome = served(Some(secret));
            Ok(CertStep {
                objects: vec![],
                ca_pem: secret_text(Some(secret), CA_CRT),
                verdict: status::certificate_verdict(&outcome, &spec.domain, false),
                recheck: outcome.facts().map(recheck_for),
                facts: outcome.facts().cloned(),
            })
        }
        TlsMode::CertManager => {
            let ready = fetched.certificate.as_ref().and_then(|c| {
                c.data["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .find(|c| c["type"] == "Ready")
                    .map(|c| {
                        (
                            c["status"] == "True",
                            c["message"].as_str().unwrap_or_default().to_string(),
                        )
                    })
            });
            let verdict = match (&ready, fetched.tls_secret.as_ref()) {
                (Some((true, _)), Some(secret)) => {
                    let outcome = served(Some(secret));
                    let v = status::certificate_verdict(&outcome, &spec.domain, true);
                    return Ok(CertStep {
                        objects: vec![],
                        ca_pem: secret_text(Some(secret), CA_CRT),
                        recheck: outcome.facts().map(recheck_for),
                        facts: outcome.facts().cloned(),
                        verdict: v,
                    });
                }
                (Some((false, msg)), _) => {
                    format!("cert-manager has not issued the certificate: {msg}")
                }
                _ if fetched.certificate.is_none() => {
                    "waiting for the cert-manager Certificate (is cert-manager installed?)"
                        .to_string()
                }
                _ => "waiting for cert-manager to issue the certificate".to_string(),
            };
            Ok(CertStep {
                objects: vec![],
                ca_pem: None,
                verdict: status::issuer_not_ready(verdict),
                facts: None,
                recheck: Some(Duration::from_secs(30)),
            })
        }
    }
}

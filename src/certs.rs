//! Certificates: issue and renew the operator's own CA and server
//! certificate (`tls.mode: SelfSigned`), and inspect any certificate the PBX
//! serves (`Secret` and `CertManager` modes) into a CertificateReady outcome.
//! The caller passes the clock and the key pairs: no clock or key generation
//! in here.
//!
//! About 530 lines of code; the rest are its unit tests (issue, renew,
//! chain and name-constraint cases), kept beside the code they pin down.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints, PublicKeyData,
    SanType, SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

/// Secret keys of TLS material (kubernetes.io/tls plus ca.crt).
pub const TLS_CRT: &str = "tls.crt";
/// Private key of the server certificate.
pub const TLS_KEY: &str = "tls.key";
/// The CA certificate clients should trust.
pub const CA_CRT: &str = "ca.crt";
/// The operator CA's private key (SelfSigned mode only).
pub const CA_KEY: &str = "ca.key";

/// Validity of an operator-issued server certificate.
pub const SERVER_VALIDITY: time::Duration = time::Duration::days(90);
/// Validity of the operator CA.
pub const CA_VALIDITY: time::Duration = time::Duration::days(3650);

/// Why a certificate could not be issued or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters or the key.
    #[error("cannot issue certificate: {0}")]
    Issue(String),
    /// PEM or DER that does not parse.
    #[error("cannot parse {what}: {message}")]
    Parse {
        /// What was being parsed.
        what: String,
        /// The parser's message.
        message: String,
    },
}

/// PEM material of an operator-managed certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsMaterial {
    /// CA certificate (PEM).
    pub ca_crt: String,
    /// CA private key (PEM).
    pub ca_key: String,
    /// Server certificate (PEM).
    pub tls_crt: String,
    /// Server private key (PEM).
    pub tls_key: String,
}

fn issue_err(e: rcgen::Error) -> CertError {
    CertError::Issue(e.to_string())
}

fn serial(now: OffsetDateTime, salt: &[u8]) -> SerialNumber {
    // Unique per issue time and key; positive (top bit clear).
    let mut bytes = now.unix_timestamp_nanos().to_be_bytes().to_vec();
    bytes.extend(salt.iter().take(8));
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// Issues a new CA and a server certificate for `dns_names` (the first is
/// the common name), valid from `now`.
pub fn issue_self_signed(
    pbx: &str,
    dns_names: &[String],
    now: OffsetDateTime,
    ca_key: KeyPair,
    server_key: KeyPair,
) -> Result<TlsMaterial, CertError> {
    let mut ca = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("webrtc-pbx-operator CA for {pbx}"),
    );
    dn.push(DnType::OrganizationName, "webrtc-pbx-operator");
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // Clients are told to install this CA: it may vouch for the PBX's own
    // names and nothing else (a leaked ca.key cannot impersonate a bank).
    ca.name_constraints = Some(NameConstraints {
        permitted_subtrees: dns_names
            .iter()
            .map(|n| GeneralSubtree::DnsName(constraint_base(n).to_string()))
            .collect(),
        excluded_subtrees: vec![],
    });
    ca.not_before = now - time::Duration::minutes(5);
    ca.not_after = now + CA_VALIDITY;
    ca.serial_number = Some(serial(now, ca_key.public_key_raw()));
    let ca_cert = ca.self_signed(&ca_key).map_err(issue_err)?;
    let ca_crt = ca_cert.pem();
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca, ca_key);
    let tls_crt = server_cert(dns_names, now, &server_key, &issuer)?;
    Ok(TlsMaterial {
        ca_crt,
        ca_key: ca_key_pem,
        tls_crt,
        tls_key: server_key.serialize_pem(),
    })
}

/// The subtree a name constraint needs for `name` (`*.x` lies below `x`).
fn constraint_base(name: &str) -> &str {
    name.strip_prefix("*.").unwrap_or(name)
}

/// The names an operator-issued certificate carries for `domain` and
/// `extra`: the domain first, lowercase, no repeats, DNS names only (what
/// rcgen would turn into an IP SAN is left out, so what is issued is what
/// [`renewal_due`] compares against).
pub fn server_names(domain: &str, extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for n in std::iter::once(domain).chain(extra.iter().map(String::as_str)) {
        let n = n.to_ascii_lowercase();
        if n.parse::<std::net::IpAddr>().is_err() && !names.contains(&n) {
            names.push(n);
        }
    }
    names
}

/// True when the operator CA in `ca_crt` may sign certificates for every
/// name in `dns_names`: it parses, and its name constraints (if any; CAs of
/// earlier versions have none) permit them.
pub fn ca_permits(ca_crt: &str, dns_names: &[String]) -> bool {
    let Ok(ders) = parse_chain(ca_crt, CA_CRT) else {
        return false;
    };
    let Ok(ca) = parse(&ders[0]) else {
        return false;
    };
    let permitted: Vec<String> = match ca.name_constraints() {
        Ok(Some(nc)) => nc
            .value
            .permitted_subtrees
            .iter()
            .flatten()
            .filter_map(|t| match &t.base {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        Ok(None) => return true,
        Err(_) => return false,
    };
    dns_names.iter().all(|n| {
        let n = constraint_base(n).to_ascii_lowercase();
        permitted
            .iter()
            .any(|p| n == *p || n.ends_with(&format!(".{p}")))
    })
}

/// True when the leaf of `tls_crt` is signed by the first certificate of
/// `ca_crt`. The two live in different Secrets, written side by side: an
/// operator killed between the writes leaves a leaf of one CA beside another
/// CA, which no later reconcile may keep.
pub fn signed_by(tls_crt: &str, ca_crt: &str) -> bool {
    let (Ok(leaf), Ok(ca)) = (parse_chain(tls_crt, TLS_CRT), parse_chain(ca_crt, CA_CRT)) else {
        return false;
    };
    match (parse(&leaf[0]), parse(&ca[0])) {
        (Ok(leaf), Ok(ca)) => leaf.verify_signature(Some(ca.public_key())).is_ok(),
        _ => false,
    }
}

/// Issues a new server certificate from an existing operator CA (renewal).
pub fn renew_server(
    ca_crt: &str,
    ca_key: &str,
    dns_names: &[String],
    now: OffsetDateTime,
    server_key: KeyPair,
) -> Result<TlsMaterial, CertError> {
    let key = KeyPair::from_pem(ca_key).map_err(|e| CertError::Parse {
        what: CA_KEY.into(),
        message: e.to_string(),
    })?;
    let issuer = Issuer::from_ca_cert_pem(ca_crt, key).map_err(issue_err)?;
    let tls_crt = server_cert(dns_names, now, &server_key, &issuer)?;
    Ok(TlsMaterial {
        ca_crt: ca_crt.to_string(),
        ca_key: ca_key.to_string(),
        tls_crt,
        tls_key: server_key.serialize_pem(),
    })
}

fn server_cert(
    dns_names: &[String],
    now: OffsetDateTime,
    key: &KeyPair,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<String, CertError> {
    let mut params = CertificateParams::new(dns_names.to_vec()).map_err(issue_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        dns_names.first().cloned().unwrap_or_default(),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + SERVER_VALIDITY;
    params.serial_number = Some(serial(now, key.public_key_raw()));
    params.use_authority_key_identifier_extension = true;
    debug_assert!(
        params
            .subject_alt_names
            .iter()
            .all(|s| matches!(s, SanType::DnsName(_)))
    );
    Ok(params.signed_by(key, issuer).map_err(issue_err)?.pem())
}

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// Subject, RFC 4514 text.
    pub subject: String,
    /// Issuer, RFC 4514 text.
    pub issuer: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// True when subject and issuer are the same and the signature verifies.
    pub self_signed: bool,
}

/// The CertificateReady outcome of a served certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Usable; expires at `facts.not_after`.
    Ready(CertFacts),
    /// Usable, but inside the renewal window: renew or replace it soon.
    ExpiringSoon(CertFacts),
    /// Past notAfter.
    Expired(CertFacts),
    /// Before notBefore.
    NotYetValid(CertFacts),
    /// The private key does not belong to the certificate.
    KeyMismatch,
    /// The domain is not among the DNS names.
    DomainNotCovered {
        /// The PBX's domain.
        domain: String,
        /// The names the certificate covers.
        dns_names: Vec<String>,
    },
    /// An issuer certificate needed by browsers is missing.
    ChainIncomplete {
        /// The issuer that is not in the bundle.
        missing_issuer: String,
    },
    /// Missing keys or unparsable material.
    Invalid(String),
}

impl Outcome {
    /// True when browsers will accept the certificate now.
    pub fn usable(&self) -> bool {
        matches!(self, Outcome::Ready(_) | Outcome::ExpiringSoon(_))
    }

    /// The leaf's facts, when it parsed.
    pub fn facts(&self) -> Option<&CertFacts> {
        match self {
            Outcome::Ready(f)
            | Outcome::ExpiringSoon(f)
            | Outcome::Expired(f)
            | Outcome::NotYetValid(f) => Some(f),
            _ => None,
        }
    }

    /// A message that says what is wrong and what to do.
    pub fn message(&self, domain: &str) -> String {
        match self {
            Outcome::Ready(f) => format!(
                "certificate for {domain} valid until {}",
                rfc3339(f.not_after)
            ),
            Outcome::ExpiringSoon(f) => format!(
                "certificate for {domain} expires {} (inside the renewal window): renew or replace it",
                rfc3339(f.not_after)
            ),
            Outcome::Expired(f) => format!(
                "certificate for {domain} expired {}; browsers refuse it and close the WebSocket: replace it",
                rfc3339(f.not_after)
            ),
            Outcome::NotYetValid(f) => {
                format!(
                    "certificate for {domain} is not valid before {}: check the issuer's clock",
                    rfc3339(f.not_before)
                )
            }
            Outcome::KeyMismatch => "tls.key does not belong to the certificate in tls.crt".into(),
            Outcome::DomainNotCovered { domain, dns_names } => format!(
                "certificate covers [{}] but not {domain}; browsers reject it with a hostname mismatch: reissue it for {domain}",
                dns_names.join(", ")
            ),
            Outcome::ChainIncomplete { missing_issuer } => format!(
                "the chain is incomplete: the certificate of its issuer ({missing_issuer}) is missing; append the intermediate certificate(s) to tls.crt"
            ),
            Outcome::Invalid(msg) => msg.clone(),
        }
    }
}

/// RFC 3339 text of a time (for status and messages).
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

fn parse_chain(pem: &str, what: &str) -> Result<Vec<Vec<u8>>, String> {
    let ders: Vec<Vec<u8>> = Pem::iter_from_buffer(pem.as_bytes())
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .collect();
    if ders.is_empty() {
        return Err(format!("{what} holds no PEM certificate"));
    }
    Ok(ders)
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c)
        .map_err(|e| format!("certificate does not parse: {e}"))
}

fn facts(cert: &X509Certificate<'_>) -> CertFacts {
    let dns_names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let self_signed = cert.subject() == cert.issuer() && cert.verify_signature(None).is_ok();
    CertFacts {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        dns_names,
        self_signed,
    }
}

/// Inspects one DER certificate.
pub fn inspect_der(der: &[u8]) -> Result<CertFacts, String> {
    Ok(facts(&parse(der)?))
}

/// Inspects the leaf of a PEM bundle.
pub fn inspect(tls_crt: &str) -> Result<CertFacts, String> {
    let ders = parse_chain(tls_crt, TLS_CRT)?;
    Ok(facts(&parse(&ders[0])?))
}

/// True when `name` (a certificate DNS name, possibly `*.` wildcard) covers `domain`.
pub fn name_covers(name: &str, domain: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let domain = domain.to_ascii_lowercase();
    match name.strip_prefix("*.") {
        Some(suffix) => domain
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => name == domain,
    }
}

/// Checks served TLS material: parses, key matches, the domain is covered,
/// the chain is complete, and the validity window (with `renew_before`).
pub fn check(
    tls_crt: Option<&str>,
    tls_key: Option<&str>,
    ca_crt: Option<&str>,
    domain: &str,
    now: OffsetDateTime,
    renew_before: time::Duration,
) -> Outcome {
    let (Some(tls_crt), Some(tls_key)) = (tls_crt, tls_key) else {
        return Outcome::Invalid(format!("the Secret needs both {TLS_CRT} and {TLS_KEY}"));
    };
    let chain = match parse_chain(tls_crt, TLS_CRT) {
        Ok(c) => c,
        Err(e) => return Outcome::Invalid(e),
    };
    let mut certs = Vec::new();
    for der in &chain {
        match parse(der) {
            Ok(c) => certs.push(c),
            Err(e) => return Outcome::Invalid(e),
        }
    }
    let leaf = &certs[0];
    let leaf_facts = facts(leaf);

    let key = match KeyPair::from_pem(tls_key) {
        Ok(k) => k,
        Err(e) => {
            return Outcome::Invalid(format!(
                "{TLS_KEY} does not parse as a PKCS#8 private key: {e}"
            ));
        }
    };
    if key.subject_public_key_info() != leaf.tbs_certificate.subject_pki.raw {
        return Outcome::KeyMismatch;
    }
    if !leaf_facts.dns_names.iter().any(|n| name_covers(n, domain)) {
        return Outcome::DomainNotCovered {
            domain: domain.into(),
            dns_names: leaf_facts.dns_names,
        };
    }

    // Every certificate must be signed by the next one in tls.crt; the last
    // must be self-signed, or signed by a certificate in ca.crt, or (a
    // public root in browsers' stores) follow at least one intermediate.
    let ca_ders = ca_crt
        .and_then(|c| parse_chain(c, CA_CRT).ok())
        .unwrap_or_default();
    let cas: Vec<X509Certificate<'_>> = ca_ders.iter().filter_map(|d| parse(d).ok()).collect();
    for pair in certs.windows(2) {
        if pair[0]
            .verify_signature(Some(pair[1].public_key()))
            .is_err()
        {
            return Outcome::ChainIncomplete {
                missing_issuer: pair[0].issuer().to_string(),
            };
        }
    }
    let last = &certs[certs.len() - 1];
    let last_facts = facts(last);
    let signed_by_ca = cas
        .iter()
        .any(|ca| last.verify_signature(Some(ca.public_key())).is_ok());
    if !last_facts.self_signed && !signed_by_ca && certs.len() == 1 {
        return Outcome::ChainIncomplete {
            missing_issuer: last_facts.issuer,
        };
    }

    if now < leaf_facts.not_before {
        Outcome::NotYetValid(leaf_facts)
    } else if now >= leaf_facts.not_after {
        Outcome::Expired(leaf_facts)
    } else if now + renew_before >= leaf_facts.not_after {
        Outcome::ExpiringSoon(leaf_facts)
    } else {
        Outcome::Ready(leaf_facts)
    }
}

/// Whether an operator-issued certificate must be (re)issued, and why.
pub fn renewal_due(
    current: Option<&CertFacts>,
    dns_names: &[String],
    now: OffsetDateTime,
    renew_before: time::Duration,
) -> Option<&'static str> {
    let Some(facts) = current else {
        return Some("no certificate yet");
    };
    let set = |names: &[String]| {
        names
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect::<std::collections::BTreeSet<_>>()
    };
    // A window as long as the certificate's life would renew on every
    // reconcile; validation refuses one, and this keeps it impossible.
    let renew_before = renew_before.min((facts.not_after - facts.not_before) * 2 / 3);
    if set(&facts.dns_names) != set(dns_names) {
        Some("DNS names changed")
    } else if now + renew_before >= facts.not_after {
        Some("inside the renewal window")
    } else {
        None
    }
}

/// A new ECDSA P-256 key (the shell calls this; it uses the system RNG).
pub fn generate_key() -> Result<KeyPair, CertError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(issue_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Outcome {
        /// The variant's name (the reason mapping is status's).
        fn kind(&self) -> String {
            format!("{self:?}")
                .split(['(', ' ', '{'])
                .next()
                .unwrap_or_default()
                .to_string()
        }
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn issued() -> TlsMaterial {
        issue_self_signed(
            "acme",
            &names(&["pbx.acme.example"]),
            now(),
            generate_key().unwrap(),
            generate_key().unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn self_signed_issue_is_ready_and_complete() {
        let m = issued();
        let outcome = check(
            Some(&m.tls_crt),
            Some(&m.tls_key),
            Some(&m.ca_crt),
            "pbx.acme.example",
            now(),
            time::Duration::days(30),
        );
        let Outcome::Ready(f) = &outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(f.dns_names, vec!["pbx.acme.example"]);
        assert_eq!(f.not_after, now() + SERVER_VALIDITY);
        assert!(!f.self_signed);
    }

    #[test]
    fn each_fault_has_its_reason() {
        let m = issued();
        let day = time::Duration::days(1);
        let check_at = |t: OffsetDateTime, domain: &str, key: &str, ca: Option<&str>| {
            check(
                Some(&m.tls_crt),
                Some(key),
                ca,
                domain,
                t,
                time::Duration::days(30),
            )
            .kind()
        };
        let ca = Some(m.ca_crt.as_str());
        assert_eq!(check_at(now(), "pbx.acme.example", &m.tls_key, ca), "Ready");
        assert_eq!(
            check_at(now(), "other.example", &m.tls_key, ca),
            "DomainNotCovered"
        );
        assert_eq!(
            check_at(now() + 91 * day, "pbx.acme.example", &m.tls_key, ca),
            "Expired"
        );
        assert_eq!(
            check_at(now() + 70 * day, "pbx.acme.example", &m.tls_key, ca),
            "ExpiringSoon"
        );
        assert_eq!(
            check_at(now() - day, "pbx.acme.example", &m.tls_key, ca),
            "NotYetValid"
        );
        let other_key = generate_key().unwrap().serialize_pem();
        assert_eq!(
            check_at(now(), "pbx.acme.example", &other_key, ca),
            "KeyMismatch"
        );
        // The leaf alone, without the CA that signed it: browsers cannot build the chain.
        assert_eq!(
            check_at(now(), "pbx.acme.example", &m.tls_key, None),
            "ChainIncomplete"
        );
        // With the CA appended to tls.crt the chain is complete.
        let bundle = format!("{}{}", m.tls_crt, m.ca_crt);
        assert_eq!(
            check(
                Some(&bundle),
                Some(&m.tls_key),
                None,
                "pbx.acme.example",
                now(),
                time::Duration::days(30)
            )
            .kind(),
            "Ready"
        );
        assert_eq!(
            check(None, Some(&m.tls_key), None, "x", now(), day).kind(),
            "Invalid"
        );
        assert_eq!(
            check(Some("junk"), Some("junk"), None, "x", now(), day).kind(),
            "Invalid"
        );
    }

    #[test]
    fn renewal_keeps_the_ca_and_moves_the_window() {
        let m = issued();
        let later = now() + time::Duration::days(70);
        let f = inspect(&m.tls_crt).unwrap();
        let names = names(&["pbx.acme.example"]);
        assert_eq!(
            renewal_due(Some(&f), &names, now(), time::Duration::days(30)),
            None
        );
        assert_eq!(
            renewal_due(Some(&f), &names, later, time::Duration::days(30)),
            Some("inside the renewal window")
        );
        assert_eq!(
            renewal_due(
                Some(&f),
                &["pbx.acme.example".into(), "x.example".into()],
                now(),
                time::Duration::days(30)
            ),
            Some("DNS names changed")
        );
        let renewed =
            renew_server(&m.ca_crt, &m.ca_key, &names, later, generate_key().unwrap()).unwrap();
        assert_eq!(renewed.ca_crt, m.ca_crt);
        let outcome = check(
            Some(&renewed.tls_crt),
            Some(&renewed.tls_key),
            Some(&m.ca_crt),
            "pbx.acme.example",
            later,
            time::Duration::days(30),
        );
        assert_eq!(outcome.kind(), "Ready", "{outcome:?}");
        assert_eq!(outcome.facts().unwrap().not_after, later + SERVER_VALIDITY);
    }

    /// What a TLS client (rustls, as in the probe; browsers check the same
    /// extension) concludes about `leaf` for `name` with `ca` as its root.
    fn verify(ca: &str, leaf: &str, name: &str) -> Result<(), rustls::Error> {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let leaf = CertificateDer::from_pem_slice(leaf.as_bytes()).unwrap();
        let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(now().unix_timestamp()).unwrap() + 60,
        ));
        verifier
            .verify_server_cert(
                &leaf,
                &[],
                &ServerName::try_from(name.to_string()).unwrap(),
                &[],
                at,
            )
            .map(|_| ())
    }

    #[test]
    fn the_operator_ca_vouches_for_the_pbxs_names_only() {
        let m = issue_self_signed(
            "pbx",
            &names(&["pbx.example.com", "*.sip.example.com"]),
            now(),
            generate_key().unwrap(),
            generate_key().unwrap(),
        )
        .unwrap();
        verify(&m.ca_crt, &m.tls_crt, "pbx.example.com").unwrap();
        assert!(ca_permits(
            &m.ca_crt,
            &names(&["pbx.example.com", "a.sip.example.com"])
        ));
        assert!(!ca_permits(&m.ca_crt, &names(&["bank.example"])));
        // Its key signs a certificate for another name: clients refuse it.
        let forged = renew_server(
            &m.ca_crt,
            &m.ca_key,
            &names(&["bank.example"]),
            now(),
            generate_key().unwrap(),
        )
        .unwrap();
        let refused = verify(&m.ca_crt, &forged.tls_crt, "bank.example").unwrap_err();
        assert!(
            format!("{refused:?}").contains("NameConstraint"),
            "{refused:?}"
        );
        // The leaf of another CA is not signed by this one.
        let other = issued();
        assert!(signed_by(&m.tls_crt, &m.ca_crt));
        assert!(!signed_by(&other.tls_crt, &m.ca_crt));
    }

    #[test]
    fn names_are_compared_as_a_set_and_a_window_never_spans_the_life() {
        assert_eq!(
            server_names(
                "pbx.example.com",
                &names(&["PBX.example.com", "sip.example.com", "10.0.0.1"])
            ),
            names(&["pbx.example.com", "sip.example.com"])
        );
        let m = issued();
        let facts = inspect(&m.tls_crt).unwrap();
        let mut shuffled = facts.dns_names.clone();
        shuffled.reverse();
        assert_eq!(
            renewal_due(Some(&facts), &shuffled, now(), time::Duration::days(30)),
            None
        );
        // A window as long as the certificate's life would renew on every
        // reconcile; clamped, a fresh certificate is not due.
        assert_eq!(
            renewal_due(
                Some(&facts),
                &facts.dns_names,
                now(),
                time::Duration::days(400)
            ),
            None
        );
    }

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_covers("*.acme.example", "pbx.acme.example"));
        assert!(!name_covers("*.acme.example", "a.pbx.acme.example"));
        assert!(!name_covers("*.acme.example", "acme.example"));
        assert!(name_covers("PBX.acme.example", "pbx.acme.example"));
    }
}

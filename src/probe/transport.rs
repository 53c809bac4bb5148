//! The WSS transport of the probes: DNS, TCP connect, TLS handshake and
//! WebSocket upgrade (subprotocol `sip`), each timed, each failure named the
//! way a PBX admin needs it (the browser only says "1006").
//!
//! About 570 lines of code (most of it naming TLS and upgrade failures);
//! the rest are the step's unit tests against a local WSS server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::{Error, ProtocolError, SubProtocolError};
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::step::{Check, Step};

/// A SIP WebSocket over TLS.
pub type Wss = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// How to reach and trust the PBX.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// `wss://HOST:PORT/PATH`.
    pub url: url::Url,
    /// Dial this `host:port` instead, still using the URL's host for SNI,
    /// Host and the certificate check (like curl --connect-to).
    pub connect_to: Option<String>,
    /// Trust: CA certificates (PEM); `None` means the system roots.
    pub ca_pem: Option<String>,
    /// Accept any certificate (still reported).
    pub insecure: bool,
    /// Limit of each phase.
    pub timeout: Duration,
}

/// Phase timings, milliseconds.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Timings {
    /// Name resolution.
    pub dns_ms: Option<f64>,
    /// TCP connect.
    pub connect_ms: Option<f64>,
    /// TLS handshake.
    pub tls_ms: Option<f64>,
    /// WebSocket upgrade.
    pub upgrade_ms: Option<f64>,
}

/// Facts of the served certificate.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ServedCertificate {
    /// Subject.
    pub subject: String,
    /// DNS names.
    pub dns_names: Vec<String>,
    /// notAfter, RFC 3339.
    pub not_after: String,
    /// Whole days until expiry (negative when expired).
    pub days_to_expiry: i64,
    /// notAfter, Unix seconds.
    pub not_after_unix: i64,
}

/// The local address the kernel would use towards `dial` (host:port).
pub fn route_source(dial: &str) -> Option<std::net::IpAddr> {
    use std::net::ToSocketAddrs;
    let remote = dial.to_socket_addrs().ok()?.next()?;
    let bind = if remote.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = std::net::UdpSocket::bind(bind).ok()?;
    // A UDP connect sends nothing; it only picks the route.
    socket.connect(remote).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

/// Why the WSS connection failed, with the WssReachable reason it maps to.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WssFailure {
    /// The name does not resolve.
    #[error("{host} does not resolve: {detail}")]
    DnsFailed {
        /// The host.
        host: String,
        /// Resolver message.
        detail: String,
    },
    /// Nothing listens on the port.
    #[error("connection to {address} refused: nothing listens on the WSS port")]
    ConnectionRefused {
        /// ip:port.
        address: String,
    },
    /// No answer within the timeout in `phase`.
    #[error("no answer from {address} within {timeout_ms} ms during {phase}")]
    Timeout {
        /// ip:port.
        address: String,
        /// Which phase hung.
        phase: Phase,
        /// The limit.
        timeout_ms: u64,
    },
    /// The certificate is signed by a CA the client does not trust.
    #[error(
        "certificate for {host} is signed by an unknown CA; browsers will close the WebSocket with 1006"
    )]
    CertificateUntrusted {
        /// The URL's host.
        host: String,
    },
    /// The certificate does not cover the URL's host.
    #[error("certificate does not cover {host}; browsers will close the WebSocket with 1006")]
    CertificateHostnameMismatch {
        /// The URL's host.
        host: String,
    },
    /// The certificate has expired (or is not valid yet).
    #[error(
        "certificate for {host} has expired or is not yet valid; browsers will close the WebSocket with 1006"
    )]
    CertificateExpired {
        /// The URL's host.
        host: String,
    },
    /// Any other TLS failure.
    #[error("TLS handshake failed: {detail}")]
    TlsHandshakeFailed {
        /// rustls' message.
        detail: String,
    },
    /// The server answered the upgrade with 404: wrong path.
    #[error("WebSocket path {path} not found (404): Asterisk serves /ws")]
    WebSocketPathNotFound {
        /// The path asked for.
        path: String,
    },
    /// The server answered the upgrade with another status.
    #[error("WebSocket upgrade rejected with HTTP {status}")]
    UpgradeRejected {
        /// HTTP status.
        status: u16,
    },
    /// The server did not echo subprotocol `sip`.
    #[error("server did not accept WebSocket subprotocol sip (answered {answered:?})")]
    SubprotocolRejected {
        /// What it answered.
        answered: Option<String>,
    },
    /// The URL cannot be used for a WebSocket request.
    #[error("invalid URL: {detail}")]
    InvalidUrl {
        /// Why.
        detail: String,
    },
    /// The connection closed before the upgrade completed.
    #[error("connection closed abnormally during {phase}: {detail}")]
    ClosedAbnormally {
        /// The phase.
        phase: Phase,
        /// What was seen.
        detail: String,
    },
}

/// Transport phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Name resolution.
    Dns,
    /// TCP connect.
    Connect,
    /// TLS handshake.
    Tls,
    /// WebSocket upgrade.
    Upgrade,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Dns => "DNS",
            Phase::Connect => "TCP connect",
            Phase::Tls => "TLS handshake",
            Phase::Upgrade => "WebSocket upgrade",
        })
    }
}

impl WssFailure {
    /// The WssReachable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            WssFailure::DnsFailed { .. } => "DnsFailed",
            WssFailure::ConnectionRefused { .. } => "ConnectionRefused",
            WssFailure::Timeout { .. } => "ConnectTimeout",
            WssFailure::CertificateUntrusted { .. } => "CertificateUntrusted",
            WssFailure::CertificateHostnameMismatch { .. } => "CertificateHostnameMismatch",
            WssFailure::CertificateExpired { .. } => "CertificateExpired",
            WssFailure::TlsHandshakeFailed { .. } => "TlsHandshakeFailed",
            WssFailure::WebSocketPathNotFound { .. } => "WebSocketPathNotFound",
            WssFailure::UpgradeRejected { .. } => "UpgradeRejected",
            WssFailure::SubprotocolRejected { .. } => "SubprotocolRejected",
            WssFailure::ClosedAbnormally { .. } => "ClosedAbnormally",
            WssFailure::InvalidUrl { .. } => "InvalidUrl",
        }
    }

    /// The phase it failed in.
    pub fn phase(&self) -> Phase {
        match self {
            WssFailure::DnsFailed { .. } => Phase::Dns,
            WssFailure::ConnectionRefused { .. } => Phase::Connect,
            WssFailure::Timeout { phase, .. } | WssFailure::ClosedAbnormally { phase, .. } => {
                *phase
            }
            WssFailure::CertificateUntrusted { .. }
            | WssFailure::CertificateHostnameMismatch { .. }
            | WssFailure::CertificateExpired { .. }
            | WssFailure::TlsHandshakeFailed { .. } => Phase::Tls,
            _ => Phase::Upgrade,
        }
    }
}

/// Accepts any certificate (`--insecure`), still letting the probe report it.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_config(target: &Target) -> Result<rustls::ClientConfig, WssFailure> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let bad = |e: &dyn std::fmt::Display| WssFailure::TlsHandshakeFailed {
        detail: e.to_string(),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e))?;
    if target.insecure {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    match &target.ca_pem {
        Some(pem) => {
            use rustls::pki_types::pem::PemObject;
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()).filter_map(Result::ok) {
                roots.add(cert).map_err(|e| bad(&e))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

fn tls_failure(e: &std::io::Error, host: &str) -> WssFailure {
    use rustls::CertificateError as C;
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::InvalidCertificate(c)) => match c {
            C::UnknownIssuer | C::BadSignature => {
                WssFailure::CertificateUntrusted { host: host.into() }
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                WssFailure::CertificateHostnameMismatch { host: host.into() }
            }
            C::Expired
            | C::ExpiredContext { .. }
            | C::NotValidYet
            | C::NotValidYetContext { .. } => WssFailure::CertificateExpired { host: host.into() },
            other => WssFailure::TlsHandshakeFailed {
                detail: format!("{other:?}"),
            },
        },
        Some(other) => WssFailure::TlsHandshakeFailed {
            detail: other.to_string(),
        },
        None if matches!(
            e.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
        ) =>
        {
            WssFailure::ClosedAbnormally {
                phase: Phase::Tls,
                detail: e.to_string(),
            }
        }
        None => WssFailure::TlsHandshakeFailed {
            detail: e.to_string(),
        },
    }
}

/// Largest WebSocket message and frame the probe accepts. A SIP message
/// over WebSocket is one frame of a few KiB (RFC 7118); the probed server
/// may be hostile (`spec.image` is the tenant's), and tungstenite's default
/// of 64 MiB per message would let it make the operator hold that much per
/// probe.
pub const MAX_WS_MESSAGE: usize = 64 * 1024;

fn ws_limits() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_WS_MESSAGE))
        .max_frame_size(Some(MAX_WS_MESSAGE))
        // SIP messages are small. tungstenite zeroes this much before each
        // read: at its 128 KiB default, polling the socket during an echo
        // call was 9 % of the call's CPU (memset), and 1,000 concurrent
        // probes held 128 MiB of read buffers.
        .read_buffer_size(READ_BUFFER)
}

/// The WebSocket read buffer (messages grow past it as needed).
const READ_BUFFER: usize = 4096;

/// What the WSS step measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Connection {
    /// Phase timings (those reached, on failure).
    pub timings: Timings,
    /// The phase a failure happened in.
    pub failed_phase: Option<Phase>,
    /// The served certificate.
    pub certificate: Option<ServedCertificate>,
}

/// The WSS step: [`connect`], its WssConnected verdict, and the open
/// WebSocket for the next steps when it passed.
pub async fn step(target: &Target) -> (Step<Connection>, Option<Wss>) {
    match connect(target).await {
        Ok((ws, timings, certificate)) => {
            let expiry = certificate
                .as_ref()
                .map(|c| format!("; certificate expires in {} days", c.days_to_expiry))
                .unwrap_or_default();
            let check = Check {
                ok: true,
                reason: "Connected".into(),
                message: format!("WebSocket with subprotocol sip open{expiry}"),
            };
            let figures = Connection {
                timings,
                failed_phase: None,
                certificate,
            };
            (Step { check, figures }, Some(ws))
        }
        Err((failure, timings)) => {
            let check = Check {
                ok: false,
                reason: failure.reason().into(),
                message: failure.to_string(),
            };
            let figures = Connection {
                timings,
                failed_phase: Some(failure.phase()),
                certificate: None,
            };
            (Step { check, figures }, None)
        }
    }
}

/// Dials the target and completes the TLS handshake (the first three phases
/// of [`connect`]; also how Asterisk's `/metrics` is reached).
pub(crate) async fn open_tls(
    target: &Target,
) -> Result<
    (
        tokio_rustls::client::TlsStream<TcpStream>,
        Timings,
        Option<ServedCertificate>,
    ),
    (WssFailure, Timings),
> {
    let mut timings = Timings::default();
    let host = target.url.host_str().unwrap_or_default().to_string();
    let port = target.url.port_or_known_default().unwrap_or(443);
    let dial = target
        .connect_to
        .clone()
        .unwrap_or_else(|| format!("{host}:{port}"));
    let t = Instant::now();
    let lookup = tokio::time::timeout(target.timeout, tokio::net::lookup_host(dial.clone())).await;
    let addrs: Vec<std::net::SocketAddr> = match lookup {
        Ok(Ok(a)) => a.collect(),
        Ok(Err(e)) => {
            return Err((
                WssFailure::DnsFailed {
                    host: dial,
                    detail: e.to_string(),
                },
                timings,
            ));
        }
        Err(_) => {
            let phase = Phase::Dns;
            return Err((
                WssFailure::Timeout {
                    address: dial,
                    phase,
                    timeout_ms: timeout_ms(target),
                },
                timings,
            ));
        }
    };
    timings.dns_ms = Some(ms(t));
    let Some(addr) = addrs.first().copied() else {
        return Err((
            WssFailure::DnsFailed {
                host: dial,
                detail: "no address".into(),
            },
            timings,
        ));
    };
    let address = addr.to_string();
    let timed_out = |phase| WssFailure::Timeout {
        address: address.clone(),
        phase,
        timeout_ms: timeout_ms(target),
    };
    let closed = |phase, e: &dyn std::fmt::Display| WssFailure::ClosedAbnormally {
        phase,
        detail: e.to_string(),
    };
    let t = Instant::now();
    let tcp = match tokio::time::timeout(target.timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err((WssFailure::ConnectionRefused { address }, timings));
        }
        Ok(Err(e)) => return Err((closed(Phase::Connect, &e), timings)),
        Err(_) => return Err((timed_out(Phase::Connect), timings)),
    };
    let _ = tcp.set_nodelay(true);
    timings.connect_ms = Some(ms(t));

    let config = tls_config(target).map_err(|f| (f, timings.clone()))?;
    let name = ServerName::try_from(host.clone()).map_err(|e| {
        (
            WssFailure::TlsHandshakeFailed {
                detail: e.to_string(),
            },
            timings.clone(),
        )
    })?;
    let t = Instant::now();
    let tls = match tokio::time::timeout(
        target.timeout,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err((tls_failure(&e, &host), timings)),
        Err(_) => return Err((timed_out(Phase::Tls), timings)),
    };
    timings.tls_ms = Some(ms(t));
    let served = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|der| served_certificate(der));
    Ok((tls, timings, served))
}

/// Opens the SIP WebSocket. Returns it with the timings and the served
/// certificate, or the first failure with the timings reached so far.
pub async fn connect(
    target: &Target,
) -> Result<(Wss, Timings, Option<ServedCertificate>), (WssFailure, Timings)> {
    let (tls, mut timings, served) = open_tls(target).await?;
    let closed = |phase, e: &dyn std::fmt::Display| WssFailure::ClosedAbnormally {
        phase,
        detail: e.to_string(),
    };
    let address = tls
        .get_ref()
        .0
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let timed_out = |phase| WssFailure::Timeout {
        address: address.clone(),
        phase,
        timeout_ms: timeout_ms(target),
    };

    let mut request = match target.url.as_str().into_client_request() {
        Ok(r) => r,
        Err(e) => {
            return Err((
                WssFailure::InvalidUrl {
                    detail: e.to_string(),
                },
                timings,
            ));
        }
    };
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("sip"));
    let t = Instant::now();
    let upgraded = tokio::time::timeout(
        target.timeout,
        tokio_tungstenite::client_async_with_config(request, tls, Some(ws_limits())),
    )
    .await;
    let (ws, response) = match upgraded {
        Ok(Ok(pair)) => pair,
        Ok(Err(Error::Http(response))) => {
            let status = response.status().as_u16();
            let path = target.url.path().to_string();
            let failure = if status == 404 {
                WssFailure::WebSocketPathNotFound { path }
            } else {
                WssFailure::UpgradeRejected { status }
            };
            return Err((failure, timings));
        }
        // tungstenite checks the subprotocol itself and fails the upgrade:
        // that is Asterisk (or whatever answered) refusing `sip`, not a
        // broken connection.
        Ok(Err(Error::Protocol(ProtocolError::SecWebSocketSubProtocolError(e)))) => {
            let answered = match e {
                SubProtocolError::NoSubProtocol => None,
                _ => Some("a subprotocol other than sip".to_string()),
            };
            return Err((WssFailure::SubprotocolRejected { answered }, timings));
        }
        Ok(Err(e)) => return Err((closed(Phase::Upgrade, &e), timings)),
        Err(_) => return Err((timed_out(Phase::Upgrade), timings)),
    };
    timings.upgrade_ms = Some(ms(t));
    let answered = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if answered.as_deref() != Some("sip") {
        return Err((WssFailure::SubprotocolRejected { answered }, timings));
    }
    Ok((ws, timings, served))
}

fn timeout_ms(target: &Target) -> u64 {
    u64::try_from(target.timeout.as_millis()).unwrap_or(u64::MAX)
}

fn served_certificate(der: &CertificateDer<'_>) -> Option<ServedCertificate> {
    let facts = crate::certs::inspect_der(der.as_ref()).ok()?;
    let now = time::OffsetDateTime::now_utc();
    Some(ServedCertificate {
        subject: facts.subject,
        dns_names: facts.dns_names,
        not_after: crate::certs::rfc3339(facts.not_after),
        days_to_expiry: (facts.not_after - now).whole_days(),
        not_after_unix: facts.not_after.unix_timestamp(),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::probe::test_server::{self, HOST};

    #[tokio::test]
    async fn the_step_opens_a_sip_websocket_and_reports_the_certificate() {
        let server = test_server::serve(Some("sip"), Arc::new(|_| Vec::new())).await;
        let (step, ws) = step(&server.target()).await;
        assert!(step.check.ok, "{:?}", step.check);
        assert_eq!(step.check.reason, "Connected");
        assert!(ws.is_some());
        let cert = step.figures.certificate.expect("the served certificate");
        assert_eq!(cert.dns_names, vec![HOST.to_string()]);
        assert!(cert.days_to_expiry > 0);
        let t = &step.figures.timings;
        assert!(t.connect_ms.is_some() && t.tls_ms.is_some() && t.upgrade_ms.is_some());
        assert_eq!(step.figures.failed_phase, None);
    }

    #[tokio::test]
    async fn a_server_without_the_sip_subprotocol_fails_the_upgrade() {
        let server = test_server::serve(None, Arc::new(|_| Vec::new())).await;
        let (step, ws) = step(&server.target()).await;
        assert!(!step.check.ok);
        assert!(ws.is_none());
        assert_eq!(
            step.figures.failed_phase,
            Some(Phase::Upgrade),
            "{:?}",
            step.check
        );
        // Named as what it is, not as a broken connection.
        assert_eq!(step.check.reason, "SubprotocolRejected", "{:?}", step.check);
        assert!(
            step.check.message.contains("subprotocol sip"),
            "{}",
            step.check.message
        );
    }

    #[tokio::test]
    async fn an_untrusted_certificate_fails_in_tls_and_nothing_listening_in_connect() {
        let server = test_server::serve(Some("sip"), Arc::new(|_| Vec::new())).await;
        let other = test_server::serve(Some("sip"), Arc::new(|_| Vec::new())).await;
        let mut target = server.target();
        target.ca_pem = Some(other.ca_pem.clone());
        let (untrusted, _) = step(&target).await;
        assert_eq!(
            untrusted.figures.failed_phase,
            Some(Phase::Tls),
            "{:?}",
            untrusted.check
        );
        // A port nobody listens on (bound, then released).
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        target.connect_to = Some(format!("127.0.0.1:{port}"));
        let (refused, _) = step(&target).await;
        assert_eq!(
            refused.check.reason, "ConnectionRefused",
            "{:?}",
            refused.check
        );
        assert_eq!(refused.figures.failed_phase, Some(Phase::Connect));
    }
}

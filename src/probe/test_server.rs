//! A local WSS server for the probe steps' unit tests: a certificate from
//! the operator's own issuer for `pbx.test`, the `sip` subprotocol (or
//! not), and a SIP handler per test. Test-only.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

use super::sip::Message;
use super::transport::Target;

/// The name the server's certificate is for.
pub const HOST: &str = "pbx.test";

/// What a test's SIP handler answers to one request.
pub type Handler = Arc<dyn Fn(&Message) -> Vec<Message> + Send + Sync>;

/// A running server; it stops with the test's runtime.
pub struct Server {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The CA that signed its certificate (PEM).
    pub ca_pem: String,
}

impl Server {
    /// A target that dials this server as `wss://pbx.test:PORT/ws`.
    pub fn target(&self) -> Target {
        Target {
            url: url::Url::parse(&format!("wss://{HOST}:{}/ws", self.port)).expect("url"),
            connect_to: Some(format!("127.0.0.1:{}", self.port)),
            ca_pem: Some(self.ca_pem.clone()),
            insecure: false,
            timeout: Duration::from_secs(2),
        }
    }
}

/// Serves WSS on a free port; answers the upgrade with `subprotocol` and
/// each SIP request with what `handler` returns.
pub async fn serve(subprotocol: Option<&'static str>, handler: Handler) -> Server {
    let material = crate::certs::issue_self_signed(
        "unit",
        &[HOST.to_string()],
        time::OffsetDateTime::now_utc(),
        crate::certs::generate_key().expect("key"),
        crate::certs::generate_key().expect("key"),
    )
    .expect("certificate");
    let certs = CertificateDer::pem_slice_iter(material.tls_crt.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("certificate PEM");
    let key = PrivateKeyDer::from_pem_slice(material.tls_key.as_bytes()).expect("key PEM");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, handler) = (acceptor.clone(), handler.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                // tungstenite's callback signature: its error type is its own.
                #[allow(clippy::result_large_err)]
                let answer = |_: &Request, mut response: Response| {
                    if let Some(p) = subprotocol {
                        response
                            .headers_mut()
                            .insert("Sec-WebSocket-Protocol", p.parse().expect("header"));
                    }
                    Ok(response)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tls, answer).await else {
                    return;
                };
                while let Some(Ok(frame)) = ws.next().await {
                    let Frame::Text(text) = frame else { continue };
                    let Ok(request) = Message::parse(&text) else {
                        continue;
                    };
                    for reply in handler(&request) {
                        if ws.send(Frame::text(reply.to_string())).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    Server {
        port,
        ca_pem: material.ca_crt,
    }
}

//! The REGISTER probe over an open SIP WebSocket: register with digest
//! authentication, check the Contact binding in the 200 OK, then
//! unregister. Outcomes are the SipRegistered reasons.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use rand::Rng;
use tokio_tungstenite::tungstenite::Message as Frame;

use super::digest;
use super::sip::Message;
use super::transport::Wss;

/// Who registers.
#[derive(Debug, Clone, PartialEq)]
pub struct Account {
    /// SIP domain (request URI and From/To host).
    pub domain: String,
    /// User name (the extension).
    pub user: String,
    /// Password.
    pub password: String,
}

/// How a REGISTER ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "reason")]
pub enum Outcome {
    /// 200 OK with our Contact bound.
    Registered,
    /// 401/407 again after credentials were sent (wrong password or user).
    AuthenticationFailed,
    /// 403.
    Forbidden,
    /// No final response in time.
    Timeout,
    /// 5xx.
    ServerError {
        /// Status code.
        status: u16,
    },
    /// Another final response.
    Rejected {
        /// Status code.
        status: u16,
    },
    /// The WebSocket closed.
    TransportClosed {
        /// What was seen.
        detail: String,
    },
}

impl Outcome {
    /// The SipRegistered reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Outcome::Registered => "Registered",
            Outcome::AuthenticationFailed => "AuthenticationFailed",
            Outcome::Forbidden => "Forbidden",
            Outcome::Timeout => "Timeout",
            Outcome::ServerError { .. } => "ServerError",
            Outcome::Rejected { .. } => "Rejected",
            Outcome::TransportClosed { .. } => "TransportClosed",
        }
    }

    /// A message for people.
    pub fn message(&self, account: &Account) -> String {
        match self {
            Outcome::Registered => format!("{} registered", account.user),
            Outcome::AuthenticationFailed => {
                format!(
                    "{} was challenged again after sending credentials: wrong password (or unknown user)",
                    account.user
                )
            }
            Outcome::Forbidden => format!(
                "REGISTER of {} forbidden (403): check max_contacts and the endpoint's ACLs",
                account.user
            ),
            Outcome::Timeout => "no answer to REGISTER in time".into(),
            Outcome::ServerError { status } => format!("the PBX answered REGISTER with {status}"),
            Outcome::Rejected { status } => format!("REGISTER rejected with {status}"),
            Outcome::TransportClosed { detail } => {
                format!("the WebSocket closed during REGISTER: {detail}")
            }
        }
    }
}

/// What the REGISTER probe measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RegisterResult {
    /// The outcome.
    pub outcome: Outcome,
    /// From the first REGISTER to the final response, milliseconds.
    pub round_trip_ms: Option<f64>,
    /// The digest algorithm used.
    pub algorithm: Option<String>,
    /// The binding was removed again.
    pub unregistered: bool,
}

/// A SIP user agent on one WebSocket: numbering, and answers to the
/// requests the PBX sends while the probe waits (OPTIONS keep-alives).
pub struct Session<'a> {
    ws: &'a mut Wss,
    /// Our `.invalid` host (as browsers use).
    pub host: String,
    tag: String,
    call_id: String,
    cseq: u32,
    timeout: Duration,
}

/// Why a transaction produced no final response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxError {
    /// No final response in time.
    Timeout,
    /// The WebSocket closed or failed.
    Closed(String),
}

fn token(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(rng.sample(rand::distr::Alphanumeric)).to_ascii_lowercase())
        .collect()
}

impl<'a> Session<'a> {
    /// A session on `ws` whose transactions wait at most `timeout`.
    pub fn new(ws: &'a mut Wss, timeout: Duration) -> Self {
        Self {
            ws,
            host: format!("{}.invalid", token(12)),
            tag: token(10),
            call_id: token(20),
            cseq: 0,
            timeout,
        }
    }

    /// A new request of this session's dialog-less call.
    pub fn request(&mut self, method: &str, uri: &str, from: &str, to: &str) -> Message {
        self.cseq += 1;
        Message::request(method, uri)
            .with_header(
                "Via",
                format!("SIP/2.0/WSS {};branch=z9hG4bK{}", self.host, token(16)),
            )
            .with_header("Max-Forwards", "70")
            .with_header("From", format!("<{from}>;tag={}", self.tag))
            .with_header("To", format!("<{to}>"))
            .with_header("Call-ID", self.call_id.clone())
            .with_header("CSeq", format!("{} {method}", self.cseq))
            .with_header("User-Agent", "webrtc-pbx-probe")
    }

    /// Sends a request and waits for its final response, answering
    /// requests from the PBX meanwhile.
    pub async fn transaction(&mut self, request: &Message) -> Result<Message, TxError> {
        let branch = request.via_branch().unwrap_or_default().to_string();
        self.ws
            .send(Frame::text(request.to_string()))
            .await
            .map_err(|e| TxError::Closed(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Err(TxError::Timeout),
                Ok(None) => return Err(TxError::Closed("connection closed".into())),
                Ok(Some(Err(e))) => return Err(TxError::Closed(e.to_string())),
                Ok(Some(Ok(f))) => f,
            };
            let text = match frame {
                Frame::Text(t) => t.to_string(),
                Frame::Close(c) => return Err(TxError::Closed(format!("close frame {c:?}"))),
                _ => continue,
            };
            let Ok(message) = Message::parse(&text) else {
                continue;
            };
            match message.status() {
                Some(s) if s >= 200 && message.via_branch() == Some(branch.as_str()) => {
                    return Ok(message);
                }
                Some(_) => {}
                None => self.answer(&message).await?,
            }
        }
    }

    /// Sends a message as it is.
    pub async fn send(&mut self, message: &Message) {
        let _ = self.ws.send(Frame::text(message.to_string())).await;
    }

    /// The next SIP message from the PBX; `None` when the WebSocket closed.
    pub async fn recv(&mut self) -> Option<Message> {
        loop {
            match self.ws.next().await? {
                Ok(Frame::Text(t)) => {
                    if let Ok(m) = Message::parse(t.as_str()) {
                        return Some(m);
                    }
                }
                Ok(Frame::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Answers `request` with `status`, echoing the transaction headers.
    pub async fn reply(&mut self, request: &Message, status: u16, reason: &str) {
        self.send(&request.response_to(status, reason)).await;
    }

    /// ACK of a non-2xx final response: same branch as the INVITE.
    pub async fn ack_failure(&mut self, invite: &Message, response: &Message) {
        let cseq = invite
            .header("CSeq")
            .and_then(|c| c.split_whitespace().next())
            .unwrap_or("1")
            .to_string();
        let Some(uri) = invite.request_uri() else {
            return;
        };
        let mut ack = Message::request("ACK", uri);
        for name in ["Via", "From", "Call-ID"] {
            if let Some(v) = invite.header(name) {
                ack = ack.with_header(name, v);
            }
        }
        ack = ack
            .with_header("To", response.header("To").unwrap_or_default())
            .with_header("CSeq", format!("{cseq} ACK"));
        self.send(&ack).await;
    }

    fn in_dialog(
        &mut self,
        method: &str,
        cseq: u32,
        invite: &Message,
        response: &Message,
    ) -> Message {
        let target = response
            .header("Contact")
            .and_then(|c| c.split('<').nth(1))
            .and_then(|c| c.split('>').next())
            .map(str::to_string)
            .unwrap_or_else(|| invite.request_uri().unwrap_or_default().to_string());
        Message::request(method, &target)
            .with_header(
                "Via",
                format!("SIP/2.0/WSS {};branch=z9hG4bK{}", self.host, token(16)),
            )
            .with_header("Max-Forwards", "70")
            .with_header("From", invite.header("From").unwrap_or_default())
            .with_header("To", response.header("To").unwrap_or_default())
            .with_header("Call-ID", invite.header("Call-ID").unwrap_or_default())
            .with_header("CSeq", format!("{cseq} {method}"))
    }

    /// ACK of a 2xx: a new transaction to the remote target.
    pub async fn ack(&mut self, invite: &Message, response: &Message) {
        let cseq = invite
            .header("CSeq")
            .and_then(|c| c.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        let ack = self.in_dialog("ACK", cseq, invite, response);
        self.send(&ack).await;
    }

    /// Ends the dialog with BYE and waits (briefly) for its answer.
    pub async fn bye(&mut self, invite: &Message, response: &Message) {
        self.cseq += 1;
        let bye = self.in_dialog("BYE", self.cseq, invite, response);
        let _ = self.transaction(&bye).await;
    }

    /// Answers a request from the PBX: 200 to OPTIONS (qualify), 481 to
    /// anything else outside a dialog.
    async fn answer(&mut self, request: &Message) -> Result<(), TxError> {
        let (status, reason) = match request.method() {
            Some("OPTIONS") => (200, "OK"),
            Some("ACK") => return Ok(()),
            _ => (481, "Call/Transaction Does Not Exist"),
        };
        self.ws
            .send(Frame::text(request.response_to(status, reason).to_string()))
            .await
            .map_err(|e| TxError::Closed(e.to_string()))
    }
}

/// Sends REGISTER (answering one digest challenge) with `expires`; returns
/// the final response and the algorithm used.
async fn register_once(
    session: &mut Session<'_>,
    account: &Account,
    expires: u32,
) -> Result<(Message, Option<String>, bool), TxError> {
    let uri = format!("sip:{}", account.domain);
    let aor = format!("sip:{}@{}", account.user, account.domain);
    let contact = format!(
        "<sip:{}@{};transport=ws>;expires={expires}",
        account.user, session.host
    );
    let build = |s: &mut Session<'_>, auth: Option<(String, String)>| {
        let mut m = s
            .request("REGISTER", &uri, &aor, &aor)
            .with_header("Contact", contact.clone())
            .with_header("Expires", expires.to_string());
        if let Some((name, value)) = auth {
            m = m.with_header(&name, value);
        }
        m
    };
    let first = build(session, None);
    let response = session.transaction(&first).await?;
    let (header_in, header_out) = match response.status() {
        Some(401) => ("WWW-Authenticate", "Authorization"),
        Some(407) => ("Proxy-Authenticate", "Proxy-Authorization"),
        _ => return Ok((response, None, false)),
    };
    let Some(challenge) = digest::strongest(response.header_values(header_in)) else {
        return Ok((response, None, false));
    };
    let creds = digest::Credentials {
        username: &account.user,
        password: &account.password,
    };
    let value = digest::authorization(&challenge, &creds, "REGISTER", &uri, &token(16), 1);
    let second = build(session, Some((header_out.into(), value)));
    let response = session.transaction(&second).await?;
    Ok((response, Some(challenge.algorithm.name().to_string()), true))
}

/// The REGISTER probe: register, check the binding, unregister.
pub async fn probe(ws: &mut Wss, account: &Account, timeout: Duration) -> RegisterResult {
    let mut session = Session::new(ws, timeout);
    let started = Instant::now();
    let result = register_once(&mut session, account, 60).await;
    let round_trip_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
    let (response, algorithm, answered) = match result {
        Ok(r) => r,
        Err(TxError::Timeout) => {
            return RegisterResult {
                outcome: Outcome::Timeout,
                round_trip_ms: None,
                algorithm: None,
                unregistered: false,
            };
        }
        Err(TxError::Closed(detail)) => {
            return RegisterResult {
                outcome: Outcome::TransportClosed { detail },
                round_trip_ms: None,
                algorithm: None,
                unregistered: false,
            };
        }
    };
    let status = response.status().unwrap_or(0);
    let outcome = match status {
        200..=299 => {
            // The PBX must hand back our binding (Asterisk restores the
            // original .invalid host in the 200 OK).
            let bound = response
                .header_values("Contact")
                .any(|c| c.contains(&session.host));
            if bound {
                Outcome::Registered
            } else {
                Outcome::Rejected { status }
            }
        }
        401 | 407 if answered => Outcome::AuthenticationFailed,
        403 => Outcome::Forbidden,
        500..=599 => Outcome::ServerError { status },
        _ => Outcome::Rejected { status },
    };
    let mut unregistered = false;
    if outcome == Outcome::Registered {
        unregistered = matches!(register_once(&mut session, account, 0).await, Ok((r, _, _)) if r.status() == Some(200));
    }
    RegisterResult {
        outcome,
        round_trip_ms,
        algorithm,
        unregistered,
    }
}

//! The SIP user agent the REGISTER and echo-call steps share: one
//! WebSocket, request numbering, transactions with a time limit, and
//! answers to what the PBX sends while the probe waits (OPTIONS
//! keep-alives), as a browser's SIP stack does.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rand::Rng;
use tokio_tungstenite::tungstenite::Message as Frame;

use super::digest;
use super::register::Account;
use super::sip::Message;
use super::transport::Wss;

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

/// Why an INVITE did not set up a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InviteError {
    /// No final response in time.
    Timeout,
    /// The WebSocket closed or failed.
    Closed,
    /// A final error (or a challenge that could not be answered).
    Rejected(u16),
}

/// A random lowercase alphanumeric token (tags, branches, Call-IDs, cnonces).
pub(super) fn token(len: usize) -> String {
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

    /// INVITEs `extension` with `sdp` as `account`, answering a digest
    /// challenge once, and ACKs the final response. Returns the INVITE
    /// that was answered and its 2xx.
    pub async fn invite(
        &mut self,
        account: &Account,
        extension: &str,
        sdp: &str,
    ) -> Result<(Message, Message), InviteError> {
        let uri = format!("sip:{extension}@{}", account.domain);
        let from = format!("sip:{}@{}", account.user, account.domain);
        let contact = format!("<sip:{}@{};transport=ws>", account.user, self.host);
        let build = |s: &mut Session<'_>, auth: Option<String>| {
            let mut m = s
                .request("INVITE", &uri, &from, &uri)
                .with_header("Contact", contact.clone());
            if let Some(a) = auth {
                m = m.with_header("Authorization", a);
            }
            m.with_body("application/sdp", sdp)
        };
        let tx_error = |e: TxError| match e {
            TxError::Timeout => InviteError::Timeout,
            TxError::Closed(_) => InviteError::Closed,
        };
        let mut invite = build(self, None);
        let mut response = self.transaction(&invite).await.map_err(tx_error)?;
        if response.status() == Some(401) {
            self.ack_failure(&invite, &response).await;
            let challenge = digest::strongest(response.header_values("WWW-Authenticate"))
                .ok_or(InviteError::Rejected(401))?;
            let creds = digest::Credentials {
                username: &account.user,
                password: &account.password,
            };
            let auth = digest::authorization(&challenge, &creds, "INVITE", &uri, &token(8), 1);
            invite = build(self, Some(auth));
            response = self.transaction(&invite).await.map_err(tx_error)?;
        }
        let status = response.status().unwrap_or(0);
        if !(200..300).contains(&status) {
            self.ack_failure(&invite, &response).await;
            return Err(InviteError::Rejected(status));
        }
        self.ack(&invite, &response).await;
        Ok((invite, response))
    }

    /// Waits (up to the session's time limit) for a request `method` from
    /// the PBX, answering others meanwhile as [`Session::transaction`] does.
    pub async fn wait_request(&mut self, method: &str) -> Result<Message, TxError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let message = match tokio::time::timeout_at(deadline, self.recv()).await {
                Err(_) => return Err(TxError::Timeout),
                Ok(None) => return Err(TxError::Closed("connection closed".into())),
                Ok(Some(m)) => m,
            };
            match message.method() {
                Some(m) if m == method => return Ok(message),
                Some(_) => self.answer(&message).await?,
                None => {}
            }
        }
    }

    /// Answers an INVITE from the PBX with 200 OK and `sdp` as `user`:
    /// the dialog gets this session's tag, and our Contact.
    pub async fn accept(&mut self, invite: &Message, user: &str, sdp: &str) {
        let mut ok = Message::response(200, "OK");
        for name in ["Via", "From", "Call-ID", "CSeq", "Record-Route"] {
            for value in invite.header_values(name) {
                ok = ok.with_header(name, value);
            }
        }
        let to = invite.header("To").unwrap_or_default();
        let ok = ok
            .with_header("To", format!("{to};tag={}", self.tag))
            .with_header(
                "Contact",
                format!("<sip:{user}@{};transport=ws>", self.host),
            )
            .with_header("User-Agent", "webrtc-pbx-probe")
            .with_body("application/sdp", sdp);
        self.send(&ok).await;
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

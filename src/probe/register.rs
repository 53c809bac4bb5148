//! The REGISTER probe over an open SIP WebSocket: register with digest
//! authentication, check the Contact binding in the 200 OK, then
//! unregister. Outcomes are the SipRegistered reasons.

use std::time::{Duration, Instant};

use super::digest;
use super::session::{Session, TxError, token};
use super::sip::Message;
use super::step::{Check, Step};
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

/// Registers `account` on `session` for `expires` seconds (0 removes the
/// binding) and names the outcome, with the digest algorithm used.
pub(super) async fn bind(
    session: &mut Session<'_>,
    account: &Account,
    expires: u32,
) -> (Outcome, Option<String>) {
    let (response, algorithm, answered) = match register_once(session, account, expires).await {
        Ok(r) => r,
        Err(TxError::Timeout) => return (Outcome::Timeout, None),
        Err(TxError::Closed(detail)) => return (Outcome::TransportClosed { detail }, None),
    };
    let status = response.status().unwrap_or(0);
    let outcome = match status {
        // A removal needs no binding back.
        200..=299 if expires == 0 => Outcome::Registered,
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
    (outcome, algorithm)
}

/// The REGISTER probe: register, check the binding, unregister.
pub async fn probe(ws: &mut Wss, account: &Account, timeout: Duration) -> RegisterResult {
    let mut session = Session::new(ws, timeout);
    let started = Instant::now();
    let (outcome, algorithm) = bind(&mut session, account, 60).await;
    let round_trip_ms = (!matches!(outcome, Outcome::Timeout | Outcome::TransportClosed { .. }))
        .then(|| started.elapsed().as_secs_f64() * 1000.0);
    let mut unregistered = false;
    if outcome == Outcome::Registered {
        unregistered = bind(&mut session, account, 0).await.0 == Outcome::Registered;
    }
    RegisterResult {
        outcome,
        round_trip_ms,
        algorithm,
        unregistered,
    }
}

/// The REGISTER step: [`probe`], and its SipRegistered verdict.
pub async fn step(ws: &mut Wss, account: &Account, timeout: Duration) -> Step<RegisterResult> {
    let figures = probe(ws, account, timeout).await;
    let check = Check {
        ok: figures.outcome == Outcome::Registered,
        reason: figures.outcome.reason().into(),
        message: figures.outcome.message(account),
    };
    Step { check, figures }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::probe::test_server;

    const CHALLENGE: &str = r#"Digest realm="asterisk",nonce="1234abcd",algorithm=MD5,qop="auth""#;

    /// A registrar that challenges, then accepts `password` for 1001 (the
    /// digest checked with the same code the probe uses, from RFC vectors).
    fn registrar(password: &'static str) -> test_server::Handler {
        Arc::new(move |request: &Message| {
            let Some(auth) = request.header("Authorization") else {
                return vec![
                    request
                        .response_to(401, "Unauthorized")
                        .with_header("WWW-Authenticate", CHALLENGE),
                ];
            };
            let param = |name: &str| {
                let rest = auth.strip_prefix("Digest ").unwrap_or(auth);
                rest.split(',').find_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    (k.trim() == name).then(|| v.trim().trim_matches('"').to_string())
                })
            };
            let challenge = digest::parse_challenge(CHALLENGE).expect("challenge");
            let expected = digest::response(
                &challenge,
                &digest::Credentials {
                    username: "1001",
                    password,
                },
                "REGISTER",
                &param("uri").unwrap_or_default(),
                &param("cnonce").unwrap_or_default(),
                1,
            );
            if param("response").as_deref() != Some(expected.as_str()) {
                return vec![
                    request
                        .response_to(401, "Unauthorized")
                        .with_header("WWW-Authenticate", CHALLENGE),
                ];
            }
            let contact = request.header("Contact").unwrap_or_default().to_string();
            vec![
                request
                    .response_to(200, "OK")
                    .with_header("Contact", contact),
            ]
        })
    }

    async fn register_with(password: &str) -> Step<RegisterResult> {
        let server = test_server::serve(Some("sip"), registrar("s3cret")).await;
        let (_, ws) = super::super::transport::step(&server.target()).await;
        let mut ws = ws.expect("the WebSocket opens");
        let account = Account {
            domain: test_server::HOST.into(),
            user: "1001".into(),
            password: password.into(),
        };
        step(&mut ws, &account, Duration::from_secs(2)).await
    }

    #[tokio::test]
    async fn the_step_answers_the_challenge_registers_and_unregisters() {
        let step = register_with("s3cret").await;
        assert!(step.check.ok, "{:?}", step.check);
        assert_eq!(step.check.reason, "Registered");
        assert_eq!(step.figures.algorithm.as_deref(), Some("MD5"));
        assert!(step.figures.unregistered);
        assert!(step.figures.round_trip_ms.is_some());
    }

    #[tokio::test]
    async fn a_second_challenge_is_a_wrong_password() {
        let step = register_with("wrong").await;
        assert!(!step.check.ok);
        assert_eq!(step.check.reason, "AuthenticationFailed");
        assert!(
            step.check.message.contains("wrong password"),
            "{}",
            step.check.message
        );
    }
}

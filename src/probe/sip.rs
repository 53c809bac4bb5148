//! SIP messages (RFC 3261) as carried over WebSocket (RFC 7118): one message
//! per WebSocket text frame. Parses requests and responses with compact and
//! case-insensitive header names, keeps header order, and builds messages.

use std::fmt;

/// Why a message could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The start line is neither a request nor a response line.
    #[error("bad start line: {0:?}")]
    StartLine(String),
    /// A header line has no colon.
    #[error("bad header line: {0:?}")]
    Header(String),
    /// The status code is not three digits.
    #[error("bad status code: {0:?}")]
    Status(String),
    /// Content-Length disagrees with the body.
    #[error("Content-Length {declared} but the body has {actual} bytes")]
    ContentLength {
        /// Declared length.
        declared: usize,
        /// Bytes present.
        actual: usize,
    },
    /// More header lines than any real SIP message has.
    #[error("more than {MAX_HEADERS} header lines")]
    TooManyHeaders,
    /// Longer than any real SIP message over WebSocket.
    #[error("message of {0} bytes, at most {MAX_MESSAGE}")]
    TooLarge(usize),
}

/// Most header lines a message may have (Asterisk sends about 15).
pub const MAX_HEADERS: usize = 128;
/// Longest message accepted, bytes (the WebSocket frame limit).
pub const MAX_MESSAGE: usize = 64 * 1024;

/// The first line of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    /// `METHOD URI SIP/2.0`
    Request {
        /// Method, e.g. `REGISTER`.
        method: String,
        /// Request-URI.
        uri: String,
    },
    /// `SIP/2.0 CODE REASON`
    Response {
        /// Status code.
        status: u16,
        /// Reason phrase.
        reason: String,
    },
}

/// A SIP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Request or status line.
    pub start: StartLine,
    /// Headers in order, names as received (or as built).
    pub headers: Vec<(String, String)>,
    /// The body (SDP, usually).
    pub body: String,
}

/// Compact header forms (RFC 3261 7.3.3 and extensions).
const COMPACT: [(&str, &str); 15] = [
    ("i", "Call-ID"),
    ("m", "Contact"),
    ("e", "Content-Encoding"),
    ("l", "Content-Length"),
    ("c", "Content-Type"),
    ("f", "From"),
    ("s", "Subject"),
    ("k", "Supported"),
    ("t", "To"),
    ("v", "Via"),
    ("o", "Event"),
    ("u", "Allow-Events"),
    ("r", "Refer-To"),
    ("b", "Referred-By"),
    ("x", "Session-Expires"),
];

/// The full form of a header name (compact forms expanded).
fn full_name(name: &str) -> &str {
    COMPACT
        .iter()
        .find(|(c, _)| c.eq_ignore_ascii_case(name))
        .map(|(_, full)| *full)
        .unwrap_or(name)
}

fn same_header(a: &str, b: &str) -> bool {
    full_name(a).eq_ignore_ascii_case(full_name(b))
}

impl Message {
    /// A request with no headers yet.
    pub fn request(method: &str, uri: &str) -> Self {
        Self {
            start: StartLine::Request {
                method: method.into(),
                uri: uri.into(),
            },
            headers: Vec::new(),
            body: String::new(),
        }
    }

    /// A response with no headers yet.
    pub fn response(status: u16, reason: &str) -> Self {
        Self {
            start: StartLine::Response {
                status,
                reason: reason.into(),
            },
            headers: Vec::new(),
            body: String::new(),
        }
    }

    /// Appends a header.
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body and its Content-Type.
    pub fn with_body(mut self, content_type: &str, body: impl Into<String>) -> Self {
        self.headers
            .push(("Content-Type".into(), content_type.into()));
        self.body = body.into();
        self
    }

    /// The status code of a response.
    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { status, .. } => Some(*status),
            StartLine::Request { .. } => None,
        }
    }

    /// The method of a request.
    pub fn method(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The Request-URI of a request.
    pub fn request_uri(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    /// A response to this request: status line plus its Via, From, To,
    /// Call-ID and CSeq (RFC 3261 8.2.6.2).
    pub fn response_to(&self, status: u16, reason: &str) -> Message {
        let mut response = Message::response(status, reason);
        for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
            for value in self.header_values(name) {
                response = response.with_header(name, value);
            }
        }
        response
    }

    /// The first value of a header (compact forms and case ignored).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| same_header(n, name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header, in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| same_header(n, name))
            .map(|(_, v)| v.as_str())
    }

    /// The CSeq method of a message.
    pub fn cseq_method(&self) -> Option<&str> {
        self.header("CSeq")?.split_whitespace().nth(1)
    }

    /// The `branch` parameter of the top Via.
    pub fn via_branch(&self) -> Option<&str> {
        let via = self.header("Via")?;
        param(via, "branch")
    }

    /// Parses one message (one WebSocket frame).
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        if text.len() > MAX_MESSAGE {
            return Err(ParseError::TooLarge(text.len()));
        }
        let (head, body) = match text.find("\r\n\r\n") {
            Some(i) => (&text[..i], &text[i + 4..]),
            None => match text.find("\n\n") {
                Some(i) => (&text[..i], &text[i + 2..]),
                None => (text.trim_end_matches(['\r', '\n']), ""),
            },
        };
        let mut lines = head.split('\n').map(|l| l.trim_end_matches('\r'));
        let first = lines.next().unwrap_or_default();
        let start = parse_start_line(first)?;
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in lines {
            if line.starts_with([' ', '\t']) {
                // Folded continuation line (RFC 3261 7.3.1).
                match headers.last_mut() {
                    Some((_, v)) => {
                        v.push(' ');
                        v.push_str(line.trim());
                    }
                    None => return Err(ParseError::Header(line.into())),
                }
                continue;
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| ParseError::Header(line.into()))?;
            let name = name.trim();
            if name.is_empty() || name.contains(' ') {
                return Err(ParseError::Header(line.into()));
            }
            // Content-Length is not counted: serializing writes one of its
            // own, and what parses must parse again (fuzzed).
            let counted = headers
                .iter()
                .filter(|(n, _)| !same_header(n, "Content-Length"))
                .count();
            if counted >= MAX_HEADERS && !same_header(name, "Content-Length") {
                return Err(ParseError::TooManyHeaders);
            }
            headers.push((name.to_string(), value.trim().to_string()));
        }
        let message = Message {
            start,
            headers,
            body: body.to_string(),
        };
        if let Some(declared) = message
            .header("Content-Length")
            .and_then(|v| v.parse::<usize>().ok())
            && declared != body.len()
        {
            return Err(ParseError::ContentLength {
                declared,
                actual: body.len(),
            });
        }
        Ok(message)
    }
}

fn parse_start_line(line: &str) -> Result<StartLine, ParseError> {
    let bad = || ParseError::StartLine(line.into());
    if let Some(rest) = line.strip_prefix("SIP/2.0 ") {
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        // RFC 3261 7.2: three digits, the first 1-6.
        let status: u16 = code.parse().map_err(|_| ParseError::Status(code.into()))?;
        if code.len() != 3
            || !code.bytes().all(|b| b.is_ascii_digit())
            || !(100..=699).contains(&status)
        {
            return Err(ParseError::Status(code.into()));
        }
        return Ok(StartLine::Response {
            status,
            reason: reason.into(),
        });
    }
    let mut parts = line.split(' ');
    let (Some(method), Some(uri), Some("SIP/2.0"), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) || uri.is_empty() {
        return Err(bad());
    }
    Ok(StartLine::Request {
        method: method.into(),
        uri: uri.into(),
    })
}

/// A `;name=value` parameter of a header value (name case ignored).
pub fn param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    value.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

impl fmt::Display for Message {
    /// The wire form, with a Content-Length matching the body.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.start {
            StartLine::Request { method, uri } => write!(f, "{method} {uri} SIP/2.0\r\n")?,
            StartLine::Response { status, reason } => write!(f, "SIP/2.0 {status} {reason}\r\n")?,
        }
        for (name, value) in self
            .headers
            .iter()
            .filter(|(n, _)| !same_header(n, "Content-Length"))
        {
            write!(f, "{name}: {value}\r\n")?;
        }
        write!(
            f,
            "Content-Length: {}\r\n\r\n{}",
            self.body.len(),
            self.body
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_no_sip_message_has_is_refused() {
        let mut many = String::from("SIP/2.0 200 OK\r\n");
        for i in 0..MAX_HEADERS + 1 {
            many.push_str(&format!("X-{i}: y\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(Message::parse(&many), Err(ParseError::TooManyHeaders));
        // At the limit it parses, and so does what it serializes to (the
        // serialized form adds Content-Length; found by the fuzzer).
        let mut full = String::from("SIP/2.0 555 x\n");
        for i in 0..MAX_HEADERS {
            full.push_str(&format!("X-{i}: y\n"));
        }
        let message = Message::parse(&full).unwrap();
        assert_eq!(
            Message::parse(&message.to_string()).unwrap().start,
            message.start
        );
        let huge = format!("SIP/2.0 200 OK\r\nX: {}\r\n\r\n", "y".repeat(MAX_MESSAGE));
        assert!(matches!(
            Message::parse(&huge),
            Err(ParseError::TooLarge(_))
        ));
    }

    /// A 401 in the shape Asterisk 22 sends over WSS when SHA-256 and MD5 are
    /// both enabled: one challenge per algorithm.
    const ASTERISK_401: &str = "SIP/2.0 401 Unauthorized\r\n\
        Via: SIP/2.0/WSS df7jal23ls0d.invalid;rport=43522;received=127.0.0.1;branch=z9hG4bK1234\r\n\
        Call-ID: 5a4b3c\r\n\
        From: <sip:1001@pbx.test>;tag=abc\r\n\
        To: <sip:1001@pbx.test>;tag=z9hG4bK1234\r\n\
        CSeq: 1 REGISTER\r\n\
        WWW-Authenticate: Digest realm=\"asterisk\",nonce=\"1732350000/0123abcd\",opaque=\"77aa\",algorithm=SHA-256,qop=\"auth\"\r\n\
        WWW-Authenticate: Digest realm=\"asterisk\",nonce=\"1732350000/0123abcd\",opaque=\"77aa\",algorithm=MD5,qop=\"auth\"\r\n\
        Server: Asterisk PBX 22.10.1\r\n\
        Content-Length:  0\r\n\r\n";

    #[test]
    fn parses_asterisk_challenge_with_two_algorithms() {
        let m = Message::parse(ASTERISK_401).unwrap();
        assert_eq!(m.status(), Some(401));
        assert_eq!(m.cseq_method(), Some("REGISTER"));
        assert_eq!(m.via_branch(), Some("z9hG4bK1234"));
        assert_eq!(m.header_values("www-authenticate").count(), 2);
        assert_eq!(m.header("call-id"), m.header("i"));
    }

    #[test]
    fn parses_captured_asterisk_register_exchange() {
        let challenge = Message::parse(include_str!(
            "../../tests/fixtures/asterisk-22.10/register-401.sip"
        ))
        .unwrap();
        assert_eq!(challenge.status(), Some(401));
        assert_eq!(challenge.via_branch(), Some("z9hG4bKcap1"));
        // Asterisk adds rport/received to our Via and a To tag.
        assert!(param(challenge.header("Via").unwrap(), "received").is_some());
        let c =
            crate::probe::digest::strongest(challenge.header_values("WWW-Authenticate")).unwrap();
        assert_eq!((c.realm.as_str(), c.qop_auth), ("asterisk", true));
        let ok = Message::parse(include_str!(
            "../../tests/fixtures/asterisk-22.10/register-200.sip"
        ))
        .unwrap();
        assert_eq!(ok.status(), Some(200));
        assert_eq!(ok.cseq_method(), Some("REGISTER"));
        // The original .invalid host comes back in the binding.
        assert!(
            ok.header("Contact")
                .unwrap()
                .contains("df7jal23ls0d.invalid")
        );
        assert_eq!(ok.body, "");
    }

    #[test]
    fn compact_and_case_insensitive_headers() {
        let m = Message::parse("INVITE sip:*43@pbx.test SIP/2.0\r\nv: SIP/2.0/WSS x.invalid;branch=z9hG4bKa\r\ni: abc\r\nl: 4\r\nc: application/sdp\r\n\r\nv=0\n").unwrap();
        assert_eq!(m.method(), Some("INVITE"));
        assert_eq!(m.header("Call-ID"), Some("abc"));
        assert_eq!(m.header("CONTENT-TYPE"), Some("application/sdp"));
        assert_eq!(m.via_branch(), Some("z9hG4bKa"));
        assert_eq!(m.body, "v=0\n");
    }

    #[test]
    fn round_trips_and_fixes_content_length() {
        let m = Message::request("REGISTER", "sip:pbx.test")
            .with_header("Via", "SIP/2.0/WSS h.invalid;branch=z9hG4bKx")
            .with_header("Content-Length", "99")
            .with_body("application/sdp", "v=0\r\n");
        let text = m.to_string();
        assert!(text.contains("Content-Length: 5\r\n"));
        assert_eq!(text.matches("Content-Length").count(), 1);
        let parsed = Message::parse(&text).unwrap();
        assert_eq!(parsed.body, "v=0\r\n");
        assert_eq!(parsed.to_string(), text);
    }

    #[test]
    fn rejects_malformed_messages() {
        for bad in [
            "",
            "HELLO\r\n\r\n",
            "SIP/2.0 20 OK\r\n\r\n",
            // Found by the fuzzer: parsed as status 20, which cannot round-trip.
            "SIP/2.0 020\r\r\n",
            "SIP/2.0 700 Nope\r\n\r\n",
            "REGISTER sip:x SIP/3.0\r\n\r\n",
            "REGISTER sip:x SIP/2.0\r\nNoColon\r\n\r\n",
            "SIP/2.0 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        ] {
            assert!(Message::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn folded_header_lines_join() {
        let m = Message::parse("SIP/2.0 200 OK\r\nSubject: one\r\n two\r\n\r\n").unwrap();
        assert_eq!(m.header("s"), Some("one two"));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn header_name() -> impl Strategy<Value = String> {
        "[A-Za-z][A-Za-z-]{0,18}".prop_filter("Content-Length is computed", |n| {
            !same_header(n, "Content-Length")
        })
    }

    proptest! {
        #[test]
        fn built_messages_round_trip(
            method in "[A-Z]{3,9}",
            uri in "sip:[a-z0-9*#]{1,12}@[a-z0-9.]{1,20}",
            headers in proptest::collection::vec((header_name(), "[!-~]([ -~]{0,38}[!-~])?"), 0..12),
            body in "[ -~\r\n]{0,200}",
        ) {
            let mut m = Message::request(&method, &uri);
            for (n, v) in &headers {
                m = m.with_header(n, v.clone());
            }
            m.body = body;
            let parsed = Message::parse(&m.to_string()).unwrap();
            prop_assert_eq!(&parsed.start, &m.start);
            prop_assert_eq!(&parsed.body, &m.body);
            let without_length: Vec<_> =
                parsed.headers.iter().filter(|(n, _)| !same_header(n, "Content-Length")).cloned().collect();
            prop_assert_eq!(without_length, m.headers);
        }

        #[test]
        fn parser_never_panics(text in "\\PC{0,400}") {
            let _ = Message::parse(&text);
        }

        #[test]
        fn responses_keep_status(status in 100u16..700, reason in "[A-Za-z ]{0,20}") {
            let m = Message::response(status, reason.trim());
            let parsed = Message::parse(&m.to_string()).unwrap();
            prop_assert_eq!(parsed.status(), Some(status));
        }
    }
}

//! Fuzzes the SIP message parser and the digest challenge parser with
//! arbitrary input: no panic, and what parses re-serializes to something
//! that parses to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code, missing_docs)]
#[path = "../../src/probe/sip.rs"]
mod sip;

#[allow(dead_code, missing_docs)]
#[path = "../../src/probe/digest.rs"]
mod digest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(message) = sip::Message::parse(text) {
        let again = sip::Message::parse(&message.to_string()).expect("a serialized message parses");
        assert_eq!(again.start, message.start);
        assert_eq!(again.body, message.body);
        for value in message.header_values("WWW-Authenticate") {
            let _ = digest::parse_challenge(value);
        }
    }
    let _ = digest::parse_challenge(text);
});

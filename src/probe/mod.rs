//! The probe engine, independent of Kubernetes: SIP over WebSocket and
//! digest authentication so far; the WSS transport, REGISTER and echo-call
//! probes grow here.

pub mod digest;
pub mod sip;
